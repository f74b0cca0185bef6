"""Domain errors -> gRPC status codes, in one place.

Every servicer method is wrapped by `grpc_method`: the request's strings are checked first (cri/validate.py: no
NUL byte, no oversized value, in any field of any call); a CripyError becomes its status code with the error's
message, cut to MESSAGE_MAX characters so that no answer echoes a huge request back; anything else is a bug,
logged with its traceback and answered as Internal, and the daemon keeps serving.
"""

from __future__ import annotations

import errno
import functools
import logging
import sqlite3
from typing import Any, Awaitable, Callable, TypeVar

import grpc
from google.protobuf.message import Message

from cripy import errors
from cripy.cri import validate
from cripy.linux import memory

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
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
MESSAGE_MAX = 1000
LARGE_REQUEST = 256 * 1024  # bytes: a call this large gives its memory back to the kernel when it is done


def status_code_for(error: errors.CripyError) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        if kind in STATUS_OF:
            return STATUS_OF[kind]
    return grpc.StatusCode.UNKNOWN


def grpc_method(method: F) -> F:
    """Wrap a servicer coroutine so that errors reach the client as status codes with their messages."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        large = isinstance(request, Message) and request.ByteSize() > LARGE_REQUEST
        try:
            if isinstance(request, Message):
                validate.request_strings(request, "")
            return await method(self, request, context)
        except errors.CripyError as e:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED if disk_full(e) else status_code_for(e)
            message = _short(str(e))
            log.info("%s failed: %s: %s", method.__name__, code.name, message)
            await context.abort(code, message)
        except NotImplementedError as e:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, str(e) or f"{method.__name__} is not implemented")
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            if disk_full(e):
                message = _short(f"{method.__name__}: the disk is full (no space left): {type(e).__name__}: {e}")
                log.warning("%s failed: %s", method.__name__, message)
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
            log.exception("%s failed unexpectedly", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL,
                                _short(f"{method.__name__}: internal error: {type(e).__name__}: {e}"))
        finally:
            if large:
                memory.release_soon()

    return wrapper  # type: ignore[return-value]


def disk_full(error: BaseException) -> bool:
    """Whether the error (or one it was raised from) is the disk running out of space: nothing to fix in the
    request, and a state the daemon recovers from once there is room again."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL_ERRNOS:
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

    async def method(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    method.__name__ = name
    return method
