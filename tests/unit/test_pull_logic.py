"""cripy.images.pull, the parts without a registry: error summaries, credential choice, platform, pull dedupe."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cripy.config import ImagesConfig
from cripy.errors import (
    CripyError,
    DataLoss,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from cripy.images.auth import AuthStore, Credentials
from cripy.images.manifest import Platform, host_platform
from cripy.images.pull import Puller, PullRequest, _summarize
from cripy.images.reference import parse_normalized
from cripy.images.registries import PullSource
from cripy.images.store import Image

# ---- _summarize --------------------------------------------------------------------------------------------------


def test_summarize_without_any_source() -> None:
    error = _summarize("busybox", [])
    assert isinstance(error, NotFound)
    assert "busybox" in str(error) and "no registry" in str(error)


def test_summarize_one_failure_is_that_failure() -> None:
    failure = Unavailable("registry.example.com: connection refused")
    assert _summarize("busybox", [("registry.example.com/busybox:latest", failure)]) is failure


def test_summarize_all_not_found() -> None:
    error = _summarize(
        "app",
        [("quay.io/app:latest", NotFound("manifest unknown")), ("docker.io/library/app:latest", NotFound("nope"))],
    )
    assert type(error) is NotFound
    message = str(error)
    assert "app" in message and "not found in any source" in message
    assert "quay.io/app:latest: manifest unknown" in message
    assert "docker.io/library/app:latest: nope" in message


@pytest.mark.parametrize("kind", [Unavailable, DataLoss, DeadlineExceeded])
def test_summarize_takes_the_kind_of_the_last_telling_failure(kind: type[CripyError]) -> None:
    failures = [
        ("mirror.example.com/app:1 (mirror)", DataLoss("digest mismatch")),
        ("quay.io/app:1", kind("the telling one")),
        ("docker.io/library/app:1", NotFound("manifest unknown")),
    ]
    error = _summarize("app:1", failures)
    assert type(error) is kind
    message = str(error)
    assert message.startswith("pulling app:1 failed from every source: ")
    for where, failure in failures:
        assert f"{where}: {failure}" in message


# ---- Puller._credentials_for ---------------------------------------------------------------------------------------

CRI = Credentials(username="kubelet", password="from-cri")
FILE = Credentials(username="file", password="from-auth-json")


def source(ref: str, *, mirror: bool = False) -> PullSource:
    return PullSource(reference=parse_normalized(ref), insecure=False, is_mirror=mirror)


def auth_store() -> AuthStore:
    return AuthStore([(Path("/auth.json"), {"mirror.example.com": FILE, "quay.io": FILE})])


def test_cri_credentials_serve_the_images_own_registry() -> None:
    request = PullRequest("quay.io/team/app:1", CRI)
    assert Puller._credentials_for(source("quay.io/team/app:1"), request, auth_store()) is CRI


def test_cri_credentials_serve_the_server_they_name() -> None:
    request = PullRequest("quay.io/team/app:1", CRI, "https://mirror.example.com/v2/")
    assert Puller._credentials_for(source("mirror.example.com/team/app:1", mirror=True), request, auth_store()) is CRI


def test_mirror_not_named_by_the_cri_credentials_uses_auth_json() -> None:
    request = PullRequest("quay.io/team/app:1", CRI, "quay.io")
    assert Puller._credentials_for(source("mirror.example.com/team/app:1", mirror=True), request, auth_store()) is FILE


def test_without_cri_credentials_auth_json_is_used() -> None:
    request = PullRequest("quay.io/team/app:1")
    assert Puller._credentials_for(source("quay.io/team/app:1"), request, auth_store()) is FILE
    assert Puller._credentials_for(source("example.org/app:1"), request, auth_store()) is None


def test_cri_credentials_for_one_registry_are_not_sent_to_another_search_registry() -> None:
    request = PullRequest("nginx", CRI, "docker.io")
    chosen = Puller._credentials_for(source("quay.io/library/nginx:latest"), request, AuthStore())
    assert chosen is not CRI


# ---- Puller.platform -----------------------------------------------------------------------------------------------


def puller(tmp_path: Path, **settings: object) -> Puller:
    return Puller(store=None, settings=ImagesConfig(**settings))  # type: ignore[arg-type]


async def test_platform_defaults_to_the_host(tmp_path: Path) -> None:
    assert puller(tmp_path).platform() == host_platform()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
        ("windows/amd64", Platform("windows", "amd64")),
    ],
)
async def test_platform_from_the_config(tmp_path: Path, text: str, expected: Platform) -> None:
    assert puller(tmp_path, platform=text).platform() == expected


@pytest.mark.parametrize("text", ["linux", "linux/", "/amd64", "linux//v7", "linux/arm/v7/extra", "a/b/c/d"])
async def test_bad_platform_is_invalid_argument(tmp_path: Path, text: str) -> None:
    with pytest.raises(InvalidArgument, match="images.platform"):
        puller(tmp_path, platform=text).platform()


# ---- dedupe of identical pulls -------------------------------------------------------------------------------------


def image(name: str) -> Image:
    return Image(id=f"sha256:{name}", repo_tags=[name], repo_digests=[], size=1, manifest_digest="sha256:m",
                 config={}, chain_ids=[])


class FakePull:
    """Replaces Puller._pull: counts calls per request, blocks until released, can fail."""

    def __init__(self) -> None:
        self.requests: list[PullRequest] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.error: BaseException | None = None

    async def __call__(self, request: PullRequest, operation: object = None) -> Image:
        self.requests.append(request)
        self.started.set()
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return image(f"{request.image}#{len(self.requests)}")


@pytest.fixture
def fake(tmp_path: Path) -> tuple[Puller, FakePull]:
    p = puller(tmp_path)
    f = FakePull()
    p._pull = f  # type: ignore[method-assign]
    return p, f


async def test_identical_concurrent_pulls_are_one_pull(fake: tuple[Puller, FakePull]) -> None:
    p, f = fake
    first = asyncio.create_task(p.pull(PullRequest("busybox", CRI)))
    await f.started.wait()
    others = [asyncio.create_task(p.pull(PullRequest("busybox", Credentials("kubelet", "from-cri"))))
              for _ in range(3)]
    await asyncio.sleep(0)
    f.release.set()
    results = await asyncio.gather(first, *others)
    assert len(f.requests) == 1
    assert {r.id for r in results} == {"sha256:busybox#1"}


async def test_pulls_differing_in_image_or_credentials_are_separate(fake: tuple[Puller, FakePull]) -> None:
    p, f = fake
    f.release.set()
    results = await asyncio.gather(
        p.pull(PullRequest("busybox")),
        p.pull(PullRequest("busybox", CRI)),
        p.pull(PullRequest("busybox", Credentials("kubelet", "other-password"))),
        p.pull(PullRequest("alpine")),
    )
    assert len(f.requests) == 4
    assert len({r.id for r in results}) == 4


async def test_a_later_pull_pulls_again(fake: tuple[Puller, FakePull]) -> None:
    p, f = fake
    f.release.set()
    await p.pull(PullRequest("busybox"))
    await p.pull(PullRequest("busybox"))
    assert len(f.requests) == 2


async def test_an_error_reaches_every_joiner(fake: tuple[Puller, FakePull]) -> None:
    p, f = fake
    f.error = Unauthenticated("registry says no")
    first = asyncio.create_task(p.pull(PullRequest("private/app")))
    await f.started.wait()
    joiner = asyncio.create_task(p.pull(PullRequest("private/app")))
    await asyncio.sleep(0)
    f.release.set()
    for task in (first, joiner):
        with pytest.raises(Unauthenticated, match="registry says no"):
            await task
    assert len(f.requests) == 1
    # The failure is not remembered: the next pull tries again.
    f.error = None
    assert (await p.pull(PullRequest("private/app"))).id == "sha256:private/app#2"


async def test_cancelling_a_joiner_leaves_the_pull_running(fake: tuple[Puller, FakePull]) -> None:
    p, f = fake
    first = asyncio.create_task(p.pull(PullRequest("busybox")))
    await f.started.wait()
    joiner = asyncio.create_task(p.pull(PullRequest("busybox")))
    await asyncio.sleep(0)
    joiner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await joiner
    f.release.set()
    assert (await first).id == "sha256:busybox#1"


async def test_cancelling_the_first_caller_does_not_fail_the_joiners(fake: tuple[Puller, FakePull]) -> None:
    p, f = fake
    first = asyncio.create_task(p.pull(PullRequest("busybox")))
    await f.started.wait()
    joiner = asyncio.create_task(p.pull(PullRequest("busybox")))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    f.release.set()
    assert (await joiner).id == "sha256:busybox#1"
    assert len(f.requests) == 1


async def test_a_pull_whose_only_client_gave_up_still_completes(fake: tuple[Puller, FakePull]) -> None:
    p, f = fake
    first = asyncio.create_task(p.pull(PullRequest("busybox")))
    await f.started.wait()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    retry = asyncio.create_task(p.pull(PullRequest("busybox")))  # kubelet's retry joins the running pull
    await asyncio.sleep(0)
    f.release.set()
    assert (await retry).id == "sha256:busybox#1"
    assert len(f.requests) == 1


def test_permission_denied_is_not_retried_on_the_next_source() -> None:
    """Bad credentials or a refusing policy are the answer; only transient/absent kinds try the next source."""
    from cripy.images import pull

    assert not issubclass(PermissionDenied, pull._TRY_NEXT)
    assert not issubclass(Unauthenticated, pull._TRY_NEXT)
    for kind in (NotFound, Unavailable, DataLoss, DeadlineExceeded):
        assert issubclass(kind, pull._TRY_NEXT)
