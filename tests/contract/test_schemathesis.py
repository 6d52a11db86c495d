"""schemathesis against the live API: real HTTP on loopback, real Redis behind it.

schemathesis reads the OpenAPI document the API serves, so every route in it,
including routes added later, is tested without changes here. Each request
must not get a 5xx, and the response must use a documented status code,
content type and body schema. Only the finished-registration tests run a
worker, and its webhooks go to a receiver on loopback.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from litestar.testing import TestClient
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ensure_resource_availability,
    response_schema_conformance,
    status_code_conformance,
    use_after_free,
)

import migrations
from relay.api import create_app
from relay.keys import Keys
from relay.registrations import MAX_CALLBACK_URL_CHARS
from relay.settings import Settings
from tests.conftest import (
    API_TOKEN,
    MODELGATES_KEY,
    PREFIX,
    ApiFactory,
    SimulatorAdmin,
    fake_resolver,
)
from tests.receivers import WebhookReceiver
from tests.relay.test_tenants import run_tenants
from tests.workers.test_deliver import wait_for_state

# Generated callback URLs keep their path and query but get this host, so no
# public address is ever registered, even as test data.
LOOPBACK_CALLBACK = "http://127.0.0.1:9/"
# Examples per operation in the fuzzing phase. The coverage phase adds its
# own fixed cases. With these sizes the module ran in about 15 s on a 2-core
# machine.
MAX_EXAMPLES = 100
# Examples per tenant operation with a tenant's own key.
TENANT_EXAMPLES = 30
# Call sequences in the workflow test, and the most calls in each.
WORKFLOWS = 25
WORKFLOW_STEPS = 8
# A fixed seed makes each CI run send the same requests, so a failure can be
# reproduced. Change it locally to explore other inputs.
SEED = 20260101
AUTHORIZATION = {"Authorization": f"Bearer {API_TOKEN}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Checks across a sequence: a created registration can be read, and a deleted
# one is gone for every route.
SEQUENCE_CHECKS = [ensure_resource_availability, use_after_free]


def served_document() -> dict[str, Any]:
    """Return the OpenAPI document that the API serves, without Redis or a socket.

    schemathesis builds one test per operation when this module is imported,
    before any fixture runs, so the document comes from an app served in
    process. ``test_served_document_matches_live`` checks that the live API
    serves the same one.
    """
    settings = Settings.from_env(
        {
            "RELAY_API_TOKEN": API_TOKEN,
            "MODELGATES_API_KEY": MODELGATES_KEY,
            "RELAY_LOG_LEVEL": "WARNING",
        }
    )
    with TestClient(create_app(settings, fake_resolver)) as client:
        response = client.get("/schema/openapi.json")
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


DOCUMENT = served_document()
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "cache": {"enabled": False},
        "headers": AUTHORIZATION,
        "generation": {
            "mode": "all",
            "max-examples": MAX_EXAMPLES,
            "database": "none",
        },
        "phases": {
            "stateful": {
                "inference": {"algorithms": ["dependency-analysis", "location-headers"]}
            }
        },
    }
)
schema = schemathesis.openapi.from_dict(copy.deepcopy(DOCUMENT), config=CONFIG)


@pytest.fixture
def base_url(migrated: redis.Redis, start_api: ApiFactory) -> str:
    return str(start_api().base_url)


@pytest.fixture
def session() -> Iterator[requests.Session]:
    """A requests session that ignores proxy settings from the environment."""
    with requests.Session() as session:
        session.trust_env = False
        yield session


def keep_callback_on_loopback(case: schemathesis.Case) -> None:
    """Point a generated callback URL at 127.0.0.1, so no public host is registered.

    A valid request gets a loopback URL with the generated text as its path,
    cut to the maximum length, so that it can create a registration. An
    invalid one keeps its text when it has no "//", because without an
    authority it has no host and the API rejects it. Otherwise it gets a
    loopback host in front.
    """
    body = case.body
    if not isinstance(body, dict) or not isinstance(body.get("callback_url"), str):
        return
    url = body["callback_url"]
    if case.meta is None or case.meta.generation.mode.is_positive:
        loopback_url = LOOPBACK_CALLBACK + quote(url)
        body["callback_url"] = loopback_url[:MAX_CALLBACK_URL_CHARS]
    elif "//" in url:
        body["callback_url"] = LOOPBACK_CALLBACK + url


# One API and one Redis serve every example of an operation on purpose: the
# registrations that examples create stay for the examples after them.
@schema.parametrize()
@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_api_conforms_to_schema(
    case: schemathesis.Case, base_url: str, session: requests.Session
) -> None:
    keep_callback_on_loopback(case)

    case.call_and_validate(base_url, session, checks=CHECKS, timeout=10)


def test_api_workflows_conform_to_schema(
    base_url: str, session: requests.Session, migrated: redis.Redis
) -> None:
    """Chain calls: a created registration's ID goes to the routes that take one.

    schemathesis infers these links from the document, because the response
    of a create has an ``id`` and the other routes take a ``registration_id``.
    """

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # Each sequence starts on an empty keyspace, so Hypothesis gets the
            # same responses when it replays or shrinks a sequence.
            migrated.flushdb()
            migrations.migrate(migrated, Keys(PREFIX))

        def before_call(self, case: schemathesis.Case) -> None:
            keep_callback_on_loopback(case)

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": base_url, "session": session, "timeout": 10}

        def validate_response(
            self, response: schemathesis.Response, case: schemathesis.Case, **_: Any
        ) -> None:
            case.validate_response(
                response, checks=CHECKS + SEQUENCE_CHECKS, recorder=self.recorder
            )

    Workflow.run(
        settings=settings(
            max_examples=WORKFLOWS,
            stateful_step_count=WORKFLOW_STEPS,
            deadline=None,
            derandomize=True,
            database=None,
        )
    )


# Operations on the caller's tenant. The API token belongs to the tenant
# "default", whose secrets come from the environment, so it gets 409 for
# every change. These run again with the key of a tenant of its own.
TENANT_OPERATIONS = [
    (method.upper(), path)
    for path, item in DOCUMENT["paths"].items()
    if path.startswith("/v1/tenant")
    for method in item
    if method in ("get", "put", "post", "delete", "patch")
]


@pytest.mark.parametrize(("method", "path"), TENANT_OPERATIONS)
def test_tenant_routes_conform_for_own_tenant(
    base_url: str,
    redis_url: str,
    session: requests.Session,
    method: str,
    path: str,
) -> None:
    key = run_tenants(redis_url, lambda tenants: tenants.create_key("acme"))
    headers = {"Authorization": f"Bearer {key.api_key}"}

    @given(case=schema[path][method].as_strategy())
    @settings(
        max_examples=TENANT_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(
            base_url, session, headers=headers, checks=CHECKS, timeout=10
        )

    check()


# Finished states that generated requests cannot reach without a worker:
# the upstream script, the registration's event filter and the end state.
FINISHED = [
    pytest.param(("completed",), None, "delivered", id="delivered"),
    pytest.param(("404",), None, "delivered", id="tracking-failed"),
    pytest.param(("completed",), ["video.failed"], "filtered", id="filtered"),
]
# Each call on a finished registration, with the statuses it may return.
FINISHED_CALLS = [
    ("GET", "/v1/registrations/{registration_id}", {200}),
    ("GET", "/v1/registrations/{registration_id}/attempts", {200}),
    ("POST", "/v1/registrations/{registration_id}/redeliver", {202, 409}),
    ("DELETE", "/v1/registrations/{registration_id}", {204}),
]


@pytest.mark.parametrize(("steps", "events", "state"), FINISHED)
def test_finished_registration_conforms(
    api: httpx.Client,
    worker: object,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
    session: requests.Session,
    steps: tuple[str, ...],
    events: list[str] | None,
    state: str,
) -> None:
    body: dict[str, Any] = {"job_id": sim.job(*steps), "callback_url": receiver.url()}
    if events is not None:
        body["events"] = events
    created = api.post("/v1/registrations", json=body)
    assert created.status_code == 201, created.text
    registration_id = created.json()["id"]
    wait_for_state(api, registration_id, state)

    for method, path, statuses in FINISHED_CALLS:
        operation = schema[path][method]
        case = operation.Case(path_parameters={"registration_id": registration_id})

        response = case.call_and_validate(
            str(api.base_url),
            session,
            headers=AUTHORIZATION,
            checks=CHECKS,
            timeout=10,
        )

        assert response.status_code in statuses, f"{method} {path}"


def test_served_document_matches_live(base_url: str) -> None:
    with httpx.Client(trust_env=False) as client:
        response = client.get(f"{base_url}/schema/openapi.json")

    assert response.status_code == 200
    assert response.json() == DOCUMENT
