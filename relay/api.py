"""The HTTP API: registrations and the tenant under ``/v1``, health, metrics.

OpenAPI is served at ``/schema``. Every ``/v1`` route needs a bearer token:
a tenant's API key from ``relay keys create``, or ``RELAY_API_TOKEN`` for the
tenant ``default``.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from typing import Annotated, Any

import msgspec
import redis.asyncio as aioredis
import structlog
from litestar import Litestar, Request, Response, Router, delete, get, post, put
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_201_CREATED,
    HTTP_202_ACCEPTED,
    HTTP_204_NO_CONTENT,
)

from relay import keys as keyspace
from relay import metrics as relay_metrics
from relay import openapi, problems, views
from relay.auth import Authenticator, Caller
from relay.errors import StoreUnavailableError
from relay.events import rfc3339_ms
from relay.http_observe import HttpMetrics, observe_requests
from relay.idempotency import HEADER as IDEMPOTENCY_HEADER
from relay.idempotency import Idempotency, check_key
from relay.registrations import (
    InputError,
    NewRegistration,
    check_callback_addresses,
    new_registration_id,
    validate,
)
from relay.safe_transport import Resolver, resolve_host
from relay.settings import Settings
from relay.store import Limits, PageQuery, Store, index_member
from relay.tenants import Tenants, is_usable_modelgates_key

log = structlog.get_logger(__name__)

REDIS_CONNECTIONS = 64
MAX_PAGE = 200
STATES = ("tracking", "delivering", "delivered", "exhausted", "gone", "filtered")
_ENCODER = msgspec.json.Encoder()
# A cursor is an index member with '.' for ':' (see ``relay.keys``).
_CURSOR = re.compile(r"([0-9]{13})\.(reg_[A-Za-z0-9_-]{1,64})")


def _raw_header(connection: ASGIConnection[Any, Any, Any, Any], name: bytes) -> bytes:
    """Return the first value of a lower-case header name, or b"" if absent.

    This reads the ASGI scope directly: building Litestar's Headers object
    for one value cost a few percent of a request's CPU.
    """
    for key, value in connection.scope["headers"]:
        if key == name:
            return bytes(value)
    return b""


async def require_caller(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Guard: authenticate the request's bearer token, or raise 401."""
    authenticator: Authenticator = connection.app.state.authenticator
    scheme, _, token = _raw_header(connection, b"authorization").partition(b" ")
    caller = None
    if scheme.lower() == b"bearer" and token.strip():
        caller = await authenticator.caller(token.strip())
    if caller is None:
        raise NotAuthorizedException(
            detail="missing, unknown or revoked API key; send "
            "'Authorization: Bearer <key>'",
            headers={"www-authenticate": 'Bearer realm="relay"'},
        )
    connection.scope["caller"] = caller  # type: ignore[typeddict-unknown-key]


def caller_of(request: Request[Any, Any, Any]) -> Caller:
    """Return the Caller that ``require_caller`` found."""
    return request.scope["caller"]  # type: ignore[typeddict-item, no-any-return]


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
            detail="request body is missing; send a JSON object",
        )


def _not_found(registration_id: str) -> NotFoundException:
    return NotFoundException(
        detail=f"registration {problems.short_id(registration_id)} not found"
    )


@post(
    "/registrations",
    before_request=require_json,
    status_code=HTTP_201_CREATED,
    responses=openapi.problems(400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
    | {200: openapi.json_response(views.Registration, "The stored registration.")},
    operation_class=openapi.IdempotentOperation,
)
async def create_registration(
    data: openapi.RegistrationCreateBody,
    request: Request[Any, Any, Any],
    state: State,
) -> Response[Any]:
    """Register a ModelGates job and the URL that receives its outcome.

    The same job ID and callback URL again returns the existing registration
    with 200 instead of 201. With an ``Idempotency-Key`` header, a retried
    request gets the first response again, status code included.
    """
    caller = caller_of(request)
    header = _raw_header(request, IDEMPOTENCY_HEADER.encode())
    if not header:
        view, status = await _register(data, caller, state)
        return Response(view, status_code=status)

    idempotency: Idempotency = state.idempotency
    key = idempotency.key(caller.tenant, check_key(header.decode("latin-1")))
    body = await request.body()
    replay = await idempotency.claim(key, body)
    if replay is not None:
        return Response(
            replay.body,
            status_code=replay.status,
            media_type="application/json",
            headers={"idempotent-replayed": "true"},
        )
    try:
        view, status = await _register(data, caller, state)
    except BaseException:
        await idempotency.release(key)
        raise
    encoded = _ENCODER.encode(view)
    await idempotency.store(key, body, status, encoded)
    return Response(encoded, status_code=status, media_type="application/json")


async def _register(
    data: views.RegistrationCreate, caller: Caller, state: State
) -> tuple[views.Registration, int]:
    settings: Settings = state.settings
    store: Store = state.store
    try:
        request = validate(
            data.job_id, data.callback_url, data.events, data.metadata, settings
        )
        await check_callback_addresses(request.callback_url, settings, state.resolver)
    except InputError as exc:
        log.info("registration.invalid", field=exc.field, tenant=caller.tenant)
        await store.count("registrations", {"invalid": 1})
        raise
    result = await store.register(
        new_registration_id(),
        request,
        caller.tenant,
        caller.cred,
        settings.poll_first_delay_s,
        settings.poll_deadline_s,
        state.limits,
        caller.key_id,
    )
    if result.status == "rate_limited":
        wait_s = max(1, round(result.retry_after_s + 0.5))
        log.warning(
            "registration.rate_limited", tenant=caller.tenant, key_id=caller.key_id
        )
        raise HTTPException(
            status_code=429,
            detail=f"API key {caller.key_id} is over its limit of "
            f"{settings.key_rate_per_s:g} registrations per second; retry after "
            f"{wait_s} s",
            headers={"retry-after": str(wait_s)},
        )
    if result.status == "at_cap":
        log.warning("registration.at_cap", tenant=caller.tenant, active=result.active)
        raise HTTPException(
            status_code=403,
            detail=f"tenant {caller.tenant!r} has {result.active} active "
            f"registrations, the most this relay allows "
            f"({settings.tenant_max_active}); delete registrations you no longer "
            "need or wait for jobs to finish",
        )
    created = result.status == "created"
    if created:
        view = views.new_registration_view(
            result.registration_id, request, result.now_ms
        )
    else:
        view = await _existing_view(store, result.registration_id, request, caller)
    if logs_requests(settings):
        # The request's one log line (``http.request``) carries these fields.
        structlog.contextvars.bind_contextvars(
            registration_id=result.registration_id,
            job_id=request.job_id,
            created=created,
        )
    return view, HTTP_201_CREATED if created else HTTP_200_OK


async def _existing_view(
    store: Store, registration_id: str, request: NewRegistration, caller: Caller
) -> views.Registration:
    """Return the registration a repeated POST matched, or raise 409 if it differs."""
    view = await views.registration_view(store, registration_id, caller.tenant)
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


@get("/registrations", responses=openapi.problems(400, 401, 503))
async def list_registrations(
    request: Request[Any, Any, Any],
    state: State,
    job_id: Annotated[
        str | None,
        QueryParameter(description="only registrations of this job", max_length=256),
    ] = None,
    registration_state: Annotated[
        str | None,
        QueryParameter(
            name="state", description="only registrations in this state", enum=STATES
        ),
    ] = None,
    created_after: Annotated[
        datetime | None,
        QueryParameter(description="only registrations created after this time"),
    ] = None,
    created_before: Annotated[
        datetime | None,
        QueryParameter(description="only registrations created before this time"),
    ] = None,
    order: Annotated[
        str,
        QueryParameter(
            description="newest first ('desc', the default) or oldest first",
            enum=("asc", "desc"),
        ),
    ] = "desc",
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[
        str | None,
        QueryParameter(description="the next_cursor of the previous page"),
    ] = None,
) -> views.RegistrationPage:
    """List the caller's registrations, filtered, a page at a time.

    Pages follow creation order and stay correct while registrations are
    added: a page never repeats or skips an item of an earlier page.
    """
    caller = caller_of(request)
    if registration_state is not None and registration_state not in STATES:
        raise HTTPException(
            status_code=400,
            detail=f"state must be one of {', '.join(STATES)}, "
            f"got {registration_state[:40]!r}",
        )
    if order not in ("asc", "desc"):
        raise HTTPException(
            status_code=400, detail=f"order must be 'asc' or 'desc', got {order[:20]!r}"
        )
    page = PageQuery(
        limit=limit,
        newest_first=order == "desc",
        after_ms=_epoch_ms(created_after, "created_after"),
        before_ms=_epoch_ms(created_before, "created_before"),
        cursor=_decode_cursor(cursor),
        job_id=job_id,
        state=registration_state,
    )
    store: Store = state.store
    rows, last = await store.list_registrations(caller.tenant, page)
    return views.RegistrationPage(
        data=[views.summary_view(row) for row in rows],
        next_cursor=_encode_cursor(last) if last else None,
    )


def _epoch_ms(moment: datetime | None, name: str) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise HTTPException(
            status_code=400,
            detail=f"{name} must carry a time zone, such as 2027-01-31T12:00:00Z",
        )
    return max(0, int(moment.timestamp() * 1000))


def _encode_cursor(member: str) -> str:
    return member.replace(":", ".")


def _decode_cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    match = _CURSOR.fullmatch(cursor)
    if match is None:
        raise HTTPException(
            status_code=400,
            detail="cursor is not one this API returned; pass next_cursor unchanged",
        )
    return index_member(int(match[1]), match[2])


@get(
    "/registrations/{registration_id:str}",
    responses=openapi.problems(400, 401, 404, 503),
)
async def read_registration(
    registration_id: FromPath[str], request: Request[Any, Any, Any], state: State
) -> views.Registration:
    """Return a registration: its state, the last upstream response and delivery."""
    view = await views.registration_view(
        state.store, registration_id, caller_of(request).tenant
    )
    if view is None:
        raise _not_found(registration_id)
    return view


@get(
    "/registrations/{registration_id:str}/attempts",
    responses=openapi.problems(400, 401, 404, 503),
)
async def list_attempts(
    registration_id: FromPath[str], request: Request[Any, Any, Any], state: State
) -> views.AttemptList:
    """Return the newest delivery attempts of a registration's webhook."""
    store: Store = state.store
    registration = await views.owned_registration(
        store, registration_id, caller_of(request).tenant
    )
    if registration is None:
        raise _not_found(registration_id)
    attempts = await store.attempts(registration["event_id"], keyspace.ATTEMPTS_KEPT)
    return views.AttemptList(
        registration_id=registration_id,
        event_id=registration["event_id"],
        attempts=[views.attempt_view(row) for row in attempts],
    )


@post(
    "/registrations/{registration_id:str}/redeliver",
    status_code=HTTP_202_ACCEPTED,
    responses=openapi.problems(400, 401, 404, 409, 503),
)
async def redeliver_registration(
    registration_id: FromPath[str], request: Request[Any, Any, Any], state: State
) -> views.Registration:
    """Send the registration's webhook again, with the same ``webhook-id``.

    Works for delivered, exhausted and gone events alike; the attempt count
    starts again from the first step of the retry schedule.
    """
    store: Store = state.store
    tenant = caller_of(request).tenant
    if await views.owned_registration(store, registration_id, tenant) is None:
        raise _not_found(registration_id)
    result = await store.redeliver(registration_id, tenant)
    view = await views.registration_view(store, registration_id, tenant)
    if view is None:
        raise _not_found(registration_id)
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
async def delete_registration(
    registration_id: FromPath[str], request: Request[Any, Any, Any], state: State
) -> None:
    """Stop tracking; no webhook is sent for this registration afterwards."""
    store: Store = state.store
    registration = await views.owned_registration(
        store, registration_id, caller_of(request).tenant
    )
    if registration is None or not await store.delete(registration):
        raise _not_found(registration_id)
    log.info("registration.deleted", registration_id=registration_id)


@get("/tenant", responses=openapi.problems(401, 503))
async def read_tenant(request: Request[Any, Any, Any], state: State) -> views.Tenant:
    """Return the calling tenant: its active registrations and key settings."""
    tenants: Tenants = state.tenants
    info = await tenants.info(caller_of(request).tenant)
    until_ms = info["previous_secret_until_ms"]
    return views.Tenant(
        name=info["name"],
        active_registrations=info["active_registrations"],
        own_modelgates_key=info["own_modelgates_key"],
        previous_secret_valid_until=rfc3339_ms(until_ms)
        if until_ms and until_ms > time.time() * 1000
        else None,
    )


@post(
    "/tenant/signing-secret",
    status_code=HTTP_201_CREATED,
    before_request=require_json,
    responses=openapi.problems(400, 401, 409, 413, 415, 503),
)
async def rotate_signing_secret(
    data: JSONBody[views.SigningSecretRotate],
    request: Request[Any, Any, Any],
    state: State,
) -> views.SigningSecret:
    """Replace the tenant's webhook signing secret; the new one is shown once.

    During ``grace_period_s`` every webhook carries signatures by both the
    new and the old secret, so receivers can switch without losing one.
    """
    if not 0 <= data.grace_period_s <= 30 * 86400:
        raise HTTPException(
            status_code=400,
            detail="grace_period_s must be between 0 and 2592000 (30 days)",
        )
    tenants: Tenants = state.tenants
    tenant = caller_of(request).tenant
    secret = await tenants.rotate_secret(tenant, data.grace_period_s)
    log.info("tenant.secret_rotated", tenant=tenant, grace_s=data.grace_period_s)
    until = time.time() * 1000 + data.grace_period_s * 1000
    return views.SigningSecret(
        signing_secret=secret,
        previous_secret_valid_until=rfc3339_ms(int(until))
        if data.grace_period_s
        else None,
    )


@put(
    "/tenant/modelgates-key",
    status_code=HTTP_204_NO_CONTENT,
    before_request=require_json,
    responses=openapi.problems(400, 401, 409, 413, 415, 422, 503),
)
async def set_modelgates_key(
    data: JSONBody[views.ModelGatesKey], request: Request[Any, Any, Any], state: State
) -> None:
    """Store the tenant's own ModelGates key; it is never shown again.

    Registrations created afterwards poll with it. Earlier ones keep the key
    they started with.
    """
    tenants: Tenants = state.tenants
    tenant = caller_of(request).tenant
    if not is_usable_modelgates_key(data.api_key):
        raise InputError(
            "api_key",
            "api_key must be 1 to 512 printable ASCII characters without spaces",
        )
    await tenants.set_modelgates_key(tenant, data.api_key)
    state.authenticator.forget(tenant)
    log.info("tenant.modelgates_key_set", tenant=tenant)


@delete("/tenant/modelgates-key", responses=openapi.problems(401, 409, 503))
async def clear_modelgates_key(request: Request[Any, Any, Any], state: State) -> None:
    """Go back to the relay-wide ModelGates key for new registrations."""
    tenants: Tenants = state.tenants
    tenant = caller_of(request).tenant
    await tenants.clear_modelgates_key(tenant)
    state.authenticator.forget(tenant)
    log.info("tenant.modelgates_key_cleared", tenant=tenant)


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
    """Return fleet-wide metrics in the Prometheus text format.

    When Redis is unreachable the page still responds with 200, with
    ``relay_redis_up 0`` and this process's own request metrics.
    """
    return await relay_metrics.render(state.store, state.http_metrics)


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
            list_registrations,
            read_registration,
            list_attempts,
            redeliver_registration,
            delete_registration,
            read_tenant,
            rotate_signing_secret,
            set_modelgates_key,
            clear_modelgates_key,
        ],
        guards=[require_caller],
        security=[{openapi.BEARER_SCHEME: []}],
    )
    store = Store(client, settings.key_prefix, settings.retention_s)
    tenants = Tenants(client, store.keys, settings.encryption_keys)
    http_metrics = HttpMetrics()
    default_cred = keyspace.credential_id(settings.modelgates_api_key.reveal())
    return Litestar(
        route_handlers=[v1, healthz, readyz, metrics],
        state=State(
            {
                "settings": settings,
                "store": store,
                "tenants": tenants,
                "authenticator": Authenticator(
                    tenants, settings.api_token, default_cred
                ),
                "idempotency": Idempotency(
                    client, store.keys, settings.idempotency_ttl_s
                ),
                "limits": Limits(
                    settings.key_rate_per_s,
                    settings.key_burst,
                    settings.tenant_max_active,
                ),
                "resolver": resolver or resolve_host,
                "http_metrics": http_metrics,
            }
        ),
        exception_handlers=problems.HANDLERS,
        # The middleware only writes an INFO line, so it is left out when
        # INFO is filtered: it cost about a tenth of a request's CPU.
        middleware=[observe_requests(http_metrics, logs_requests(settings))],
        request_max_body_size=settings.max_body_bytes,
        on_shutdown=[close_redis],
        openapi_config=openapi.openapi_config(),
        plugins=[openapi.StrictStructSchemaPlugin()],
        logging_config=None,
    )
