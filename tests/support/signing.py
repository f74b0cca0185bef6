"""Image signing for trust tests, with real tools where they exist: GnuPG keys in a throwaway GNUPGHOME, skopeo
`copy --sign-by` (simple signing into a lookaside directory) and `--sign-by-sigstore-private-key` (sigstore
attachments in the registry), a static web server for the lookaside, and, for what skopeo cannot do offline,
sigstore signatures made here from the published formats: cosign's signature manifest pushed as the
"sha256-<hex>.sig" tag, signed by a test key or keyless-style (a throwaway Fulcio-like CA, a Rekor-like key that
signs entry timestamps).

Why not skopeo for sigstore: Debian's skopeo 1.9 is built with sigstore signing disabled ("Debian-local change:
sigstore disabled") and has no `generate-sigstore-key`; the artefacts below are what skopeo and cosign write.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import http.server
import json
import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.images import canonical_json, sha256_digest
from tests.support.registry import Registry

SIGNATURE_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
CERTIFICATE_ANNOTATION = "dev.sigstore.cosign/certificate"
CHAIN_ANNOTATION = "dev.sigstore.cosign/chain"
BUNDLE_ANNOTATION = "dev.sigstore.cosign/bundle"
OIDC_ISSUER_OID = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
COSIGN_TYPE = "cosign container image signature"
SKOPEO_TIMEOUT = 120


# ------------------------------------------------------------------------------------------------------- GnuPG


class GpgKey:
    """An OpenPGP signing key (Ed25519, no passphrase) in a GNUPGHOME of its own. close() stops the gpg-agent
    that gpg and skopeo start in it."""

    def __init__(self, home: Path, name: str = "cripy test signer") -> None:
        self.home = home
        home.mkdir(mode=0o700, parents=True)
        self._gpg("--quick-generate-key", f"{name} <signer@cripy.test>", "ed25519", "sign", "never")
        listing = self._gpg("--list-keys", "--with-colons").decode()
        self.fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, GNUPGHOME=str(self.home))

    def _gpg(self, *args: str, data: bytes | None = None) -> bytes:
        result = subprocess.run(["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "", *args],
                                input=data, capture_output=True, env=self.env, timeout=60, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"gpg {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
        return result.stdout

    def public_key(self, armor: bool = False) -> bytes:
        return self._gpg("--export", *(["--armor"] if armor else []), self.fingerprint)

    def sign(self, payload: bytes, *, compressed: bool = True) -> bytes:
        """An OpenPGP signed message carrying `payload`, as simple signing stores it; uncompressed, the payload's
        bytes can be found (and altered) inside the message."""
        compression = () if compressed else ("--compress-algo", "none")
        return self._gpg("--local-user", self.fingerprint, *compression, "--sign", data=payload)

    def literal(self, payload: bytes) -> bytes:
        """An OpenPGP message holding `payload` with no signature at all."""
        return self._gpg("--store", data=payload)

    def close(self) -> None:
        subprocess.run(["gpgconf", "--kill", "all"], env=self.env, capture_output=True, timeout=30, check=False)


def atomic_payload(manifest_digest: str, reference: str) -> bytes:
    return json.dumps({"critical": {"type": "atomic container signature",
                                    "image": {"docker-manifest-digest": manifest_digest},
                                    "identity": {"docker-reference": reference}},
                       "optional": {"creator": "cripy tests"}}).encode()


def cosign_payload(manifest_digest: str, reference: str) -> bytes:
    return json.dumps({"critical": {"identity": {"docker-reference": reference},
                                    "image": {"docker-manifest-digest": manifest_digest},
                                    "type": COSIGN_TYPE},
                       "optional": None}).encode()


# ------------------------------------------------------------------------------------------------------- cosign keys


def _pem_public(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass
class CosignKey:
    """An ECDSA P-256 key pair as cosign uses it."""

    private: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls) -> CosignKey:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @property
    def public_pem(self) -> bytes:
        return _pem_public(self.private.public_key())

    def sign(self, payload: bytes) -> bytes:
        return self.private.sign(payload, ec.ECDSA(hashes.SHA256()))


# ------------------------------------------------------------------------------------------------------- skopeo


def write_skopeo_registries_d(directory: Path, host: str, lookaside: Path) -> Path:
    """A registries.d for skopeo: where it writes simple signatures (as lookaside-staging)."""
    directory.mkdir(parents=True, exist_ok=True)
    section = {"lookaside-staging": f"file://{lookaside}"}
    (directory / "test.yaml").write_text(json.dumps({"docker": {host: section}}))  # JSON is YAML
    return directory


def skopeo_copy(source: str, destination: str, *, registries_d: Path, env: dict[str, str] | None = None,
                sign_by: str = "", sign_identity: str = "") -> None:
    """`skopeo copy docker://source docker://destination`, signing as asked (plain HTTP registries)."""
    argv = ["skopeo", "--insecure-policy", "--registries.d", str(registries_d), "copy", "--src-tls-verify=false",
            "--dest-tls-verify=false", "--quiet"]
    if sign_by:
        argv += ["--sign-by", sign_by]
    if sign_identity:
        argv += ["--sign-identity", sign_identity]
    argv += [f"docker://{source}", f"docker://{destination}"]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=SKOPEO_TIMEOUT, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr}")


def lookaside_path(lookaside: Path, repository: str, manifest_digest: str, index: int = 1) -> Path:
    algorithm, _, encoded = manifest_digest.partition(":")
    return lookaside / f"{repository}@{algorithm}={encoded}" / f"signature-{index}"


# ------------------------------------------------------------------------------------------------------- lookaside web


class StaticServer:
    """A plain HTTP server on 127.0.0.1 serving a directory (the lookaside as a web server publishes it)."""

    def __init__(self, directory: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> StaticServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


# ------------------------------------------------------------------------------------------------------- keyless


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca_certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
                    issuer_key: ec.EllipticCurvePrivateKey, now: datetime.datetime,
                    code_signing_only: bool = False) -> x509.Certificate:
    usage = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False)
    builder = x509.CertificateBuilder()
    if code_signing_only:  # as Fulcio's intermediate: an extended key usage of code signing alone
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    return (builder.subject_name(_name(subject)).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                           critical=False)
            .sign(issuer_key, hashes.SHA256()))


class FulcioCA:
    """A root and an intermediate CA that issue short-lived code-signing certificates for an OIDC identity, the
    way Fulcio does."""

    def __init__(self, name: str = "cripy test fulcio") -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        self._root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _ca_certificate(f"{name} root", self._root_key, _name(f"{name} root"), self._root_key, now)
        self._intermediate_key = ec.generate_private_key(ec.SECP256R1())
        self.intermediate = _ca_certificate(f"{name} intermediate", self._intermediate_key, self.root.subject,
                                            self._root_key, now, code_signing_only=True)

    @property
    def root_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)

    @property
    def chain_pem(self) -> str:
        return (self.intermediate.public_bytes(serialization.Encoding.PEM)
                + self.root.public_bytes(serialization.Encoding.PEM)).decode()

    def issue(self, email: str, issuer: str, *, valid_from: datetime.datetime | None = None,
              minutes: int = 10, code_signing: bool = True) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        start = valid_from or datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)
        usage = ExtendedKeyUsageOID.CODE_SIGNING if code_signing else ExtendedKeyUsageOID.CLIENT_AUTH
        certificate = (
            x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.intermediate.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(minutes=minutes))
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=True)
            .add_extension(x509.UnrecognizedExtension(OIDC_ISSUER_OID, issuer.encode()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._intermediate_key.public_key()),
                           critical=False)
            .sign(self._intermediate_key, hashes.SHA256()))
        return certificate, key


class RekorLog:
    """Signs entry timestamps the way Rekor does: an ECDSA signature over the canonical JSON of the log entry."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._index = 0

    @property
    def public_pem(self) -> bytes:
        return _pem_public(self._key.public_key())

    def bundle(self, signer_pem: bytes, signature: bytes, payload: bytes, integrated_time: int | None = None) -> str:
        """The dev.sigstore.cosign/bundle annotation for a hashedrekord entry of this signature."""
        body = {"apiVersion": "0.0.1", "kind": "hashedrekord", "spec": {
            "data": {"hash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()}},
            "signature": {"content": base64.b64encode(signature).decode(),
                          "publicKey": {"content": base64.b64encode(signer_pem).decode()}}}}
        self._index += 1
        der = self._key.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        entry = {"body": base64.b64encode(canonical_json(body)).decode(),
                 "integratedTime": integrated_time if integrated_time is not None
                 else int(datetime.datetime.now(datetime.timezone.utc).timestamp()),
                 "logIndex": self._index, "logID": hashlib.sha256(der).hexdigest()}
        timestamp = self._key.sign(rfc8785.dumps(entry), ec.ECDSA(hashes.SHA256()))
        return json.dumps({"SignedEntryTimestamp": base64.b64encode(timestamp).decode(), "Payload": entry})


def keyless_signature(fulcio: FulcioCA, rekor: RekorLog, payload: bytes, *, email: str, issuer: str,
                      code_signing: bool = True) -> dict[str, str]:
    """The annotations of a keyless signature of `payload`: certificate, chain, signature, Rekor bundle."""
    certificate, key = fulcio.issue(email, issuer, code_signing=code_signing)
    signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    return {SIGNATURE_ANNOTATION: base64.b64encode(signature).decode(),
            CERTIFICATE_ANNOTATION: cert_pem.decode(),
            CHAIN_ANNOTATION: fulcio.chain_pem,
            BUNDLE_ANNOTATION: rekor.bundle(cert_pem, signature, payload)}


def key_signature(key: CosignKey, payload: bytes, rekor: RekorLog | None = None) -> dict[str, str]:
    signature = key.sign(payload)
    annotations = {SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()}
    if rekor is not None:
        annotations[BUNDLE_ANNOTATION] = rekor.bundle(key.public_pem, signature, payload)
    return annotations


def attach_sigstore_signatures(registry: Registry, repository: str, manifest_digest: str,
                               signatures: list[tuple[bytes, dict[str, str]]]) -> str:
    """Push cosign's signature manifest (one layer per signature) as "<algo>-<hex>.sig"; returns the tag."""
    config = canonical_json({"architecture": "", "os": "", "config": {}, "rootfs": {"type": "layers",
                                                                                    "diff_ids": []}})
    registry.push_blob(repository, sha256_digest(config), config)
    layers = []
    for payload, layer_annotations in signatures:
        registry.push_blob(repository, sha256_digest(payload), payload)
        layers.append({"mediaType": SIGNATURE_MEDIA_TYPE, "digest": sha256_digest(payload), "size": len(payload),
                       "annotations": layer_annotations})
    manifest = canonical_json({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": sha256_digest(config), "size": len(config)},
                               "layers": layers})
    algorithm, _, encoded = manifest_digest.partition(":")
    tag = f"{algorithm}-{encoded}.sig"
    registry.push_manifest(repository, tag, "application/vnd.oci.image.manifest.v1+json", manifest)
    return tag
