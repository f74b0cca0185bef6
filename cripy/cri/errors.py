"""Domain errors -> gRPC status codes, and the bracket around every CRI call.

Every servicer method is wrapped by `grpc_method`: the request's strings are checked first (cri/validate.py: no
NUL byte, no oversized value, in any field of any call); a CripyError becomes its status code with the error's
message, cut to MESSAGE_MAX characters so that no answer echoes a huge request back; anything else is a bug,
logged with its traceback and answered as Internal, and the daemon keeps serving. The same wrapper makes the call
a `timing.Call` (the in-flight table, metrics and spans: cripy/timing.py) and reports how it ended. A method's
answer from memory (`answers_at_once`) is checked and counted the same way.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from typing import Any, Awaitable, Callable, TypeVar

from cri_api.v1 import api_pb2
from google.protobuf.message import Message

from cripy import errors, timing
from cripy.cri import validate
from cripy.cri.convert import call_subject
from cripy.linux import memory
from cripy.rpc.server import AbortError, Context
from cripy.rpc.wire import StatusCode

log = logging.getLogger(__name__)

STATUS_OF: dict[type[errors.CripyError], StatusCode] = {
    errors.InvalidArgument: StatusCode.INVALID_ARGUMENT,
    errors.NotFound: StatusCode.NOT_FOUND,
    errors.AlreadyExists: StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: StatusCode.FAILED_PRECONDITION,
    errors.Unauthenticated: StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: StatusCode.PERMISSION_DENIED,
    errors.Unavailable: StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: StatusCode.DEADLINE_EXCEEDED,
    errors.Unimplemented: StatusCode.UNIMPLEMENTED,
    errors.Internal: StatusCode.INTERNAL,
    errors.DataLoss: StatusCode.DATA_LOSS,
    errors.ResourceExhausted: StatusCode.RESOURCE_EXHAUSTED,
}

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
RUNTIME_SERVICE = api_pb2.DESCRIPTOR.services_by_name["RuntimeService"].full_name
IMAGE_SERVICE = api_pb2.DESCRIPTOR.services_by_name["ImageService"].full_name
_IMAGE_METHODS = frozenset(api_pb2.DESCRIPTOR.services_by_name["ImageService"].methods_by_name)
MESSAGE_MAX = 1000
LARGE_REQUEST = 256 * 1024  # bytes: a call this large gives its memory back to the kernel when it is done


def answers_at_once(method: Callable[[Any, Any, Context], Any]) -> Callable[[Any, Any, Context], Any]:
    """Wrap a servicer's answer from memory, `<Method>_at_once(request, context)`, which the server tries before it
    runs the method's handler (rpc/server.py, Method.at_once): the response, or None to leave the call to the
    handler. Its request is checked as grpc_method checks one; an answer is counted as a call that began and ended
    at once (timing.instant). An exception leaves the call to the handler, which reports it."""
    name = method.__name__.removesuffix("_at_once")
    service = _service_of(name)

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: Context) -> Any:
        validate.request_strings(request, "")
        answer = method(self, request, context)
        if answer is not None:
            timing.instant(service, name, request, call_subject, context)
        return answer

    return wrapper


def _service_of(method_name: str) -> str:
    return IMAGE_SERVICE if method_name in _IMAGE_METHODS else RUNTIME_SERVICE


def status_code_for(error: errors.CripyError) -> StatusCode:
    for kind in type(error).__mro__:
        if kind in STATUS_OF:
            return STATUS_OF[kind]
    return StatusCode.UNKNOWN


def grpc_method(method: F) -> F:
    """Wrap a servicer coroutine so that errors reach the client as status codes with their messages, and the
    call is tracked from its arrival to its answer."""
    name = method.__name__
    service = _service_of(name)

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: Context) -> Any:
        return await answered(service, name, call_subject, lambda: method(self, request, context), request, context)

    return wrapper  # type: ignore[return-value]


async def answered(service: str, name: str, describe: Callable[..., Any], handler: Callable[[], Awaitable[Any]],
                   request: Any, context: Context) -> Any:
    """handler()'s answer to one call, tracked from its arrival to its answer (timing.begin/end, with `describe`
    naming its subject); a domain error reaches the client as its status code and message, anything unexpected
    as INTERNAL."""
    call = timing.begin(service, name, request, describe, context)
    outcome = "OK"
    large = isinstance(request, Message) and request.ByteSize() > LARGE_REQUEST
    try:
        if isinstance(request, Message):
            validate.request_strings(request, "")
        return await handler()
    except errors.CripyError as e:
        code = StatusCode.RESOURCE_EXHAUSTED if disk_full(e) else status_code_for(e)
        outcome = code.name
        message = _short(str(e))
        log.info("%s failed: %s: %s", name, code.name, message)
        await context.abort(code, message)
    except NotImplementedError as e:
        outcome = "UNIMPLEMENTED"
        await context.abort(StatusCode.UNIMPLEMENTED, str(e) or f"{name} is not implemented")
    except AbortError:
        outcome = _aborted_code(context)
        raise
    except asyncio.CancelledError:
        outcome = "CANCELLED"  # the client went away (or its deadline passed)
        raise
    except Exception as e:
        if disk_full(e):
            outcome = "RESOURCE_EXHAUSTED"
            message = _short(f"{name}: the disk is full (no space left): {type(e).__name__}: {e}")
            log.warning("%s failed: %s", name, message)
            await context.abort(StatusCode.RESOURCE_EXHAUSTED, message)
        outcome = "INTERNAL"
        log.exception("%s failed unexpectedly", name)
        await context.abort(StatusCode.INTERNAL, _short(f"{name}: internal error: {type(e).__name__}: {e}"))
    finally:
        timing.end(call, outcome)
        if large:
            memory.release_soon()


def _aborted_code(context: Context) -> str:
    """The code a method gave context.abort() itself."""
    code = context.code()
    return code.name if isinstance(code, StatusCode) else "UNKNOWN"


def disk_full(error: BaseException) -> bool:
    """Whether the error (or one it was raised from) is the disk running out of space: nothing to fix in the
    request, and a state the daemon recovers from once there is room again."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in errors.DISK_FULL_ERRNOS:
            return True
        if isinstance(current, sqlite3.Error) and getattr(current, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return True
        if isinstance(current, sqlite3.OperationalError) and "disk is full" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _short(message: str) -> str:
    if len(message) <= MESSAGE_MAX:
        return message
    return f"{message[:MESSAGE_MAX]}... ({len(message)} characters)"


def unimplemented(name: str, reason: str = "") -> Callable[..., Awaitable[Any]]:
    """A servicer method for a CRI call cripy does not serve (yet): a clear Unimplemented, with why when known,
    never a crash."""
    message = f"cripy does not implement {name}" + (f": {reason}" if reason else "")

    async def method(self: Any, request: Any, context: Context) -> Any:
        await context.abort(StatusCode.UNIMPLEMENTED, message)

    method.__name__ = name
    return method
