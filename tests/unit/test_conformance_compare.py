"""The conformance runner's comparison: report parsing, expected.tsv rules, worse/better/unexpected, the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conformance import compare
from tests.conformance.compare import Expectation, Outcome


def entry(texts: list[str], leaf: str, state: str, message: str = "", node: str = "It") -> dict:
    return {"ContainerHierarchyTexts": texts, "LeafNodeText": leaf, "LeafNodeType": node, "State": state,
            "Failure": {"Message": message} if message else None}


REPORT = [{"SpecReports": [
    entry([], "", "passed", node="BeforeSuite"),
    entry(["[k8s.io] Container", "ops"], "creates", "passed"),
    entry(["[k8s.io] Image"], "pulls by digest", "failed", "no such manifest"),
    entry(["[k8s.io] AppArmor"], "enforces", "skipped", "AppArmor is disabled on this host"),
    entry(["[k8s.io] Bench"], "lifecycle", "skipped"),
    entry(["[k8s.io] Other"], "times out", "timedout", "deadline"),
]}]


def test_report_specs_are_named_like_the_anchors_and_odd_states_count_as_failed() -> None:
    found = compare.outcomes_from_report(REPORT, filtered=False)
    assert set(found) == {"[k8s.io] Container ops creates", "[k8s.io] Image pulls by digest",
                          "[k8s.io] AppArmor enforces", "[k8s.io] Bench lifecycle", "[k8s.io] Other times out"}
    assert found["[k8s.io] Other times out"].state == "failed"
    assert found["[k8s.io] Image pulls by digest"].message == "no such manifest"


def test_a_filtered_run_drops_specs_the_filter_left_out_but_keeps_runtime_skips() -> None:
    found = compare.outcomes_from_report(REPORT, filtered=True)
    assert "[k8s.io] Bench lifecycle" not in found
    assert found["[k8s.io] AppArmor enforces"].state == "skipped"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "expected.tsv"
    path.write_text(text)
    return path


def test_expected_needs_a_reason_for_anything_not_passed(tmp_path: Path) -> None:
    good = write(tmp_path, "spec\tstate\treason\na\tpassed\nb\tfailed\tno internet\n")
    assert compare.read_expected(good)["b"] == Expectation("b", "failed", "no internet")
    with pytest.raises(ValueError, match=r"expected.tsv:3: 'b' is expected skipped without a reason"):
        compare.read_expected(write(tmp_path, "spec\tstate\treason\na\tpassed\nb\tskipped\n"))
    with pytest.raises(ValueError, match=r"expected.tsv:1: state 'flaky' of 'a' is not one of"):
        compare.read_expected(write(tmp_path, "a\tflaky\twhy\n"))
    with pytest.raises(ValueError, match="named twice"):
        compare.read_expected(write(tmp_path, "a\tpassed\na\tpassed\n"))


def test_worse_better_unexpected_and_missing() -> None:
    expected = {
        "kept": Expectation("kept", "passed"),
        "regressed": Expectation("regressed", "passed"),
        "skip-now-fails": Expectation("skip-now-fails", "skipped", "machine"),
        "improved": Expectation("improved", "failed", "machine"),
        "gone": Expectation("gone", "passed"),
    }
    outcomes = {
        "kept": Outcome("kept", "passed"),
        "regressed": Outcome("regressed", "skipped", "runtime does not implement it"),
        "skip-now-fails": Outcome("skip-now-fails", "failed"),
        "improved": Outcome("improved", "passed"),
        "new-pass": Outcome("new-pass", "passed"),
    }
    result = compare.compare(expected, outcomes, complete=True)
    assert [w.spec for w, _ in result.worse] == ["regressed", "skip-now-fails"]
    assert [w.spec for w, _ in result.better] == ["improved"]
    assert [o.spec for o in result.unexpected] == ["new-pass"]
    assert [w.spec for w in result.missing] == ["gone"]
    assert not result.ok
    assert compare.compare(expected, {"kept": outcomes["kept"], "improved": outcomes["improved"]},
                           complete=False).ok
    assert not compare.compare({}, {"x": Outcome("x", "failed")}, complete=False).ok  # unknown and not passing


def test_render_shows_the_table_the_differences_and_each_worse_spec() -> None:
    outcomes = {"a": Outcome("a", "passed"), "b": Outcome("b", "failed", "boom\nwith detail")}
    anchors = {"a": ("passed", "failed"), "b": ("passed", "passed")}
    result = compare.compare({"a": Expectation("a", "passed"), "b": Expectation("b", "passed")}, outcomes,
                             complete=True)
    text = compare.render(result, outcomes, anchors)
    lines = text.splitlines()
    assert any(line.split() == ["cripy", "1", "1", "0", "2"] for line in lines)
    assert any(line.split() == ["containerd", "2", "0", "0", "2"] for line in lines)
    assert any(line.split() == ["CRI-O", "1", "1", "0", "2"] for line in lines)
    assert "WORSE THAN EXPECTED (1):" in text and "failed (expected passed): b" in text and "boom with detail" in text
    assert text.rstrip().endswith("FAILED, 1 spec(s) worse than expected")


def test_expected_tsv_round_trips_and_keeps_reasons(tmp_path: Path) -> None:
    outcomes = {"a": Outcome("a", "passed"), "b": Outcome("b", "skipped")}
    path = write(tmp_path, compare.expected_tsv(outcomes, {"b": "machine fact", "a": "dropped: it passes"}))
    assert compare.read_expected(path) == {"a": Expectation("a", "passed"), "b": Expectation("b", "skipped",
                                                                                             "machine fact")}


def test_the_committed_expected_tsv_is_valid_and_names_every_anchor_spec() -> None:
    here = Path(__file__).resolve().parents[1] / "conformance" / "expected.tsv"
    expected = compare.read_expected(here)
    assert len(expected) >= 142


def test_merge_takes_each_spec_from_the_run_that_ran_it() -> None:
    validation = {"v": Outcome("v", "passed"), "b": Outcome("b", "skipped", "needs -benchmark")}
    benchmark = {"b": Outcome("b", "passed"), "v": Outcome("v", "skipped")}
    merged = compare.merge(validation, benchmark)
    assert merged == {"v": Outcome("v", "passed"), "b": Outcome("b", "passed")}
