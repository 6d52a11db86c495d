"""Settings read from environment variables, validated once at start-up."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from relay.crypto import Keyring
from relay.errors import SettingsError

DEFAULT_RETRY_SCHEDULE_S = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
SIGNING_SECRET_PREFIX = "whsec_"  # noqa: S105 - a fixed prefix, not a secret


class Secret:
    """A string that shows as asterisks in reprs, logs and tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret itself, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class Settings:
    """Every tunable of the relay; see the README for each variable."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "relay:"
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_token: Secret = field(default_factory=lambda: Secret(""))
    signing_secrets: tuple[Secret, ...] = ()
    previous_signing_secrets: tuple[Secret, ...] = ()
    previous_signing_until_s: float = 0.0
    modelgates_base_url: str = ""
    modelgates_api_key: Secret = field(default_factory=lambda: Secret(""))

    poll_first_delay_s: float = 5.0
    poll_factor: float = 1.5
    poll_max_interval_s: float = 30.0
    poll_jitter: float = 0.1
    poll_deadline_s: float = 3 * 3600.0
    poll_max_errors: int = 5
    poll_timeout_s: float = 10.0
    upstream_rate_per_s: float = 50.0
    upstream_pause_s: float = 5.0

    delivery_timeout_s: float = 15.0
    delivery_retry_schedule_s: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE_S
    delivery_jitter: float = 0.2
    delivery_concurrency: int = 200
    delivery_per_host: int = 8

    callback_allow_cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    encryption_keys: Keyring = field(default_factory=Keyring)
    key_rate_per_s: float = 100.0
    key_burst: int = 200
    tenant_max_active: int = 100_000
    idempotency_ttl_s: float = 86400.0
    retention_s: float = 7 * 86400.0
    batch_size: int = 400
    lease_s: float = 60.0
    shutdown_grace_s: float = 20.0
    worker_heartbeat_file: str = ""
    max_body_bytes: int = 64 * 1024
    max_metadata_bytes: int = 4 * 1024
    log_format: str = "auto"
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``)."""
        env = _Reader(os.environ if environ is None else environ)
        settings = cls(
            redis_url=_redis_url(env.text("REDIS_URL", cls.redis_url)),
            key_prefix=_key_prefix(env.text("RELAY_KEY_PREFIX", cls.key_prefix)),
            api_host=env.text("RELAY_API_HOST", cls.api_host),
            api_port=env.integer("RELAY_API_PORT", cls.api_port, low=1, high=65535),
            api_token=Secret(env.text("RELAY_API_TOKEN", "")),
            signing_secrets=_signing_secrets(env.text("RELAY_SIGNING_SECRET", "")),
            previous_signing_secrets=_signing_secrets(
                env.text("RELAY_SIGNING_SECRET_PREVIOUS", ""),
                "RELAY_SIGNING_SECRET_PREVIOUS",
            ),
            previous_signing_until_s=env.moment("RELAY_SIGNING_SECRET_PREVIOUS_UNTIL"),
            modelgates_base_url=_base_url(env.text("MODELGATES_BASE_URL", "")),
            modelgates_api_key=Secret(env.text("MODELGATES_API_KEY", "")),
            poll_first_delay_s=env.number("RELAY_POLL_FIRST_DELAY_S", 5.0, low=0),
            poll_factor=env.number("RELAY_POLL_FACTOR", 1.5, low=1),
            poll_max_interval_s=env.number("RELAY_POLL_MAX_INTERVAL_S", 30.0, low=0.01),
            poll_jitter=env.number("RELAY_POLL_JITTER", 0.1, low=0, high=0.5),
            poll_deadline_s=env.number("RELAY_POLL_DEADLINE_S", 10800.0, low=1),
            poll_max_errors=env.integer("RELAY_POLL_MAX_ERRORS", 5, low=1),
            poll_timeout_s=env.number("RELAY_POLL_TIMEOUT_S", 10.0, low=0.1),
            upstream_rate_per_s=env.number("RELAY_UPSTREAM_RATE_PER_S", 50.0, low=0),
            upstream_pause_s=env.number("RELAY_UPSTREAM_PAUSE_S", 5.0, low=0.1),
            delivery_timeout_s=env.number("RELAY_DELIVERY_TIMEOUT_S", 15.0, low=0.1),
            delivery_retry_schedule_s=env.schedule(
                "RELAY_DELIVERY_RETRY_SCHEDULE_S", DEFAULT_RETRY_SCHEDULE_S
            ),
            delivery_jitter=env.number("RELAY_DELIVERY_JITTER", 0.2, low=0, high=0.5),
            delivery_concurrency=env.integer(
                "RELAY_DELIVERY_CONCURRENCY", 200, low=1, high=10000
            ),
            delivery_per_host=env.integer("RELAY_DELIVERY_PER_HOST", 8, low=1),
            callback_allow_cidrs=env.networks("RELAY_CALLBACK_ALLOW_CIDRS"),
            encryption_keys=Keyring.parse(env.text("RELAY_ENCRYPTION_KEYS", "")),
            key_rate_per_s=env.number("RELAY_KEY_RATE_PER_S", 100.0, low=0),
            key_burst=env.integer("RELAY_KEY_BURST", 200, low=1),
            tenant_max_active=env.integer("RELAY_TENANT_MAX_ACTIVE", 100_000, low=0),
            idempotency_ttl_s=env.number("RELAY_IDEMPOTENCY_TTL_S", 86400.0, low=60),
            retention_s=env.number("RELAY_RETENTION_S", 604800.0, low=60),
            batch_size=env.integer("RELAY_BATCH_SIZE", 400, low=1, high=10000),
            lease_s=env.number("RELAY_LEASE_S", 60.0, low=1),
            shutdown_grace_s=env.number("RELAY_SHUTDOWN_GRACE_S", 20.0, low=0),
            worker_heartbeat_file=env.text("RELAY_WORKER_HEARTBEAT_FILE", ""),
            max_body_bytes=env.integer("RELAY_MAX_BODY_BYTES", 65536, low=1024),
            max_metadata_bytes=env.integer("RELAY_MAX_METADATA_BYTES", 4096, low=2),
            log_format=env.choice(
                "RELAY_LOG_FORMAT", "auto", ("auto", "json", "console")
            ),
            log_level=env.choice(
                "RELAY_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")
            ),
        )
        settings._check_lease()
        settings._check_rotation()
        return settings

    def active_signing_secrets(self, now_s: float) -> tuple[Secret, ...]:
        """Return the secrets to sign with at ``now_s``: new first, old in grace."""
        if now_s < self.previous_signing_until_s:
            return self.signing_secrets + self.previous_signing_secrets
        return self.signing_secrets

    def _check_rotation(self) -> None:
        if self.previous_signing_secrets and not self.previous_signing_until_s:
            raise SettingsError(
                "RELAY_SIGNING_SECRET_PREVIOUS needs "
                "RELAY_SIGNING_SECRET_PREVIOUS_UNTIL, the end of the grace period "
                "(RFC 3339, e.g. 2027-01-31T00:00:00Z)"
            )

    def require_api(self) -> None:
        """Raise SettingsError unless the API's own settings are present."""
        token = self.api_token.reveal()
        if token and len(token) < 16:
            raise SettingsError(
                "RELAY_API_TOKEN must be a random string of at least 16 characters, "
                "or unset to accept only API keys from `relay keys create`"
            )
        self._require_modelgates_key()

    def require_worker(self) -> None:
        """Raise SettingsError unless the worker's own settings are present."""
        if not self.signing_secrets:
            raise SettingsError(
                "RELAY_SIGNING_SECRET must be set to 'whsec_' followed by the "
                "base64 of 24 to 64 random bytes"
            )
        if not self.modelgates_base_url:
            raise SettingsError(
                "MODELGATES_BASE_URL must be set to the ModelGates API origin, "
                "for example 'https://<host>' without the '/api/v1' path"
            )
        self._require_modelgates_key()

    def _require_modelgates_key(self) -> None:
        # The API needs the key too: registrations share a poll only when
        # they use the same key, and the API groups them by its digest.
        if not self.modelgates_api_key:
            raise SettingsError("MODELGATES_API_KEY must be set to a ModelGates key")

    def _check_lease(self) -> None:
        longest_s = max(self.poll_timeout_s, self.delivery_timeout_s)
        if self.lease_s <= longest_s * 2:
            raise SettingsError(
                f"RELAY_LEASE_S must exceed twice the longest request timeout "
                f"({longest_s:g} s) so a live worker keeps its claim, got "
                f"{self.lease_s:g}"
            )
        if self.shutdown_grace_s >= self.lease_s:
            raise SettingsError(
                f"RELAY_SHUTDOWN_GRACE_S must be less than RELAY_LEASE_S "
                f"({self.lease_s:g} s), so the work a stopping worker finishes is "
                f"still its own claim, got {self.shutdown_grace_s:g}"
            )


class _Reader:
    """Parses typed values out of an environment mapping, naming the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str, default: str) -> str:
        return self._environ.get(name, "").strip() or default

    def number(
        self, name: str, default: float, low: float, high: float | None = None
    ) -> float:
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise SettingsError(f"{name} must be a finite number, got {raw!r}")
        _check_range(name, value, low, high)
        return value

    def integer(
        self, name: str, default: int, low: int, high: int | None = None
    ) -> int:
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
        _check_range(name, value, low, high)
        return value

    def choice(self, name: str, default: str, options: tuple[str, ...]) -> str:
        value = self._environ.get(name, "").strip() or default
        if name == "RELAY_LOG_LEVEL":
            value = value.upper()
        if value not in options:
            raise SettingsError(
                f"{name} must be one of {', '.join(options)}, got {value!r}"
            )
        return value

    def moment(self, name: str) -> float:
        """Parse an RFC 3339 timestamp or epoch seconds; 0 when unset."""
        raw = self._environ.get(name, "").strip()
        if not raw:
            return 0.0
        try:
            return float(raw)
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise SettingsError(
                f"{name} must be an RFC 3339 time such as 2027-01-31T00:00:00Z "
                f"or epoch seconds, got {raw!r}"
            ) from None
        if moment.tzinfo is None:
            raise SettingsError(f"{name} must include a time zone, got {raw!r}")
        return moment.timestamp()

    def schedule(self, name: str, default: tuple[float, ...]) -> tuple[float, ...]:
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        try:
            delays = tuple(float(part) for part in raw.split(","))
        except ValueError:
            raise SettingsError(
                f"{name} must be comma-separated seconds such as '5,300,1800', "
                f"got {raw!r}"
            ) from None
        if any(not math.isfinite(delay) or delay < 0 for delay in delays):
            raise SettingsError(
                f"{name} must contain finite, non-negative delays, got {raw!r}"
            )
        return delays

    def networks(
        self, name: str
    ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        raw = self._environ.get(name, "").strip()
        networks = []
        for part in filter(None, (item.strip() for item in raw.split(","))):
            try:
                network = ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise SettingsError(
                    f"{name} must be comma-separated CIDRs such as "
                    f"'127.0.0.0/8,::1/128', got {part!r}"
                ) from None
            try:
                ipaddress.ip_network(part)
            except ValueError:
                # A typo such as 127.0.0.1/8 would silently allow the whole
                # 127.0.0.0/8, so the operator must write what they mean.
                raise SettingsError(
                    f"{name}: {part!r} has host bits set; write {network} "
                    "for that whole network"
                ) from None
            networks.append(network)
        return tuple(networks)


def _check_range(name: str, value: float, low: float, high: float | None) -> None:
    if value < low or (high is not None and value > high):
        bound = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
        raise SettingsError(f"{name} must be {bound}, got {value:g}")


def _signing_secrets(
    raw: str, name: str = "RELAY_SIGNING_SECRET"
) -> tuple[Secret, ...]:
    """Parse one secret, or several separated by spaces."""
    return tuple(Secret(part) for part in raw.split() if _check_secret(part, name))


def _check_secret(secret: str, name: str) -> bool:
    if not secret.startswith(SIGNING_SECRET_PREFIX):
        raise SettingsError(
            f"{name} must start with 'whsec_' followed by base64; "
            "generate one with: relay secret"
        )
    try:
        key = base64.b64decode(secret[len(SIGNING_SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        raise SettingsError(
            f"{name} has invalid base64 after 'whsec_'; generate one with: relay secret"
        ) from None
    if not 24 <= len(key) <= 64:
        raise SettingsError(
            f"{name} must encode 24 to 64 bytes, got {len(key)}; "
            "generate one with: relay secret"
        )
    return True


def _base_url(raw: str) -> str:
    if not raw:
        return ""
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        # The message leaves the value out: it may carry credentials.
        raise SettingsError(
            "MODELGATES_BASE_URL is not a valid URL; check its host and port"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(
            "MODELGATES_BASE_URL must be an absolute http(s) URL such as "
            f"'https://<host>', got scheme {parts.scheme!r}"
        )
    if port == 0:
        raise SettingsError("MODELGATES_BASE_URL must not use port 0")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise SettingsError(
            "MODELGATES_BASE_URL must not carry credentials, a query or a "
            "fragment; put the key in MODELGATES_API_KEY"
        )
    return raw.rstrip("/")


def _redis_url(url: str) -> str:
    """Return ``url`` if redis-py can connect with it, else raise SettingsError."""
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise SettingsError(
            "REDIS_URL must start with redis://, rediss:// or unix://, "
            f"got scheme {scheme!r}"
        )
    return url


_KEY_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _key_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is safe in Redis key patterns and queue names."""
    if not _KEY_PREFIX.fullmatch(prefix):
        raise SettingsError(
            "RELAY_KEY_PREFIX must be 1 to 64 letters, digits, '_', '.', ':' or "
            f"'-', such as 'relay:', got {prefix[:70]!r}"
        )
    return prefix
