"""``relay keys`` and ``relay tenants``: the operator's commands for tenants.

Secrets these commands create are printed once, to standard output, and are
never logged. A ModelGates key is read from standard input, never from the
command line, where other users of the machine could see it in ``ps``.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

import migrations
from relay.crypto import SealError
from relay.errors import RelayError
from relay.keys import Keys
from relay.settings import Settings
from relay.store import translate_errors
from relay.tenants import TenantError, Tenants

Command = Callable[[Tenants, argparse.Namespace], Awaitable[None]]


def add_commands(commands: Any, run: Callable[..., None]) -> None:
    """Add ``keys`` and ``tenants`` to the ``relay`` command's subparsers."""
    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    key_commands = keys.add_subparsers(dest="action", required=True)
    create = key_commands.add_parser(
        "create", help="create an API key, and its tenant if new; print it once"
    )
    create.add_argument("--tenant", required=True, help="tenant name, e.g. acme")
    create.add_argument("--json", action="store_true", help="print JSON")
    create.set_defaults(run=run, admin=_create_key)
    listing = key_commands.add_parser("list", help="list API keys, never the keys")
    listing.add_argument("--tenant", help="only this tenant's keys")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(run=run, admin=_list_keys)
    revoke = key_commands.add_parser("revoke", help="revoke an API key by its ID")
    revoke.add_argument("key_id", help="the key ID that `relay keys list` shows")
    revoke.set_defaults(run=run, admin=_revoke_key)

    tenants = commands.add_parser("tenants", help="manage tenants' secrets")
    tenant_commands = tenants.add_subparsers(dest="action", required=True)
    tenant_commands.add_parser("list", help="list tenants").set_defaults(
        run=run, admin=_list_tenants
    )
    rotate = tenant_commands.add_parser(
        "rotate-secret", help="give a tenant a new signing secret; print it once"
    )
    rotate.add_argument("tenant")
    rotate.add_argument(
        "--grace-s",
        type=int,
        default=86400,
        help="seconds during which the old secret also signs (default 86400)",
    )
    rotate.set_defaults(run=run, admin=_rotate_secret)
    set_key = tenant_commands.add_parser(
        "set-modelgates-key",
        help="store a tenant's own ModelGates key, read from standard input",
    )
    set_key.add_argument("tenant")
    set_key.set_defaults(run=run, admin=_set_modelgates_key)
    clear_key = tenant_commands.add_parser(
        "clear-modelgates-key", help="make a tenant use the relay-wide key again"
    )
    clear_key.add_argument("tenant")
    clear_key.set_defaults(run=run, admin=_clear_modelgates_key)
    tenant_commands.add_parser(
        "reencrypt",
        help="seal every stored secret again with the first RELAY_ENCRYPTION_KEYS key",
    ).set_defaults(run=run, admin=_reencrypt)


def run_admin(settings: Settings, args: argparse.Namespace) -> None:
    """Run one ``keys`` or ``tenants`` action against the configured Redis."""
    asyncio.run(_run(settings, args.admin, args))


async def _run(settings: Settings, command: Command, args: argparse.Namespace) -> None:
    client = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=5)
    keys = Keys(settings.key_prefix)
    try:
        await _check_schema(client, keys)
        await command(Tenants(client, keys, settings.encryption_keys), args)
    except (TenantError, SealError) as exc:
        raise RelayError(str(exc)) from None
    finally:
        await client.aclose()


async def _check_schema(client: aioredis.Redis, keys: Keys) -> None:
    async with translate_errors():
        raw = await client.get(keys.schema)
    # The synchronous check has the messages; it needs only the version.
    migrations.check_version(int(raw) if raw is not None else None, keys)


def _moment(ms: str | int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(int(ms) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


async def _create_key(tenants: Tenants, args: argparse.Namespace) -> None:
    created = await tenants.create_key(args.tenant)
    if args.json:
        print(
            json.dumps(
                {
                    "key_id": created.key_id,
                    "tenant": created.tenant,
                    "api_key": created.api_key,
                    "signing_secret": created.signing_secret,
                }
            )
        )
        return
    print(f"API key for tenant {created.tenant} (shown once; store it now):")
    print(f"  {created.api_key}")
    print(f"Key ID: {created.key_id}")
    if created.signing_secret:
        print(
            f"Webhook signing secret of the new tenant {created.tenant} (shown once):"
        )
        print(f"  {created.signing_secret}")


async def _list_keys(tenants: Tenants, args: argparse.Namespace) -> None:
    rows = await tenants.list_keys(args.tenant)
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'KEY ID':<14}{'TENANT':<24}{'CREATED':<22}REVOKED")
    for row in rows:
        print(
            f"{row['key_id']:<14}{row['tenant']:<24}"
            f"{_moment(row['created_at_ms']):<22}{_moment(row.get('revoked_at_ms'))}"
        )


async def _revoke_key(tenants: Tenants, args: argparse.Namespace) -> None:
    if not await tenants.revoke(args.key_id):
        raise TenantError(
            f"key ID {args.key_id[:32]!r} not found or already revoked; "
            "see `relay keys list`"
        )
    print(f"revoked {args.key_id}; API processes stop accepting it within 2 s")


async def _list_tenants(tenants: Tenants, args: argparse.Namespace) -> None:
    print(f"{'TENANT':<24}{'ACTIVE':>8}  OWN MODELGATES KEY")
    for name in await tenants.names():
        info = await tenants.info(name)
        own = "yes" if info["own_modelgates_key"] else "no"
        print(f"{name:<24}{info['active_registrations']:>8}  {own}")


async def _rotate_secret(tenants: Tenants, args: argparse.Namespace) -> None:
    if args.grace_s < 0:
        raise TenantError("--grace-s must be 0 or more")
    secret = await tenants.rotate_secret(args.tenant, args.grace_s)
    print(f"New webhook signing secret of {args.tenant} (shown once):")
    print(f"  {secret}")
    if args.grace_s:
        print(f"The old secret also signs for {args.grace_s} s.")


async def _set_modelgates_key(tenants: Tenants, args: argparse.Namespace) -> None:
    if sys.stdin.isatty():
        api_key = getpass.getpass(f"ModelGates key of {args.tenant}: ")
    else:
        api_key = sys.stdin.readline()
    await tenants.set_modelgates_key(args.tenant, api_key.strip())
    print(f"stored; {args.tenant}'s new registrations poll with this key")


async def _clear_modelgates_key(tenants: Tenants, args: argparse.Namespace) -> None:
    await tenants.clear_modelgates_key(args.tenant)
    print(f"cleared; {args.tenant}'s new registrations poll with the relay-wide key")


async def _reencrypt(tenants: Tenants, args: argparse.Namespace) -> None:
    changed = await tenants.reencrypt()
    print(f"sealed {changed} values again with key {tenants.keyring.sealing_id!r}")
