"""`cripy image trust REF`: for an operator, which policy file and scope apply to a reference, what they require,
where its signatures would be looked for, and (check) whether the image as the registry serves it now would be
accepted and why. It reads the same files, and judges with the same code, as a pull does; it stores nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from cripy.config import ImagesConfig
from cripy.errors import CripyError
from cripy.images.auth import default_auth_paths, load_auth_files
from cripy.images.reference import Reference
from cripy.images.registries import load_registries_conf
from cripy.images.trust.evaluate import Verdict
from cripy.images.trust.gate import SignatureCheck, judge, load_pull_policy, namespace_policy_file
from cripy.images.trust.policy import ScopeMatch
from cripy.images.trust.registries_d import load_registries_d


@dataclass(frozen=True)
class Plan:
    """What applies to one resolved reference."""

    reference: Reference
    match: ScopeMatch
    lines: list[str]


def plans(settings: ImagesConfig, image: str, namespace: str) -> list[Plan]:
    """One plan per candidate the image name resolves to (several for a short name), in pull order."""
    conf = load_registries_conf(Path(settings.registries_conf), Path(settings.registries_conf_d))
    policy = load_pull_policy(settings, namespace)
    own = policy.source is not None and policy.source == namespace_policy_file(settings, namespace)
    result = []
    for candidate in conf.candidates(image):
        match = policy.requirements_for(candidate)
        lines = [f"image:     {candidate}"]
        why = ""
        if own:
            why = f" (the policy of namespace {namespace!r})"
        elif namespace:
            why = f" (namespace {namespace!r} has no policy of its own)"
        lines.append(f"policy:    {match.describe_source()}{why}")
        lines.append(f"scope:     {match.describe_scope()}")
        lines.append("requires:" + ("  all of" if len(match.requirements) > 1 else ""))
        lines += [f"  {i}. {r.describe()}" for i, r in enumerate(match.requirements, 1)]
        if match.needs_signatures():
            locations = load_registries_d(Path(settings.registries_d))
            for source in conf.pull_sources(candidate):
                where = locations.locations(source.reference)
                mirror = " (mirror)" if source.is_mirror else ""
                lines.append(f"source:    {source.reference}{mirror}")
                lines.append(f"  lookaside:            {where.lookaside} (configured by {where.lookaside_origin})")
                state = "read" if where.use_sigstore_attachments else "not read"
                lines.append(f"  sigstore attachments: {state} (configured by {where.sigstore_origin})")
        result.append(Plan(candidate, match, lines))
    return result


async def check(settings: ImagesConfig, plan: Plan) -> tuple[Verdict | None, list[str]]:
    """Judge the image the registry serves now for `plan`: the verdict (None when the scope needs no signature
    or rejects outright) and lines that explain it."""
    if plan.match.rejects():
        return None, ["verdict:   refused: the scope rejects every image"]
    if not plan.match.needs_signatures():
        return None, ["verdict:   accepted: the scope requires no signature"]
    from cripy.images.http import Client
    from cripy.images.pull import registry_client

    conf = load_registries_conf(Path(settings.registries_conf), Path(settings.registries_conf_d))
    auth = load_auth_files(([Path(settings.auth_file)] if settings.auth_file else []) + default_auth_paths())
    certs_dir = Path(settings.certs_dir) if settings.certs_dir else None
    signature_check = SignatureCheck(plan.match, Path(settings.registries_d), certs_dir)
    failures = []
    session = Client(user_agent="cripy/0.1")
    try:
        for source in conf.pull_sources(plan.reference):
            client = registry_client(settings, source, auth.lookup(source.reference), session)
            ref = source.reference
            try:
                _, body, digest = await client.get_manifest(ref.path, ref.digest or ref.tag or "latest")
            except CripyError as exc:
                failures.append(f"  {ref}: {exc}")
                continue
            verdict = await judge(signature_check, plan.reference, ref, body, digest, client, session)
            return verdict, render(verdict, ref)
    finally:
        await session.close()
    return None, ["verdict:   unknown: no source served the manifest", *failures]


def render(verdict: Verdict, source: Reference) -> list[str]:
    lines = [f"manifest:  {verdict.image.manifest_digest} from {source}",
             f"verdict:   {'accepted' if verdict.accepted else 'refused'}"]
    for i, outcome in enumerate(verdict.outcomes, 1):
        state = "holds" if outcome.accepted else f"fails: {outcome.reason}"
        lines.append(f"  {i}. {outcome.requirement.describe()}")
        lines.append(f"     {state}: {outcome.detail}")
    return lines


def run(settings: ImagesConfig, image: str, namespace: str, with_check: bool) -> tuple[int, list[str]]:
    """The command: its exit code (0 accepted or not checked, 1 refused, 2 unknown) and its output lines."""
    output: list[str] = []
    code = 0
    for index, plan in enumerate(plans(settings, image, namespace)):
        if index:
            output.append("")
        output += plan.lines
        if with_check:
            verdict, lines = asyncio.run(check(settings, plan))
            output += lines
            if verdict is not None:
                code = 0 if verdict.accepted else 1
            elif plan.match.rejects():
                code = 1
            elif plan.match.needs_signatures():
                code = 2
            if code == 0:
                break  # a pull stops at the first candidate that works
    return code, output
