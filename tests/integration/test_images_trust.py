"""Image trust through the CRI API: images the tests sign themselves, pulled from the real docker-registry by a
daemon whose policy.json asks for signatures.

Three kinds of signatures, each made the way a user makes them:
  * GPG simple signing: `skopeo copy --sign-by` with a key from a throwaway GNUPGHOME; skopeo writes the signature
    to a lookaside directory, which a local web server publishes (file:// is tested too);
  * sigstore with a key: cosign's signature manifest attached in the registry ("sha256-<hex>.sig"), signed by an
    ECDSA key the tests generate (Debian's skopeo is built without sigstore signing: see tests/support/signing.py);
  * sigstore keyless: a certificate from the tests' own Fulcio-like CA and a Rekor-like signed entry timestamp.
For each: a correctly signed image is pulled and runs; unsigned, other signer, tampered payload, tampered manifest,
identity mismatch for every signedIdentity form and the wrong namespace's policy are refused with the reason in
the error, and nothing of the image reaches the store: not even a blob is requested from the registry.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.integration.daemon import REPO_ROOT
from tests.integration.podlib import PodEnv
from tests.integration.test_images_common import insecure_conf, layer_dir_names, marker_image, tmp_entries, unique
from tests.support.images import BuiltImage, build_index, host_platform
from tests.support.registry import Registry
from tests.support.signing import (
    CosignKey,
    FulcioCA,
    GpgKey,
    RekorLog,
    StaticServer,
    atomic_payload,
    attach_sigstore_signatures,
    cosign_payload,
    key_signature,
    keyless_signature,
    lookaside_path,
    skopeo_copy,
    write_skopeo_registries_d,
)

ISSUER = "https://oidc.cripy.test"
EMAIL = "builder@cripy.test"
NAMESPACE = "cripytest"
KINDS = ("gpg", "sigstore", "keyless")


# ---------------------------------------------------------------------------------------------------- the lab


@dataclass
class Signed:
    """An image pushed to the registry and (maybe) signed: what to pull and what the store must not hold."""

    repo: str
    ref: str
    image: BuiltImage


class TrustLab:
    """The registry, the signers, the lookaside web server and the daemon's trust configuration files."""

    def __init__(self, env: PodEnv, registry: Registry, workdir: Path) -> None:
        self.env = env
        self.daemon = env.daemon
        self.registry = registry
        self.workdir = workdir
        self.gpg = GpgKey(workdir / "gpg-signer", "cripy trusted signer")
        self.other_gpg = GpgKey(workdir / "gpg-other", "cripy other signer")
        self.lookaside = workdir / "lookaside"
        self.lookaside.mkdir()
        self.web = StaticServer(self.lookaside).start()
        self.skopeo_registries_d = write_skopeo_registries_d(workdir / "skopeo.d", registry.host, self.lookaside)
        self.cosign = CosignKey.generate()
        self.other_cosign = CosignKey.generate()
        self.fulcio = FulcioCA()
        self.other_fulcio = FulcioCA("cripy rogue fulcio")
        self.rekor = RekorLog()
        self.keys = workdir / "keys"
        self.keys.mkdir()
        for name, data in (("gpg.gpg", self.gpg.public_key()), ("gpg.asc", self.gpg.public_key(armor=True)),
                           ("other.gpg", self.other_gpg.public_key()), ("cosign.pub", self.cosign.public_pem),
                           ("fulcio.pem", self.fulcio.root_pem), ("rekor.pub", self.rekor.public_pem)):
            (self.keys / name).write_bytes(data)
        self.daemon.registries_conf.write_text(insecure_conf(registry.host))
        self.daemon.registries_d.mkdir(exist_ok=True)
        self.daemon.policy_dir.mkdir(exist_ok=True)
        self.write_registries_d({registry.host: {"lookaside": self.web.url, "use-sigstore-attachments": True}})

    def close(self) -> None:
        self.web.stop()
        self.gpg.close()
        self.other_gpg.close()

    # -- configuration

    def write_registries_d(self, docker: dict[str, Any]) -> None:
        (self.daemon.registries_d / "cripytest.yaml").write_text(json.dumps({"docker": docker}))

    def requirement(self, kind: str, identity: dict[str, str] | None = None, **overrides: Any) -> dict[str, Any]:
        """The policy requirement that trusts the lab's own signer of `kind`."""
        if kind == "gpg":
            req: dict[str, Any] = {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(self.keys / "gpg.gpg")}
        elif kind == "sigstore":
            req = {"type": "sigstoreSigned", "keyPath": str(self.keys / "cosign.pub")}
        else:
            req = {"type": "sigstoreSigned", "rekorPublicKeyPath": str(self.keys / "rekor.pub"),
                   "fulcio": {"caPath": str(self.keys / "fulcio.pem"), "oidcIssuer": ISSUER, "subjectEmail": EMAIL}}
        if identity is not None:
            req["signedIdentity"] = identity
        req.update(overrides)
        return req

    def policy(self, scopes: dict[str, list[dict[str, Any]]]) -> str:
        return json.dumps({"default": [{"type": "reject"}], "transports": {"docker": scopes}})

    def trust(self, scope: str, requirement: dict[str, Any], path: Path | None = None) -> Path:
        """Write a policy (the node's unless `path`) that rejects everything but `scope`."""
        target = path or self.daemon.policy_path
        target.write_text(self.policy({scope: [requirement]}))
        return target

    # -- images and signatures

    def push(self, name: str, tag: str = "v1") -> Signed:
        repo = unique(f"trust/{name}")
        image = marker_image(f"{repo} {secrets.token_hex(4)}")
        return Signed(repo, self.registry.push_image(repo, tag, image), image)

    def scope(self, signed: Signed) -> str:
        return f"{self.registry.host}/{signed.repo}"

    def sign(self, kind: str, signed: Signed, identity: str | None = None, *, signer: str = "trusted") -> None:
        """Sign what the registry serves for `signed.ref` with the lab's signer of `kind` (or the other one)."""
        claimed = identity or signed.ref
        digest = signed.image.manifest_digest
        if kind == "gpg":
            key = self.gpg if signer == "trusted" else self.other_gpg
            # skopeo signs while it copies; copying onto the same reference writes the same manifest.
            skopeo_copy(signed.ref, signed.ref, registries_d=self.skopeo_registries_d, env=key.env,
                        sign_by=key.fingerprint, sign_identity=claimed if identity else "")
            return
        payload = cosign_payload(digest, claimed)
        if kind == "sigstore":
            annotations = key_signature(self.cosign if signer == "trusted" else self.other_cosign, payload)
        else:
            fulcio = self.fulcio if signer in ("trusted", "other-email") else self.other_fulcio
            email = "intruder@cripy.test" if signer == "other-email" else EMAIL
            annotations = keyless_signature(fulcio, self.rekor, payload, email=email, issuer=ISSUER)
        attach_sigstore_signatures(self.registry, signed.repo, digest, [(payload, annotations)])

    def tamper_payload(self, kind: str, signed: Signed) -> None:
        """A valid signature whose signed payload is then altered (same length, another claimed tag)."""
        digest = signed.image.manifest_digest
        if kind == "gpg":
            # Uncompressed, so that the payload bytes can be changed in place inside the OpenPGP message.
            message = self.gpg.sign(atomic_payload(digest, signed.ref), compressed=False)
            target = lookaside_path(self.lookaside, signed.repo, digest)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(_retag(message, signed.ref))
            return
        payload = cosign_payload(digest, signed.ref)
        if kind == "sigstore":
            annotations = key_signature(self.cosign, payload)
        else:
            annotations = keyless_signature(self.fulcio, self.rekor, payload, email=EMAIL, issuer=ISSUER)
        attach_sigstore_signatures(self.registry, signed.repo, digest, [(_retag(payload, signed.ref), annotations)])

    def swap_manifest(self, kind: str, signed: Signed) -> Signed:
        """The attack on a signed tag: another image pushed under it, with the old signature copied to it."""
        digest = signed.image.manifest_digest
        evil = marker_image(f"evil {secrets.token_hex(4)}")
        self.registry.push_image(signed.repo, signed.ref.rpartition(":")[2], evil)
        if kind == "gpg":
            stolen = lookaside_path(self.lookaside, signed.repo, digest).read_bytes()
            target = lookaside_path(self.lookaside, signed.repo, evil.manifest_digest)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(stolen)
        else:
            tag = f"sha256-{digest.partition(':')[2]}.sig"
            manifest = self.registry.get_manifest(signed.repo, tag, "application/vnd.oci.image.manifest.v1+json")
            self.registry.push_manifest(signed.repo, f"sha256-{evil.manifest_digest.partition(':')[2]}.sig",
                                        "application/vnd.oci.image.manifest.v1+json", manifest.body)
        return Signed(signed.repo, signed.ref, evil)

    # -- pulling through CRI

    def pull(self, ref: str, namespace: str = NAMESPACE) -> str:
        pod = api_pb2.PodSandboxConfig(metadata=api_pb2.PodSandboxMetadata(
            name="Trust-Test-Pod-" + secrets.token_hex(3), uid=secrets.token_hex(8), namespace=namespace))
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref), sandbox_config=pod)
        return self.daemon.images.PullImage(request, timeout=120).image_ref

    def refused(self, signed: Signed, *expected: str, namespace: str = NAMESPACE) -> str:
        """Pull `signed`, which must be refused (PERMISSION_DENIED, naming each of `expected`), leaving nothing:
        no image, no layer, no download leftover, and not one blob of the image requested from the registry."""
        layers_before = layer_dir_names(self.daemon)
        log_offset = self.registry.log_path.stat().st_size
        try:
            self.pull(signed.ref, namespace)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.PERMISSION_DENIED, f"{e.code().name}: {e.details()}"
            message = e.details() or ""
        else:
            raise AssertionError(f"{signed.ref} was pulled; it should have been refused")
        for text in (signed.ref, *expected):
            assert text in message, f"{text!r} not in the refusal: {message}"
        self.assert_absent(signed, layers_before, log_offset)
        return message

    def assert_absent(self, signed: Signed, layers_before: set[str], log_offset: int) -> None:
        assert not self.daemon.image_status(signed.ref).HasField("image")
        assert signed.image.config_digest not in {i.id for i in self.daemon.list_images()}
        assert layer_dir_names(self.daemon) == layers_before
        assert tmp_entries(self.daemon) == []
        with open(self.registry.log_path, "rb") as log:
            log.seek(log_offset)
            requests = log.read().decode(errors="replace")
        image_blobs = [signed.image.config_digest, *(layer.digest for layer in signed.image.layers)]
        fetched = [d for d in image_blobs if f"/v2/{signed.repo}/blobs/{d}" in requests]
        assert not fetched, f"blobs of a refused image were requested from the registry: {fetched}"

    def pulled(self, signed: Signed, namespace: str = NAMESPACE) -> None:
        assert self.pull(signed.ref, namespace) == signed.image.config_digest

    def run(self, signed: Signed) -> str:
        """Run the pulled image in a pod; what its /marker says."""
        pod_id, pod_config = self.env.run_pod(f"trust-{secrets.token_hex(3)}")
        try:
            ctr = self.env.run(pod_id, pod_config, "signed", ["sleep", "60"], image=signed.ref)
            return self.env.sh(ctr, "cat /marker")
        finally:
            self.env.stop_pod(pod_id)
            self.env.remove_pod(pod_id)


def _retag(data: bytes, ref: str) -> bytes:
    """`data` with the tag of `ref` replaced by another tag of the same length."""
    name, _, tag = ref.rpartition(":")
    altered = f"{name}:{'x' * len(tag)}"
    assert data.count(ref.encode()) == 1
    return data.replace(ref.encode(), altered.encode())


@pytest.fixture(scope="module")
def lab(pod_env: PodEnv, plain_registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrustLab]:
    lab = TrustLab(pod_env, plain_registry, tmp_path_factory.mktemp("trust"))
    yield lab
    lab.close()


# ---------------------------------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("kind", KINDS)
def test_signed_image_is_pulled_and_runs(lab: TrustLab, kind: str) -> None:
    signed = lab.push(f"run-{kind}")
    lab.sign(kind, signed)
    lab.trust(lab.scope(signed), lab.requirement(kind))
    lab.pulled(signed)
    assert lab.run(signed).startswith(signed.repo)
    assert "accepted by policy" in lab.daemon.log_text()


def test_armored_keyring_inline_key_data_and_file_lookaside(lab: TrustLab) -> None:
    signed = lab.push("gpg-forms")
    lab.sign("gpg", signed)
    lab.trust(lab.scope(signed), lab.requirement("gpg", keyPath=str(lab.keys / "gpg.asc")))
    lab.pulled(signed)
    lab.daemon.remove_image(signed.ref)
    # The lookaside as a directory, configured for this repository only (more specific than the registry).
    lab.write_registries_d({lab.registry.host: {"lookaside": lab.web.url, "use-sigstore-attachments": True},
                            lab.scope(signed): {"lookaside": f"file://{lab.lookaside}"}})
    try:
        inline = lab.requirement("gpg")
        del inline["keyPath"]
        inline["keyData"] = base64.b64encode(lab.gpg.public_key()).decode()
        lab.trust(lab.scope(signed), inline)
        lab.pulled(signed)
    finally:
        lab.write_registries_d({lab.registry.host: {"lookaside": lab.web.url, "use-sigstore-attachments": True}})


def test_every_requirement_of_the_scope_must_hold(lab: TrustLab) -> None:
    signed = lab.push("both")
    lab.sign("gpg", signed)
    both = [lab.requirement("gpg"), lab.requirement("sigstore")]
    lab.daemon.policy_path.write_text(lab.policy({lab.scope(signed): both}))
    message = lab.refused(signed, "requirement 2 of 2", "sigstoreSigned", "no signature found")
    assert "requirement 1 of 2" not in message
    lab.sign("sigstore", signed)
    lab.pulled(signed)


def test_signatures_are_read_through_the_mirror(lab: TrustLab) -> None:
    """The logical name is what the signatures claim; they are fetched where the image is: at the mirror."""
    logical = f"signed.{secrets.token_hex(3)}.example.test"
    mirror_repo = unique("mirror")
    image = marker_image(f"mirrored {secrets.token_hex(4)}")
    mirrored = Signed(f"{mirror_repo}/app", lab.registry.push_image(f"{mirror_repo}/app", "v1", image), image)
    skopeo_copy(mirrored.ref, mirrored.ref, registries_d=lab.skopeo_registries_d, env=lab.gpg.env,
                sign_by=lab.gpg.fingerprint, sign_identity=f"{logical}/app:v1")
    payload = cosign_payload(image.manifest_digest, f"{logical}/app:v1")
    attach_sigstore_signatures(lab.registry, mirrored.repo, image.manifest_digest,
                               [(payload, key_signature(lab.cosign, payload))])
    lab.daemon.registries_conf.write_text(
        insecure_conf(lab.registry.host) + f'[[registry]]\nlocation = "{logical}"\n'
        f'[[registry.mirror]]\nlocation = "{lab.registry.host}/{mirror_repo}"\ninsecure = true\n')
    try:
        lab.daemon.policy_path.write_text(lab.policy({logical: [lab.requirement("gpg"),
                                                                lab.requirement("sigstore")]}))
        assert lab.pull(f"{logical}/app:v1") == image.config_digest
    finally:
        lab.daemon.registries_conf.write_text(insecure_conf(lab.registry.host))


# ---------------------------------------------------------------------------------------------------- refused


@pytest.mark.parametrize("kind", KINDS)
def test_unsigned_image_is_refused(lab: TrustLab, kind: str) -> None:
    signed = lab.push(f"unsigned-{kind}")
    lab.trust(lab.scope(signed), lab.requirement(kind))
    lab.refused(signed, "no signature found", str(lab.daemon.policy_path), repr(lab.scope(signed)),
                "requirement 1 of 1", "sigstoreSigned" if kind != "gpg" else "signedBy")


@pytest.mark.parametrize(("kind", "signer", "reason"), [
    ("gpg", "other", "signed by another key"),
    ("sigstore", "other", "signed by another key, or altered"),
    ("keyless", "other-ca", "untrusted certificate"),
    ("keyless", "other-email", "untrusted certificate"),
])
def test_image_signed_by_another_signer_is_refused(lab: TrustLab, kind: str, signer: str, reason: str) -> None:
    signed = lab.push(f"other-{kind}")
    lab.sign(kind, signed, signer=signer)
    lab.trust(lab.scope(signed), lab.requirement(kind))
    message = lab.refused(signed, reason)
    if signer == "other":
        assert kind != "gpg" or lab.other_gpg.fingerprint[-16:] in message, "the refusal names the signing key"
    if signer == "other-email":
        assert "intruder@cripy.test" in message and EMAIL in message


@pytest.mark.parametrize(("kind", "reason"), [
    ("gpg", "bad signature"),
    ("sigstore", "or altered"),
    ("keyless", "the payload was altered"),
])
def test_tampered_payload_is_refused(lab: TrustLab, kind: str, reason: str) -> None:
    signed = lab.push(f"tampered-{kind}")
    lab.tamper_payload(kind, signed)
    lab.trust(lab.scope(signed), lab.requirement(kind))
    lab.refused(signed, reason)


@pytest.mark.parametrize("kind", KINDS)
def test_tampered_manifest_is_refused(lab: TrustLab, kind: str) -> None:
    original = lab.push(f"swapped-{kind}")
    lab.sign(kind, original)
    lab.trust(lab.scope(original), lab.requirement(kind))
    swapped = lab.swap_manifest(kind, original)
    lab.refused(swapped, "signature is for another manifest", original.image.manifest_digest,
                swapped.image.manifest_digest)


# One case per signedIdentity form: (rule, how the image is pulled, what the signature claims, accepted?).
# "{repo}" is the pushed repository (host included), "{digest}" its manifest digest.
IDENTITY_CASES = [
    ("default-tag", None, "{repo}:v2", "{repo}:v1", False),
    ("default-digest", None, "{repo}@{digest}", "{repo}:v1", True),
    ("exact-digest", {"type": "matchExact"}, "{repo}@{digest}", "{repo}:v1", False),
    ("exact-tag", {"type": "matchExact"}, "{repo}:v1", "{repo}:v1", True),
    ("repository-other", {"type": "matchRepository"}, "{repo}:v1", "{repo}-elsewhere:v1", False),
    ("repository-tag", {"type": "matchRepository"}, "{repo}:v2", "{repo}:v1", True),
    ("exact-reference", {"type": "exactReference", "dockerReference": "vendor.test/app:1.0"}, "{repo}:v1",
     "{repo}:v1", False),
    ("exact-reference-ok", {"type": "exactReference", "dockerReference": "vendor.test/app:1.0"}, "{repo}:v1",
     "vendor.test/app:1.0", True),
    ("exact-repository", {"type": "exactRepository", "dockerRepository": "vendor.test/app"}, "{repo}:v1",
     "vendor.test/other:v1", False),
    ("exact-repository-ok", {"type": "exactRepository", "dockerRepository": "vendor.test/app"}, "{repo}:v1",
     "vendor.test/app:any", True),
    ("remap", {"type": "remapIdentity", "prefix": "{host}/trust", "signedPrefix": "vendor.test/products"},
     "{repo}:v1", "vendor.test/elsewhere/{name}:v1", False),
    ("remap-ok", {"type": "remapIdentity", "prefix": "{host}/trust", "signedPrefix": "vendor.test/products"},
     "{repo}:v1", "vendor.test/products/{name}:v1", True),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("case", "identity", "pulled_as", "claimed", "accepted"), IDENTITY_CASES,
                         ids=[c[0] for c in IDENTITY_CASES])
def test_signed_identity(lab: TrustLab, kind: str, case: str, identity: dict[str, str] | None, pulled_as: str,
                         claimed: str, accepted: bool) -> None:
    signed = lab.push(f"id-{case}-{kind}")
    lab.registry.push_image(signed.repo, "v2", signed.image)  # the same manifest under a second tag
    values = {"repo": f"{lab.registry.host}/{signed.repo}", "digest": signed.image.manifest_digest,
              "host": lab.registry.host, "name": signed.repo.partition("/")[2]}
    fill: Callable[[str], str] = lambda text: text.format(**values)
    lab.sign(kind, signed, identity=fill(claimed))
    rule = {k: fill(v) for k, v in identity.items()} if identity else None
    lab.trust(lab.scope(signed), lab.requirement(kind, rule))
    target = Signed(signed.repo, fill(pulled_as), signed.image)
    if accepted:
        lab.pulled(target)
    else:
        lab.refused(target, "identity mismatch", f"claims {fill(claimed)}",
                    (identity or {"type": "matchRepoDigestOrExact"})["type"])


@pytest.mark.parametrize("kind", KINDS)
def test_namespace_policy_decides(lab: TrustLab, kind: str) -> None:
    """team-a's policy trusts the lab's signer, team-b's trusts nobody, the node's rejects: the pod's namespace
    picks the file, and a namespace without one gets the node's."""
    signed = lab.push(f"ns-{kind}")
    lab.sign(kind, signed)
    lab.daemon.policy_path.write_text(json.dumps({"default": [{"type": "reject"}]}))
    team_a = lab.trust(lab.scope(signed), lab.requirement(kind), lab.daemon.policy_dir / "team-a.json")
    other = {"gpg": lab.requirement("gpg", keyPath=str(lab.keys / "other.gpg")),
             "sigstore": lab.requirement("sigstore", keyPath=str(lab.keys / "rekor.pub")),
             "keyless": lab.requirement("keyless", fulcio={"caPath": str(lab.keys / "fulcio.pem"),
                                                           "oidcIssuer": ISSUER, "subjectEmail": "ops@cripy.test"})}
    team_b = lab.trust(lab.scope(signed), other[kind], lab.daemon.policy_dir / "team-b.json")
    try:
        lab.refused(signed, str(team_b), namespace="team-b")
        lab.refused(signed, str(lab.daemon.policy_path), "reject", namespace="team-c")
        lab.refused(signed, str(lab.daemon.policy_path), namespace="")
        lab.pulled(signed, namespace="team-a")
    finally:
        team_a.unlink()
        team_b.unlink()


def test_invalid_namespace_is_refused(lab: TrustLab) -> None:
    signed = lab.push("bad-namespace")
    with pytest.raises(grpc.RpcError) as info:
        lab.pull(signed.ref, namespace="../etc")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "namespace" in (info.value.details() or "")


@pytest.mark.parametrize(("content", "named"), [
    ('{"default": [{"type": "insecureAcceptAnything"}], "transports": {"docker": {', "invalid JSON"),
    ('{"default": [{"type": "insecureAcceptAnything", "comment": "x"}]}', "unknown key 'comment'"),
    ('{"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k", "signedIdentity": '
     '{"type": "matchRepository", "strict": true}}]}', "unknown key 'strict'"),
])
def test_broken_policy_fails_the_pull(lab: TrustLab, content: str, named: str) -> None:
    signed = lab.push("broken-policy")
    for path, namespace in ((lab.daemon.policy_path, NAMESPACE), (lab.daemon.policy_dir / "team-x.json", "team-x")):
        path.write_text(content)
        try:
            layers_before = layer_dir_names(lab.daemon)
            log_offset = lab.registry.log_path.stat().st_size
            with pytest.raises(grpc.RpcError) as info:
                lab.pull(signed.ref, namespace)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert str(path) in (info.value.details() or "") and named in (info.value.details() or "")
            lab.assert_absent(signed, layers_before, log_offset)
        finally:
            if path != lab.daemon.policy_path:
                path.unlink()


def test_missing_key_file_refuses(lab: TrustLab) -> None:
    signed = lab.push("missing-key")
    lab.sign("gpg", signed)
    lab.trust(lab.scope(signed), lab.requirement("gpg", keyPath=str(lab.keys / "nonexistent.gpg")))
    lab.refused(signed, "unusable trust material", "nonexistent.gpg")


def test_sigstore_needs_attachments_enabled(lab: TrustLab) -> None:
    signed = lab.push("no-attachments")
    lab.sign("sigstore", signed)
    lab.trust(lab.scope(signed), lab.requirement("sigstore"))
    lab.write_registries_d({lab.registry.host: {"lookaside": lab.web.url}})
    try:
        lab.refused(signed, "no signature found", "use-sigstore-attachments is not enabled")
    finally:
        lab.write_registries_d({lab.registry.host: {"lookaside": lab.web.url, "use-sigstore-attachments": True}})


# ---------------------------------------------------------------------------------------------------- the operator's view


def cripy_trust(lab: TrustLab, ref: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`cripy image trust REF ...` with the daemon's configuration, as an operator on the node runs it."""
    argv = [sys.executable, "-m", "cripy.cli", "--config", str(lab.daemon.config_path), "--config-dir",
            str(lab.daemon.workdir / "cripy.d"), "image", "trust", ref, *args]
    return subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_trust_command_explains_and_checks(lab: TrustLab) -> None:
    signed = lab.push("explain")
    lab.sign("gpg", signed)
    policy = lab.trust(lab.scope(signed), lab.requirement("gpg"))

    shown = cripy_trust(lab, signed.ref)
    assert shown.returncode == 0, shown.stderr
    for text in (str(policy), repr(lab.scope(signed)), "signedBy", str(lab.keys / "gpg.gpg"), lab.web.url):
        assert text in shown.stdout, f"{text!r} not in:\n{shown.stdout}"
    assert "verdict" not in shown.stdout

    accepted = cripy_trust(lab, signed.ref, "--check")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "verdict:   accepted" in accepted.stdout and lab.gpg.fingerprint in accepted.stdout

    team = lab.trust(lab.scope(signed), lab.requirement("sigstore"), lab.daemon.policy_dir / "team-t.json")
    try:
        refused = cripy_trust(lab, signed.ref, "--check", "--namespace", "team-t")
    finally:
        team.unlink()
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert str(team) in refused.stdout and "verdict:   refused" in refused.stdout
    assert "no signature found" in refused.stdout
    assert lab.daemon.image_status(signed.ref).HasField("image") is False, "checking stores nothing"

    lab.daemon.policy_path.write_text('{"default": [{"type": "reject", "why": 1}]}')
    broken = cripy_trust(lab, signed.ref)
    assert broken.returncode == 2 and str(lab.daemon.policy_path) in broken.stderr and "'why'" in broken.stderr


def test_signatures_use_the_pulls_credentials(lab: TrustLab, htpasswd_registry: Registry) -> None:
    """The sigstore attachment is fetched by the pull's own client: with the credentials the kubelet sent."""
    repo = unique("trust/private")
    image = marker_image(f"private {secrets.token_hex(4)}")
    ref = htpasswd_registry.push_image(repo, "v1", image)
    payload = cosign_payload(image.manifest_digest, ref)
    attach_sigstore_signatures(htpasswd_registry, repo, image.manifest_digest,
                               [(payload, key_signature(lab.cosign, payload))])
    lab.daemon.registries_conf.write_text(insecure_conf(lab.registry.host, htpasswd_registry.host))
    lab.write_registries_d({lab.registry.host: {"lookaside": lab.web.url, "use-sigstore-attachments": True},
                            htpasswd_registry.host: {"use-sigstore-attachments": True}})
    try:
        lab.trust(f"{htpasswd_registry.host}/{repo}", lab.requirement("sigstore"))
        user, password = htpasswd_registry.credentials
        assert lab.daemon.pull(ref, username=user, password=password) == image.config_digest
    finally:
        lab.daemon.registries_conf.write_text(insecure_conf(lab.registry.host))
        lab.write_registries_d({lab.registry.host: {"lookaside": lab.web.url, "use-sigstore-attachments": True}})


def test_multi_platform_image_is_judged_by_its_index(lab: TrustLab) -> None:
    """A reference that resolves to an index is signed at the index: its digest is what signatures name, before
    the platform's manifest is even fetched."""
    repo = unique("trust/multi")
    here = marker_image(f"index {secrets.token_hex(4)}")
    index = build_index([(host_platform(), here)])
    ref = lab.registry.push_index(repo, "v1", index)
    signed = Signed(repo, ref, here)
    lab.trust(lab.scope(signed), lab.requirement("sigstore"))
    payload = cosign_payload(here.manifest_digest, ref)  # the platform manifest's digest: not what is pulled
    attach_sigstore_signatures(lab.registry, repo, index.digest, [(payload, key_signature(lab.cosign, payload))])
    lab.refused(signed, "signature is for another manifest", index.digest)
    payload = cosign_payload(index.digest, ref)
    attach_sigstore_signatures(lab.registry, repo, index.digest, [(payload, key_signature(lab.cosign, payload))])
    lab.pulled(signed)
