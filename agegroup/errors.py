"""Typed errors, raised where a problem is found and turned into responses by the web layer."""

from __future__ import annotations


class AppError(Exception):
    """An error with a stable machine-readable code, an HTTP status and a user-facing message."""

    code = "error"
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NoImage(AppError):
    code = "no_image"
    status = 400


class BadRequest(AppError):
    code = "bad_request"
    status = 400


class UploadTooLarge(AppError):
    code = "too_large"
    status = 413


class UnsupportedImage(AppError):
    code = "unsupported_type"
    status = 415


class CorruptImage(AppError):
    code = "corrupt_image"
    status = 422


class ModelUnavailable(AppError):
    code = "model_unavailable"
    status = 503


class ServerBusy(AppError):
    """No room to take this request now (memory budget full): the client should retry."""

    code = "busy"
    status = 503

    def __init__(self, message: str, retry_after_s: int = 2) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BadLink(BadRequest):
    """A result link that is damaged, or was not signed by this site."""

    code = "bad_result_link"


class RateLimited(AppError):
    """This client asked for more predictions than ``AGE_RATE_LIMIT`` allows: it should wait."""

    code = "rate_limited"
    status = 429

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TooManyInFlight(RateLimited):
    """This client already has ``AGE_MAX_INFLIGHT_PER_CLIENT`` predictions being worked on."""

    code = "too_many_in_flight"
