"""Registration input rules, identifiers and the shape shown to clients."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import string
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import SplitResult, urlsplit

from relay import url_safety
from relay.safe_transport import Resolver
from relay.settings import Settings

TERMINAL_EVENT_TYPES = (
    "video.completed",
    "video.failed",
    "video.cancelled",
    "video.expired",
    "video.tracking_failed",
)
# Sent once when the upstream job first reports in_progress, to registrations
# that list it; never part of the default filter.
STATUS_CHANGED = "video.status_changed"
EVENT_TYPES = (*TERMINAL_EVENT_TYPES, STATUS_CHANGED)
MAX_JOB_ID_CHARS = 256
MAX_CALLBACK_URL_CHARS = 2048
MAX_METADATA_DEPTH = 32
# Clients register many jobs against a few callback URLs, so the outcome of
# the checks that need no DNS is kept per URL. Only accepted URLs are kept.
URL_CHECKS_CACHED = 4096

# Characters that could change the upstream path once the job ID is placed in
# ``/api/v1/videos/{job_id}``, even after percent-encoding by a careless proxy.
_FORBIDDEN_IN_JOB_ID = ("/", "\\", "?", "#", "%")
_PRINTABLE_ASCII = frozenset(string.ascii_letters + string.digits + string.punctuation)


class InputError(ValueError):
    """A client's request broke one rule; ``field`` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class NewRegistration:
    """A registration request that passed every rule."""

    job_id: str
    callback_url: str
    events: tuple[str, ...]
    metadata_json: str


def new_registration_id() -> str:
    """Return a random registration ID such as ``reg_3kTMd…``."""
    return "reg_" + secrets.token_urlsafe(18)


def event_id_for(registration_id: str) -> str:
    """Return the ID (the ``webhook-id``) of a registration's terminal event."""
    return "msg_" + registration_id.removeprefix("reg_")


def status_event_id_for(registration_id: str, status: str) -> str:
    """Return the ID of a registration's ``video.status_changed`` event."""
    return f"{event_id_for(registration_id)}_{status}"


def validate(
    job_id: str,
    callback_url: str,
    events: list[str] | None,
    metadata: dict[str, Any] | None,
    settings: Settings,
) -> NewRegistration:
    """Check a registration request and return it normalized, or raise InputError."""
    return NewRegistration(
        job_id=check_job_id(job_id),
        callback_url=check_callback_url(callback_url, settings),
        events=check_events(events),
        metadata_json=check_metadata(metadata, settings.max_metadata_bytes),
    )


def encode_events(events: tuple[str, ...]) -> str:
    """Return the compact stored form of an event filter.

    ``*`` stands for every terminal event, so the common filters stay short
    enough for Redis's compact hash encoding.
    """
    if set(TERMINAL_EVENT_TYPES) <= set(events):
        rest = [name for name in events if name not in TERMINAL_EVENT_TYPES]
        return ",".join(["*", *rest])
    return ",".join(events)


def decode_events(stored: str) -> list[str]:
    """Return the event filter that ``encode_events`` stored."""
    names: list[str] = []
    for name in stored.split(","):
        names += TERMINAL_EVENT_TYPES if name == "*" else [name]
    return names


def wants_status_changes(events: tuple[str, ...]) -> bool:
    """Return whether a filter subscribes to ``video.status_changed``."""
    return STATUS_CHANGED in events


def check_job_id(job_id: str) -> str:
    """Return ``job_id`` if it is safe to place in the upstream path."""
    if not job_id:
        raise InputError("job_id", "job_id must not be empty")
    if len(job_id) > MAX_JOB_ID_CHARS:
        raise InputError(
            "job_id",
            f"job_id must be at most {MAX_JOB_ID_CHARS} characters, got {len(job_id)}",
        )
    for forbidden in _FORBIDDEN_IN_JOB_ID:
        if forbidden in job_id:
            raise InputError(
                "job_id", f"job_id must not contain {forbidden!r}, got {job_id!r}"
            )
    if ".." in job_id or job_id == ".":
        raise InputError(
            "job_id", f"job_id must not contain '..' or be '.', got {job_id!r}"
        )
    if not set(job_id) <= _PRINTABLE_ASCII:
        raise InputError(
            "job_id",
            "job_id must contain only printable ASCII without whitespace or "
            f"control characters, got {job_id!r}",
        )
    return job_id


def check_callback_url(url: str, settings: Settings) -> str:
    """Return ``url`` normalized if it is an absolute http(s) URL the relay may call."""
    return _checked_callback_url(url, settings.callback_allow_cidrs).url


@dataclass(frozen=True)
class CheckedUrl:
    """A callback URL that passed the checks that need no DNS."""

    url: str
    # The hostname and port to resolve at registration, or None for a
    # literal address or a local name, which needs no lookup.
    lookup: tuple[str, int] | None


@lru_cache(maxsize=URL_CHECKS_CACHED)
def _checked_callback_url(
    url: str, allowed: tuple[url_safety.Network, ...]
) -> CheckedUrl:
    parts = _split_callback_url(url)

    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(
            "callback_url",
            "callback_url must be an absolute http:// or https:// URL, "
            f"got scheme {parts.scheme!r}",
        )
    if "@" in parts.netloc:
        raise InputError(
            "callback_url",
            "callback_url must not carry credentials (user:password@); "
            "verify webhooks by their signature instead",
        )
    if parts.fragment or url.endswith("#"):
        raise InputError("callback_url", "callback_url must not have a #fragment")

    host = parts.hostname
    if not host.isascii():
        raise InputError(
            "callback_url",
            "callback_url host must be ASCII; write an international domain in "
            "its punycode (xn--) form",
        )
    reason = url_safety.blocked_host_reason(host, allowed)
    if reason:
        raise InputError("callback_url", f"callback_url host is not allowed: {reason}")
    literal = url_safety.parse_literal(host)
    if literal is not None and literal.version == 4 and str(literal) != host:
        # Forms such as 0177.0.0.1 or 127.1 pass the address rules, but the
        # HTTP client cannot send to them.
        raise InputError(
            "callback_url",
            f"callback_url host must be written as {literal}, in dotted decimal",
        )
    lookup = None
    if url_safety.parse_literal(host) is None and not url_safety.is_local_name(host):
        lookup = (host, parts.port or (443 if parts.scheme == "https" else 80))
    return CheckedUrl(normalize_url(url), lookup)


def _split_callback_url(url: str) -> SplitResult:
    """Check a callback URL's length, characters and port, and split it."""
    if not url:
        raise InputError("callback_url", "callback_url must not be empty")
    if len(url) > MAX_CALLBACK_URL_CHARS:
        raise InputError(
            "callback_url",
            f"callback_url must be at most {MAX_CALLBACK_URL_CHARS} characters, "
            f"got {len(url)}",
        )
    if any(char.isspace() or not char.isprintable() for char in url):
        raise InputError(
            "callback_url",
            "callback_url must not contain whitespace or control characters",
        )
    if url.count("[") != url.count("]") or url.count("[") > 1:
        raise InputError(
            "callback_url", "callback_url has unbalanced brackets; check the host"
        )
    try:
        parts = urlsplit(url)
    except ValueError:
        raise InputError(
            "callback_url", "callback_url is not a valid URL; check the host"
        ) from None
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise InputError(
            "callback_url", "callback_url must have a port between 1 and 65535"
        )
    return parts


async def check_callback_addresses(
    url: str, settings: Settings, resolver: Resolver, timeout_s: float = 3.0
) -> None:
    """Resolve a callback hostname now and raise InputError if any address is blocked.

    ``url`` has passed ``check_callback_url``. Literal addresses and local
    names were checked there without DNS. Workers check again at every
    connection, since DNS answers change.
    """
    allowed = settings.callback_allow_cidrs
    lookup = _checked_callback_url(url, allowed).lookup
    if lookup is None:
        return
    host, port = lookup
    try:
        async with asyncio.timeout(timeout_s):
            addresses = await resolver(host, port)
    except (OSError, TimeoutError):
        raise InputError(
            "callback_url",
            f"callback_url host {host!r} could not be resolved; check the name",
        ) from None
    for text in addresses:
        reason = url_safety.blocked_address_reason(ipaddress.ip_address(text), allowed)
        if reason:
            raise InputError(
                "callback_url",
                f"callback_url host is not allowed: {host} resolves to {reason}",
            )


def normalize_url(url: str) -> str:
    """Lower-case the scheme and host and drop a default port or trailing dot.

    Two spellings of one receiver then share one registration.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    default_port = 443 if parts.scheme.lower() == "https" else 80
    if parts.port is not None and parts.port != default_port:
        host = f"{host}:{parts.port}"
    return parts._replace(scheme=parts.scheme.lower(), netloc=host).geturl()


def check_events(events: list[str] | None) -> tuple[str, ...]:
    """Return the event filter; every terminal event when none is given."""
    if events is None:
        return TERMINAL_EVENT_TYPES
    if not events:
        raise InputError(
            "events", "events must list at least one event, or be left out for all"
        )
    for name in events:
        if name not in EVENT_TYPES:
            raise InputError(
                "events",
                f"events contains unknown event {name!r}; "
                f"known events: {', '.join(EVENT_TYPES)}",
            )
    return tuple(dict.fromkeys(events))


def check_metadata(metadata: dict[str, Any] | None, max_bytes: int) -> str:
    """Return ``metadata`` as compact JSON if it fits in ``max_bytes``."""
    if not metadata:
        return "{}"
    flat = not any(isinstance(value, dict | list) for value in metadata.values())
    depth = 1 if flat else _nesting_depth(metadata)
    if depth > MAX_METADATA_DEPTH:
        raise InputError(
            "metadata",
            f"metadata must nest at most {MAX_METADATA_DEPTH} levels, got {depth}",
        )
    try:
        encoded = json.dumps(
            metadata, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        )
    except ValueError:
        raise InputError(
            "metadata", "metadata must not contain NaN or infinite numbers"
        ) from None
    size = len(encoded.encode())
    if size > max_bytes:
        raise InputError(
            "metadata",
            f"metadata must be at most {max_bytes} bytes as JSON, got {size}",
        )
    return encoded


def _nesting_depth(value: Any) -> int:
    """Return how deeply lists and objects nest in ``value``, without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest
