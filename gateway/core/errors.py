"""Errors the gateway reports, and the one place they become OpenAI-shaped responses.

Exception tree::

    GatewayError                      (any error with an HTTP status and an OpenAI error object)
    ├── InvalidRequestError           400 invalid_request_error  (bad JSON, wrong types, bad values)
    │   └── UpstreamRejectedRequestError  400/413/422        (the upstream refused the request as invalid)
    ├── AuthenticationError           401 authentication_error
    ├── ModelNotFoundError            404 model_not_found
    ├── PayloadTooLargeError          413 request_too_large
    ├── RateLimitError                429 rate_limit_exceeded     (carries Retry-After)
    ├── OverloadedError               503 overloaded              (a local model's queue is full)
    ├── InternalError                 500 internal_error          (a bug: logged, never shown)
    ├── HTTPStatusError               4xx                         (unknown path, wrong method)
    └── UpstreamError                 502 upstream_error          (the backend answered with an error)
        ├── UpstreamUnavailableError  503 upstream_unavailable    (connect refused, model still loading)
        └── UpstreamTimeoutError      504 upstream_timeout

Backends translate foreign exceptions (httpx, torch) into these at their boundary, most specific first,
with ``raise ... from exc``; nothing else in the gateway builds an error body by hand.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse


class GatewayError(Exception):
    """Base class: an error with an HTTP status and the fields of an OpenAI error object."""

    status_code = 500
    error_type = "internal_error"
    code: str | None = None
    retry_after_s: float | None = None  # sent as Retry-After when set (429, and 503s worth retrying soon)

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"retry-after": str(max(1, int(self.retry_after_s + 0.999)))}

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param,
                          "code": self.code}}


class InvalidRequestError(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class UpstreamRejectedRequestError(InvalidRequestError):
    """The upstream answered 400/413/422 (a prompt over vLLM's ``--max-model-len``, a sampling value it refuses):
    the client's own error, sent with the upstream's status, message and param unchanged."""

    def __init__(self, message: str, *, status_code: int, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.status_code = status_code


class AuthenticationError(GatewayError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFoundError(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class NotFoundError(GatewayError):
    """Something the request names (other than a model) does not exist or is not the caller's."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class PayloadTooLargeError(GatewayError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class RateLimitError(GatewayError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message, retry_after_s=retry_after_s)


class BudgetExceededError(GatewayError):
    """A key's dollar budget for its period would be passed; ``Retry-After`` says when the period resets (none
    for a ``total`` budget)."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "budget_exceeded"


class OverloadedError(GatewayError):
    status_code = 503
    error_type = "server_error"
    code = "overloaded"


class InternalError(GatewayError):
    status_code = 500
    error_type = "server_error"
    code = "internal_error"


class HTTPStatusError(GatewayError):
    """A plain HTTP error raised by the framework (unknown path, wrong method)."""

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message, code={404: "not_found", 405: "method_not_allowed"}.get(status_code))
        self.status_code = status_code
        self.error_type = "invalid_request_error" if status_code < 500 else "server_error"


class UpstreamError(GatewayError):
    """The backend answered, but with an error; ``upstream_status`` keeps what it said."""

    status_code = 502
    error_type = "upstream_error"
    code = "upstream_error"

    def __init__(self, message: str, *, upstream_status: int | None = None, param: str | None = None,
                 code: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message, param=param, code=code, retry_after_s=retry_after_s)
        self.upstream_status = upstream_status


class UpstreamUnavailableError(UpstreamError):
    status_code = 503
    code = "upstream_unavailable"


class UpstreamTimeoutError(UpstreamError):
    status_code = 504
    code = "upstream_timeout"


def error_response(exc: GatewayError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON response for ``exc``: the single place an error becomes HTTP."""
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers={**exc.headers, **(headers or {})})


def sse_error_event(exc: GatewayError) -> str:
    """An SSE ``data:`` line carrying ``exc``, sent when a stream fails after it started."""
    return f"data: {json.dumps(exc.to_dict())}\n\n"
