"""Registering the CRI servicers with grpc, from the service descriptors.

The same as the generated add_*_to_server functions, with one difference: a method may answer with bytes that
are already a serialized response. List calls use it to hand kubelet's frequent, unchanged lists back without
building and serializing every entry again.
"""

from __future__ import annotations

from typing import Any

import grpc
from cri_api.v1 import api_pb2


def service_handler(service_name: str, servicer: Any) -> grpc.GenericRpcHandler:
    service = api_pb2.DESCRIPTOR.services_by_name[service_name]
    handlers = {}
    for method in service.methods:
        request_type = getattr(api_pb2, method.input_type.name)
        make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=request_type.FromString,
            response_serializer=serialize,
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def serialize(response: Any) -> bytes:
    return response if isinstance(response, bytes) else response.SerializeToString()
