"""cripy's own administrative calls beside CRI, on the same socket: image import for air-gapped nodes, the calls in
flight, and the progress of pulls and imports.

CRI has none of these, so this is a small gRPC service of cripy's own (`/cripy.v1.Admin/...`) with JSON bodies:
no extra proto to build, and the clients (`cripy image import`, `cripy ctl inflight`, the progress bars of
`cripy ctl pull`) are a few lines.

- ImportImage {"path", "name"?, "progressId"?} -> {"images": [...]}
- Inflight {} -> {"calls": [{"id", "method", "object", "seconds", "joined", "steps": [{"name", "detail",
  "seconds"}]}]}: every call in progress, oldest first, with the innermost steps it is in.
- WatchProgress {"pull": IMAGE} or {"import": PROGRESS_ID}, "waitSeconds"? -> a stream of snapshots (see
  images/progress.py: Operation.snapshot) whenever something moved, the last one finished. It waits up to
  waitSeconds (default 30) for the operation to begin, so a client may start watching before it asks for the pull.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, AsyncIterator


from cripy import errors, timing
from cripy.cri.errors import answered, status_code_for
from cripy.images import progress
from cripy.images.archive import Importer
from cripy.images.progress import ProgressBoard
from cripy.rpc.server import Context, Method

SERVICE = "cripy.v1.Admin"
WATCH_INTERVAL = 0.2  # how often a watcher looks for news
DEFAULT_WAIT_SECONDS = 30.0
MAX_WAIT_SECONDS = 600.0


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def decode(data: bytes) -> dict[str, Any]:
    try:
        message = json.loads(data or b"{}")
    except ValueError as e:
        raise errors.InvalidArgument(f"admin request is not JSON: {e}") from None
    if not isinstance(message, dict):
        raise errors.InvalidArgument("admin request must be a JSON object")
    return message


def admin_methods(importer: Importer, board: ProgressBoard) -> dict[str, Method]:
    async def import_image(request: dict[str, Any], context: Context) -> dict[str, Any]:
        async def handle() -> dict[str, Any]:
            path = request.get("path")
            progress_id = request.get("progressId") or ""
            if not isinstance(path, str) or not path:
                raise errors.InvalidArgument("ImportImage needs a \"path\"")
            if not isinstance(progress_id, str) or len(progress_id) > 128:
                raise errors.InvalidArgument("ImportImage: \"progressId\" must be a string of at most 128 characters")
            images = await importer.import_path(Path(path), str(request.get("name") or ""), progress_id)
            return {"images": [{"id": image.id, "repoTags": image.repo_tags, "repoDigests": image.repo_digests}
                               for image in images]}

        return await answered(SERVICE, "ImportImage", _import_subject, handle, request, context)

    async def inflight(request: dict[str, Any], context: Context) -> dict[str, Any]:
        return {"calls": [_call_document(call) for call in timing.inflight()]}

    async def watch_progress(request: dict[str, Any], context: Context) -> AsyncIterator[dict[str, Any]]:
        try:
            kind, name, wait = _watch_target(request)
        except errors.CripyError as e:
            await context.abort(status_code_for(e), str(e))
        async for snapshot in watch(board, kind, name, wait):
            yield snapshot

    return {
        f"/{SERVICE}/ImportImage": Method(import_image, decode, encode),
        f"/{SERVICE}/Inflight": Method(inflight, decode, encode),
        f"/{SERVICE}/WatchProgress": Method(watch_progress, decode, encode, streaming=True),
    }


async def watch(board: ProgressBoard, kind: str, name: str, wait: float) -> AsyncIterator[dict[str, Any]]:
    """Snapshots of one operation whenever it moved, until it has finished; nothing if it does not begin within
    `wait` seconds."""
    deadline = time.monotonic() + wait
    operation = board.find(kind, name)
    while operation is None:
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(WATCH_INTERVAL)
        operation = board.find(kind, name)
    seen = -1
    while True:
        version = operation.version
        if version != seen:
            seen = version
            yield operation.snapshot()
            if operation.finished:
                return
        await asyncio.sleep(WATCH_INTERVAL)


def _watch_target(request: dict[str, Any]) -> tuple[str, str, float]:
    wait = request.get("waitSeconds", DEFAULT_WAIT_SECONDS)
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= MAX_WAIT_SECONDS:
        raise errors.InvalidArgument(f"WatchProgress: \"waitSeconds\" must be a number from 0 to {MAX_WAIT_SECONDS:g}")
    for kind in (progress.PULL, progress.IMPORT):
        name = request.get(kind)
        if isinstance(name, str) and name:
            return kind, name, float(wait)
    raise errors.InvalidArgument("WatchProgress needs \"pull\": IMAGE or \"import\": PROGRESS_ID")


def _call_document(call: timing.Call) -> dict[str, Any]:
    return {
        "id": call.id,
        "method": call.method,
        "object": call.subject,
        "seconds": round(time.monotonic() - call.started, 3),
        "joined": call.joined,
        "steps": [{"name": step.name, "detail": step.detail, "seconds": round(step.seconds, 3)}
                  for step in call.current_steps()],
    }


def _import_subject(request: dict[str, Any]) -> str:
    return f"archive {request.get('path', '')}"
