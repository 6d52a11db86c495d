"""The secret check: it finds planted secrets in a real pytest run and reports where.

Each run test starts pytest in a subprocess over a temporary project whose
conftest installs the check, so the outer run's own check never reads the
planted values.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from relay.crypto import new_key_text
from relay.signing import generate_secret
from tests.secret_check import SecretDetector, event_of, redact

ROOT = Path(__file__).resolve().parents[1]
FAKE_TOKEN = "planted-token-" + "7" * 12


def fake_api_key() -> str:
    return f"rk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


def fake_signature() -> str:
    return "v1," + base64.b64encode(secrets.token_bytes(32)).decode()


def kinds(text: str, known: dict[str, list[str]] | None = None) -> list[str]:
    """Return the kind of each secret in ``text``, in order of position."""
    detector = SecretDetector(known or {})
    return [match.kind for match in detector.find(text)]


def run_pytest(
    tmp_path: Path, test_source: str, *options: str
) -> subprocess.CompletedProcess[str]:
    """Run pytest with the check installed over one test file, and return the result."""
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            f"""
            from tests import secret_check

            def pytest_configure(config):
                secret_check.install(config, {{"API token": [{FAKE_TOKEN!r}]}})
            """
        )
    )
    (tmp_path / "test_planted.py").write_text(textwrap.dedent(test_source))
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PYTEST_", "PY_COLORS"))
    }
    environment["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "-o",
            "console_output_style=classic",
            *options,
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


# The detector


def test_detector_finds_each_shape() -> None:
    text = "\n".join(
        [
            f"secret={generate_secret()}",
            f"key={fake_api_key()}",
            f"webhook-signature: {fake_signature()}",
            f"RELAY_ENCRYPTION_KEYS={new_key_text('k1')}",
        ]
    )

    assert kinds(text) == [
        "signing secret",
        "relay API key",
        "webhook signature",
        "encryption key",
    ]


def test_detector_finds_known_value() -> None:
    found = kinds(f"Authorization: Bearer {FAKE_TOKEN}", {"API token": [FAKE_TOKEN]})

    assert found == ["API token"]


def test_detector_reports_entry_once() -> None:
    entry = new_key_text("k1")

    found = kinds(f"keys={entry}", {"encryption key": [entry.partition(":")[2]]})

    assert found == ["encryption key"]


@pytest.mark.parametrize(
    "text",
    [
        "RELAY_SIGNING_SECRET must start with whsec_",
        "whsec_ followed by the base64 of 24 to 64 bytes",
        "key ID rk_3f9c0a1b2d4e was revoked",
        "sealed v1.test1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        'signature header "v1," missing',
        "sha256=" + "ab" * 32,
    ],
)
def test_detector_ignores_lookalikes(text: str) -> None:
    assert kinds(text) == []


def test_redact_keeps_short_prefix() -> None:
    secret = generate_secret()

    assert redact(secret) == "whsec_..."
    assert redact("mg-test-key-abc") == "m..."


def test_event_of_reads_json_and_console_lines() -> None:
    json_line = '{"event": "poll.finished", "level": "info"}'
    console_line = "2026-01-01 00:00:00 [info     ] webhook.delivered  attempt=1"

    assert event_of(json_line) == "poll.finished"
    assert event_of(console_line) == "webhook.delivered"
    assert event_of("plain text") is None


# A whole pytest run


def test_check_fails_run_on_planted_secrets(tmp_path: Path) -> None:
    api_key = fake_api_key()
    signing_secret = generate_secret()
    signature = fake_signature()
    result = run_pytest(
        tmp_path,
        f"""
        import json
        import logging
        import sys

        import pytest

        from tests import secret_check

        @pytest.fixture
        def noisy_teardown():
            yield
            print({signing_secret!r}, file=sys.stderr)

        def test_prints_key():
            print("created", {api_key!r})
            print("again", {api_key!r})

        def test_leaks_in_teardown(noisy_teardown):
            pass

        def test_logs_signature():
            logging.getLogger("relay").warning("sent %s", {signature!r})

        def test_worker_log(request, tmp_path):
            log_path = tmp_path / "worker-0.log"
            line = {{"event": "poll.started", "token": {FAKE_TOKEN!r}}}
            log_path.write_text("\\n" * 40 + json.dumps(line) + "\\n")
            secret_check.scan_file(request, log_path)

        def test_clean():
            print("nothing secret here")
        """,
    )
    output = result.stdout + result.stderr

    assert result.returncode == 1, output
    assert "5 passed" in output
    assert "secret check failed: 4 findings in 4 tests" in output
    assert (
        "test_planted.py::test_prints_key\n"
        "  Captured stdout call, line 1: "
        f"relay API key {redact(api_key)!r} (2 occurrences)"
    ) in output
    assert (
        "test_planted.py::test_leaks_in_teardown\n"
        f"  Captured stderr teardown, line 1: signing secret {redact(signing_secret)!r}"
    ) in output
    assert (
        "test_planted.py::test_logs_signature\n"
        f"  Captured log call, line 1: webhook signature {redact(signature)!r}"
    ) in output
    assert (
        "test_planted.py::test_worker_log\n"
        "  worker-0.log (whole file), line 41, event poll.started: "
        f"API token {redact(FAKE_TOKEN)!r}"
    ) in output
    assert "test_clean" not in output
    for secret in (api_key, signing_secret, signature, FAKE_TOKEN):
        assert secret not in output


def test_check_passes_clean_run(tmp_path: Path) -> None:
    result = run_pytest(
        tmp_path,
        """
        def test_clean():
            print("registration created, key ID rk_3f9c0a1b2d4e")
        """,
    )
    output = result.stdout + result.stderr

    assert result.returncode == 0, output
    assert "secret check: no secrets in 1 sections of captured output" in output


def test_check_warns_when_capture_off(tmp_path: Path) -> None:
    result = run_pytest(
        tmp_path,
        """
        def test_clean():
            pass
        """,
        "-s",
    )
    output = result.stdout + result.stderr

    assert result.returncode == 0, output
    assert "secret check: output capture is off (-s)" in output
