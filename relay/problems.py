"""Errors as RFC 9457 problem+json responses whose messages state what to fix."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import structlog
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    SerializationException,
    ValidationException,
)

from relay.errors import SchemaError, StoreUnavailableError
from relay.idempotency import IdempotencyError
from relay.registrations import InputError
from relay.tenants import TenantError

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
MAX_ECHOED_ID_CHARS = 64


def short_id(registration_id: str) -> str:
    """Return an ID cut short enough to echo in an error message."""
    if len(registration_id) <= MAX_ECHOED_ID_CHARS:
        return repr(registration_id)
    return repr(registration_id[:MAX_ECHOED_ID_CHARS] + "…")


def problem(status: int, title: str, detail: str, **extra: Any) -> Response[Any]:
    """Build an RFC 9457 problem response."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return Response(body | extra, status_code=status, media_type=PROBLEM_JSON)


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    extra: dict[str, Any] = {}
    detail = exc.detail
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list):
        extra["errors"] = exc.extra
        messages = [
            _field_message(item) for item in exc.extra if isinstance(item, dict)
        ]
        detail = "; ".join(messages) or detail
    elif isinstance(exc.__cause__, SerializationException):
        detail = f"request body is not valid JSON: {exc.detail}"
    if exc.status_code == 413:
        detail = "request body is larger than the limit; send a smaller body"
    response = problem(exc.status_code, _title(exc.status_code), detail, **extra)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def _field_message(item: dict[str, Any]) -> str:
    """Prefix a msgspec message such as "Expected `str`" with its field."""
    message = str(item.get("message", "invalid value"))
    key = item.get("key")
    if not key or str(key) in message:
        return message
    return f"{key}: {message}"


def input_error(request: Request[Any, Any, Any], exc: InputError) -> Response[Any]:
    return problem(422, "Invalid registration", exc.message, field=exc.field)


def store_down(
    request: Request[Any, Any, Any], exc: StoreUnavailableError
) -> Response[Any]:
    log.error("api.redis_unavailable", path=request.url.path, error=str(exc))
    response = problem(
        503, "Service Unavailable", "the relay cannot reach Redis; retry later"
    )
    response.headers["retry-after"] = "5"
    return response


def schema_missing(request: Request[Any, Any, Any], exc: SchemaError) -> Response[Any]:
    log.error("api.schema_mismatch", path=request.url.path, error=str(exc))
    return problem(
        503,
        "Service Unavailable",
        "the relay's Redis keyspace is not migrated; "
        "an operator must run `relay migrate`",
    )


def unhandled(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, RecursionError):
        log.warning("api.too_deep", path=request.url.path)
        return problem(
            400, "Bad Request", "request body is nested too deeply; flatten metadata"
        )
    log.exception("api.unhandled_error", path=request.url.path)
    return problem(500, "Internal Server Error", "the relay failed unexpectedly")


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def idempotency_error(
    request: Request[Any, Any, Any], exc: IdempotencyError
) -> Response[Any]:
    return problem(exc.status, _title(exc.status), exc.message, field="Idempotency-Key")


def tenant_error(request: Request[Any, Any, Any], exc: TenantError) -> Response[Any]:
    return problem(409, "Conflict", str(exc))


HANDLERS: dict[Any, Any] = {
    HTTPException: http_error,
    InputError: input_error,
    IdempotencyError: idempotency_error,
    TenantError: tenant_error,
    StoreUnavailableError: store_down,
    SchemaError: schema_missing,
    Exception: unhandled,
}
