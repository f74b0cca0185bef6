"""critest's outcome against what we expect and what the other runtimes give: pure functions over the JSON report
and two TSV files, no I/O beyond reading them.

- `expected.tsv` (ours): spec, expected state, and for anything not `passed` the reason, a fact of the machine or
  of the test images.
- `anchors.tsv` (the conformance kit's): spec, containerd's state, CRI-O's state on this kind of machine.

A spec's outcome is worse than expected when it ranks lower: passed > skipped > failed (a spec that critest
skips because the runtime says it lacks a feature is not a pass).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

STATES = ("passed", "skipped", "failed")
_RANK = {"passed": 2, "skipped": 1, "failed": 0}


@dataclass(frozen=True)
class Outcome:
    spec: str
    state: str  # passed, skipped or failed (ginkgo's panicked/timedout/interrupted/aborted count as failed)
    message: str = ""


@dataclass(frozen=True)
class Expectation:
    spec: str
    state: str
    reason: str = ""


@dataclass
class Comparison:
    worse: list[tuple[Expectation, Outcome]] = field(default_factory=list)
    better: list[tuple[Expectation, Outcome]] = field(default_factory=list)
    unexpected: list[Outcome] = field(default_factory=list)  # specs critest ran that expected.tsv does not name
    missing: list[Expectation] = field(default_factory=list)  # named in expected.tsv, absent from the report

    @property
    def ok(self) -> bool:
        return not self.worse and not any(o.state != "passed" for o in self.unexpected)


# ---------------------------------------------------------------------------------------------------- reading


def spec_name(report_entry: dict) -> str:
    """A spec's full text as anchors.tsv names it: the container texts and the leaf text, joined by spaces."""
    return " ".join([*(report_entry.get("ContainerHierarchyTexts") or []), report_entry.get("LeafNodeText", "")])


def outcomes_from_report(report: list[dict], *, filtered: bool) -> dict[str, Outcome]:
    """The `It` specs of a ginkgo JSON report. With `filtered` (a focus or skip was given), a spec skipped without
    a message was left out by the filter rather than skipped by the runtime, and is not an outcome."""
    found: dict[str, Outcome] = {}
    for suite in report:
        for entry in suite.get("SpecReports") or []:
            if entry.get("LeafNodeType") != "It":
                continue
            failure = entry.get("Failure") or {}
            message = str(failure.get("Message", "")).strip()
            state = entry.get("State", "failed")
            if state == "pending" or (filtered and state == "skipped" and not message):
                continue
            state = state if state in STATES else "failed"
            found[spec_name(entry)] = Outcome(spec_name(entry), state, message)
    return found


def merge(*runs: dict[str, Outcome]) -> dict[str, Outcome]:
    """The outcomes of several critest runs over one suite (validation and -benchmark): each spec as the run that
    ran it reported it."""
    merged: dict[str, Outcome] = {}
    for outcomes in runs:
        for spec, outcome in outcomes.items():
            if spec not in merged or merged[spec].state == "skipped":
                merged[spec] = outcome
    return merged


def read_report(path: Path, *, filtered: bool) -> dict[str, Outcome]:
    return outcomes_from_report(json.loads(path.read_text()), filtered=filtered)


def _rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of a TSV file, without its `spec` header, blank lines and # comments."""
    with path.open(newline="") as handle:
        rows = [(number, row) for number, row in enumerate(csv.reader(handle, delimiter="\t"), start=1)
                if row and not row[0].startswith("#")]
    return rows[1:] if rows and rows[0][1][0] == "spec" else rows


def read_expected(path: Path) -> dict[str, Expectation]:
    """expected.tsv; a state outside STATES, or a non-passed spec without a reason, is refused naming the line."""
    expected: dict[str, Expectation] = {}
    for number, row in _rows(path):
        spec, state, reason = (row + ["", ""])[:3]
        if state not in STATES:
            raise ValueError(f"{path}:{number}: state {state!r} of {spec!r} is not one of {', '.join(STATES)}")
        if state != "passed" and not reason.strip():
            raise ValueError(f"{path}:{number}: {spec!r} is expected {state} without a reason")
        if spec in expected:
            raise ValueError(f"{path}:{number}: {spec!r} is named twice")
        expected[spec] = Expectation(spec, state, reason.strip())
    return expected


def read_anchors(path: Path) -> dict[str, tuple[str, str]]:
    """anchors.tsv: spec -> (containerd's state, CRI-O's state)."""
    return {row[0]: (row[1], row[2]) for _, row in _rows(path) if len(row) >= 3}


# ---------------------------------------------------------------------------------------------------- comparing


def compare(expected: dict[str, Expectation], outcomes: dict[str, Outcome], *, complete: bool) -> Comparison:
    """`complete` says critest ran without a filter, so every expected spec must appear in the report."""
    result = Comparison()
    for spec, outcome in outcomes.items():
        wanted = expected.get(spec)
        if wanted is None:
            result.unexpected.append(outcome)
        elif _RANK[outcome.state] < _RANK[wanted.state]:
            result.worse.append((wanted, outcome))
        elif _RANK[outcome.state] > _RANK[wanted.state]:
            result.better.append((wanted, outcome))
    if complete:
        result.missing = [wanted for spec, wanted in expected.items() if spec not in outcomes]
    return result


def counts(states: list[str]) -> Counter[str]:
    return Counter(state for state in states if state in STATES)


# ---------------------------------------------------------------------------------------------------- rendering


def _short(text: str, width: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def render(comparison: Comparison, outcomes: dict[str, Outcome], anchors: dict[str, tuple[str, str]]) -> str:
    """The table (counts of cripy, containerd and CRI-O over the specs this run compared), the specs where the
    three differ, then what is worse or better than expected, spec by spec."""
    specs = sorted(outcomes)
    ours = counts([outcomes[s].state for s in specs])
    containerd = counts([anchors[s][0] for s in specs if s in anchors])
    crio = counts([anchors[s][1] for s in specs if s in anchors])
    lines = ["", f"{'runtime':<12} {'passed':>7} {'failed':>7} {'skipped':>8} {'of':>5}"]
    for name, tally in (("cripy", ours), ("containerd", containerd), ("CRI-O", crio)):
        lines.append(f"{name:<12} {tally['passed']:>7} {tally['failed']:>7} {tally['skipped']:>8} "
                     f"{sum(tally.values()):>5}")
    differing = [s for s in specs if s in anchors and len({outcomes[s].state, *anchors[s]}) > 1]
    if differing:
        lines += ["", f"specs where cripy, containerd and CRI-O differ ({len(differing)}):",
                  f"  {'cripy':<8} {'contd':<8} {'CRI-O':<8} spec"]
        for spec in differing:
            lines.append(f"  {outcomes[spec].state:<8} {anchors[spec][0]:<8} {anchors[spec][1]:<8} {spec}")
    if comparison.worse:
        lines += ["", f"WORSE THAN EXPECTED ({len(comparison.worse)}):"]
        for wanted, outcome in comparison.worse:
            lines.append(f"  {outcome.state} (expected {wanted.state}): {wanted.spec}")
            if outcome.message:
                lines.append(f"      {_short(outcome.message)}")
    unexpected_bad = [o for o in comparison.unexpected if o.state != "passed"]
    if comparison.unexpected:
        lines += ["", f"specs not in expected.tsv ({len(comparison.unexpected)}; add them):"]
        lines += [f"  {o.state}: {o.spec}" + (f"\n      {_short(o.message)}" if o.message and o in unexpected_bad
                                               else "") for o in comparison.unexpected]
    if comparison.missing:
        lines += ["", f"expected but not reported by critest ({len(comparison.missing)}; renamed or removed?):"]
        lines += [f"  {wanted.spec}" for wanted in comparison.missing]
    if comparison.better:
        lines += ["", f"better than expected ({len(comparison.better)}; update expected.tsv):"]
        lines += [f"  {outcome.state} (expected {wanted.state}): {wanted.spec}" for wanted, outcome in comparison.better]
    lines += ["", "conformance: " + ("OK, nothing worse than expected" if comparison.ok else
                                     f"FAILED, {len(comparison.worse) + len(unexpected_bad)} spec(s) worse than expected")]
    return "\n".join(lines)


def expected_tsv(outcomes: dict[str, Outcome], reasons: dict[str, str]) -> str:
    """An expected.tsv for a run's outcomes (the runner's --write-expected), keeping the reasons already given."""
    lines = ["spec\tstate\treason"]
    for spec in sorted(outcomes):
        state = outcomes[spec].state
        lines.append(f"{spec}\t{state}\t{reasons.get(spec, '') if state != 'passed' else ''}".rstrip("\t"))
    return "\n".join(lines) + "\n"
