"""cripy's own administrative calls beside CRI, on the same socket: image import for air-gapped nodes.

CRI has no import call, so this is a small gRPC service of cripy's own (`/cripy.v1.Admin/...`) with JSON bodies:
no extra proto to build, and the `cripy image import` client is a few lines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc

from cripy import errors
from cripy.cri.errors import status_code_for
from cripy.images.archive import Importer

SERVICE = "cripy.v1.Admin"
IMPORT_IMAGE = f"/{SERVICE}/ImportImage"


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def decode(data: bytes) -> dict[str, Any]:
    message = json.loads(data or b"{}")
    if not isinstance(message, dict):
        raise errors.InvalidArgument("admin request must be a JSON object")
    return message


def admin_handler(importer: Importer) -> grpc.GenericRpcHandler:
    async def import_image(request: dict[str, Any], context: grpc.aio.ServicerContext) -> dict[str, Any]:
        try:
            path = request.get("path")
            if not isinstance(path, str) or not path:
                raise errors.InvalidArgument("ImportImage needs a \"path\"")
            images = await importer.import_path(Path(path), str(request.get("name") or ""))
        except errors.CripyError as e:
            await context.abort(status_code_for(e), str(e))
        return {"images": [{"id": image.id, "repoTags": image.repo_tags, "repoDigests": image.repo_digests}
                           for image in images]}

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {"ImportImage": grpc.unary_unary_rpc_method_handler(import_image, request_deserializer=decode,
                                                             response_serializer=encode)},
    )
