"""A real Debian `docker-registry` (distribution 2.8) on 127.0.0.1 for tests, plus a small synchronous
distribution-API client to push built images into it (with Basic or token auth when the registry requires it).

Everything the registry writes (config, storage, certificates, htpasswd, log) lives under the given workdir.
htpasswd entries must be bcrypt (distribution rejects other hash schemes); they are made with Python's `crypt`
module (glibc's libxcrypt knows "$2b$"), cost 4 to keep every authenticated request fast.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from multidict import CIMultiDict
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.aiothread import unused_port
from tests.support.images import BuiltImage, BuiltIndex
from tests.support.tokenserver import TokenServer

REGISTRY_BINARY = "docker-registry"
# The registry dies with the process that started it (util-linux's setpriv sets the parent-death signal), so a
# test or benchmark killed before it could stop its registry leaves none behind on the node. (The kernel sends it
# when the thread that started the registry ends: start one from a thread that outlives it, as tests and bench do.)
DIES_WITH_PARENT = ["setpriv", "--pdeathsig", "TERM"]
START_TIMEOUT = 10.0
AuthMode = Literal["htpasswd", "token"] | None


class RegistryError(Exception):
    """A registry could not be started, or an API call got an unexpected answer."""


@dataclass
class HTTPResult:
    status: int
    headers: CIMultiDict[str]  # case-insensitive: Go sends "Www-Authenticate"
    body: bytes


def registry_available() -> bool:
    return shutil.which(REGISTRY_BINARY) is not None


# --------------------------------------------------------------------------------------------------------------
# Credentials and certificates


def bcrypt_hash(password: str) -> str:
    """A "$2b$" bcrypt hash as distribution's htpasswd wants; `htpasswd -B` if `crypt` is unusable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
        if hashed and hashed.startswith("$2"):
            return hashed
    except ImportError:
        pass
    htpasswd = shutil.which("htpasswd")
    if htpasswd is None:
        raise RegistryError("cannot make bcrypt hashes: python crypt lacks bcrypt and htpasswd is not installed")
    out = subprocess.run([htpasswd, "-Bbn", "-C", "4", "u", password], check=True, capture_output=True, text=True)
    return out.stdout.strip().split(":", 1)[1]


def write_htpasswd(path: Path, users: dict[str, str]) -> None:
    path.write_text("".join(f"{user}:{bcrypt_hash(pw)}\n" for user, pw in users.items()))


@dataclass
class TLSFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_tls_files(directory: Path) -> TLSFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost signed by it (EC P-256: fast)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder()
               .subject_name(_name("cripy test CA")).issuer_name(_name("cripy test CA"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False, key_agreement=False,
                                            key_cert_sign=True, crl_sign=True, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(_name("127.0.0.1")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    # The CA sits alone in ca/ so that directory works as a containers-style cert dir (skopeo --cert-dir).
    (directory / "ca").mkdir(parents=True, exist_ok=True)
    files = TLSFiles(directory / "ca" / "ca.crt", directory / "server.pem", directory / "server-key.pem")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                   serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    os.chmod(files.server_key, 0o600)
    return files


# --------------------------------------------------------------------------------------------------------------
# HTTP


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def http_request(url: str, method: str = "GET", headers: dict[str, str] | None = None, body: bytes | None = None,
                 ssl_context: ssl.SSLContext | None = None, timeout: float = 30,
                 follow_redirects: bool = True) -> HTTPResult:
    """One plain HTTP(S) request that returns any status instead of raising; ignores proxy env variables."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({}),
                                                  urllib.request.HTTPSHandler(context=ssl_context)]
    if not follow_redirects:
        handlers.append(_NoRedirect())
    opener = urllib.request.build_opener(*handlers)
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with opener.open(req, timeout=timeout) as resp:
            return HTTPResult(resp.status, CIMultiDict(resp.headers.items()), resp.read())
    except urllib.error.HTTPError as err:
        return HTTPResult(err.code, CIMultiDict(err.headers.items()), err.read())


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="..",service="..",scope=".."` -> ("bearer", {realm, service, scope})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


def basic_auth_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --------------------------------------------------------------------------------------------------------------
# The registry


class Registry:
    """A docker-registry process. `users` are htpasswd users (auth="htpasswd"); with auth="token" the users
    live in the token server. `credentials` (default: the first user) are what push_* use."""

    def __init__(self, workdir: Path, *, auth: AuthMode = None, tls: bool = False,
                 token_server: TokenServer | None = None, users: dict[str, str] | None = None,
                 credentials: tuple[str, str] | None = None) -> None:
        if auth == "token" and token_server is None:
            raise ValueError("auth='token' needs a token_server")
        if auth == "htpasswd" and not users:
            raise ValueError("auth='htpasswd' needs users")
        self.workdir = Path(workdir)
        self.auth = auth
        self.tls = tls
        self.token_server = token_server
        self.users = dict(users or {})
        pool = self.users or (token_server.users if token_server else {})
        self.credentials = credentials or (next(iter(pool.items())) if pool else None)
        self.port = 0
        self.tls_files: TLSFiles | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._auth_headers: dict[str, str] = {}

    # -- paths and addresses ---------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def ca_cert_path(self) -> Path | None:
        return self.tls_files.ca_cert if self.tls_files else None

    @property
    def ca_cert_dir(self) -> Path | None:
        """A directory holding only ca.crt (for `skopeo --cert-dir` and containers' certs.d layout)."""
        return self.tls_files.ca_cert.parent if self.tls_files else None

    @property
    def storage_dir(self) -> Path:
        return self.workdir / "storage"

    @property
    def log_path(self) -> Path:
        return self.workdir / "registry.log"

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.yml"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def blob_path(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob (for tests that corrupt or remove it behind its back)."""
        algo, hexdigest = digest.split(":", 1)
        return self.storage_dir / "docker/registry/v2/blobs" / algo / hexdigest[:2] / hexdigest / "data"

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls_files:
            return None
        return ssl.create_default_context(cafile=str(self.tls_files.ca_cert))

    def ref(self, repo: str, tag_or_digest: str = "latest") -> str:
        sep = "@" if ":" in tag_or_digest else ":"
        return f"{self.host}/{repo}{sep}{tag_or_digest}"

    # -- lifecycle -------------------------------------------------------------------------------------------

    def build_config(self) -> dict[str, object]:
        http: dict[str, object] = {"addr": self.host, "secret": secrets.token_hex(16),
                                   "headers": {"X-Content-Type-Options": ["nosniff"]}}
        if self.tls_files:
            http["tls"] = {"certificate": str(self.tls_files.server_cert), "key": str(self.tls_files.server_key)}
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage_dir)}, "delete": {"enabled": True},
                        "maintenance": {"uploadpurging": {"enabled": False}}},
            "http": http,
            "health": {"storagedriver": {"enabled": False}},
        }
        if self.auth == "htpasswd":
            config["auth"] = {"htpasswd": {"realm": "cripy-test-registry", "path": str(self.workdir / "htpasswd")}}
        elif self.auth == "token":
            assert self.token_server is not None
            config["auth"] = {"token": {"realm": self.token_server.realm, "service": self.token_server.service,
                                        "issuer": self.token_server.issuer,
                                        "rootcertbundle": str(self.workdir / "token-signer.pem")}}
        return config

    def _prepare_files(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(exist_ok=True)
        if self.tls and self.tls_files is None:
            self.tls_files = make_tls_files(self.workdir / "tls")
        if self.auth == "htpasswd":
            write_htpasswd(self.workdir / "htpasswd", self.users)
        if self.auth == "token":
            assert self.token_server is not None
            (self.workdir / "token-signer.pem").write_bytes(self.token_server.cert_pem)

    def start(self) -> Registry:
        if self._proc is not None:
            raise RegistryError(f"registry {self.host} already running (pid {self._proc.pid})")
        self._prepare_files()
        last_error = ""
        for _attempt in range(3):  # the free port we picked may be taken before the registry binds it
            self.port = unused_port()
            self.config_path.write_text(yaml.safe_dump(self.build_config(), sort_keys=False))
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen([*DIES_WITH_PARENT, REGISTRY_BINARY, "serve", str(self.config_path)],
                                              stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              start_new_session=True)
            try:
                self._wait_until_up()
                return self
            except RegistryError as exc:
                last_error = str(exc)
                self.stop()
                if "address already in use" not in last_error:
                    break
        raise RegistryError(last_error)

    def _wait_until_up(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        ctx = self.ssl_context()
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RegistryError(f"docker-registry exited with {self._proc.returncode} while starting on "
                                    f"{self.host}; log tail:\n{self.log_tail()}")
            try:
                result = http_request(f"{self.url}/v2/", ssl_context=ctx, timeout=2)
                if result.status in (200, 401):
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.02)  # startup only: the registry offers no readiness notification
        raise RegistryError(f"docker-registry on {self.host} did not answer /v2/ within {START_TIMEOUT}s; "
                            f"log tail:\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # -- API client ------------------------------------------------------------------------------------------

    def request(self, method: str, path_or_url: str, *, repo: str = "", headers: dict[str, str] | None = None,
                body: bytes | None = None, follow_redirects: bool = True) -> HTTPResult:
        """An API call, authenticating (Basic, or a token for `repo` with pull,push) when challenged."""
        url = path_or_url if "://" in path_or_url else self.url + path_or_url
        hdrs = dict(headers or {})
        cached = self._auth_headers.get(repo)
        if cached:
            hdrs["Authorization"] = cached
        result = http_request(url, method, hdrs, body, self.ssl_context(), follow_redirects=follow_redirects)
        if result.status != 401 or self.credentials is None:
            return result
        challenge = result.headers.get("WWW-Authenticate", "")
        hdrs["Authorization"] = self._auth_headers[repo] = self._authorize(challenge, repo)
        return http_request(url, method, hdrs, body, self.ssl_context(), follow_redirects=follow_redirects)

    def _authorize(self, challenge: str, repo: str) -> str:
        assert self.credentials is not None
        user, password = self.credentials
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            return basic_auth_header(user, password)
        if scheme != "bearer":
            raise RegistryError(f"registry {self.host} sent an unsupported challenge {challenge!r}")
        query = [("service", params.get("service", ""))]
        scope = f"repository:{repo}:pull,push,delete" if repo else params.get("scope", "")
        if scope:
            query.append(("scope", scope))
        token_url = params["realm"] + "?" + urllib.parse.urlencode(query)
        answer = http_request(token_url, headers={"Authorization": basic_auth_header(user, password)})
        if answer.status != 200:
            raise RegistryError(f"token server refused {user!r} for {scope!r}: {answer.status} {answer.body!r}")
        token = json.loads(answer.body)
        return "Bearer " + (token.get("token") or token["access_token"])

    def _expect(self, result: HTTPResult, statuses: tuple[int, ...], what: str) -> HTTPResult:
        if result.status not in statuses:
            raise RegistryError(f"{what} on {self.host}: HTTP {result.status}: {result.body[:500]!r}\n"
                                f"registry log tail:\n{self.log_tail(15)}")
        return result

    def has_blob(self, repo: str, digest: str) -> bool:
        return self.request("HEAD", f"/v2/{repo}/blobs/{digest}", repo=repo).status == 200

    def push_blob(self, repo: str, digest: str, data: bytes) -> None:
        if self.has_blob(repo, digest):
            return
        start = self._expect(self.request("POST", f"/v2/{repo}/blobs/uploads/", repo=repo, body=b""), (202,),
                             f"starting blob upload {digest} to {repo}")
        location = urllib.parse.urljoin(self.url + "/", start.headers["Location"])
        sep = "&" if "?" in location else "?"
        self._expect(self.request("PUT", f"{location}{sep}digest={urllib.parse.quote(digest)}", repo=repo,
                                  headers={"Content-Type": "application/octet-stream"}, body=data), (201,),
                     f"uploading blob {digest} to {repo}")

    def push_manifest(self, repo: str, ref: str, media_type: str, body: bytes) -> str:
        """PUTs a manifest under a tag or digest; returns the digest the registry computed."""
        result = self._expect(self.request("PUT", f"/v2/{repo}/manifests/{ref}", repo=repo,
                                           headers={"Content-Type": media_type}, body=body), (201,),
                              f"pushing manifest {repo}:{ref}")
        return result.headers.get("Docker-Content-Digest", "")

    def push_image(self, repo: str, tag: str | None, image: BuiltImage) -> str:
        """Pushes blobs and manifest (by tag, or by digest when tag is None); returns the pullable reference."""
        for digest, data in image.blobs.items():
            self.push_blob(repo, digest, data)
        self.push_manifest(repo, tag or image.manifest_digest, image.manifest_media_type, image.manifest_bytes)
        return self.ref(repo, tag or image.manifest_digest)

    def push_index(self, repo: str, tag: str | None, index: BuiltIndex) -> str:
        for _platform, image in index.images:
            self.push_image(repo, None, image)
        self.push_manifest(repo, tag or index.digest, index.media_type, index.index_bytes)
        return self.ref(repo, tag or index.digest)

    def get_manifest(self, repo: str, ref: str, accept: str | None = None) -> HTTPResult:
        accept = accept or ", ".join([
            "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.docker.distribution.manifest.v2+json"])
        return self.request("GET", f"/v2/{repo}/manifests/{ref}", repo=repo, headers={"Accept": accept})

    def delete_manifest(self, repo: str, digest: str) -> None:
        self._expect(self.request("DELETE", f"/v2/{repo}/manifests/{digest}", repo=repo), (202,),
                     f"deleting manifest {repo}@{digest}")
