"""Tests of settings parsing. Errors name the variable and never show a secret."""

from __future__ import annotations

import base64
import ipaddress

import pytest

from relay.errors import SettingsError
from relay.settings import DEFAULT_RETRY_SCHEDULE_S, Secret, Settings


def whsec(size_bytes: int, fill: int = 7) -> str:
    return "whsec_" + base64.b64encode(bytes([fill]) * size_bytes).decode()


def settings_error(environ: dict[str, str]) -> str:
    """Return the SettingsError message that ``environ`` produces."""
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(environ)
    return str(caught.value)


# Signing secrets


def test_defaults_from_empty_environment() -> None:
    settings = Settings.from_env({})

    assert settings.signing_secrets == ()
    assert settings.max_body_bytes == 65536
    assert settings.max_metadata_bytes == 4096
    assert settings.delivery_retry_schedule_s == DEFAULT_RETRY_SCHEDULE_S
    assert settings.callback_allow_cidrs == ()


@pytest.mark.parametrize("size_bytes", [24, 32, 64])
def test_signing_secret_accepts_valid_sizes(size_bytes: int) -> None:
    secret = whsec(size_bytes)

    settings = Settings.from_env({"RELAY_SIGNING_SECRET": secret})

    assert [item.reveal() for item in settings.signing_secrets] == [secret]


def test_signing_secret_accepts_two_secrets() -> None:
    old, new = whsec(32, fill=1), whsec(32, fill=2)

    settings = Settings.from_env({"RELAY_SIGNING_SECRET": f"{old}  {new}"})

    assert [item.reveal() for item in settings.signing_secrets] == [old, new]


@pytest.mark.parametrize(
    ("secret", "rule"),
    [
        pytest.param(
            base64.b64encode(b"k" * 32).decode(), "must start with 'whsec_'", id="nopx"
        ),
        pytest.param("whsec_not*base64!", "invalid base64", id="bad-base64"),
        pytest.param("whsec_QUJD", "24 to 64 bytes, got 3", id="3-bytes"),
        pytest.param(whsec(23), "24 to 64 bytes, got 23", id="23-bytes"),
        pytest.param(whsec(65), "24 to 64 bytes, got 65", id="65-bytes"),
        pytest.param(f"{whsec(32)} nope-secret", "must start with", id="second-bad"),
    ],
)
def test_signing_secret_rejects_invalid(secret: str, rule: str) -> None:
    message = settings_error({"RELAY_SIGNING_SECRET": secret})

    assert "RELAY_SIGNING_SECRET" in message
    assert rule in message
    assert "relay secret" in message
    for part in secret.split():
        assert part not in message
        assert part.removeprefix("whsec_") not in message


# Numbers, choices, schedules and networks


@pytest.mark.parametrize(
    ("name", "raw", "rule"),
    [
        ("RELAY_POLL_FACTOR", "fast", "must be a number, got 'fast'"),
        ("RELAY_POLL_FACTOR", "0.5", "must be >= 1, got 0.5"),
        ("RELAY_POLL_JITTER", "0.9", "must be between 0 and 0.5, got 0.9"),
        ("RELAY_POLL_FIRST_DELAY_S", "-1", "must be >= 0, got -1"),
        ("RELAY_DELIVERY_TIMEOUT_S", "1s", "must be a number, got '1s'"),
        ("RELAY_BATCH_SIZE", "1.5", "must be an integer, got '1.5'"),
        ("RELAY_BATCH_SIZE", "0", "must be between 1 and 10000, got 0"),
        ("RELAY_API_PORT", "70000", "must be between 1 and 65535, got 70000"),
        ("RELAY_POLL_MAX_ERRORS", "many", "must be an integer, got 'many'"),
        ("RELAY_MAX_BODY_BYTES", "100", "must be >= 1024, got 100"),
        ("RELAY_LOG_FORMAT", "xml", "must be one of auto, json, console, got 'xml'"),
        ("RELAY_LOG_LEVEL", "loud", "must be one of DEBUG, INFO"),
        ("RELAY_DELIVERY_RETRY_SCHEDULE_S", "5,soon", "comma-separated seconds"),
        ("RELAY_DELIVERY_RETRY_SCHEDULE_S", "5,,300", "comma-separated seconds"),
        ("RELAY_DELIVERY_RETRY_SCHEDULE_S", "5,-1", "non-negative delays"),
        ("RELAY_CALLBACK_ALLOW_CIDRS", "10.0.0.0/33", "got '10.0.0.0/33'"),
        ("RELAY_CALLBACK_ALLOW_CIDRS", "127.0.0.0/8,lan", "got 'lan'"),
        ("RELAY_CALLBACK_ALLOW_CIDRS", "127.0.0.1/8", "write 127.0.0.0/8"),
        ("RELAY_KEY_PREFIX", "nu*", "letters, digits"),
        ("RELAY_KEY_PREFIX", "a b", "letters, digits"),
    ],
)
def test_settings_error_names_variable(name: str, raw: str, rule: str) -> None:
    message = settings_error({name: raw})

    assert message.startswith(name)
    assert rule in message


@pytest.mark.parametrize(
    "name", ["RELAY_POLL_FACTOR", "RELAY_POLL_JITTER", "RELAY_DELIVERY_TIMEOUT_S"]
)
def test_number_rejects_nan(name: str) -> None:
    message = settings_error({name: "nan"})

    assert name in message


def test_schedule_rejects_nan() -> None:
    message = settings_error({"RELAY_DELIVERY_RETRY_SCHEDULE_S": "5,nan"})

    assert "RELAY_DELIVERY_RETRY_SCHEDULE_S" in message


def test_schedule_parses_seconds() -> None:
    settings = Settings.from_env({"RELAY_DELIVERY_RETRY_SCHEDULE_S": " 0.5, 2,10 "})

    assert settings.delivery_retry_schedule_s == (0.5, 2.0, 10.0)


def test_log_level_ignores_case() -> None:
    settings = Settings.from_env({"RELAY_LOG_LEVEL": "debug"})

    assert settings.log_level == "DEBUG"


def test_allow_cidrs_parses_networks() -> None:
    settings = Settings.from_env(
        {"RELAY_CALLBACK_ALLOW_CIDRS": " 127.0.0.0/8 , ::1/128 ,"}
    )

    assert settings.callback_allow_cidrs == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )


# MODELGATES_BASE_URL


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://api.modelgates.test", "https://api.modelgates.test"),
        ("https://api.modelgates.test/", "https://api.modelgates.test"),
        ("http://127.0.0.1:8090", "http://127.0.0.1:8090"),
    ],
)
def test_base_url_accepts_origin(raw: str, expected: str) -> None:
    settings = Settings.from_env({"MODELGATES_BASE_URL": raw})

    assert settings.modelgates_base_url == expected


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        ("api.modelgates.test", "absolute http(s) URL"),
        ("ftp://api.modelgates.test", "absolute http(s) URL"),
        ("https://api.modelgates.test/?key=1", "query"),
        ("https://api.modelgates.test/#top", "fragment"),
    ],
)
def test_base_url_rejects_invalid(raw: str, rule: str) -> None:
    message = settings_error({"MODELGATES_BASE_URL": raw})

    assert message.startswith("MODELGATES_BASE_URL")
    assert rule in message


@pytest.mark.parametrize(
    "raw",
    [
        "https://relay:hunter2-pass@api.modelgates.test",
        "https://hunter2-pass@api.modelgates.test",
        "https://:hunter2-pass@api.modelgates.test",
    ],
)
def test_base_url_rejects_credentials(raw: str) -> None:
    message = settings_error({"MODELGATES_BASE_URL": raw})

    assert "credentials" in message
    assert "MODELGATES_API_KEY" in message
    assert "hunter2-pass" not in message


def test_base_url_bad_scheme_hides_credentials() -> None:
    message = settings_error({"MODELGATES_BASE_URL": "ftp://relay:hunter2-pass@host"})

    assert "hunter2-pass" not in message


def test_base_url_bad_ipv6_raises_settings_error() -> None:
    message = settings_error({"MODELGATES_BASE_URL": "http://[::1"})

    assert "MODELGATES_BASE_URL" in message


def test_base_url_rejects_bad_port() -> None:
    message = settings_error({"MODELGATES_BASE_URL": "https://api.test:99999"})

    assert "MODELGATES_BASE_URL" in message


# Lease


def test_lease_must_exceed_twice_timeout() -> None:
    message = settings_error(
        {
            "RELAY_POLL_TIMEOUT_S": "4",
            "RELAY_DELIVERY_TIMEOUT_S": "10",
            "RELAY_LEASE_S": "20",
        }
    )

    assert message.startswith("RELAY_LEASE_S")
    assert "(10 s)" in message
    assert "got 20" in message


def test_lease_uses_longest_timeout() -> None:
    message = settings_error(
        {
            "RELAY_POLL_TIMEOUT_S": "12",
            "RELAY_DELIVERY_TIMEOUT_S": "1",
            "RELAY_LEASE_S": "24",
        }
    )

    assert "(12 s)" in message


def test_lease_above_twice_timeout_accepted() -> None:
    settings = Settings.from_env(
        {
            "RELAY_POLL_TIMEOUT_S": "4",
            "RELAY_DELIVERY_TIMEOUT_S": "10",
            "RELAY_LEASE_S": "20.5",
        }
    )

    assert settings.lease_s == 20.5


def test_shutdown_grace_must_be_below_lease() -> None:
    message = settings_error({"RELAY_LEASE_S": "40", "RELAY_SHUTDOWN_GRACE_S": "40"})

    assert message.startswith("RELAY_SHUTDOWN_GRACE_S")
    assert "(40 s)" in message
    assert "got 40" in message


def test_shutdown_grace_defaults_below_lease() -> None:
    settings = Settings.from_env({})

    assert settings.shutdown_grace_s == 20
    assert settings.shutdown_grace_s < settings.lease_s


# Secret and the per-command requirements


def test_secret_repr_hides_value() -> None:
    secret = Secret("hunter2-token-value")

    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret}"
    assert secret.reveal() == "hunter2-token-value"


def test_secret_truth_follows_value() -> None:
    assert Secret("x")
    assert not Secret("")


def test_settings_repr_hides_secrets() -> None:
    signing_secret = whsec(32)
    settings = Settings.from_env(
        {
            "RELAY_API_TOKEN": "hunter2-api-token-value",
            "MODELGATES_API_KEY": "hunter2-modelgates-key",
            "RELAY_SIGNING_SECRET": signing_secret,
        }
    )

    text = repr(settings)

    assert "hunter2-api-token-value" not in text
    assert "hunter2-modelgates-key" not in text
    assert signing_secret.removeprefix("whsec_") not in text


def test_require_api_rejects_short_token() -> None:
    settings = Settings.from_env({"RELAY_API_TOKEN": "short-token"})

    with pytest.raises(SettingsError) as caught:
        settings.require_api()

    message = str(caught.value)
    assert "RELAY_API_TOKEN" in message
    assert "at least 16 characters" in message
    assert "short-token" not in message


def test_require_api_accepts_long_token() -> None:
    settings = Settings.from_env(
        {"RELAY_API_TOKEN": "t" * 16, "MODELGATES_API_KEY": "mg-key"}
    )

    settings.require_api()


WORKER_ENV = {
    "RELAY_SIGNING_SECRET": whsec(32),
    "MODELGATES_BASE_URL": "https://api.modelgates.test",
    "MODELGATES_API_KEY": "mg-key-value",
}


@pytest.mark.parametrize(
    ("missing", "rule"),
    [
        ("RELAY_SIGNING_SECRET", "'whsec_'"),
        ("MODELGATES_BASE_URL", "ModelGates API origin"),
        ("MODELGATES_API_KEY", "ModelGates key"),
    ],
)
def test_require_worker_names_missing(missing: str, rule: str) -> None:
    environ = {name: value for name, value in WORKER_ENV.items() if name != missing}
    settings = Settings.from_env(environ)

    with pytest.raises(SettingsError) as caught:
        settings.require_worker()

    message = str(caught.value)
    assert message.startswith(missing)
    assert rule in message
    for value in environ.values():
        assert value not in message


def test_require_worker_accepts_complete() -> None:
    settings = Settings.from_env(WORKER_ENV)

    settings.require_worker()
