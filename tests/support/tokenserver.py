"""A Docker distribution token-auth server for tests (https://distribution.github.io/distribution/spec/auth/token/).

GET /token (Basic auth or anonymous) and POST /token (OAuth2 password / refresh_token grants) issue RS256 JWTs
whose header carries the signing certificate as "x5c"; docker-registry 2.8 verifies that chain against its
`auth.token.rootcertbundle`, which is the same self-signed certificate (see `cert_pem`).
Every request is recorded in `requests` so tests can assert what a client asked for.
"""

from __future__ import annotations

import base64
import datetime
import fnmatch
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.support.aiothread import BackgroundHTTPServer

DEFAULT_SERVICE = "cripy-test-registry"
DEFAULT_ISSUER = "cripy-test-token-issuer"
ALL_ACTIONS = ("pull", "push", "delete", "*")


@dataclass(frozen=True)
class Scope:
    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Scope:
        """`repository:library/busybox:pull,push`; the name may itself contain ':' (e.g. a port), actions not."""
        kind, sep, rest = text.partition(":")
        name, sep2, actions = rest.rpartition(":")
        if not sep or not sep2 or not kind or not name:
            raise ValueError(f"malformed scope {text!r}")
        return cls(kind, name, tuple(a for a in actions.split(",") if a))

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


@dataclass
class TokenRequest:
    """What the token server saw and answered, for assertions."""

    method: str
    grant_type: str                 # "basic" / "anonymous" for GET, the OAuth2 grant for POST
    service: str
    scopes: list[str]
    account: str | None
    status: int
    granted: list[dict[str, Any]] = field(default_factory=list)
    client_id: str = ""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def decode_jwt_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a JWT, without checking the signature: for test assertions."""
    header, claims, _sig = token.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(claims))


def make_signing_identity(common_name: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


class TokenServer:
    """users: name -> password. readonly_users only get "pull". public_repos: fnmatch patterns anonymous users may
    pull. Authenticated users get every requested action on every repository (and registry:catalog:*)."""

    def __init__(self, users: dict[str, str] | None = None, *, public_repos: list[str] | None = None,
                 readonly_users: set[str] | None = None, service: str = DEFAULT_SERVICE,
                 issuer: str = DEFAULT_ISSUER, expires_in: int = 300) -> None:
        self.users = dict(users or {})
        self.public_repos = list(public_repos or [])
        self.readonly_users = set(readonly_users or ())
        self.service = service
        self.issuer = issuer
        self.expires_in = expires_in
        self._key, self._cert = make_signing_identity("cripy test token signer")
        self._refresh_tokens: dict[str, str] = {}
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._server = BackgroundHTTPServer(self._make_app, name="cripy-test-token-server")

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> TokenServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    @property
    def cert_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    @property
    def requests(self) -> list[TokenRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- policy (pure) ---------------------------------------------------------------------------------------

    def check_password(self, user: str, password: str) -> bool:
        expected = self.users.get(user)
        return expected is not None and secrets.compare_digest(expected.encode(), password.encode())

    def grant(self, account: str | None, scope: Scope) -> dict[str, Any] | None:
        """The access entry `account` (None = anonymous) gets for `scope`, or None if nothing."""
        if account is None:
            allowed: set[str] = set()
            if scope.type == "repository" and any(fnmatch.fnmatchcase(scope.name, p) for p in self.public_repos):
                allowed = {"pull"}
        elif account in self.readonly_users:
            allowed = {"pull"} if scope.type == "repository" else set()
        else:
            allowed = set(ALL_ACTIONS)
        actions = [a for a in scope.actions if a in allowed]
        if not actions:
            return None
        return {"type": scope.type, "name": scope.name, "actions": actions}

    def issue(self, account: str | None, service: str, scopes: list[Scope]) -> tuple[str, list[dict[str, Any]]]:
        access = [entry for entry in (self.grant(account, s) for s in scopes) if entry is not None]
        now = int(time.time())
        claims = {
            "iss": self.issuer, "sub": account or "", "aud": service, "exp": now + self.expires_in,
            "nbf": now - 5, "iat": now, "jti": secrets.token_hex(16), "access": access,
        }
        cert_der = self._cert.public_bytes(serialization.Encoding.DER)
        header = {"alg": "RS256", "typ": "JWT", "x5c": [base64.b64encode(cert_der).decode()]}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}", access

    # -- HTTP ------------------------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self._handle_get)
        app.router.add_post("/token", self._handle_post)
        return app

    def _record(self, req: TokenRequest) -> None:
        with self._lock:
            self._requests.append(req)

    @staticmethod
    def _scopes_from(values: list[str]) -> list[Scope]:
        return [Scope.parse(item) for value in values for item in value.split(" ") if item]

    def _error(self, status: int, code: str, message: str) -> web.Response:
        headers = {"WWW-Authenticate": 'Basic realm="cripy-test-token-server"'} if status == 401 else {}
        return web.json_response({"errors": [{"code": code, "message": message}]}, status=status, headers=headers)

    def _token_body(self, account: str | None, service: str, scopes: list[Scope], *,
                    with_refresh: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        token, access = self.issue(account, service, scopes)
        body: dict[str, Any] = {
            "token": token, "access_token": token, "expires_in": self.expires_in,
            "issued_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "scope": " ".join(str(s) for s in scopes),
        }
        if with_refresh and account is not None:
            refresh = secrets.token_urlsafe(24)
            with self._lock:
                self._refresh_tokens[refresh] = account
            body["refresh_token"] = refresh
        return body, access

    async def _handle_get(self, request: web.Request) -> web.Response:
        service = request.query.get("service", "")
        raw_scopes = request.query.getall("scope", [])
        record = TokenRequest("GET", "anonymous", service, raw_scopes, None, 0,
                              client_id=request.query.get("client_id", ""))
        try:
            scopes = self._scopes_from(raw_scopes)
        except ValueError as exc:
            record.status = 400
            self._record(record)
            return self._error(400, "INVALID_SCOPE", str(exc))
        account: str | None = None
        auth_header = request.headers.get("Authorization", "")
        if auth_header:
            record.grant_type = "basic"
            user, password = self._parse_basic(auth_header)
            record.account = user
            if user is None or not self.check_password(user, password):
                record.status = 401
                self._record(record)
                return self._error(401, "UNAUTHORIZED", f"invalid username or password for {user!r}")
            account = user
        if service != self.service:
            record.status = 400
            self._record(record)
            return self._error(400, "INVALID_SERVICE", f"unknown service {service!r}, expected {self.service!r}")
        offline = request.query.get("offline_token", "").lower() == "true"
        body, record.granted = self._token_body(account, service, scopes, with_refresh=offline)
        record.status = 200
        self._record(record)
        return web.json_response(body)

    async def _handle_post(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant_type = str(form.get("grant_type", ""))
        service = str(form.get("service", ""))
        raw_scopes = [str(v) for v in form.getall("scope", [])]
        record = TokenRequest("POST", grant_type, service, raw_scopes, None, 0,
                              client_id=str(form.get("client_id", "")))
        try:
            scopes = self._scopes_from(raw_scopes)
        except ValueError as exc:
            record.status = 400
            self._record(record)
            return self._error(400, "invalid_request", str(exc))
        account: str | None
        if grant_type == "password":
            account = str(form.get("username", ""))
            record.account = account
            if not self.check_password(account, str(form.get("password", ""))):
                record.status = 401
                self._record(record)
                return self._error(401, "invalid_grant", f"invalid username or password for {account!r}")
        elif grant_type == "refresh_token":
            with self._lock:
                account = self._refresh_tokens.get(str(form.get("refresh_token", "")))
            record.account = account
            if account is None:
                record.status = 401
                self._record(record)
                return self._error(401, "invalid_grant", "unknown refresh token")
        else:
            record.status = 400
            self._record(record)
            return self._error(400, "unsupported_grant_type", f"grant_type {grant_type!r} not supported")
        if service != self.service:
            record.status = 400
            self._record(record)
            return self._error(400, "invalid_request", f"unknown service {service!r}, expected {self.service!r}")
        body, record.granted = self._token_body(account, service, scopes, with_refresh=True)
        record.status = 200
        self._record(record)
        return web.json_response(body)

    @staticmethod
    def _parse_basic(header: str) -> tuple[str | None, str]:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None, ""
        try:
            user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None, ""
        return user, password
