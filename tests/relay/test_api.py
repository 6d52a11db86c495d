"""Tests of the HTTP API over real HTTP, with a real Redis behind it.

Every rejected request must return ``application/problem+json`` whose detail
names the field and the rule, and must leave nothing in Redis but the schema
version. No worker runs here, so callback URLs are stored but never called.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import redis

from relay.api import create_app
from relay.errors import SettingsError
from relay.keys import SCHEMA_VERSION
from relay.settings import Settings
from tests.conftest import (
    API_TOKEN,
    MODELGATES_KEY,
    PREFIX,
    ApiFactory,
    fake_resolver,
)
from tests.servers import serve_in_thread

REGISTRATIONS = "/v1/registrations"
PROBLEM_JSON = "application/problem+json"
CALLBACK_URL = "http://127.0.0.1:9/hook"
LOOPBACK = "127.0.0.0/8,::1/128"
ALL_EVENTS = [
    "video.completed",
    "video.failed",
    "video.cancelled",
    "video.expired",
    "video.tracking_failed",
]


def registration_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"job_id": "job-api-1", "callback_url": CALLBACK_URL}
    body.update(changes)
    return body


def assert_problem(
    response: httpx.Response, status: int, *fragments: str
) -> dict[str, Any]:
    """Check a problem response. Each fragment must appear in its detail."""
    assert response.status_code == status, response.text
    media_type = response.headers["content-type"].split(";")[0]
    assert media_type == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert "Traceback" not in response.text
    assert API_TOKEN not in response.text
    for fragment in fragments:
        assert fragment in body["detail"]
    return body


def assert_nothing_stored(redis_client: redis.Redis) -> None:
    """Assert that no registration is stored: only the schema version, fleet
    counters, the token's rate bucket and the tenant's count, at zero."""
    kept = (f"{PREFIX}stats:", f"{PREFIX}ratelimit:apikey:")
    stored = {
        key
        for key in redis_client.keys(f"{PREFIX}*")
        if not key.decode().startswith(kept)
    }
    assert stored <= {f"{PREFIX}schema".encode(), f"{PREFIX}tenant:default".encode()}
    assert int(redis_client.hget(f"{PREFIX}tenant:default", "active") or 0) == 0


def unused_port() -> int:
    """Return a loopback port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def create(api: httpx.Client, **changes: Any) -> httpx.Response:
    return api.post(REGISTRATIONS, json=registration_body(**changes))


@contextmanager
def running_api(redis_url: str, allow_cidrs: str) -> Iterator[httpx.Client]:
    """Serve one API for a module, because ``api`` starts a server per test."""
    settings = Settings.from_env(
        {
            "REDIS_URL": redis_url,
            "RELAY_KEY_PREFIX": PREFIX,
            "RELAY_API_TOKEN": API_TOKEN,
            "MODELGATES_API_KEY": MODELGATES_KEY,
            "RELAY_CALLBACK_ALLOW_CIDRS": allow_cidrs,
        }
    )
    with serve_in_thread(create_app(settings, fake_resolver)) as base_url:
        with httpx.Client(
            base_url=base_url,
            headers={"authorization": f"Bearer {API_TOKEN}"},
            trust_env=False,
        ) as client:
            yield client


@pytest.fixture(scope="module")
def loopback_server(redis_url: str) -> Iterator[httpx.Client]:
    with running_api(redis_url, LOOPBACK) as client:
        yield client


@pytest.fixture(scope="module")
def strict_server(redis_url: str) -> Iterator[httpx.Client]:
    with running_api(redis_url, "") as client:
        yield client


@pytest.fixture
def shared_api(loopback_server: httpx.Client, migrated: redis.Redis) -> httpx.Client:
    """The module's API, allowing loopback callbacks, over a migrated Redis."""
    return loopback_server


@pytest.fixture
def strict_api(strict_server: httpx.Client, migrated: redis.Redis) -> httpx.Client:
    """The module's API with an empty callback allow-list, as in production."""
    return strict_server


@pytest.fixture
def anonymous(shared_api: httpx.Client) -> Iterator[httpx.Client]:
    """A client for the same API that sends no Authorization header."""
    with httpx.Client(base_url=shared_api.base_url, trust_env=False) as client:
        yield client


# Rejected registrations: body shape and types


@pytest.mark.parametrize(
    ("body", "status", "fragments"),
    [
        pytest.param(
            {"callback_url": CALLBACK_URL}, 400, ("job_id", "missing"), id="no-job"
        ),
        pytest.param(
            {"job_id": "job-1"}, 400, ("callback_url", "missing"), id="no-callback"
        ),
        pytest.param(
            registration_body(color="red"), 400, ("color", "unknown"), id="extra"
        ),
        pytest.param(
            registration_body(events=[]), 422, ("events", "at least one"), id="no-ev"
        ),
        pytest.param(
            registration_body(events=["video.started"]),
            422,
            ("events", "unknown event"),
            id="unknown-event",
        ),
        pytest.param(
            registration_body(metadata={"blob": "x" * 4100}),
            422,
            ("metadata", "at most 4096 bytes"),
            id="metadata-size",
        ),
        pytest.param(
            registration_body(job_id=5),
            400,
            ("job_id",),
            id="job-number",
        ),
        pytest.param(
            registration_body(events="video.completed"),
            400,
            ("events",),
            id="events-string",
        ),
        pytest.param(
            registration_body(metadata=[1, 2]),
            400,
            ("metadata",),
            id="metadata-list",
        ),
    ],
)
def test_create_rejects_invalid_body(
    shared_api: httpx.Client,
    redis_client: redis.Redis,
    body: dict[str, Any],
    status: int,
    fragments: tuple[str, ...],
) -> None:
    response = shared_api.post(REGISTRATIONS, json=body)

    assert_problem(response, status, *fragments)
    assert_nothing_stored(redis_client)


def test_create_invalid_body_lists_errors(shared_api: httpx.Client) -> None:
    response = create(shared_api, job_id=5)

    body = assert_problem(response, 400)
    assert body["errors"][0]["key"] == "job_id"


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"{bad", id="bare-word"),
        pytest.param(b'{"job_id": "job-1",}', id="trailing-comma"),
    ],
)
def test_create_rejects_malformed_json(
    shared_api: httpx.Client, redis_client: redis.Redis, content: bytes
) -> None:
    response = shared_api.post(
        REGISTRATIONS, content=content, headers={"content-type": "application/json"}
    )

    assert_problem(response, 400, "JSON is malformed")
    assert_nothing_stored(redis_client)


def test_create_rejects_json_array(
    shared_api: httpx.Client, redis_client: redis.Redis
) -> None:
    response = shared_api.post(REGISTRATIONS, json=[registration_body()])

    assert_problem(response, 400, "object")
    assert_nothing_stored(redis_client)


# Rejected registrations: job IDs


@pytest.mark.parametrize(
    ("job_id", "rule"),
    [
        pytest.param("", "must not be empty", id="empty"),
        pytest.param("j" * 257, "at most 256 characters", id="257-chars"),
        pytest.param("a/b", "must not contain '/'", id="slash"),
        pytest.param("..", "'..'", id="dot-dot"),
        pytest.param("a..b", "'..'", id="inner-dot-dot"),
        pytest.param("a?b", "must not contain '?'", id="question-mark"),
        pytest.param("a#b", "must not contain '#'", id="hash"),
        pytest.param("a%2Fb", "must not contain '%'", id="percent"),
        pytest.param("a\\b", "must not contain '\\\\'", id="backslash"),
        pytest.param("a b", "printable ASCII", id="space"),
        pytest.param("a\tb", "printable ASCII", id="tab"),
        pytest.param("a\nb", "printable ASCII", id="newline"),
        pytest.param("a\x01b", "printable ASCII", id="control"),
        pytest.param("jöb-1", "printable ASCII", id="non-ascii"),
    ],
)
def test_create_rejects_unsafe_job_id(
    shared_api: httpx.Client, redis_client: redis.Redis, job_id: str, rule: str
) -> None:
    response = create(shared_api, job_id=job_id)

    assert_problem(response, 422, "job_id", rule)
    assert_nothing_stored(redis_client)


def test_create_accepts_256_char_job_id(shared_api: httpx.Client) -> None:
    response = create(shared_api, job_id="j" * 256)

    assert response.status_code == 201, response.text


# Rejected registrations: callback URLs


@pytest.mark.parametrize(
    ("callback_url", "rule"),
    [
        pytest.param("", "must not be empty", id="empty"),
        pytest.param("/hooks/relay", "absolute http", id="relative"),
        pytest.param("ftp://127.0.0.1/hook", "absolute http", id="ftp"),
        pytest.param("javascript:alert(1)", "absolute http", id="javascript"),
        pytest.param("http:///hook", "absolute http", id="no-host"),
        pytest.param("http://user:pass@127.0.0.1/hook", "credentials", id="userinfo"),
        pytest.param("http://127.0.0.1/hook#part", "#fragment", id="fragment"),
        pytest.param("http://127.0.0.1/hook#", "#fragment", id="empty-fragment"),
        pytest.param(
            "http://127.0.0.1/" + "a" * 2048, "at most 2048 characters", id="long"
        ),
        pytest.param("http://127.0.0.1:99999/hook", "port between", id="port-big"),
        pytest.param("http://127.0.0.1:80a/hook", "port between", id="port-text"),
        pytest.param("http://127.0.0.1/a b", "whitespace", id="space"),
    ],
)
def test_create_rejects_invalid_callback(
    shared_api: httpx.Client, redis_client: redis.Redis, callback_url: str, rule: str
) -> None:
    response = create(shared_api, callback_url=callback_url)

    assert_problem(response, 422, "callback_url", rule)
    assert_nothing_stored(redis_client)


@pytest.mark.parametrize(
    ("callback_url", "rule"),
    [
        pytest.param("http://127.0.0.1/", "not a public address", id="loopback"),
        pytest.param("http://2130706433/", "not a public address", id="decimal"),
        pytest.param("http://0177.0.0.1/", "not a public address", id="octal"),
        pytest.param("http://[::1]/", "not a public address", id="ipv6-loopback"),
        pytest.param("http://[::ffff:127.0.0.1]/", "embeds", id="ipv4-mapped"),
        pytest.param("http://10.1.2.3/", "not a public address", id="private"),
        pytest.param("http://169.254.169.254/", "metadata", id="metadata"),
        pytest.param("http://localhost/", "not a public address", id="localhost"),
        pytest.param("http://LOCALHOST./", "not a public address", id="localhost-dot"),
    ],
)
def test_create_rejects_blocked_host(
    strict_api: httpx.Client, redis_client: redis.Redis, callback_url: str, rule: str
) -> None:
    response = create(strict_api, callback_url=callback_url)

    assert_problem(response, 422, "callback_url", "not allowed", rule)
    assert_nothing_stored(redis_client)


@pytest.mark.parametrize("host", ["hooks.example.com", "dual.example.com"])
def test_create_accepts_public_hostname(strict_api: httpx.Client, host: str) -> None:
    # A fake resolver returns the address; no worker runs, so nothing calls it.
    response = create(strict_api, callback_url=f"https://{host}/relay")

    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("host", "rule"),
    [
        ("private.example.com", "10.0.0.5 is not a public address"),
        ("loopback.example.com", "127.0.0.1 is not a public address"),
        ("metadata.example.com", "cloud metadata address"),
        ("mapped.example.com", "embeds 10.0.0.5"),
        ("nat64.example.com", "embeds 10.0.0.5"),
        ("ula.example.com", "fd12::1 is not a public address"),
        ("mixed.example.com", "192.168.1.1 is not a public address"),
        ("cgnat.example.com", "100.64.0.1 is not a public address"),
    ],
)
def test_create_rejects_hostname_resolving_blocked(
    strict_api: httpx.Client, redis_client: redis.Redis, host: str, rule: str
) -> None:
    response = create(strict_api, callback_url=f"https://{host}/relay")

    assert_problem(response, 422, "callback_url", f"{host} resolves to", rule)
    assert_nothing_stored(redis_client)


def test_create_rejects_unresolvable_hostname(
    strict_api: httpx.Client, redis_client: redis.Redis
) -> None:
    response = create(strict_api, callback_url="https://nowhere.example.com/relay")

    assert_problem(response, 422, "callback_url", "could not be resolved")
    assert_nothing_stored(redis_client)


# Rejected requests: content type, size, authentication


@pytest.mark.parametrize(
    ("headers", "content"),
    [
        pytest.param({"content-type": "text/plain"}, b"{}", id="text-plain"),
        pytest.param(
            {"content-type": "application/x-www-form-urlencoded"},
            b"job_id=job-1&callback_url=http%3A%2F%2F127.0.0.1%2F",
            id="form",
        ),
        pytest.param({}, b'{"job_id": "job-1"}', id="none"),
    ],
)
def test_create_rejects_non_json_type(
    shared_api: httpx.Client,
    redis_client: redis.Redis,
    headers: dict[str, str],
    content: bytes,
) -> None:
    response = shared_api.post(REGISTRATIONS, content=content, headers=headers)

    assert_problem(response, 415, "content-type", "application/json")
    assert_nothing_stored(redis_client)


def test_create_accepts_json_with_charset(shared_api: httpx.Client) -> None:
    response = shared_api.post(
        REGISTRATIONS,
        content=httpx.Request("POST", "/", json=registration_body()).content,
        headers={"content-type": "application/json; charset=utf-8"},
    )

    assert response.status_code == 201, response.text


def test_create_rejects_oversized_body(
    shared_api: httpx.Client, redis_client: redis.Redis
) -> None:
    padding = "x" * 65536
    response = create(shared_api, metadata={"padding": padding})

    assert_problem(response, 413, "larger than the limit")
    assert_nothing_stored(redis_client)


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("Bearer wrong-token-0123456789", id="wrong-token"),
        pytest.param("Bearer " + API_TOKEN[:-1], id="token-prefix"),
        pytest.param("Bearer", id="scheme-only"),
        pytest.param(
            "Basic " + base64.b64encode(f"relay:{API_TOKEN}".encode()).decode(),
            id="basic",
        ),
        pytest.param("Token " + API_TOKEN, id="other-scheme"),
    ],
)
def test_create_rejects_bad_token(
    anonymous: httpx.Client, redis_client: redis.Redis, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"authorization": authorization}

    response = anonymous.post(REGISTRATIONS, json=registration_body(), headers=headers)

    assert_problem(response, 401, "Bearer")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert_nothing_stored(redis_client)


def test_auth_checked_before_body(
    anonymous: httpx.Client, redis_client: redis.Redis
) -> None:
    response = anonymous.post(REGISTRATIONS, content=b"not json")

    assert_problem(response, 401)
    assert_nothing_stored(redis_client)


def test_read_requires_token(anonymous: httpx.Client) -> None:
    response = anonymous.get(f"{REGISTRATIONS}/reg_missing")

    assert_problem(response, 401)
    assert "www-authenticate" in response.headers


def test_auth_accepts_lowercase_scheme(anonymous: httpx.Client) -> None:
    response = anonymous.post(
        REGISTRATIONS,
        json=registration_body(),
        headers={"authorization": f"bearer {API_TOKEN}"},
    )

    assert response.status_code == 201, response.text


# Not found


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"{REGISTRATIONS}/reg_missing"),
        ("DELETE", f"{REGISTRATIONS}/reg_missing"),
        ("GET", f"{REGISTRATIONS}/reg_missing/attempts"),
    ],
)
def test_registration_missing_returns_404(
    shared_api: httpx.Client, method: str, path: str
) -> None:
    response = shared_api.request(method, path)

    assert_problem(response, 404, "reg_missing", "not found")


def test_unknown_route_returns_404(shared_api: httpx.Client) -> None:
    response = shared_api.get("/v1/nothing-here")

    assert_problem(response, 404)


# Registrations that succeed


def test_create_repeated_returns_same_id(api: httpx.Client) -> None:
    first = create(api)
    second = create(api)

    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]


def test_create_other_callback_new_id(api: httpx.Client) -> None:
    first = create(api)
    second = create(api, callback_url="http://127.0.0.1:9/other")

    assert first.status_code == 201
    assert second.status_code == 201
    assert second.json()["id"] != first.json()["id"]


def test_read_shows_new_registration(api: httpx.Client) -> None:
    metadata = {"order": 7, "note": "née ✓", "nested": {"list": [1, None, True]}}
    created = create(api, metadata=metadata).json()

    response = api.get(f"{REGISTRATIONS}/{created['id']}")

    assert response.status_code == 200
    view = response.json()
    assert view == created
    assert view["id"].startswith("reg_")
    assert view["job_id"] == "job-api-1"
    assert view["callback_url"] == CALLBACK_URL
    assert view["state"] == "tracking"
    assert view["upstream"]["polls"] == 0
    assert view["delivery"] is None
    assert view["events"] == ALL_EVENTS
    assert view["metadata"] == metadata


def test_create_keeps_event_filter(api: httpx.Client) -> None:
    events = ["video.failed", "video.completed", "video.failed"]

    view = create(api, events=events).json()

    assert view["events"] == ["video.failed", "video.completed"]


def test_attempts_empty_for_new_registration(api: httpx.Client) -> None:
    registration_id = create(api).json()["id"]

    response = api.get(f"{REGISTRATIONS}/{registration_id}/attempts")

    assert response.status_code == 200
    assert response.json()["registration_id"] == registration_id
    assert response.json()["attempts"] == []


def test_delete_frees_dedupe_slot(api: httpx.Client, redis_client: redis.Redis) -> None:
    registration_id = create(api).json()["id"]

    deleted = api.delete(f"{REGISTRATIONS}/{registration_id}")
    read = api.get(f"{REGISTRATIONS}/{registration_id}")

    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_problem(read, 404)
    assert_nothing_stored(redis_client)

    again = create(api)
    assert again.status_code == 201
    assert again.json()["id"] != registration_id


def test_delete_twice_returns_404(api: httpx.Client) -> None:
    registration_id = create(api).json()["id"]

    first = api.delete(f"{REGISTRATIONS}/{registration_id}")
    second = api.delete(f"{REGISTRATIONS}/{registration_id}")

    assert first.status_code == 204
    assert_problem(second, 404)


def test_token_absent_from_responses(api: httpx.Client) -> None:
    registration_id = create(api, metadata={"k": "v"}).json()["id"]
    responses = [
        create(api, metadata={"k": "v"}),
        api.get(f"{REGISTRATIONS}/{registration_id}"),
        api.get(f"{REGISTRATIONS}/{registration_id}/attempts"),
        api.get("/healthz"),
        api.get("/readyz"),
        api.get("/schema/openapi.json"),
        api.delete(f"{REGISTRATIONS}/{registration_id}"),
    ]

    for response in responses:
        assert response.status_code < 400, response.text
        assert API_TOKEN not in response.text


def test_create_conflicts_on_other_metadata(api: httpx.Client) -> None:
    first = create(api, metadata={"k": "v"})
    second = create(api, metadata={"k": "other"})

    assert first.status_code == 201
    assert second.status_code == 409
    assert second.headers["content-type"].startswith("application/problem+json")
    assert first.json()["id"] in second.json()["detail"]


# Health, readiness and the OpenAPI document


def test_healthz_returns_ok(shared_api: httpx.Client) -> None:
    response = shared_api.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_reports_schema_version(shared_api: httpx.Client) -> None:
    response = shared_api.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "schema": SCHEMA_VERSION}


def test_readyz_fails_without_schema(
    shared_api: httpx.Client, redis_client: redis.Redis
) -> None:
    redis_client.delete(f"{PREFIX}schema")

    response = shared_api.get("/readyz")

    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert response.json()["schema"] is None


def test_openapi_lists_registrations(shared_api: httpx.Client) -> None:
    response = shared_api.get("/schema/openapi.json")

    assert response.status_code == 200
    assert "/v1/registrations" in response.json()["paths"]


# Redis unreachable


@pytest.fixture(scope="module")
def api_without_redis() -> Iterator[httpx.Client]:
    with running_api(f"redis://127.0.0.1:{unused_port()}/0", LOOPBACK) as client:
        yield client


def test_create_without_redis_returns_503(api_without_redis: httpx.Client) -> None:
    response = create(api_without_redis)

    assert_problem(response, 503, "Redis")
    assert "retry-after" in response.headers


def test_read_without_redis_returns_503(api_without_redis: httpx.Client) -> None:
    response = api_without_redis.get(f"{REGISTRATIONS}/reg_missing")

    assert_problem(response, 503, "Redis")


def test_readyz_without_redis_returns_503(api_without_redis: httpx.Client) -> None:
    response = api_without_redis.get("/readyz")

    assert response.status_code == 503
    assert response.json()["redis"] == "unreachable"
    assert "Traceback" not in response.text


def test_short_token_setting_stops_app(start_api: ApiFactory) -> None:
    with pytest.raises(SettingsError) as raised:
        start_api(RELAY_API_TOKEN="too-short")

    assert "RELAY_API_TOKEN" in str(raised.value)


def test_without_token_setting_only_api_keys_pass(start_api: ApiFactory) -> None:
    client = start_api(RELAY_API_TOKEN="")

    for header in ("Bearer", "Basic abc", f"Bearer {API_TOKEN}"):
        response = client.get(REGISTRATIONS, headers={"authorization": header})
        assert_problem(response, 401, "API key")


def test_metrics_count_fleet_outcomes(api: httpx.Client) -> None:
    create(api)
    create(api)

    response = api.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'relay_registrations_total{result="created"} 1' in response.text
    assert 'relay_registrations_total{result="reused"} 1' in response.text
    assert 'relay_tracked_jobs{state="unknown"} 1' in response.text
    assert 'relay_tracked_jobs{state="pending"} 0' in response.text
    assert "relay_exhausted_webhooks 0" in response.text
    assert "relay_redis_up 1" in response.text
    assert (
        'relay_http_requests_total{method="POST",route="/v1/registrations",'
        'status_class="2xx"} 2'
    ) in response.text


def test_metrics_count_invalid_registrations(api: httpx.Client) -> None:
    create(api, job_id="")

    response = api.get("/metrics")

    assert 'relay_registrations_total{result="invalid"} 1' in response.text


def test_metrics_answer_without_redis(api_without_redis: httpx.Client) -> None:
    api_without_redis.get(f"{REGISTRATIONS}/reg_missing")

    response = api_without_redis.get("/metrics")

    assert response.status_code == 200
    assert "relay_redis_up 0" in response.text
    assert "relay_http_requests_total{" in response.text
    assert "relay_tracked_jobs" not in response.text


def test_responses_carry_a_request_id(api: httpx.Client) -> None:
    own = api.get("/healthz", headers={"x-request-id": "client-id-1"})
    made = api.get("/healthz")
    unusable = api.get("/healthz", headers={"x-request-id": "bad id with spaces"})

    assert own.headers["x-request-id"] == "client-id-1"
    assert len(made.headers["x-request-id"]) == 16
    assert unusable.headers["x-request-id"] != "bad id with spaces"
