"""Numbered Redis keyspace migrations and the runner that applies them in order.

The applied version is stored at ``{prefix}schema``. ``relay migrate`` applies
every step above it; the API and workers check it at start-up and stop when it
is missing or newer than ``relay.keys.SCHEMA_VERSION``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import redis
import structlog

from migrations import m0001_initial, m0002_tenants
from relay.errors import SchemaError
from relay.keys import SCHEMA_VERSION, Keys

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Step:
    """One migration: the version it brings the keyspace to, and how."""

    version: int
    name: str
    apply: Callable[[redis.Redis, Keys], None]


STEPS = (
    Step(1, "initial keyspace", m0001_initial.apply),
    Step(2, "tenants and the registration index", m0002_tenants.apply),
)


def applied_version(client: redis.Redis, keys: Keys) -> int | None:
    """Return the stored keyspace version, or None when none was applied."""
    raw = client.get(keys.schema)
    return int(raw) if raw is not None else None


def migrate(client: redis.Redis, keys: Keys) -> list[Step]:
    """Apply every step above the stored version and return the applied steps."""
    current = applied_version(client, keys) or 0
    if current > SCHEMA_VERSION:
        raise SchemaError(_newer_message(current))

    applied = []
    for step in STEPS:
        if step.version <= current:
            continue
        step.apply(client, keys)
        client.set(keys.schema, step.version)
        log.info("migration.applied", version=step.version, name=step.name)
        applied.append(step)
    return applied


def check(client: redis.Redis, keys: Keys) -> None:
    """Raise SchemaError unless the keyspace is exactly at this code's version."""
    check_version(applied_version(client, keys), keys)


def check_version(current: int | None, keys: Keys) -> None:
    """Raise SchemaError unless ``current`` is exactly this code's version."""
    if current is None:
        raise SchemaError(
            f"Redis keyspace under prefix {keys.prefix!r} has no schema version; "
            "run `relay migrate` first"
        )
    if current > SCHEMA_VERSION:
        raise SchemaError(_newer_message(current))
    if current < SCHEMA_VERSION:
        raise SchemaError(
            f"Redis keyspace is at schema version {current}, this code needs "
            f"{SCHEMA_VERSION}; run `relay migrate`"
        )


def _newer_message(current: int) -> str:
    return (
        f"Redis keyspace is at schema version {current}, newer than the "
        f"{SCHEMA_VERSION} this code knows; upgrade the relay before running it"
    )
