"""Tenants through the live API: isolation, keys, lists, idempotency and limits.

Keys are made with ``relay.tenants.Tenants`` against the test Redis, as the
``relay keys`` command does; tests/e2e/test_tenants.py runs the command itself.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from relay.crypto import Keyring
from relay.keys import Keys, credential_id
from relay.tenants import CreatedKey, Tenants
from tests.conftest import (
    API_TOKEN,
    ENCRYPTION_KEYS,
    MODELGATES_KEY,
    PREFIX,
    TENANT_MODELGATES_KEY,
    ApiFactory,
)

REGISTRATIONS = "/v1/registrations"
HOOK = "http://127.0.0.1:9/hook"


def run_tenants(redis_url: str, action: Callable[[Tenants], Any]) -> Any:
    """Run one Tenants call against the test Redis."""

    async def go() -> Any:
        client = aioredis.Redis.from_url(redis_url)
        try:
            tenants = Tenants(client, Keys(PREFIX), Keyring.parse(ENCRYPTION_KEYS))
            return await action(tenants)
        finally:
            await client.aclose()

    return asyncio.run(go())


KeyMaker = Callable[[str], CreatedKey]


@pytest.fixture
def make_key(redis_url: str, migrated: redis.Redis) -> KeyMaker:
    def make(tenant: str) -> CreatedKey:
        created: CreatedKey = run_tenants(redis_url, lambda t: t.create_key(tenant))
        return created

    return make


ClientFor = Callable[[CreatedKey], httpx.Client]


@pytest.fixture
def client_for(start_api: ApiFactory) -> Iterator[ClientFor]:
    """Return clients of one API server, each sending one tenant's key."""
    base = start_api()
    clients: list[httpx.Client] = []

    def client(key: CreatedKey) -> httpx.Client:
        made = httpx.Client(
            base_url=base.base_url,
            headers={"authorization": f"Bearer {key.api_key}"},
            trust_env=False,
        )
        clients.append(made)
        return made

    yield client
    for made in clients:
        made.close()


def create(
    api: httpx.Client, job_id: str | None = None, **extra: Any
) -> httpx.Response:
    body = {"job_id": job_id or f"job-{uuid.uuid4().hex[:10]}", "callback_url": HOOK}
    return api.post(REGISTRATIONS, json=body | extra)


def created_id(response: httpx.Response) -> str:
    assert response.status_code == 201, response.text
    registration_id: str = response.json()["id"]
    return registration_id


# keys and isolation


def test_key_reads_only_its_tenants_registrations(
    make_key: KeyMaker, client_for: ClientFor
) -> None:
    acme = client_for(make_key("acme"))
    globex = client_for(make_key("globex"))
    registration_id = created_id(create(acme))

    unknown = globex.get(f"{REGISTRATIONS}/reg_unknown")
    for method, path in (
        ("GET", f"{REGISTRATIONS}/{registration_id}"),
        ("GET", f"{REGISTRATIONS}/{registration_id}/attempts"),
        ("POST", f"{REGISTRATIONS}/{registration_id}/redeliver"),
        ("DELETE", f"{REGISTRATIONS}/{registration_id}"),
    ):
        response = globex.request(method, path)
        assert response.status_code == 404, (method, path)
        assert response.json()["title"] == unknown.json()["title"]
    assert globex.get(REGISTRATIONS).json()["data"] == []
    assert [r["id"] for r in acme.get(REGISTRATIONS).json()["data"]] == [
        registration_id
    ]
    assert acme.get(f"{REGISTRATIONS}/{registration_id}").status_code == 200


def test_same_job_in_two_tenants(make_key: KeyMaker, client_for: ClientFor) -> None:
    acme = client_for(make_key("acme"))
    globex = client_for(make_key("globex"))

    first = created_id(create(acme, "job-shared"))
    second = created_id(create(globex, "job-shared"))

    assert first != second
    assert create(acme, "job-shared").status_code == 200


def test_api_token_is_the_default_tenant(
    api: httpx.Client, make_key: KeyMaker, client_for: ClientFor
) -> None:
    registration_id = created_id(create(api))
    default = client_for(make_key("default"))

    assert default.get(f"{REGISTRATIONS}/{registration_id}").status_code == 200
    assert default.get("/v1/tenant").json()["name"] == "default"


def test_revoked_key_is_rejected(
    redis_url: str, make_key: KeyMaker, client_for: ClientFor
) -> None:
    key = make_key("acme")
    acme = client_for(key)
    assert acme.get(REGISTRATIONS).status_code == 200

    assert run_tenants(redis_url, lambda t: t.revoke(key.key_id))

    # API processes keep a lookup for up to 2 s; this waits for that.
    deadline = time.monotonic() + 10
    while acme.get(REGISTRATIONS).status_code != 401:
        assert time.monotonic() < deadline, "revoked key still accepted"
        time.sleep(0.2)
    body = acme.get(REGISTRATIONS).json()
    assert key.api_key not in str(body)


def test_unknown_keys_are_rejected(
    make_key: KeyMaker, client_for: ClientFor, start_api: ApiFactory
) -> None:
    key = make_key("acme")
    base = start_api()
    for token in (
        key.api_key + "x",
        key.api_key[:-1],
        "rk_000000000000_" + "a" * 43,
        "rk_nothex_abc",
        "\u00e9t\u00e9",
    ):
        response = base.get(
            REGISTRATIONS, headers={"authorization": f"Bearer {token}".encode()}
        )
        assert response.status_code == 401, token


def test_key_list_never_shows_keys(redis_url: str, make_key: KeyMaker) -> None:
    key = make_key("acme")

    listed = run_tenants(redis_url, lambda t: t.list_keys())

    assert [row["key_id"] for row in listed] == [key.key_id]
    assert key.api_key not in str(listed)
    assert "digest" not in listed[0]


def test_new_tenant_gets_a_signing_secret_once(make_key: KeyMaker) -> None:
    first = make_key("acme")
    second = make_key("acme")

    assert first.signing_secret is not None
    assert first.signing_secret.startswith("whsec_")
    assert second.signing_secret is None
    assert make_key("default").signing_secret is None


@pytest.mark.parametrize("name", ["", "Acme", "a" * 64, "-acme", "ac me", "acme/x"])
def test_bad_tenant_names_rejected(redis_url: str, name: str) -> None:
    with pytest.raises(ValueError, match="tenant name"):
        run_tenants(redis_url, lambda t: t.create_key(name))


# per-tenant secrets


def test_rotate_signing_secret_through_the_api(
    make_key: KeyMaker, client_for: ClientFor, redis_client: redis.Redis
) -> None:
    created = make_key("acme")
    acme = client_for(created)

    response = acme.post("/v1/tenant/signing-secret", json={"grace_period_s": 3600})

    assert response.status_code == 201, response.text
    secret = response.json()["signing_secret"]
    assert secret.startswith("whsec_")
    assert secret != created.signing_secret
    assert acme.get("/v1/tenant").json()["previous_secret_valid_until"]
    dump = b" ".join(
        value
        for value in redis_client.hvals(f"{PREFIX}tenant:acme")
        if isinstance(value, bytes)
    )
    assert secret.encode() not in dump
    assert created.signing_secret is not None
    assert created.signing_secret.encode() not in dump


def test_default_tenant_secrets_stay_in_the_environment(api: httpx.Client) -> None:
    rotated = api.post("/v1/tenant/signing-secret", json={})
    stored = api.put("/v1/tenant/modelgates-key", json={"api_key": "k"})

    for response in (rotated, stored):
        assert response.status_code == 409
        assert "RELAY_SIGNING_SECRET" in response.json()["detail"]


def test_modelgates_key_is_sealed_and_never_shown(
    make_key: KeyMaker, client_for: ClientFor, redis_client: redis.Redis
) -> None:
    acme = client_for(make_key("acme"))

    stored = acme.put(
        "/v1/tenant/modelgates-key", json={"api_key": TENANT_MODELGATES_KEY}
    )

    assert stored.status_code == 204, stored.text
    tenant = acme.get("/v1/tenant")
    assert tenant.json()["own_modelgates_key"] is True
    assert TENANT_MODELGATES_KEY not in tenant.text
    for key in redis_client.keys("*"):
        if redis_client.type(key) == b"string":
            assert TENANT_MODELGATES_KEY.encode() not in (redis_client.get(key) or b"")
        elif redis_client.type(key) == b"hash":
            assert TENANT_MODELGATES_KEY.encode() not in b"".join(
                redis_client.hvals(key)
            )


def test_polls_are_shared_only_under_one_modelgates_key(
    make_key: KeyMaker,
    client_for: ClientFor,
    api: httpx.Client,
    redis_client: redis.Redis,
) -> None:
    acme = client_for(make_key("acme"))
    globex = client_for(make_key("globex"))
    acme.put("/v1/tenant/modelgates-key", json={"api_key": TENANT_MODELGATES_KEY})

    for client in (api, acme, globex):
        created_id(create(client, "job-many-tenants"))

    schedule = {
        m.decode() for m in redis_client.zrange(f"{PREFIX}schedule:poll", 0, -1)
    }
    assert schedule == {
        f"{credential_id(MODELGATES_KEY)}:job-many-tenants",
        f"{credential_id(TENANT_MODELGATES_KEY)}:job-many-tenants",
    }
    shared = f"{PREFIX}tracker:{credential_id(MODELGATES_KEY)}:job-many-tenants"
    served = [f for f in redis_client.hkeys(shared) if f.startswith(b"r:")]
    assert len(served) == 2


# the list


def test_list_filters(make_key: KeyMaker, client_for: ClientFor) -> None:
    acme = client_for(make_key("acme"))
    first = created_id(create(acme, "job-a"))
    time.sleep(0.01)
    middle = acme.get(f"{REGISTRATIONS}/{first}").json()["created_at"]
    time.sleep(0.01)
    second = created_id(create(acme, "job-b"))
    acme.delete(f"{REGISTRATIONS}/{second}")
    third = created_id(create(acme, "job-b"))

    def ids(**params: Any) -> list[str]:
        response = acme.get(REGISTRATIONS, params=params)
        assert response.status_code == 200, response.text
        return [row["id"] for row in response.json()["data"]]

    assert ids() == [third, first]
    assert ids(order="asc") == [first, third]
    assert ids(job_id="job-b") == [third]
    assert ids(state="tracking", job_id="job-a") == [first]
    assert ids(state="delivered") == []
    assert ids(created_after=middle) == [third]
    assert ids(created_before=middle) == []
    assert ids(limit=1) == [third]


def test_list_pages_stay_correct_while_registrations_arrive(
    make_key: KeyMaker, client_for: ClientFor
) -> None:
    acme = client_for(make_key("acme"))
    before = [created_id(create(acme)) for _ in range(23)]

    for order in ("asc", "desc"):
        seen: list[str] = []
        cursor = None
        added: list[str] = []
        while True:
            params: dict[str, Any] = {"limit": 5, "order": order}
            if cursor:
                params["cursor"] = cursor
            page = acme.get(REGISTRATIONS, params=params).json()
            seen += [row["id"] for row in page["data"]]
            cursor = page["next_cursor"]
            added.append(created_id(create(acme)))
            if cursor is None:
                break
        assert len(seen) == len(set(seen)), "a page repeated an item"
        assert set(before) <= set(seen)
        if order == "desc":
            assert not set(added) & set(seen)
        before += added


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"state": "bogus"}, "state must be one of"),
        ({"cursor": "garbage"}, "cursor"),
        ({"cursor": "0000000000001.reg_x.extra/../"}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"order": "sideways"}, "order"),
        ({"created_after": "2026-01-01T00:00:00"}, "time zone"),
        ({"created_after": "yesterday"}, "created_after"),
    ],
)
def test_list_rejects_bad_parameters(
    api: httpx.Client, params: dict[str, Any], fragment: str
) -> None:
    response = api.get(REGISTRATIONS, params=params)

    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert fragment in response.text


def test_list_drops_expired_registrations(
    api: httpx.Client, redis_client: redis.Redis
) -> None:
    kept = created_id(create(api))
    expired = created_id(create(api))
    redis_client.delete(f"{PREFIX}reg:{expired}")

    rows = api.get(REGISTRATIONS).json()["data"]

    assert [row["id"] for row in rows] == [kept]
    assert redis_client.zcard(f"{PREFIX}idx:regs:default") == 1


# Idempotency-Key


def test_idempotency_key_replays_the_first_answer(api: httpx.Client) -> None:
    headers = {"idempotency-key": "retry-me-1"}
    body = {"job_id": "job-idem", "callback_url": HOOK}

    first = api.post(REGISTRATIONS, json=body, headers=headers)
    again = api.post(REGISTRATIONS, json=body, headers=headers)
    plain = api.post(REGISTRATIONS, json=body)

    assert first.status_code == 201
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert plain.status_code == 200


def test_idempotency_key_other_body_rejected(api: httpx.Client) -> None:
    headers = {"idempotency-key": "retry-me-2"}
    api.post(REGISTRATIONS, json={"job_id": "a", "callback_url": HOOK}, headers=headers)

    response = api.post(
        REGISTRATIONS, json={"job_id": "b", "callback_url": HOOK}, headers=headers
    )

    assert response.status_code == 422
    assert "different request body" in response.json()["detail"]
    assert response.json()["field"] == "Idempotency-Key"


def test_failed_request_releases_its_idempotency_key(api: httpx.Client) -> None:
    headers = {"idempotency-key": "retry-me-3"}

    failed = api.post(
        REGISTRATIONS, json={"job_id": "", "callback_url": HOOK}, headers=headers
    )
    fixed = api.post(
        REGISTRATIONS, json={"job_id": "ok", "callback_url": HOOK}, headers=headers
    )

    assert failed.status_code == 422
    assert fixed.status_code == 201


def test_idempotency_keys_are_per_tenant(
    make_key: KeyMaker, client_for: ClientFor
) -> None:
    headers = {"idempotency-key": "same-key"}
    acme = client_for(make_key("acme"))
    globex = client_for(make_key("globex"))

    first = acme.post(
        REGISTRATIONS, json={"job_id": "a", "callback_url": HOOK}, headers=headers
    )
    other = globex.post(
        REGISTRATIONS, json={"job_id": "b", "callback_url": HOOK}, headers=headers
    )

    assert first.status_code == 201
    assert other.status_code == 201
    assert other.json()["id"] != first.json()["id"]


@pytest.mark.parametrize("value", ["x" * 256, "tab\there"])
def test_bad_idempotency_key_rejected(api: httpx.Client, value: str) -> None:
    response = api.post(
        REGISTRATIONS,
        json={"job_id": "a", "callback_url": HOOK},
        headers={"idempotency-key": value},
    )

    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["detail"]


# limits


def test_key_rate_limit_answers_429(
    start_api: ApiFactory, migrated: redis.Redis
) -> None:
    api = start_api(RELAY_KEY_RATE_PER_S="0.1", RELAY_KEY_BURST="2")
    created_id(create(api, "job-1"))
    created_id(create(api, "job-2"))

    limited = create(api, "job-3")
    repeated = create(api, "job-1")

    assert limited.status_code == 429
    assert limited.headers["content-type"].startswith("application/problem+json")
    assert int(limited.headers["retry-after"]) >= 1
    assert "registrations per second" in limited.json()["detail"]
    assert repeated.status_code == 200
    assert api.get(REGISTRATIONS).json()["data"][0]["job_id"] == "job-2"


def test_active_cap_answers_403_until_one_ends(
    start_api: ApiFactory, migrated: redis.Redis
) -> None:
    api = start_api(RELAY_TENANT_MAX_ACTIVE="2")
    first = created_id(create(api))
    created_id(create(api))

    rejected = create(api)
    api.delete(f"{REGISTRATIONS}/{first}")
    accepted = create(api)

    assert rejected.status_code == 403
    assert "2 active registrations" in rejected.json()["detail"]
    assert accepted.status_code == 201
    assert api.get("/v1/tenant").json()["active_registrations"] == 2


def test_api_token_absent_from_errors(api: httpx.Client) -> None:
    response = api.get(f"{REGISTRATIONS}/reg_missing")

    assert API_TOKEN not in response.text


@pytest.mark.parametrize(
    "value", ["", "x" * 513, "line\nbreak", "mg-ключ-1", "two words"]
)
def test_invalid_modelgates_key_rejected(
    make_key: KeyMaker, client_for: ClientFor, value: str
) -> None:
    acme = client_for(make_key("acme"))

    response = acme.put("/v1/tenant/modelgates-key", json={"api_key": value})

    assert response.status_code == 422
    assert response.json()["field"] == "api_key"
    assert acme.get("/v1/tenant").json()["own_modelgates_key"] is False


def test_modelgates_key_needs_a_json_body(
    make_key: KeyMaker, client_for: ClientFor
) -> None:
    acme = client_for(make_key("acme"))

    response = acme.put("/v1/tenant/modelgates-key", content=b"api_key=x")

    assert response.status_code == 415


def test_concurrent_idempotent_requests_create_one_registration(
    api: httpx.Client,
) -> None:
    headers = {"idempotency-key": "race-1"}
    body = {"job_id": "job-race", "callback_url": HOOK}

    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(
            pool.map(
                lambda _: api.post(REGISTRATIONS, json=body, headers=headers), range(8)
            )
        )

    statuses = sorted(reply.status_code for reply in replies)
    assert set(statuses) <= {201, 409}
    assert statuses.count(201) >= 1
    ids = {reply.json()["id"] for reply in replies if reply.status_code == 201}
    assert len(ids) == 1
    assert len(api.get(REGISTRATIONS).json()["data"]) == 1
