"""Tests of how upstream responses are classified, bounded and addressed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from relay.upstream import (
    MAX_RETRY_AFTER_S,
    MAX_TEXT_CHARS,
    MAX_URLS,
    Outcome,
    classify,
    parse_retry_after,
    snapshot_of,
    video_url,
)

JOB_ID = "job-up-1"
NO_HEADERS = httpx.Headers()


def job_body(**fields: Any) -> bytes:
    document: dict[str, Any] = {"id": JOB_ID}
    document.update(fields)
    return json.dumps(document).encode()


def classify_ok(body: bytes) -> Outcome:
    return classify(JOB_ID, 200, NO_HEADERS, body)


def http_date(offset_s: float) -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=offset_s), usegmt=True)


# classify: 200 responses


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        ("pending", "running"),
        ("in_progress", "running"),
        ("completed", "terminal"),
        ("failed", "terminal"),
        ("cancelled", "terminal"),
        ("expired", "terminal"),
    ],
)
def test_classify_known_status(status: str, kind: str) -> None:
    outcome = classify_ok(job_body(status=status))

    assert outcome.kind == kind
    assert outcome.status_code == 200
    assert outcome.snapshot["status"] == status


def test_classify_completed_keeps_fields() -> None:
    body = job_body(
        status="completed",
        generation_id="gen-9",
        unsigned_urls=["https://cdn.test/a.mp4"],
        usage={"cost": 0.25, "is_byok": False},
        extra_field="dropped",
    )

    outcome = classify_ok(body)

    assert outcome.snapshot == {
        "status": "completed",
        "generation_id": "gen-9",
        "unsigned_urls": ["https://cdn.test/a.mp4"],
        "usage": {"cost": 0.25, "is_byok": False},
    }


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"{not json", "malformed JSON", id="malformed"),
        pytest.param(b"<html><body>502</body></html>", "malformed JSON", id="html"),
        pytest.param(b"", "malformed JSON", id="empty"),
        pytest.param(b"\xff\xfe\x00", "malformed JSON", id="not-utf8"),
        pytest.param(b'[{"id": "job-up-1"}]', "not a JSON object", id="array"),
        pytest.param(b'"completed"', "not a JSON object", id="string"),
        pytest.param(b"null", "not a JSON object", id="null"),
        pytest.param(
            json.dumps({"id": "other-job", "status": "completed"}).encode(),
            "id does not match",
            id="id-mismatch",
        ),
        pytest.param(
            json.dumps({"status": "completed"}).encode(),
            "id does not match",
            id="id-missing",
        ),
        pytest.param(job_body(), "no status", id="status-missing"),
        pytest.param(job_body(status=3), "no status", id="status-number"),
        pytest.param(job_body(status="queued"), "unknown status 'queued'", id="new"),
        pytest.param(job_body(status="COMPLETED"), "unknown status", id="upper"),
    ],
)
def test_classify_bad_body_is_error(body: bytes, reason: str) -> None:
    outcome = classify_ok(body)

    assert outcome.kind == "error"
    assert outcome.status_code == 200
    assert reason in outcome.reason
    assert outcome.snapshot == {}


def test_classify_cuts_unknown_status() -> None:
    outcome = classify_ok(job_body(status="x" * 500))

    assert outcome.kind == "error"
    assert len(outcome.reason) < 80


# classify: other status codes


@pytest.mark.parametrize(
    ("status_code", "reason"),
    [
        (401, "unauthorized (401)"),
        (403, "unauthorized (403)"),
        (404, "job not found (404)"),
        (400, "unexpected status 400"),
        (302, "unexpected status 302"),
        (204, "unexpected status 204"),
    ],
)
def test_classify_client_error_is_error(status_code: int, reason: str) -> None:
    outcome = classify(JOB_ID, status_code, NO_HEADERS, job_body(status="completed"))

    assert outcome.kind == "error"
    assert outcome.status_code == status_code
    assert outcome.reason == reason
    assert outcome.retry_after_s is None


@pytest.mark.parametrize("status_code", [500, 502, 503, 504, 408])
def test_classify_server_error_is_transient(status_code: int) -> None:
    outcome = classify(JOB_ID, status_code, NO_HEADERS, b"<html>down</html>")

    assert outcome.kind == "transient"
    assert outcome.status_code == status_code
    assert outcome.retry_after_s is None


def test_classify_503_reads_retry_after() -> None:
    headers = httpx.Headers({"retry-after": "7"})

    outcome = classify(JOB_ID, 503, headers, b"")

    assert outcome.retry_after_s == 7.0


def test_classify_429_seconds_is_transient() -> None:
    headers = httpx.Headers({"retry-after": "12"})

    outcome = classify(JOB_ID, 429, headers, b"{}")

    assert outcome.kind == "transient"
    assert outcome.status_code == 429
    assert outcome.retry_after_s == 12.0
    assert "429" in outcome.reason


def test_classify_429_http_date_is_transient() -> None:
    headers = httpx.Headers({"retry-after": http_date(120)})

    outcome = classify(JOB_ID, 429, headers, b"{}")

    assert outcome.kind == "transient"
    assert outcome.retry_after_s is not None
    assert 100 <= outcome.retry_after_s <= 120


def test_classify_429_without_header() -> None:
    outcome = classify(JOB_ID, 429, NO_HEADERS, b"")

    assert outcome.kind == "transient"
    assert outcome.retry_after_s is None


# parse_retry_after


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("30", 30.0),
        (" 12 ", 12.0),
        ("1.5", 1.5),
        ("-5", 0.0),
        ("3600", MAX_RETRY_AFTER_S),
        ("86400", MAX_RETRY_AFTER_S),
        ("1e999", MAX_RETRY_AFTER_S),
        ("inf", MAX_RETRY_AFTER_S),
        ("-inf", 0.0),
    ],
)
def test_parse_retry_after_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value) == expected


@pytest.mark.parametrize(
    "value", [None, "", "soon", "nan", "12 seconds", "Wed, 99 Foo 2015", "\x00"]
)
def test_parse_retry_after_rejects_garbage(value: str | None) -> None:
    assert parse_retry_after(value) is None


def test_parse_retry_after_future_date() -> None:
    seconds = parse_retry_after(http_date(60))

    assert seconds is not None
    assert 40 <= seconds <= 60


def test_parse_retry_after_past_date() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_parse_retry_after_caps_far_date() -> None:
    assert parse_retry_after(http_date(7 * 86400)) == MAX_RETRY_AFTER_S


def test_parse_retry_after_unknown_zone() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 -0000") == 0.0


# snapshot_of


def test_snapshot_of_cuts_long_strings() -> None:
    long_text = "g" * (MAX_TEXT_CHARS + 100)
    document = {
        "status": "failed",
        "generation_id": long_text,
        "error": long_text,
        "unsigned_urls": [long_text],
    }

    snapshot = snapshot_of(document)

    assert snapshot["generation_id"] == "g" * MAX_TEXT_CHARS
    assert snapshot["error"] == "g" * MAX_TEXT_CHARS
    assert snapshot["unsigned_urls"] == ["g" * MAX_TEXT_CHARS]


def test_snapshot_of_cuts_url_list() -> None:
    urls = [f"https://cdn.test/{index}.mp4" for index in range(MAX_URLS + 10)]

    snapshot = snapshot_of({"status": "completed", "unsigned_urls": urls})

    assert snapshot["unsigned_urls"] == urls[:MAX_URLS]


def test_snapshot_of_drops_non_string_urls() -> None:
    urls = ["https://cdn.test/a.mp4", 7, None, {"url": "x"}, ["y"], "https://b"]

    snapshot = snapshot_of({"status": "completed", "unsigned_urls": urls})

    assert snapshot["unsigned_urls"] == ["https://cdn.test/a.mp4", "https://b"]


@pytest.mark.parametrize(
    "cost",
    [float("nan"), float("inf"), float("-inf"), True, False, "0.25", None, [1]],
)
def test_snapshot_of_drops_bad_cost(cost: Any) -> None:
    snapshot = snapshot_of({"status": "completed", "usage": {"cost": cost}})

    assert snapshot["usage"]["cost"] is None


@pytest.mark.parametrize("cost", [0, 3, 0.25, 1e-9, 10**12])
def test_snapshot_of_keeps_finite_cost(cost: float) -> None:
    snapshot = snapshot_of({"status": "completed", "usage": {"cost": cost}})

    assert snapshot["usage"]["cost"] == cost


@pytest.mark.parametrize("is_byok", [1, "true", None, 0])
def test_snapshot_of_drops_non_bool_byok(is_byok: Any) -> None:
    snapshot = snapshot_of({"status": "completed", "usage": {"is_byok": is_byok}})

    assert snapshot["usage"]["is_byok"] is None


def test_snapshot_of_drops_wrong_types() -> None:
    document = {
        "status": "completed",
        "generation_id": 12,
        "error": {"message": "x"},
        "unsigned_urls": "https://cdn.test/a.mp4",
        "usage": [0.25],
    }

    assert snapshot_of(document) == {"status": "completed"}


# video_url


@pytest.mark.parametrize(
    ("job_id", "expected_path"),
    [
        ("job-1", "/api/v1/videos/job-1"),
        ("a b", "/api/v1/videos/a%20b"),
        ("x:y*z", "/api/v1/videos/x%3Ay%2Az"),
        ("a.b~c_d", "/api/v1/videos/a.b~c_d"),
        ("@+&=", "/api/v1/videos/%40%2B%26%3D"),
    ],
)
def test_video_url_escapes_job_id(job_id: str, expected_path: str) -> None:
    url = video_url("https://api.modelgates.test", job_id)

    assert url == "https://api.modelgates.test" + expected_path


def test_video_url_keeps_one_segment() -> None:
    url = httpx.URL(video_url("https://api.modelgates.test", "x:y*z"))

    assert url.host == "api.modelgates.test"
    assert url.raw_path == b"/api/v1/videos/x%3Ay%2Az"


def test_unsendable_key_poll_hides_key(
    simulator_url: str,
) -> None:
    from relay.settings import Secret, Settings
    from relay.upstream import ModelGatesClient

    async def poll() -> Outcome:
        settings = Settings(modelgates_base_url=simulator_url)
        async with httpx.AsyncClient(trust_env=False) as http:
            client = ModelGatesClient(settings, http)
            return await client.poll("sim.completed", Secret("mg-ключ-secret"))

    import asyncio

    outcome = asyncio.run(poll())

    assert outcome.kind == "error"
    assert "ключ" not in outcome.reason
    assert "secret" not in outcome.reason
