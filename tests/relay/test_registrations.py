"""Tests of the registration input rules, one table per field."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from relay.registrations import (
    EVENT_TYPES,
    TERMINAL_EVENT_TYPES,
    InputError,
    check_callback_url,
    check_events,
    check_job_id,
    check_metadata,
    decode_events,
    encode_events,
    event_id_for,
    new_registration_id,
    normalize_url,
    validate,
)
from relay.settings import Settings

STRICT = Settings()
LOOPBACK = Settings(
    callback_allow_cidrs=(
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
)


def input_error(check: Any, *args: Any) -> InputError:
    with pytest.raises(InputError) as caught:
        check(*args)
    return caught.value


# check_job_id


@pytest.mark.parametrize(
    "job_id",
    [
        "job-1",
        "gen_01HZX9Q2ZK",
        "a.b",
        "a~b_c-d",
        "x:y*z",
        "j" * 256,
        "!$&'()+,;=@[]^`{|}",
    ],
)
def test_check_job_id_accepts_safe(job_id: str) -> None:
    assert check_job_id(job_id) == job_id


@pytest.mark.parametrize(
    ("job_id", "rule"),
    [
        pytest.param("", "must not be empty", id="empty"),
        pytest.param("j" * 257, "at most 256 characters, got 257", id="257-chars"),
        pytest.param("a/b", "must not contain '/'", id="slash"),
        pytest.param("a\\b", "must not contain '\\\\'", id="backslash"),
        pytest.param("a?b", "must not contain '?'", id="question-mark"),
        pytest.param("a#b", "must not contain '#'", id="hash"),
        pytest.param("a%2e%2e", "must not contain '%'", id="percent"),
        pytest.param(".", "'..' or be '.'", id="dot"),
        pytest.param("..", "'..' or be '.'", id="dot-dot"),
        pytest.param("a..b", "'..' or be '.'", id="inner-dot-dot"),
        pytest.param("a b", "printable ASCII", id="space"),
        pytest.param("a\tb", "printable ASCII", id="tab"),
        pytest.param("a\nb", "printable ASCII", id="newline"),
        pytest.param("a\rb", "printable ASCII", id="carriage-return"),
        pytest.param("a\x00b", "printable ASCII", id="nul"),
        pytest.param("a\x01b", "printable ASCII", id="control"),
        pytest.param("a\x7fb", "printable ASCII", id="delete"),
        pytest.param("jöb", "printable ASCII", id="latin"),
        pytest.param("job\u00a01", "printable ASCII", id="nbsp"),
        pytest.param("job\u2215x", "printable ASCII", id="division-slash"),
        pytest.param("ｊｏｂ", "printable ASCII", id="fullwidth"),
    ],
)
def test_check_job_id_rejects_unsafe(job_id: str, rule: str) -> None:
    error = input_error(check_job_id, job_id)

    assert error.field == "job_id"
    assert error.message.startswith("job_id")
    assert rule in error.message


# check_callback_url


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/relay",
        "http://hooks.example.com:8080/relay?tenant=7&x=%20",
        "https://8.8.8.8/hook",
        "https://[2001:4860:4860::8888]/hook",
    ],
)
def test_check_callback_url_accepts_public(url: str) -> None:
    assert check_callback_url(url, STRICT) == url


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("HTTPS://Hooks.Example.COM/relay", "https://hooks.example.com/relay"),
        ("http://hooks.example.com:80/a", "http://hooks.example.com/a"),
        ("https://hooks.example.com.:443/a?b=1", "https://hooks.example.com/a?b=1"),
        ("http://[2001:db8::1]:8080/x", "http://[2001:db8::1]:8080/x"),
        ("http://hooks.example.com:09/x", "http://hooks.example.com:9/x"),
    ],
)
def test_normalize_url_joins_spellings(url: str, normalized: str) -> None:
    assert normalize_url(url) == normalized


def test_check_callback_url_rejects_unicode_host() -> None:
    with pytest.raises(InputError) as raised:
        check_callback_url("http://１２７.０.０.１/hook", STRICT)

    assert "punycode" in raised.value.message


def test_check_metadata_rejects_deep_nesting() -> None:
    deep: dict[str, object] = {}
    node = deep
    for _ in range(40):
        node["a"] = {}
        node = node["a"]  # type: ignore[assignment]

    with pytest.raises(InputError) as raised:
        check_metadata(deep, 4096)

    assert "nest at most 32 levels" in raised.value.message


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/hook", "http://[::1]:9/hook", "http://localhost:9/hook"],
)
def test_check_callback_url_accepts_allowed(url: str) -> None:
    assert check_callback_url(url, LOOPBACK) == url


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        pytest.param("", "must not be empty", id="empty"),
        pytest.param(
            "https://a.test/" + "p" * 2048, "at most 2048 characters", id="long"
        ),
        pytest.param("https://a.test/a b", "whitespace", id="space"),
        pytest.param("https://a.test/\x00", "control characters", id="nul"),
        pytest.param("https://a.test/\u2028", "whitespace", id="line-separator"),
        pytest.param("/relative", "absolute http:// or https://", id="relative"),
        pytest.param("a.test/hook", "absolute http:// or https://", id="no-scheme"),
        pytest.param("ftp://a.test/", "got scheme 'ftp'", id="ftp"),
        pytest.param("javascript:alert(1)", "got scheme 'javascript'", id="js"),
        pytest.param("file:///etc/passwd", "got scheme 'file'", id="file"),
        pytest.param("http:///hook", "absolute http:// or https://", id="no-host"),
        pytest.param("http://:80/hook", "absolute http:// or https://", id="port-only"),
        pytest.param("https://u:p@a.test/", "credentials", id="userinfo"),
        pytest.param("https://u@a.test/", "credentials", id="user-only"),
        pytest.param("https://@a.test/", "credentials", id="empty-userinfo"),
        pytest.param("https://a.test/#x", "#fragment", id="fragment"),
        pytest.param("https://a.test/#", "#fragment", id="empty-fragment"),
        pytest.param("https://a.test:99999/", "port between", id="port-big"),
        pytest.param("https://a.test:-1/", "port between", id="port-negative"),
        pytest.param("https://a.test:8o/", "port between", id="port-text"),
        pytest.param("https://[::1/", "unbalanced brackets", id="open-bracket"),
        pytest.param("http://[::1]]:9/", "unbalanced brackets", id="extra-bracket"),
        pytest.param("http://127.0.0.1/", "not a public address", id="loopback"),
        pytest.param("http://localhost/", "not a public address", id="localhost"),
        pytest.param("http://api.localhost/", "not a public address", id="sub-local"),
        pytest.param("http://169.254.169.254/", "cloud metadata", id="metadata"),
    ],
)
def test_check_callback_url_rejects_invalid(url: str, rule: str) -> None:
    error = input_error(check_callback_url, url, STRICT)

    assert error.field == "callback_url"
    assert error.message.startswith("callback_url")
    assert rule in error.message


def test_check_callback_url_hides_password() -> None:
    error = input_error(check_callback_url, "https://u:hunter2@a.test/", STRICT)

    assert "hunter2" not in error.message


def test_check_callback_url_rejects_port_zero() -> None:
    error = input_error(check_callback_url, "https://a.test:0/hook", STRICT)

    assert error.field == "callback_url"


# check_events


def test_check_events_defaults_to_terminal_events() -> None:
    assert check_events(None) == TERMINAL_EVENT_TYPES
    assert "video.status_changed" not in TERMINAL_EVENT_TYPES
    assert len(EVENT_TYPES) == 6


@pytest.mark.parametrize(
    "events",
    [
        TERMINAL_EVENT_TYPES,
        EVENT_TYPES,
        ("video.failed",),
        ("video.status_changed", "video.completed"),
        ("video.status_changed",),
    ],
)
def test_event_filter_round_trips(events: tuple[str, ...]) -> None:
    stored = encode_events(events)

    assert set(decode_events(stored)) == set(events)


def test_common_event_filters_are_stored_short() -> None:
    # Values under 64 bytes keep the registration hash in the compact encoding.
    assert encode_events(TERMINAL_EVENT_TYPES) == "*"
    assert encode_events(EVENT_TYPES) == "*,video.status_changed"


def test_check_events_drops_duplicates() -> None:
    events = ["video.failed", "video.completed", "video.failed"]

    assert check_events(events) == ("video.failed", "video.completed")


@pytest.mark.parametrize(
    ("events", "rule"),
    [
        ([], "at least one event"),
        (["video.started"], "unknown event 'video.started'"),
        (["video.completed", "Video.Failed"], "unknown event 'Video.Failed'"),
        (["video.completed", ""], "unknown event ''"),
    ],
)
def test_check_events_rejects_invalid(events: list[str], rule: str) -> None:
    error = input_error(check_events, events)

    assert error.field == "events"
    assert rule in error.message


def test_check_events_lists_known() -> None:
    error = input_error(check_events, ["video.started"])

    for name in EVENT_TYPES:
        assert name in error.message


# check_metadata


def test_check_metadata_returns_compact_json() -> None:
    metadata = {"note": "née ✓", "nested": {"list": [1, 2.5, None, True]}}

    encoded = check_metadata(metadata, 4096)

    assert encoded == '{"note":"née ✓","nested":{"list":[1,2.5,null,true]}}'
    assert json.loads(encoded) == metadata


def test_check_metadata_defaults_to_empty() -> None:
    assert check_metadata(None, 4096) == "{}"
    assert check_metadata({}, 4096) == "{}"


def test_check_metadata_limit_is_inclusive() -> None:
    # '{"k":""}' is 8 bytes, so the value fills the rest of the limit.
    exact = {"k": "x" * (64 - 8)}

    assert len(check_metadata(exact, 64).encode()) == 64


def test_check_metadata_rejects_over_limit() -> None:
    error = input_error(check_metadata, {"k": "x" * (64 - 7)}, 64)

    assert error.field == "metadata"
    assert "at most 64 bytes as JSON, got 65" in error.message


def test_check_metadata_counts_utf8_bytes() -> None:
    # Each "é" is one character but two bytes of UTF-8.
    error = input_error(check_metadata, {"k": "é" * 30}, 64)

    assert "got 68" in error.message


# validate and identifiers


def test_validate_normalizes_request() -> None:
    request = validate(
        "job-1",
        "https://hooks.example.com/relay",
        ["video.completed", "video.completed"],
        {"order": 7},
        STRICT,
    )

    assert request.job_id == "job-1"
    assert request.callback_url == "https://hooks.example.com/relay"
    assert request.events == ("video.completed",)
    assert request.metadata_json == '{"order":7}'


def test_validate_checks_job_id_first() -> None:
    error = input_error(validate, "", "ftp://x", [], None, STRICT)

    assert error.field == "job_id"


def test_registration_ids_are_random() -> None:
    first = new_registration_id()
    second = new_registration_id()

    assert first.startswith("reg_")
    assert first != second
    assert len(first) == len("reg_") + 24


def test_event_id_for_reuses_suffix() -> None:
    assert event_id_for("reg_abc-_9") == "msg_abc-_9"


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("http://0177.0.0.1:9/", "127.0.0.1"),
        ("http://127.000.000.001:9/", "127.0.0.1"),
        ("http://127.1:9/", "127.0.0.1"),
        ("http://1.2.3.04/", "1.2.3.4"),
    ],
)
def test_check_callback_url_wants_dotted_decimal(url: str, canonical: str) -> None:
    error = input_error(check_callback_url, url, LOOPBACK)

    assert error.field == "callback_url"
    assert f"written as {canonical}" in error.message
