"""The CRI services' methods for the gRPC server (cripy/rpc), from the service descriptors.

A servicer method may answer with bytes that are already a serialized response: List calls use it to hand
kubelet's frequent, unchanged lists back without building and serializing every entry again. A servicer's
`<Method>_at_once` (cri/errors.py, answers_at_once) answers such a call from memory before the handler runs. A CRI
method the servicer does not define answers Unimplemented, naming it.
"""

from __future__ import annotations

from typing import Any

from cri_api.v1 import api_pb2

from cripy.cri.errors import unimplemented
from cripy.rpc.server import Method


def service_methods(service_name: str, servicer: Any) -> dict[str, Method]:
    service = api_pb2.DESCRIPTOR.services_by_name[service_name]
    methods = {}
    for method in service.methods:
        request_type = getattr(api_pb2, method.input_type.name)
        handler = getattr(servicer, method.name, None)
        if handler is None:
            handler = unimplemented(method.name).__get__(servicer)
        methods[f"/{service.full_name}/{method.name}"] = Method(
            handler, request_type.FromString, serialize, streaming=method.server_streaming,
            at_once=getattr(servicer, f"{method.name}_at_once", None))
    return methods


def serialize(response: Any) -> bytes:
    return response if isinstance(response, bytes) else response.SerializeToString()
