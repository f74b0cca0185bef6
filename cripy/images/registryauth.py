"""Authorizing a registry client's requests: what goes in the Authorization header, and the token dance behind it.

Owns the configured credentials, the registry's latest WWW-Authenticate challenge and the bearer tokens a token
server hands out per repository scope (cached until shortly before they expire; parallel layer downloads share one
token request). A registry token is sent as is; a Basic challenge gets the username and password; a Bearer
challenge gets a token, fetched with the identity token (OAuth2 refresh-token grant, falling back to the GET flow
for token servers without it) or with the username and password (GET with Basic auth), or anonymously. The
exchanges go through the client's `send` (registry.py: its transport errors, retries and TLS).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from cripy.errors import Unauthenticated
from cripy.images import http
from cripy.images.auth import Credentials
from cripy.images.distribution import (
    MAX_ERROR_BODY,
    Challenge,
    Transient,
    basic_auth_header,
    describe,
    json_or_none,
    pull_scope,
    registry_error_text,
)

# One exchange: method, URL, headers, body -> a response the caller releases.
Send = Callable[[str, http.URL, Mapping[str, str], "bytes | None"], Awaitable[http.Response]]
DEFAULT_TOKEN_SECONDS = 60.0  # what the distribution spec says a token lives when the server does not say


@dataclass
class Authorization:
    header: str | None
    # Static credentials (basic, a registry token) cannot get better by asking again after a 401.
    static: bool = False


class Authorizer:
    """The Authorization of one registry endpoint's requests."""

    def __init__(self, endpoint: str, credentials: Credentials | None, user_agent: str, send: Send) -> None:
        self.endpoint = endpoint
        self.challenge: Challenge | None = None  # the registry's latest, from a 401 (or the scheme probe)
        self._credentials = credentials
        self._user_agent = user_agent
        self._send = send
        self._token_lock = asyncio.Lock()
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}

    def has_credentials(self) -> bool:
        c = self._credentials
        return c is not None and bool(c.username or c.password or c.identity_token or c.registry_token)

    def credential_kind(self) -> str:
        """What was offered, for error messages (never the secret itself)."""
        c = self._credentials
        if c is None or not self.has_credentials():
            return "anonymous access (no credentials configured)"
        if c.registry_token:
            return "the configured registry token"
        if c.identity_token:
            return "the configured identity token"
        return f"the credentials of user {c.username!r}"

    async def authorization(self, repository: str, what: str) -> Authorization:
        creds = self._credentials
        if creds is not None and creds.registry_token:
            return Authorization(f"Bearer {creds.registry_token}", static=True)
        challenge = self.challenge
        if challenge is None:
            return Authorization(None)
        if challenge.scheme == "basic":
            basic = basic_auth_header(creds)
            if basic is None:
                raise Unauthenticated(
                    f"registry {self.endpoint} requires credentials (Basic auth) for {what}, and none are configured"
                )
            return Authorization(basic, static=True)
        token = await self._bearer_token(challenge, repository, what)
        return Authorization(f"Bearer {token}")

    def forget(self, repository: str) -> None:
        """Drop the cached tokens of the repository's scope (the registry refused one)."""
        scope = pull_scope(repository)
        for key in [k for k in self._tokens if k[2] == scope]:
            del self._tokens[key]

    async def _bearer_token(self, challenge: Challenge, repository: str, what: str) -> str:
        realm = challenge.params.get("realm", "")
        if not realm:
            raise Unauthenticated(f"registry {self.endpoint} sent a Bearer challenge without a realm for {what}")
        service = challenge.params.get("service", "")
        key = (realm, service, pull_scope(repository))
        async with self._token_lock:  # parallel layer downloads should share one token request
            cached = self._tokens.get(key)
            if cached is not None and cached[1] > time.monotonic():
                return cached[0]
            token, expires_in = await self._fetch_token(realm, service, key[2], what)
            margin = min(10.0, expires_in / 2)
            self._tokens[key] = (token, time.monotonic() + expires_in - margin)
            return token

    async def _fetch_token(self, realm: str, service: str, scope: str, what: str) -> tuple[str, float]:
        try:
            realm_url = http.URL(realm)
        except ValueError:
            realm_url = None
        if realm_url is None or realm_url.scheme not in ("http", "https"):
            raise Unauthenticated(f"registry {self.endpoint} names an unusable token realm {realm!r} for {what}")
        creds = self._credentials
        headers = {"User-Agent": self._user_agent}
        if creds is not None and creds.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": creds.identity_token,
                "scope": scope,
                "client_id": "cripy",
            }
            if service:
                form["service"] = service
            body, form_headers = http.form_body(form)
            resp = await self._send("POST", realm_url, {**headers, **form_headers}, body)
            if resp.status not in (404, 405):
                return await self._token_from_response(resp, realm, what)
            resp.release()  # token server without OAuth2 support: fall back to the GET flow
        query = {"scope": scope, **({"service": service} if service else {})}
        basic = basic_auth_header(creds)
        if basic is not None:
            headers["Authorization"] = basic
        resp = await self._send("GET", realm_url.with_query(query), headers, None)
        return await self._token_from_response(resp, realm, what)

    async def _token_from_response(self, resp: http.Response, realm: str, what: str) -> tuple[str, float]:
        try:
            body = await http.read_limited(resp, MAX_ERROR_BODY * 4, f"token from {realm}", truncate=False)
        except (http.HTTPError, TimeoutError) as e:
            raise Transient(f"reading the token from {realm}: {describe(e)}") from None
        finally:
            resp.release()
        if resp.status != 200:
            raise Unauthenticated(
                f"token server {realm} refused {self.credential_kind()} for {what} on {self.endpoint} "
                f"(HTTP {resp.status}): {registry_error_text(body)}"
            )
        doc = json_or_none(body)
        token = ""
        if isinstance(doc, dict):
            token = doc.get("token") or doc.get("access_token") or ""
        if not isinstance(token, str) or not token:
            raise Unauthenticated(f"token server {realm} answered without a token for {what} on {self.endpoint}")
        expires_in = doc.get("expires_in") if isinstance(doc, dict) else None
        if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) or expires_in <= 0:
            expires_in = DEFAULT_TOKEN_SECONDS
        return token, float(expires_in)
