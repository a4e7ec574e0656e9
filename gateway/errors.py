"""The gateway's errors: one hierarchy, one handler, one OpenAI-shaped body.

Every error a client can see has the body
``{"error": {"message": str, "type": str, "param": str | null, "code": str | null}}``::

    GatewayError                     500 server_error
    ├── BadRequest                   400 invalid_request_error
    │   └── InvalidNamespace         400 invalid_request_error (param "namespace")
    ├── Unauthorized                 401 invalid_request_error, code invalid_api_key
    ├── Forbidden                    403 permission_error
    ├── NotFound                     404 not_found_error
    ├── Conflict                     409 invalid_request_error, code conflict
    ├── PayloadTooLarge              413 invalid_request_error, code payload_too_large
    ├── RateLimited                  429 rate_limit_error
    ├── UpstreamError                502 upstream_error (base of the upstream failures)
    │   ├── UpstreamUnreachable      502 upstream_error, code upstream_unreachable
    │   └── UpstreamTimeout          504 upstream_error, code upstream_timeout

    memory.store.StoreUnavailable    503 service_unavailable, code store_unavailable (the
                                     memory layer's own error, mapped here; its text is logged)
    memory.service.EmbeddingTimeout  503 service_unavailable, code embedder_unavailable

Upstream 4xx/5xx answers are not errors of ours: their status and body are relayed as they are.
Litestar's own exceptions (unknown route, wrong method, validation) and anything unexpected are
mapped to the same shape by ``error_response``; a stack trace never reaches the client.
"""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example

from memory.errors import EmbeddingTimeout
from memory.store import StoreUnavailable

log = logging.getLogger("memgate")


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class InvalidNamespace(BadRequest):
    default_code = "invalid_namespace"


class Unauthorized(GatewayError):
    status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"
    default_code = "forbidden"


class NotFound(GatewayError):
    status = 404
    type = "not_found_error"
    default_code = "not_found"


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    default_code = "conflict"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    default_code = "payload_too_large"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    default_code = "upstream_error"


class UpstreamUnreachable(UpstreamError):
    default_code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    default_code = "upstream_timeout"


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(msgspec.Struct):
    """The body of every error the gateway answers (OpenAI's)."""

    error: ErrorDetail


# What each status means here, and an example of its body (/docs: every route documents its
# errors with OpenAI's body, not Litestar's {status_code, detail, extra}).
_DOCUMENTED: dict[int, tuple[str, str, str, str | None, str | None]] = {
    400: ("Bad input: malformed JSON, a missing or mistyped field, a bad namespace or path",
          "namespace 'a b' is not valid: use 1-128 characters of A-Za-z0-9._:@-",
          "invalid_request_error", "namespace", "invalid_namespace"),
    401: ("A missing or wrong key", "a valid API key is required",
          "invalid_request_error", None, "invalid_api_key"),
    403: ("The key may not do this (another namespace, the memory API, an admin call)",
          "this key may not use namespace 'bob'", "permission_error", "namespace", "forbidden"),
    404: ("No such memory in this namespace", "no memory 'mem_1' in this namespace",
          "not_found_error", "memory_id", "not_found"),
    409: ("The memory is still in the write queue", "memory 'mem_1' is still being written",
          "invalid_request_error", None, "conflict"),
    413: ("A body over server.max_body_bytes", "the request body is over the limit",
          "invalid_request_error", None, "payload_too_large"),
    429: ("Over the key's rate limit, or too many wrong keys; retry-after says when",
          "rate limit exceeded", "rate_limit_error", None, "rate_limit_exceeded"),
    500: ("An unexpected error (its cause is logged with the request id)",
          "internal error in the gateway", "server_error", None, "internal_error"),
    502: ("The upstream cannot be reached (its own 4xx/5xx answers are relayed as they are)",
          "the upstream cannot be reached", "upstream_error", None, "upstream_unreachable"),
    503: ("The memory store or the embedding model is unavailable",
          "the memory store is unavailable; try again shortly", "service_unavailable", None,
          "store_unavailable"),
    504: ("The upstream did not answer within upstream.timeout",
          "the upstream did not answer in time", "upstream_error", None, "upstream_timeout"),
}  # fmt: skip


def documented(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI responses for ``statuses``, each with OpenAI's error body."""
    out: dict[int, ResponseSpec] = {}
    for status in statuses:
        description, message, type_, param, code = _DOCUMENTED[status]
        example = error_body(message, type_, param, code)
        out[status] = ResponseSpec(
            data_container=ErrorBody,
            description=description,
            generate_examples=False,
            examples=[Example(summary=description, value=example)],
        )
    return out


CHAT_ERRORS = documented(400, 401, 403, 413, 429, 500, 502, 504)
PASSTHROUGH_ERRORS = documented(400, 401, 413, 429, 500, 502, 504)
MEMORY_ERRORS = documented(400, 401, 403, 404, 409, 413, 429, 500, 503)
ADMIN_ERRORS = documented(400, 401, 403, 429, 500, 503)
OPERATION_ERRORS = documented(401, 429, 500)
ALIVE_ERRORS = documented(500)


_LITESTAR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "payload_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


_NAMED_FIELD = re.compile(r"(?:unknown|missing required) field `([^`]+)`")


def _validation_message(exc: ValidationException) -> tuple[str, str | None]:
    """A readable message and the offending parameter from Litestar's validation error."""
    extra = exc.extra
    if not (isinstance(extra, list) and extra and isinstance(extra[0], dict)):
        return str(exc.detail), None
    first = extra[0]
    message = str(first.get("message") or exc.detail)
    key = str(first.get("key") or "")
    param: str | None = key.replace("[...]", "") or None
    if param == "data":  # the whole body: name the field itself where we can
        param = None
        if message == "'data'":  # Litestar's KeyError text: no body at all
            message = "the request needs a JSON object as its body"
    unknown = _NAMED_FIELD.search(message)
    if unknown:
        param = f"{param}.{unknown.group(1)}" if param else unknown.group(1)
    if param and param not in message:
        message = f"{message} (at {param})"
    return message, param


def error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """The one exception handler: every error becomes an OpenAI-shaped JSON body."""
    headers: dict[str, str] = {}
    if isinstance(exc, GatewayError):
        status, body, headers = exc.status, exc.body(), exc.headers
    elif isinstance(exc, StoreUnavailable):
        log.warning("store unavailable on %s %s: %s", request.method, request.url.path, exc)
        status = 503
        body = error_body(
            "the memory store is unavailable; try again shortly (the gateway's log has the "
            "cause for this request id)",
            "service_unavailable",
            None,
            "store_unavailable",
        )
    elif isinstance(exc, EmbeddingTimeout):
        log.warning("embedding timed out on %s %s: %s", request.method, request.url.path, exc)
        status = 503
        body = error_body(
            "the embedding model did not answer in time; try again shortly",
            "service_unavailable",
            None,
            "embedder_unavailable",
        )
    elif isinstance(exc, RecursionError):  # JSON nested deeper than the decoder goes
        status = 400
        body = error_body(
            "the request body is nested too deeply", "invalid_request_error", None, "invalid_json"
        )
    elif isinstance(exc, ValidationException):
        message, param = _validation_message(exc)
        status, body = 400, error_body(message, "invalid_request_error", param, "invalid_value")
    elif isinstance(exc, HTTPException):
        status = exc.status_code
        type_, code = _LITESTAR_TYPES.get(
            status, ("invalid_request_error", None) if status < 500 else ("server_error", None)
        )
        body = error_body(str(exc.detail), type_, None, code)
        headers = dict(exc.headers or {})
    else:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        status = 500
        body = error_body("internal error in the gateway", "server_error", None, "internal_error")
    return Response(
        content=msgspec.json.encode(body),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )
