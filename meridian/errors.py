"""One domain error hierarchy for every process.

Each error knows its HTTP status; ``GRPC_CODES`` maps it to a gRPC status code in
one place, so the same failure reads the same over REST and gRPC. Anything that
is not a ``MeridianError`` is a bug: transports answer it with a fixed message
(HTTP 500 / gRPC INTERNAL) and never leak a stack trace.
"""

from __future__ import annotations

import grpc

__all__ = [
    "GRPC_CODES",
    "Conflict",
    "InvalidInput",
    "MeridianError",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "PreconditionFailed",
    "PreconditionRequired",
    "RateLimited",
    "Unauthenticated",
    "Unavailable",
    "UpstreamTimeout",
    "grpc_code_for",
]


class MeridianError(Exception):
    """Base of all expected failures. ``status`` is the HTTP status code."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, object]:
        body: dict[str, object] = {"error": self.code, "detail": self.message}
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return body


class InvalidInput(MeridianError):
    status = 400
    code = "invalid_input"


class Unauthenticated(MeridianError):
    status = 401
    code = "unauthenticated"


class PermissionDenied(MeridianError):
    status = 403
    code = "permission_denied"


class NotFound(MeridianError):
    status = 404
    code = "not_found"


class Conflict(MeridianError):
    status = 409
    code = "conflict"


class PreconditionFailed(MeridianError):
    status = 412
    code = "precondition_failed"


class PayloadTooLarge(MeridianError):
    status = 413
    code = "payload_too_large"


class PreconditionRequired(MeridianError):
    status = 428
    code = "precondition_required"


class RateLimited(MeridianError):
    status = 429
    code = "rate_limited"


class Unavailable(MeridianError):
    status = 503
    code = "unavailable"


class UpstreamTimeout(MeridianError):
    status = 504
    code = "upstream_timeout"


GRPC_CODES: dict[type[MeridianError], grpc.StatusCode] = {
    MeridianError: grpc.StatusCode.INTERNAL,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Conflict: grpc.StatusCode.ALREADY_EXISTS,
    PreconditionFailed: grpc.StatusCode.FAILED_PRECONDITION,
    PreconditionRequired: grpc.StatusCode.FAILED_PRECONDITION,
    PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    UpstreamTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_code_for(error: BaseException) -> grpc.StatusCode:
    """The gRPC status code for an error; INTERNAL for anything unexpected."""
    for cls in type(error).__mro__:
        if cls in GRPC_CODES:
            return GRPC_CODES[cls]
    return grpc.StatusCode.INTERNAL
