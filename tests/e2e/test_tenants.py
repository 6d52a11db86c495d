"""Tenants end to end: the ``relay keys`` and ``relay tenants`` commands, a
worker signing with the tenant's secret and polling with the tenant's key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
import redis
from standardwebhooks import Webhook, WebhookVerificationError

from tests.conftest import (
    SIGNING_SECRET,
    TENANT_MODELGATES_KEY,
    ApiFactory,
    SimulatorAdmin,
    WorkerFactory,
)
from tests.receivers import running_receiver
from tests.workers.test_deliver import wait_for_state

CREATE_ACME = ("keys", "create", "--tenant", "acme")


def relay(
    env: dict[str, str], *args: str, stdin: str = "", check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the ``relay`` command with the tests' settings."""
    done = subprocess.run(
        [sys.executable, "-m", "relay", *args],
        env=os.environ | env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def create_key(env: dict[str, str], tenant: str) -> dict[str, Any]:
    created: dict[str, Any] = json.loads(
        relay(env, "keys", "create", "--tenant", tenant, "--json").stdout
    )
    return created


def rotate_secret(env: dict[str, str], tenant: str, grace_s: str) -> str:
    """Rotate a tenant's secret with ``relay tenants`` and return the new one."""
    rotated = relay(env, "tenants", "rotate-secret", tenant, "--grace-s", grace_s)
    return next(
        line.strip() for line in rotated.stdout.splitlines() if "whsec_" in line
    )


def keyed(api: httpx.Client, api_key: str) -> httpx.Client:
    """Return a client of the same server that sends ``api_key``."""
    return httpx.Client(
        base_url=api.base_url,
        headers={"authorization": f"Bearer {api_key}"},
        trust_env=False,
    )


def register(client: httpx.Client, job_id: str, url: str) -> str:
    reply = client.post(
        "/v1/registrations", json={"job_id": job_id, "callback_url": url}
    )
    assert reply.status_code == 201, reply.text
    registration_id: str = reply.json()["id"]
    return registration_id


def test_tenant_webhook_uses_tenant_secrets(
    env: dict[str, str],
    migrated: redis.Redis,
    start_api: ApiFactory,
    start_worker: WorkerFactory,
    sim: SimulatorAdmin,
) -> None:
    created = create_key(env, "acme")
    relay(env, "tenants", "set-modelgates-key", "acme", stdin=TENANT_MODELGATES_KEY)
    acme = keyed(start_api(), created["api_key"])
    job_id = sim.job("pending", "completed")

    with running_receiver(created["signing_secret"]) as receiver:
        registration_id = register(acme, job_id, receiver.url())
        start_worker()
        [delivery] = receiver.wait_for(1, timeout_s=20)

    assert delivery.verified
    assert delivery.payload is not None
    assert delivery.payload["data"]["registration_id"] == registration_id
    # Polls went out with the tenant's key (1), never the relay-wide one (0).
    assert set(sim.polls_by_key(job_id)) == {"1"}
    with pytest.raises(WebhookVerificationError):
        Webhook(SIGNING_SECRET).verify(delivery.body, delivery.headers)
    wait_for_state(acme, registration_id, "delivered")
    assert acme.get("/v1/tenant").json()["active_registrations"] == 0


def test_rotation_grace_period_signs_with_both_secrets(
    env: dict[str, str],
    migrated: redis.Redis,
    start_api: ApiFactory,
    start_worker: WorkerFactory,
    sim: SimulatorAdmin,
) -> None:
    created = create_key(env, "acme")
    new_secret = rotate_secret(env, "acme", "3600")
    acme = keyed(start_api(), created["api_key"])

    with (
        running_receiver(created["signing_secret"]) as old_side,
        running_receiver(new_secret) as new_side,
    ):
        register(acme, sim.job("completed"), old_side.url())
        register(acme, sim.job("completed"), new_side.url())
        start_worker()
        [old_delivery] = old_side.wait_for(1, timeout_s=20)
        [new_delivery] = new_side.wait_for(1, timeout_s=20)

    assert old_delivery.verified
    assert new_delivery.verified
    assert len(new_delivery.headers["webhook-signature"].split()) == 2


def test_rotation_without_grace_drops_the_old_secret(
    env: dict[str, str],
    migrated: redis.Redis,
    start_api: ApiFactory,
    start_worker: WorkerFactory,
    sim: SimulatorAdmin,
) -> None:
    created = create_key(env, "acme")
    new_secret = rotate_secret(env, "acme", "0")
    acme = keyed(start_api(), created["api_key"])

    with running_receiver(new_secret) as receiver:
        register(acme, sim.job("completed"), receiver.url())
        start_worker()
        [delivery] = receiver.wait_for(1, timeout_s=20)

    assert delivery.verified
    assert len(delivery.headers["webhook-signature"].split()) == 1
    with pytest.raises(WebhookVerificationError):
        Webhook(created["signing_secret"]).verify(delivery.body, delivery.headers)


def test_keys_commands_list_and_revoke(
    env: dict[str, str], migrated: redis.Redis, start_api: ApiFactory
) -> None:
    created = create_key(env, "acme")
    second = create_key(env, "acme")
    acme = keyed(start_api(), created["api_key"])
    assert second["signing_secret"] is None

    listed = json.loads(relay(env, "keys", "list", "--json").stdout)
    table = relay(env, "keys", "list").stdout
    revoked = relay(env, "keys", "revoke", created["key_id"])
    again = relay(env, "keys", "revoke", created["key_id"], check=False)

    assert [row["key_id"] for row in listed] == [created["key_id"], second["key_id"]]
    assert created["api_key"] not in json.dumps(listed) + table
    assert created["key_id"] in table
    assert "revoked" in revoked.stdout
    assert again.returncode == 2
    assert "not found or already revoked" in again.stderr
    deadline = time.monotonic() + 10
    while acme.get("/v1/registrations").status_code != 401:
        assert time.monotonic() < deadline, "revoked key still accepted"
        time.sleep(0.2)
    still = keyed(start_api(), second["api_key"])
    assert still.get("/v1/registrations").status_code == 200


@pytest.mark.parametrize(
    ("args", "overrides", "message"),
    [
        (("keys", "create", "--tenant", "Not Valid"), {}, "tenant name"),
        (
            ("keys", "create", "--tenant", "acme"),
            {"RELAY_ENCRYPTION_KEYS": ""},
            "RELAY_ENCRYPTION_KEYS",
        ),
        (
            ("keys", "create", "--tenant", "acme"),
            {"RELAY_ENCRYPTION_KEYS": "k:short"},
            "32 random bytes",
        ),
        (("tenants", "rotate-secret", "nobody"), {}, "does not exist"),
        (("tenants", "rotate-secret", "default"), {}, "RELAY_SIGNING_SECRET"),
        (("tenants", "set-modelgates-key", "nobody"), {}, "does not exist"),
    ],
)
def test_tenant_commands_explain_refusals(
    env: dict[str, str],
    migrated: redis.Redis,
    args: tuple[str, ...],
    overrides: dict[str, str],
    message: str,
) -> None:
    done = relay(env | overrides, *args, stdin="some-key\n", check=False)

    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_reencrypt_moves_secrets_to_the_new_key(
    env: dict[str, str],
    migrated: redis.Redis,
    start_api: ApiFactory,
    start_worker: WorkerFactory,
    sim: SimulatorAdmin,
) -> None:
    created = create_key(env, "acme")
    relay(env, "tenants", "set-modelgates-key", "acme", stdin=TENANT_MODELGATES_KEY)
    new_key = relay(env, "secret", "--encryption-key", "test2").stdout.strip()
    both = env | {"RELAY_ENCRYPTION_KEYS": f"{new_key},{env['RELAY_ENCRYPTION_KEYS']}"}

    done = relay(both, "tenants", "reencrypt")

    assert "sealed 2 values" in done.stdout
    only_new = env | {"RELAY_ENCRYPTION_KEYS": new_key}
    acme = keyed(start_api(), created["api_key"])
    job_id = sim.job("completed")
    with running_receiver(created["signing_secret"]) as receiver:
        register(acme, job_id, receiver.url())
        start_worker(**only_new)
        [delivery] = receiver.wait_for(1, timeout_s=20)
    assert delivery.verified
    assert set(sim.polls_by_key(job_id)) == {"1"}
