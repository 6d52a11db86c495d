"""Version 1: the first keyspace layout, as described in ``relay.keys``.

The layout starts empty, so this step writes no data. It rejects a prefix
that already holds relay keys without a schema version, because those were
written by something this runner does not know.
"""

from __future__ import annotations

import redis

from relay.errors import SchemaError
from relay.keys import Keys


def apply(client: redis.Redis, keys: Keys) -> None:
    """Check that the prefix is empty before version 1 is recorded."""
    # Running workers write their heartbeats and the sweep lock even while
    # the keyspace has no version, for example after Redis restarted empty.
    runtime_keys = {keys.schema, keys.workers, keys.sweep_lock}
    for key in client.scan_iter(match=f"{keys.prefix}*", count=1000):
        if key.decode() not in runtime_keys:
            raise SchemaError(
                f"prefix {keys.prefix!r} already holds keys (such as "
                f"{key.decode()!r}) but no schema version; use an empty prefix "
                "or database"
            )
