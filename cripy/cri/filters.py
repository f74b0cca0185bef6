"""Filters shared by the CRI list calls."""

from __future__ import annotations

from typing import Any, Mapping


def wanted_filter(request: Any) -> Any | None:
    """A list request's filter when it constrains anything, else None: an absent filter and an empty one both ask
    for everything. The kubelet's relist (every second) and its container GC send an empty ContainerFilter; taking
    it for a filter would pass it by the unfiltered answer cripy keeps. A filter whose only field is present but
    zero (state CREATED, say) is not empty: ByteSize counts it."""
    return request.filter if request.HasField("filter") and request.filter.ByteSize() else None


def filter_key(wanted: Any | None) -> bytes:
    """What names a list request's filter among the answers kept (cri/kept.py): b"" for none. Equal filters
    whose maps serialize in another order only miss the kept answer."""
    return b"" if wanted is None else wanted.SerializeToString()


def labels_match(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """CRI label selectors: every key must be present with exactly that value."""
    return all(labels.get(key) == value for key, value in selector.items())
