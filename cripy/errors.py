"""Domain errors. Each kind maps to one gRPC status code at the CRI edge (cripy/cri/errors.py).

Raise these from the domain (images, pods, containers, ...) with a message that says what failed, on which
object and why; never raise gRPC types below cripy/cri/.
"""

import errno

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})  # what counts as a full disk


class CripyError(Exception):
    """Base of every error the daemon reports to a CRI client."""


class InvalidArgument(CripyError):
    """The request is malformed (bad reference, bad config value)."""


class NotFound(CripyError):
    """The named object (image, pod, container, blob) does not exist."""


class AlreadyExists(CripyError):
    """A name or id is already held by another object."""


class FailedPrecondition(CripyError):
    """The object is in a state that does not allow the request (e.g. a container in a stopped pod)."""


class Unauthenticated(CripyError):
    """A registry refused the credentials (or none were given and they are required)."""


class PermissionDenied(CripyError):
    """A registry or the trust policy refused access."""


class Unavailable(CripyError):
    """A remote (registry, runtime) could not be reached or answered with a transient failure."""


class DeadlineExceeded(CripyError):
    """An operation ran out of time (e.g. a pull whose throughput stayed under the floor)."""


class Unimplemented(CripyError):
    """The request asks for something cripy does not support."""


class Internal(CripyError):
    """Something cripy relies on failed unexpectedly (runc, conmon, the kernel)."""


class ResourceExhausted(CripyError):
    """The node ran out of something the request needs (disk space)."""


class DataLoss(CripyError):
    """Content did not match its digest or size (corrupted or truncated blob)."""


def os_failure(message: str, error: OSError) -> CripyError:
    """An OSError as the domain error it is: a full disk (ENOSPC, EDQUOT) is ResourceExhausted, the rest Internal."""
    if error.errno in DISK_FULL_ERRNOS:
        return ResourceExhausted(f"{message}: no space left ({error})")
    return Internal(f"{message}: {error}")
