"""The benchmark's output: a terminal table and a markdown file with the machine, the versions, the command and the
date. Every figure shows both runtimes (median, p95, p99, min, max) and the ratio cripy/containerd of medians."""

from __future__ import annotations

import datetime
import os
import platform
from dataclasses import dataclass, field

from bench.scenarios import Figure, Results
from bench.stats import Summary, ratio

PEERS = ("cripy", "containerd")


@dataclass
class RunInfo:
    command: str
    date: str
    machine: dict[str, str]
    versions: dict[str, str]
    mode: str
    notes: list[str] = field(default_factory=list)


def machine_info() -> dict[str, str]:
    info = {"nproc": str(os.cpu_count()), "kernel": platform.release(), "arch": platform.machine()}
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                info["memory"] = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
                break
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _fmt(value: float) -> str:
    if value == float("inf"):
        return "inf"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cells(summary: Summary | None) -> list[str]:
    if summary is None:
        return ["-"] * 5
    if summary.count == 1:
        return [_fmt(summary.median), "", "", "", ""]
    return [_fmt(summary.median), _fmt(summary.p95), _fmt(summary.p99), _fmt(summary.minimum), _fmt(summary.maximum)]


def _verdict(figure: Figure, value: float) -> str:
    if value == 1.0:
        return "="
    cripy_better = value > 1.0 if figure.higher_is_better else value < 1.0
    return "cripy" if cripy_better else "containerd"


def figure_row(figure: Figure) -> list[str]:
    summaries = {peer: Summary.of(figure.samples[peer]) if figure.samples.get(peer) else None for peer in PEERS}
    cells = [figure.name, figure.unit]
    for peer in PEERS:
        cells += _cells(summaries[peer])
    a, b = summaries["cripy"], summaries["containerd"]
    if a is not None and b is not None:
        value = ratio(a.median, b.median)
        cells += [_fmt(value), _verdict(figure, value)]
    else:
        cells += ["-", "-"]
    count = max((s.count for s in summaries.values() if s is not None), default=0)
    cells.append(str(count))
    return cells


HEADER = (["figure", "unit"]
          + [f"{peer} {stat}" for peer in PEERS for stat in ("median", "p95", "p99", "min", "max")]
          + ["ratio", "better", "n"])


LAST_SECTIONS = ("Memory and CPU",)


def sections(results: Results) -> dict[str, list[Figure]]:
    """Figures by section, in the order they were first measured, except that memory comes last."""
    grouped: dict[str, list[Figure]] = {}
    for figure in results.figures:
        grouped.setdefault(figure.section, []).append(figure)
    order = sorted(grouped, key=lambda name: name in LAST_SECTIONS)
    return {name: grouped[name] for name in order}


def terminal_table(results: Results) -> str:
    rows = [row for figures in sections(results).values() for row in map(figure_row, figures)]
    widths = [max(len(str(cell)) for cell in column) for column in zip(HEADER, *rows)] if rows else []
    out = []
    for section, figures in sections(results).items():
        out.append(f"\n== {section}")
        out.append("  ".join(h.ljust(w) for h, w in zip(HEADER, widths)))
        for figure in figures:
            cells = figure_row(figure)
            out.append("  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    return "\n".join(out) + "\n"


def markdown(results: Results, info: RunInfo) -> str:
    lines = ["# Benchmarks: cripy and containerd side by side", "",
             f"Run on {info.date} ({info.mode} mode) with `{info.command}`.", "",
             "ratio = cripy median / containerd median; for latencies lower is better, for throughput higher is",
             "better (the `better` column says which runtime won each row). Both runtimes were driven by the same",
             "CRI client, alternately (cripy, containerd, cripy, ...), in one run, with the same runc, CNI plugins",
             "and network config, and images from the same local registry on 127.0.0.1.", "",
             "## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in info.machine.items()]
    lines += ["", "## Versions", ""]
    lines += [f"- {key}: {value}" for key, value in info.versions.items()]
    for section, figures in sections(results).items():
        lines += ["", f"## {section}", "", "| " + " | ".join(HEADER) + " |",
                  "|" + "|".join(["---"] * 2 + ["---:"] * (len(HEADER) - 2)) + "|"]
        for figure in figures:
            lines.append("| " + " | ".join(figure_row(figure)) + " |")
    notes = info.notes + results.notes
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"
