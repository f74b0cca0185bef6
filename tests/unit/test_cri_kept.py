"""cri/kept.py: list answers made of entries serialized once per change, and answers given again by filter."""

from __future__ import annotations

from cri_api.v1 import api_pb2

from cripy.containers.container import STATE_CREATED, STATE_RUNNING, Container
from cripy.containers.model import ContainerRequest
from cripy.cri.containers import listed_containers
from cripy.cri import kept as kept_module
from cripy.cri.kept import KeptList


def _container(ctr_id: str, state: str = STATE_CREATED, labels: dict[str, str] | None = None) -> Container:
    return Container(id=ctr_id, pod_id="p" * 64, name=f"{ctr_id}_p_ns_uid_0", state=state, created_at=7,
                     image_id="sha256:" + "cd" * 32, image_name="busybox",
                     request=ContainerRequest(name=ctr_id, image="busybox", labels=labels or {}), log_path="/x.log")


def _counting_list() -> tuple[KeptList[tuple[str, str]], list[str]]:
    encoded: list[str] = []

    def encode(item: tuple[str, str]) -> bytes:
        encoded.append(item[0])
        return api_pb2.ListPodSandboxResponse(items=[api_pb2.PodSandbox(id=item[0], labels={"s": item[1]})]
                                              ).SerializeToString()

    return KeptList(lambda item: item, encode), encoded


def _ids(answer: bytes) -> list[tuple[str, str]]:
    return [(pod.id, pod.labels["s"]) for pod in api_pb2.ListPodSandboxResponse.FromString(answer).items]


def test_an_entry_is_serialized_again_only_when_its_state_changes() -> None:
    kept, encoded = _counting_list()
    assert _ids(kept.answer([("a", "1"), ("b", "1")], complete=True)) == [("a", "1"), ("b", "1")]
    assert _ids(kept.answer([("a", "1"), ("b", "2")], complete=True)) == [("a", "1"), ("b", "2")]
    assert encoded == ["a", "b", "b"]


def test_a_filtered_answer_keeps_the_others_and_a_complete_one_drops_the_gone() -> None:
    kept, encoded = _counting_list()
    kept.answer([("a", "1"), ("b", "1")], complete=True)
    assert _ids(kept.answer([("b", "1")], complete=False)) == [("b", "1")]
    assert _ids(kept.answer([("a", "1"), ("b", "1")], complete=True)) == [("a", "1"), ("b", "1")]
    assert encoded == ["a", "b"]
    kept.answer([("b", "1")], complete=True)  # a is gone: its entry is not kept
    kept.answer([("a", "1")], complete=False)
    assert encoded == ["a", "b", "a"]


def test_answers_are_given_again_by_filter_and_only_at_their_version() -> None:
    kept, _ = _counting_list()
    assert kept.kept(b"", 0) is None
    whole = kept.answer([("a", "1"), ("b", "1")], complete=True)
    kept.keep(b"", whole, 3)
    some = kept.answer([("b", "1")], complete=False)
    kept.keep(b"filter", some, 3)
    assert kept.kept(b"", 3) is whole and kept.kept(b"filter", 3) is some and kept.kept(b"other", 3) is None
    assert kept.kept(b"", 4) is None and kept.kept(b"filter", 4) is None
    kept.keep(b"", whole, 4)  # a newer version drops what the older one kept
    assert kept.kept(b"filter", 4) is None and kept.kept(b"", 4) is whole


def test_filtered_answers_are_kept_within_their_budget_and_the_whole_one_always(monkeypatch) -> None:
    monkeypatch.setattr(kept_module, "FILTERED_BYTES_MAX", 10)
    kept, _ = _counting_list()
    kept.keep(b"f1", b"x" * 6, 1)
    kept.keep(b"f2", b"y" * 6, 1)  # over the budget: not kept
    kept.keep(b"", b"z" * 50, 1)  # the unfiltered answer does not count against it
    assert (kept.kept(b"f1", 1), kept.kept(b"f2", 1), kept.kept(b"", 1)) == (b"x" * 6, None, b"z" * 50)
    kept.keep(b"f2", b"y" * 6, 2)  # a new version starts a new budget
    assert kept.kept(b"f2", 2) == b"y" * 6


def test_joined_container_entries_are_the_response_protobuf_would_serialize() -> None:
    containers = [_container("a", labels={"app": "web"}), _container("b", STATE_RUNNING), _container("c")]
    answer = listed_containers().answer(containers, complete=True)
    decoded = api_pb2.ListContainersResponse.FromString(answer)
    assert [(c.id, c.state, dict(c.labels)) for c in decoded.containers] == [
        ("a", api_pb2.CONTAINER_CREATED, {"app": "web"}), ("b", api_pb2.CONTAINER_RUNNING, {}),
        ("c", api_pb2.CONTAINER_CREATED, {})]
    assert answer == api_pb2.ListContainersResponse(containers=decoded.containers).SerializeToString()
