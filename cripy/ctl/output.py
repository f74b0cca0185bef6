"""Text formatting for `cripy ctl`, as crictl does it: tables padded like Go's tabwriter, docker's human sizes
and durations, shortened ids.

Everything here is pure (returns strings); the verbs decide where the text goes. The JSON and YAML documents are
in documents.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

TRUNCATED_ID_LENGTH = 13
# crictl uses a tabwriter with minwidth 20 and padding 3; keep the same look.
TABLE_MIN_WIDTH = 20
TABLE_PADDING = 3

_DECIMAL_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]], min_width: int = TABLE_MIN_WIDTH) -> str:
    """Columns padded like crictl's tabwriter; the last column is not padded."""
    all_rows = [list(headers)] + [list(row) for row in rows]
    if not headers:
        return ""
    widths = [0] * len(headers)
    for row in all_rows:
        for index, cell in enumerate(row[:-1]):
            widths[index] = max(widths[index], len(cell))
    widths = [max(min_width, width + TABLE_PADDING) for width in widths]
    lines = []
    for row in all_rows:
        cells = [cell.ljust(widths[index]) for index, cell in enumerate(row[:-1])]
        lines.append("".join(cells) + row[-1])
    return "\n".join(lines) + "\n"


def human_size(size: float, precision: int = 3) -> str:
    """Decimal size with `precision` significant digits (e.g. 1.46MB), like docker's units.HumanSize."""
    unit_index = 0
    while size >= 1000 and unit_index < len(_DECIMAL_UNITS) - 1:
        size /= 1000
        unit_index += 1
    return f"{size:.{precision}g}{_DECIMAL_UNITS[unit_index]}"


def human_duration(seconds: float) -> str:
    """Approximate elapsed time in words (e.g. "About a minute"), like docker's units.HumanDuration."""
    if seconds < 1:
        return "Less than a second"
    if int(seconds) == 1:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = int(seconds // 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds // 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 3:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def created_ago(created_at_ns: int, now: float | None = None) -> str:
    """`created_at` (nanoseconds since the epoch) as "N units ago"."""
    now = time.time() if now is None else now
    return human_duration(max(0.0, now - created_at_ns / 1e9)) + " ago"


def truncate_id(value: str, prefix: str = "") -> str:
    """The short form of an id: `prefix` removed, 13 characters kept."""
    if prefix and value.startswith(prefix):
        value = value[len(prefix):]
    return value[:TRUNCATED_ID_LENGTH]
