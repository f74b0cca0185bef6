"""The client of cripy's own admin service (cri/admin.py: JSON bodies on the CRI socket): image import, the calls
in flight, and the progress of pulls and imports. Another runtime does not have it: its calls then fail with
UNIMPLEMENTED, which `cripy ctl` reports as it reports any failed call."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc

from cripy.ctl.client import cri_error, normalize_endpoint

SERVICE = "cripy.v1.Admin"


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def _decode(data: bytes) -> dict[str, Any]:
    return json.loads(data or b"{}")


class AdminClient:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = normalize_endpoint(endpoint)
        self._channel = grpc.insecure_channel(self.endpoint)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _unary(self, method: str) -> grpc.UnaryUnaryMultiCallable:
        return self._channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=_encode,
                                         response_deserializer=_decode)

    def inflight(self, timeout: float | None = 10.0) -> list[dict[str, Any]]:
        try:
            return list(self._unary("Inflight")({}, timeout=timeout)["calls"])
        except grpc.RpcError as error:
            raise cri_error("Inflight", error, self.endpoint) from None

    def import_image(self, path: str, name: str = "", progress_id: str = "",
                     timeout: float | None = 3600.0) -> list[dict[str, Any]]:
        request = {"path": path, "name": name, "progressId": progress_id}
        try:
            return list(self._unary("ImportImage")(request, timeout=timeout)["images"])
        except grpc.RpcError as error:
            raise cri_error("ImportImage", error, self.endpoint) from None

    def watch_progress(self, kind: str, name: str, wait_seconds: float = 30.0) -> ProgressStream:
        """Snapshots of a pull ("pull", IMAGE) or import ("import", PROGRESS_ID) as the daemon sends them."""
        call = self._channel.unary_stream(f"/{SERVICE}/WatchProgress", request_serializer=_encode,
                                          response_deserializer=_decode)
        return ProgressStream(call({kind: name, "waitSeconds": wait_seconds}))


class ProgressStream:
    """An iterator of progress snapshots that the caller can cancel from another thread."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            yield from self._call
        except grpc.RpcError:
            return  # cancelled, or a daemon without progress: the operation itself reports its own outcome

    def cancel(self) -> None:
        self._call.cancel()
