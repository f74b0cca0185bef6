"""Filters shared by the CRI list calls."""

from __future__ import annotations

from typing import Mapping


def labels_match(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """CRI label selectors: every key must be present with exactly that value."""
    return all(labels.get(key) == value for key, value in selector.items())
