"""Domain errors -> gRPC status codes, and the bracket around every CRI call.

Every servicer method is wrapped by `grpc_method`: a CripyError becomes its status code with the error's message;
anything else is a bug, logged with its traceback and answered as Internal, and the daemon keeps serving. The same
wrapper makes the call a `timing.Call` (the in-flight table, metrics and spans: cripy/timing.py) and reports how
it ended.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Awaitable, Callable, TypeVar

import grpc
from cri_api.v1 import api_pb2

from cripy import errors, timing
from cripy.cri.convert import call_subject

log = logging.getLogger(__name__)

STATUS_OF: dict[type[errors.CripyError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.Internal: grpc.StatusCode.INTERNAL,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
}

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
RUNTIME_SERVICE = api_pb2.DESCRIPTOR.services_by_name["RuntimeService"].full_name
IMAGE_SERVICE = api_pb2.DESCRIPTOR.services_by_name["ImageService"].full_name
_IMAGE_METHODS = frozenset(api_pb2.DESCRIPTOR.services_by_name["ImageService"].methods_by_name)


def status_code_for(error: errors.CripyError) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        if kind in STATUS_OF:
            return STATUS_OF[kind]
    return grpc.StatusCode.UNKNOWN


def grpc_method(method: F) -> F:
    """Wrap a servicer coroutine so that errors reach the client as status codes with their messages, and the
    call is tracked from its arrival to its answer."""
    name = method.__name__
    service = IMAGE_SERVICE if name in _IMAGE_METHODS else RUNTIME_SERVICE

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        call = timing.begin(service, name, request, call_subject, context)
        code = "OK"
        try:
            return await method(self, request, context)
        except errors.CripyError as e:
            status = status_code_for(e)
            code = status.name
            log.info("%s failed: %s: %s", name, code, e)
            await context.abort(status, str(e))
        except NotImplementedError as e:
            code = "UNIMPLEMENTED"
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, str(e) or f"{name} is not implemented")
        except grpc.aio.AbortError:
            code = _aborted_code(context)
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"  # the client went away (or its deadline passed)
            raise
        except Exception as e:
            code = "INTERNAL"
            log.exception("%s failed unexpectedly", name)
            await context.abort(grpc.StatusCode.INTERNAL, f"{name}: internal error: {type(e).__name__}: {e}")
        finally:
            timing.end(call, code)

    return wrapper  # type: ignore[return-value]


def _aborted_code(context: grpc.aio.ServicerContext) -> str:
    """The code a method gave context.abort() itself."""
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


def unimplemented(name: str, reason: str = "") -> Callable[..., Awaitable[Any]]:
    """A servicer method for a CRI call cripy does not serve (yet): a clear Unimplemented, with why when known,
    never a crash."""
    message = f"cripy does not implement {name}" + (f": {reason}" if reason else "")

    async def method(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    method.__name__ = name
    return method
