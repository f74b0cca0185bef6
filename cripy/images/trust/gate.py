"""The trust gate of a pull: which policy file applies (per Kubernetes namespace), and the signature check between
resolving the manifest and downloading anything else.

    policy:   <images.signature_policy_dir>/<namespace>.json when the PullImageRequest names a pod namespace and
              that file exists, else images.signature_policy; read at every pull.
    refuse:   a scope that says "reject" refuses before any network traffic.
    check:    after the top-level manifest is fetched (by tag or digest) and before the config or any layer:
              signatures fetched for that manifest digest from the source the manifest came from, trust material
              read, every requirement judged. A refusal is PermissionDenied naming image, policy, scope,
              requirement and reason.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cripy.config import ImagesConfig
from cripy.errors import InvalidArgument, PermissionDenied
from cripy.images.reference import Reference
from cripy.images.trust.policy import Policy, ScopeMatch, SignedBy, SigstoreSigned, load_policy, read_policy_file
from cripy.images.trust.registries_d import load_registries_d

if TYPE_CHECKING:
    # Verification pulls in `cryptography` and the HTTP stack: loaded at the first signature check, so a node
    # whose policy asks for none does not carry them.
    from cripy.images.http import Client as HTTPClient
    from cripy.images.registry import RegistryClient
    from cripy.images.trust.evaluate import Verdict

log = logging.getLogger(__name__)

# A Kubernetes namespace name (an RFC 1123 label): also what keeps "../x" out of the policy directory.
_NAMESPACE_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def namespace_policy_file(settings: ImagesConfig, namespace: str) -> Path | None:
    """Where the policy of pods in `namespace` would be ("" when the request names no pod), whether or not it
    exists; None without a namespace or a policy directory."""
    if not namespace:
        return None
    if not _NAMESPACE_RE.fullmatch(namespace):
        raise InvalidArgument(f"pod namespace {namespace!r} of the pull request is not a valid Kubernetes "
                              "namespace name")
    return Path(settings.signature_policy_dir) / f"{namespace}.json" if settings.signature_policy_dir else None


def node_policy_file(settings: ImagesConfig) -> Path | None:
    return Path(settings.signature_policy) if settings.signature_policy else None


def load_pull_policy(settings: ImagesConfig, namespace: str) -> Policy:
    """The namespace's policy if it has one, else the node's; None configured is the accept-anything policy."""
    namespaced = namespace_policy_file(settings, namespace)
    if namespaced is not None:
        policy = read_policy_file(namespaced)
        if policy is not None:
            return policy
    return load_policy(node_policy_file(settings))


def refuse_outright(match: ScopeMatch, ref: Reference) -> None:
    """A scope that rejects needs no manifest to say so."""
    if match.rejects():
        raise PermissionDenied(f"image {ref} is refused by policy {match.describe_source()}, scope "
                               f"{match.describe_scope()}: requirement reject: every image in this scope is refused")


@dataclass(frozen=True)
class SignatureCheck:
    """What the check after the manifest needs besides the pull's client: the scope and where registries.d is."""

    match: ScopeMatch
    registries_d: Path
    certs_dir: Path | None


async def judge(check: SignatureCheck, wanted: Reference, physical: Reference, manifest: bytes, digest: str,
                client: RegistryClient, session: HTTPClient) -> Verdict:
    """Fetch what the scope's requirements need and judge the image; no exception for a refusal."""
    from cripy.images.trust import fetch
    from cripy.images.trust.evaluate import Found, SignedImage, evaluate
    from cripy.images.trust.keys import load_material

    image = SignedImage(wanted, manifest, digest)
    requirements = check.match.requirements
    locations = None
    if check.match.needs_signatures():
        config = await asyncio.to_thread(load_registries_d, check.registries_d)
        locations = config.locations(physical)
    simple: Found | None = None
    sigstore: Found | None = None
    if locations is not None and any(isinstance(r, SignedBy) for r in requirements):
        simple = await fetch.lookaside_signatures(locations, physical, digest, session, check.certs_dir)
    if locations is not None and any(isinstance(r, SigstoreSigned) for r in requirements):
        sigstore = await fetch.sigstore_signatures(locations, client, physical, digest)

    def decide() -> Verdict:
        # Key files and gpgv: blocking, so off the event loop.
        return evaluate(check.match, image, load_material(requirements), simple, sigstore)

    return await asyncio.to_thread(decide)


async def enforce(check: SignatureCheck, wanted: Reference, physical: Reference, manifest: bytes, digest: str,
                  client: RegistryClient, session: HTTPClient) -> None:
    """Raise PermissionDenied unless the scope's requirements accept the image."""
    if not check.match.needs_signatures():
        return
    verdict = await judge(check, wanted, physical, manifest, digest, client, session)
    if not verdict.accepted:
        raise PermissionDenied(verdict.refusal())
    log.info("%s", verdict.summary())
