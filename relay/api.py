"""The HTTP API: registrations under ``/v1``, health checks, OpenAPI at ``/schema``."""

from __future__ import annotations

import hmac
import json
import time
from http import HTTPStatus
from typing import Any

import redis.asyncio as aioredis
import structlog
from litestar import Litestar, Request, Response, Router, delete, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    SerializationException,
    ValidationException,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_202_ACCEPTED
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from relay import keys as keyspace
from relay import metrics as relay_metrics
from relay import openapi, views
from relay.errors import SchemaError, StoreUnavailableError
from relay.registrations import (
    InputError,
    NewRegistration,
    check_callback_addresses,
    new_registration_id,
    validate,
)
from relay.safe_transport import Resolver, resolve_host
from relay.settings import Settings
from relay.store import Store

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
REDIS_CONNECTIONS = 64
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


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
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


def _input_error(request: Request[Any, Any, Any], exc: InputError) -> Response[Any]:
    return problem(422, "Invalid registration", exc.message, field=exc.field)


def _store_down(
    request: Request[Any, Any, Any], exc: StoreUnavailableError
) -> Response[Any]:
    log.error("api.redis_unavailable", path=request.url.path, error=str(exc))
    response = problem(
        503, "Service Unavailable", "the relay cannot reach Redis; retry later"
    )
    response.headers["retry-after"] = "5"
    return response


def _schema_missing(request: Request[Any, Any, Any], exc: SchemaError) -> Response[Any]:
    log.error("api.schema_mismatch", path=request.url.path, error=str(exc))
    return problem(
        503,
        "Service Unavailable",
        "the relay's Redis keyspace is not migrated; "
        "an operator must run `relay migrate`",
    )


def _unhandled(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
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


def _raw_header(connection: ASGIConnection[Any, Any, Any, Any], name: bytes) -> bytes:
    """Return the first value of a lower-case header name, or b"" if absent.

    This reads the ASGI scope directly: building Litestar's Headers object
    for one value cost a few percent of a request's CPU.
    """
    for key, value in connection.scope["headers"]:
        if key == name:
            return bytes(value)
    return b""


async def require_token(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Guard: reject requests without the configured bearer token."""
    settings: Settings = connection.app.state.settings
    header = _raw_header(connection, b"authorization")
    scheme, _, token = header.partition(b" ")
    expected = settings.api_token.reveal().encode()
    if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), expected):
        raise NotAuthorizedException(
            detail="missing or invalid API token; send 'Authorization: Bearer <token>'",
            headers={"www-authenticate": 'Bearer realm="relay"'},
        )


async def require_json(request: Request[Any, Any, Any]) -> None:
    """Reject request bodies that are empty or not declared as JSON."""
    raw = _raw_header(request, b"content-type").decode("latin-1")
    media_type = raw.split(";")[0].strip().lower()
    if media_type != "application/json":
        raise HTTPException(
            status_code=415,
            detail="content-type must be application/json, "
            f"got {media_type or 'none'!r}",
        )
    if not (await request.body()).strip():
        raise HTTPException(
            status_code=400,
            detail="request body is missing; send a JSON object with job_id "
            "and callback_url",
        )


@post(
    "/registrations",
    before_request=require_json,
    status_code=HTTP_201_CREATED,
    responses=openapi.problems(400, 401, 404, 409, 413, 415, 422, 429, 503)
    | {200: openapi.json_response(views.Registration, "The stored registration.")},
)
async def create_registration(
    data: openapi.RegistrationCreateBody, state: State
) -> Response[views.Registration]:
    """Register a ModelGates job and the URL that receives its outcome.

    The same job ID and callback URL again returns the existing registration
    with 200 instead of 201.
    """
    settings: Settings = state.settings
    store: Store = state.store
    request = validate(
        data.job_id, data.callback_url, data.events, data.metadata, settings
    )
    await check_callback_addresses(request.callback_url, settings, state.resolver)
    created, registration_id, now_ms = await store.register(
        new_registration_id(),
        request,
        state.cred,
        settings.poll_first_delay_s,
        settings.poll_deadline_s,
    )
    if created:
        view = views.new_registration_view(registration_id, request, now_ms)
    else:
        view = await _existing_view(store, registration_id, request)
    if logs_requests(settings):
        # The request's one log line (``http.request``) carries these fields.
        structlog.contextvars.bind_contextvars(
            registration_id=registration_id,
            job_id=request.job_id,
            created=created,
        )
    return Response(view, status_code=HTTP_201_CREATED if created else HTTP_200_OK)


async def _existing_view(
    store: Store, registration_id: str, request: NewRegistration
) -> views.Registration:
    """Return the registration a repeated POST matched, or raise 409 if it differs."""
    view = await views.registration_view(store, registration_id)
    if view is None:
        raise NotFoundException(detail="registration was deleted while being created")
    if tuple(view.events) != request.events or json.dumps(
        view.metadata, sort_keys=True
    ) != json.dumps(json.loads(request.metadata_json), sort_keys=True):
        raise HTTPException(
            status_code=409,
            detail=f"registration {registration_id} already exists for this job_id "
            "and callback_url with other events or metadata; delete it first, or "
            "send the same values",
        )
    return view


@get(
    "/registrations/{registration_id:str}",
    responses=openapi.problems(400, 401, 404, 503),
)
async def read_registration(
    registration_id: FromPath[str], state: State
) -> views.Registration:
    """Return a registration: its state, the last upstream response and delivery."""
    view = await views.registration_view(state.store, registration_id)
    if view is None:
        raise NotFoundException(
            detail=f"registration {short_id(registration_id)} not found"
        )
    return view


@get(
    "/registrations/{registration_id:str}/attempts",
    responses=openapi.problems(400, 401, 404, 503),
)
async def list_attempts(
    registration_id: FromPath[str], state: State
) -> views.AttemptList:
    """Return the newest delivery attempts of a registration's webhook."""
    store: Store = state.store
    registration = await store.registration(registration_id)
    if registration is None:
        raise NotFoundException(
            detail=f"registration {short_id(registration_id)} not found"
        )
    attempts = await store.attempts(registration["event_id"], keyspace.ATTEMPTS_KEPT)
    return views.AttemptList(
        registration_id=registration_id,
        event_id=registration["event_id"],
        attempts=[views.attempt_view(row) for row in attempts],
    )


@post(
    "/registrations/{registration_id:str}/redeliver",
    status_code=HTTP_202_ACCEPTED,
    responses=openapi.problems(400, 401, 404, 409, 429, 503),
)
async def redeliver_registration(
    registration_id: FromPath[str], state: State
) -> views.Registration:
    """Send the registration's webhook again, with the same ``webhook-id``.

    Works for delivered, exhausted and gone events alike; the attempt count
    starts again from the first step of the retry schedule.
    """
    store: Store = state.store
    result = await store.redeliver(registration_id)
    view = await views.registration_view(store, registration_id)
    if view is None:
        raise NotFoundException(
            detail=f"registration {short_id(registration_id)} not found"
        )
    if result == 0 and view.state == "filtered":
        raise HTTPException(
            status_code=409,
            detail=f"registration {registration_id} has no webhook: its job "
            "ended with an event that its events filter excludes",
        )
    if result == 0:
        raise HTTPException(
            status_code=409,
            detail=f"registration {registration_id} has no webhook yet (state "
            f"{view.state!r}); only a finished job's webhook can be redelivered",
        )
    log.info(
        "registration.redelivered",
        registration_id=registration_id,
        already_pending=result == 2,
    )
    return view


@delete(
    "/registrations/{registration_id:str}",
    responses=openapi.problems(400, 401, 404, 503),
)
async def delete_registration(registration_id: FromPath[str], state: State) -> None:
    """Stop tracking; no webhook is sent for this registration afterwards."""
    store: Store = state.store
    registration = await store.registration(registration_id)
    if registration is None or not await store.delete(registration):
        raise NotFoundException(
            detail=f"registration {short_id(registration_id)} not found"
        )
    log.info("registration.deleted", registration_id=registration_id)


@get(
    "/healthz",
    responses=openapi.problems()
    | {200: openapi.json_response(openapi.Health, "The process is alive.")},
)
async def healthz() -> dict[str, str]:
    """Report that the process is alive."""
    return {"status": "ok"}


@get(
    "/metrics",
    media_type="text/plain; version=0.0.4",
    responses=openapi.problems(503),
)
async def metrics(state: State) -> str:
    """Return fleet-wide metrics in the Prometheus text format."""
    return await relay_metrics.render(state.store)


@get(
    "/readyz",
    responses=openapi.problems()
    | {
        200: openapi.json_response(openapi.Readiness, "Ready to serve."),
        503: openapi.json_response(openapi.Readiness, "Not ready, and why."),
    },
)
async def readyz(state: State) -> Response[dict[str, Any]]:
    """Report whether Redis is reachable and its keyspace at this code's version."""
    store: Store = state.store
    try:
        version = await store.schema_version()
    except StoreUnavailableError:
        return Response(
            {"status": "unavailable", "redis": "unreachable"}, status_code=503
        )
    if version != keyspace.SCHEMA_VERSION:
        body = {
            "status": "unavailable",
            "schema": version,
            "expected": keyspace.SCHEMA_VERSION,
        }
        return Response(body, status_code=503)
    return Response({"status": "ok", "schema": version})


def logs_requests(settings: Settings) -> bool:
    """Return whether the log level lets the per-request INFO line through."""
    return settings.log_level in ("DEBUG", "INFO")


def access_log(app: ASGIApp) -> ASGIApp:
    """Middleware: one log line per HTTP request, without headers or query."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        structlog.contextvars.clear_contextvars()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_wrapper)
        finally:
            log.info(
                "http.request",
                method=scope["method"],
                path=scope["path"],
                status_code=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
            )

    return middleware


def create_app(settings: Settings, resolver: Resolver | None = None) -> Litestar:
    """Build the Litestar app; Redis connects lazily on the first request.

    ``resolver`` looks up callback hostnames at registration; tests pass
    their own so no test depends on public DNS.
    """
    settings.require_api()
    # A blocking pool makes a burst of requests wait briefly for a connection
    # instead of failing as if Redis were down.
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=REDIS_CONNECTIONS,
        timeout=5,
        socket_timeout=5,
        socket_connect_timeout=2,
    )
    client = aioredis.Redis(connection_pool=pool)

    async def close_redis() -> None:
        await client.aclose()

    v1 = Router(
        path="/v1",
        route_handlers=[
            create_registration,
            read_registration,
            list_attempts,
            redeliver_registration,
            delete_registration,
        ],
        guards=[require_token],
        security=[{openapi.BEARER_SCHEME: []}],
    )
    return Litestar(
        route_handlers=[v1, healthz, readyz, metrics],
        state=State(
            {
                "settings": settings,
                "store": Store(client, settings.key_prefix, settings.retention_s),
                "cred": keyspace.credential_id(settings.modelgates_api_key.reveal()),
                "resolver": resolver or resolve_host,
            }
        ),
        exception_handlers={
            HTTPException: _http_error,
            InputError: _input_error,
            StoreUnavailableError: _store_down,
            SchemaError: _schema_missing,
            Exception: _unhandled,
        },
        # The middleware only writes an INFO line, so it is left out when
        # INFO is filtered: it cost about a tenth of a request's CPU.
        middleware=[access_log] if logs_requests(settings) else [],
        request_max_body_size=settings.max_body_bytes,
        on_shutdown=[close_redis],
        openapi_config=openapi.openapi_config(),
        logging_config=None,
    )
