"""Tests of the keyspace migrations and of the start-up schema check in the CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis

import migrations
from relay.errors import SchemaError
from relay.keys import SCHEMA_VERSION, Keys
from tests.conftest import PREFIX

REPOSITORY = Path(__file__).resolve().parents[2]
KEYS = Keys(PREFIX)
CLI_TIMEOUT_S = 30


def run_relay(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", command],
        env=os.environ | env,
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def unused_port() -> int:
    """Return a loopback port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# STEPS


def test_steps_versions_strictly_increase() -> None:
    versions = [step.version for step in migrations.STEPS]

    assert versions
    assert versions[0] == 1
    for earlier, later in zip(versions, versions[1:], strict=False):
        assert later > earlier


def test_steps_end_at_schema_version() -> None:
    assert migrations.STEPS[-1].version == SCHEMA_VERSION


def test_steps_have_names() -> None:
    for step in migrations.STEPS:
        assert step.name


# migrate and check


def test_migrate_empty_stores_version(redis_client: redis.Redis) -> None:
    applied = migrations.migrate(redis_client, KEYS)

    assert [step.version for step in applied] == [
        step.version for step in migrations.STEPS
    ]
    assert redis_client.get(KEYS.schema) == str(SCHEMA_VERSION).encode()
    assert migrations.applied_version(redis_client, KEYS) == SCHEMA_VERSION
    migrations.check(redis_client, KEYS)


def test_migrate_twice_is_noop(redis_client: redis.Redis) -> None:
    migrations.migrate(redis_client, KEYS)

    applied = migrations.migrate(redis_client, KEYS)

    assert applied == []
    assert redis_client.keys("*") == [KEYS.schema.encode()]


def test_migrate_uses_prefix(redis_client: redis.Redis) -> None:
    other = Keys("tenant-b:")
    migrations.migrate(redis_client, KEYS)

    applied = migrations.migrate(redis_client, other)

    assert len(applied) == len(migrations.STEPS)
    assert redis_client.get(other.schema) == str(SCHEMA_VERSION).encode()


def test_migrate_ignores_other_prefixes(redis_client: redis.Redis) -> None:
    redis_client.set("someone-else:key", "value")

    migrations.migrate(redis_client, KEYS)

    assert migrations.applied_version(redis_client, KEYS) == SCHEMA_VERSION


def test_migrate_rejects_unversioned_keys(redis_client: redis.Redis) -> None:
    redis_client.hset(f"{PREFIX}reg:reg_old", "id", "reg_old")

    with pytest.raises(SchemaError) as caught:
        migrations.migrate(redis_client, KEYS)

    message = str(caught.value)
    assert repr(PREFIX) in message
    assert f"{PREFIX}reg:reg_old" in message
    assert "no schema version" in message
    assert redis_client.get(KEYS.schema) is None


def test_migrate_rejects_newer_schema(redis_client: redis.Redis) -> None:
    redis_client.set(KEYS.schema, SCHEMA_VERSION + 1)

    with pytest.raises(SchemaError) as caught:
        migrations.migrate(redis_client, KEYS)

    assert "upgrade the relay" in str(caught.value)
    assert redis_client.get(KEYS.schema) == str(SCHEMA_VERSION + 1).encode()


def test_check_missing_says_migrate(redis_client: redis.Redis) -> None:
    with pytest.raises(SchemaError) as caught:
        migrations.check(redis_client, KEYS)

    message = str(caught.value)
    assert "no schema version" in message
    assert "run `relay migrate`" in message


def test_check_older_says_migrate(redis_client: redis.Redis) -> None:
    redis_client.set(KEYS.schema, SCHEMA_VERSION - 1)

    with pytest.raises(SchemaError) as caught:
        migrations.check(redis_client, KEYS)

    message = str(caught.value)
    assert f"schema version {SCHEMA_VERSION - 1}" in message
    assert "run `relay migrate`" in message


def test_check_newer_says_upgrade(redis_client: redis.Redis) -> None:
    redis_client.set(KEYS.schema, SCHEMA_VERSION + 1)

    with pytest.raises(SchemaError) as caught:
        migrations.check(redis_client, KEYS)

    message = str(caught.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert "upgrade the relay" in message


# The relay command


@pytest.mark.parametrize("command", ["worker", "api"])
def test_cli_unmigrated_exits_2(
    redis_client: redis.Redis, env: dict[str, str], command: str
) -> None:
    result = run_relay(command, env)

    assert result.returncode == 2
    assert f"relay {command}: error:" in result.stderr
    assert "relay migrate" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_bad_secret_exits_2(redis_client: redis.Redis, env: dict[str, str]) -> None:
    result = run_relay("worker", env | {"RELAY_SIGNING_SECRET": "nope"})

    assert result.returncode == 2
    assert "RELAY_SIGNING_SECRET" in result.stderr
    assert "whsec_" in result.stderr
    assert "nope" not in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_redis_down_exits_2(env: dict[str, str]) -> None:
    redis_url = f"redis://127.0.0.1:{unused_port()}/0"

    result = run_relay("api", env | {"REDIS_URL": redis_url})

    assert result.returncode == 2
    assert "cannot reach Redis" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_migrate_stores_version(
    redis_client: redis.Redis, env: dict[str, str]
) -> None:
    result = run_relay("migrate", env)

    assert result.returncode == 0, result.stderr
    assert redis_client.get(KEYS.schema) == str(SCHEMA_VERSION).encode()


def write_version_1(client: redis.Redis) -> None:
    """Write the keys version 1 left: two registrations sharing one tracker."""
    migrations.migrate(client, KEYS, target=1)
    tracker = "abcdef0123456789:job-old"
    for number, state in ((1, "tracking"), (2, "delivered")):
        client.hset(
            f"{PREFIX}reg:reg_old{number}",
            mapping={
                "tenant": "default",
                "job_id": "job-old",
                "callback_url": f"http://127.0.0.1:9/{number}",
                "events": "*",
                "metadata": "{}",
                "state": state,
                "tracker_id": tracker,
                "created_at_ms": 1_700_000_000_000 + number,
                "updated_at_ms": 1_700_000_000_000 + number,
            },
        )
    client.hset(f"{PREFIX}tracker:{tracker}", mapping={"polls": 3, "errors": 0})
    client.sadd(f"{PREFIX}tracker:{tracker}:regs", "reg_old1", "reg_old2")
    client.zadd(f"{PREFIX}schedule:poll", {tracker: 1.0})
    # A version 1 tracker whose job ID happens to end in ':regs'.
    client.hset(f"{PREFIX}tracker:abcdef0123456789:x:regs", mapping={"polls": 1})


def test_version_2_indexes_and_folds_version_1_keys(
    redis_client: redis.Redis,
) -> None:
    write_version_1(redis_client)

    applied = migrations.migrate(redis_client, KEYS)

    assert [step.version for step in applied] == [2]
    index = redis_client.zrange(f"{PREFIX}idx:regs:default", 0, -1)
    assert index == [b"1700000000001:reg_old1", b"1700000000002:reg_old2"]
    assert redis_client.hget(f"{PREFIX}tenant:default", "active") == b"1"
    tracker = f"{PREFIX}tracker:abcdef0123456789:job-old"
    assert not redis_client.exists(f"{tracker}:regs")
    assert sorted(f for f in redis_client.hkeys(tracker) if f.startswith(b"r:")) == [
        b"r:reg_old1",
        b"r:reg_old2",
    ]
    odd = f"{PREFIX}tracker:abcdef0123456789:x:regs"
    assert redis_client.hgetall(odd) == {b"polls": b"1"}
    assert redis_client.hget(f"{PREFIX}stats:tracked", "unknown") == b"1"


def test_migrate_ignores_keys_that_running_workers_write(
    redis_client: redis.Redis,
) -> None:
    redis_client.zadd(f"{PREFIX}workers", {"worker-1": 1.0})
    redis_client.set(f"{PREFIX}lock:sweep", "1")

    applied = migrations.migrate(redis_client, KEYS)

    assert [step.version for step in applied] == [1, 2]
