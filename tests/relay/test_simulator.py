"""Tests of the ModelGates simulator: the script parser, then the real HTTP server."""

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import httpx
import pytest
from structlog.testing import capture_logs

from relay.simulator import Step, create_app, parse_script, parse_step
from tests.servers import serve_in_thread

API_KEY = "sim-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve_in_thread(create_app(API_KEY), shutdown_timeout_s=1) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=5.0) as client:
        client.delete("/_sim/jobs").raise_for_status()
        yield client


def poll(client: httpx.Client, job_id: str) -> httpx.Response:
    return client.get(f"/api/v1/videos/{job_id}")


def job_summary(client: httpx.Client, job_id: str) -> dict[str, object]:
    response = client.get(f"/_sim/jobs/{job_id}")
    response.raise_for_status()
    summary: dict[str, object] = response.json()
    return summary


def assert_error_body(response: httpx.Response, code: int) -> str:
    body = response.json()
    assert set(body) == {"error", "user_id"}
    assert body["user_id"] is None
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    assert message
    return message


# parse_script and parse_step


def test_parse_script_reads_job_id_steps() -> None:
    steps = parse_script("sim.pending*2.in_progress~1500ms.429:2.completed")

    assert [step.name for step in steps] == [
        "pending",
        "in_progress",
        "429",
        "completed",
    ]
    assert steps[0].count == 2
    assert steps[1].duration_s == 1.5
    assert steps[2].retry_after_s == 2
    assert steps[3] == Step(text="completed", name="completed")


def test_parse_script_accepts_step_list() -> None:
    steps = parse_script(["pending*3", "failed"])

    assert [step.text for step in steps] == ["pending*3", "failed"]
    assert steps[0].count == 3


def test_parse_step_defaults() -> None:
    step = parse_step("in_progress")

    assert step.count == 1
    assert step.duration_s is None
    assert parse_step("429").retry_after_s == 1
    assert parse_step("slow").delay_s == 5.0
    assert parse_step("unknown").reported_status == "rendering"


@pytest.mark.parametrize(
    ("text", "delay_s"),
    [("slow:1", 1.0), ("slow:2s", 2.0), ("slow:250ms", 0.25)],
)
def test_parse_step_slow_units(text: str, delay_s: float) -> None:
    assert parse_step(text).delay_s == delay_s


@pytest.mark.parametrize(
    ("text", "duration_s"),
    [("pending~3s", 3.0), ("pending~1500ms", 1.5), ("500~20ms", 0.02)],
)
def test_parse_step_duration_units(text: str, duration_s: float) -> None:
    assert parse_step(text).duration_s == duration_s


def test_parse_step_unknown_argument() -> None:
    assert parse_step("unknown:queued*2").reported_status == "queued"


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("", "cannot be empty"),
        ("rendering", "unknown name 'rendering'"),
        ("Pending", "unknown name 'Pending'"),
        ("pending:3", "'pending' takes no argument"),
        ("slow:", "argument after ':' is empty"),
        ("pending*0", "at least 1"),
        ("pending*x", "count after '*'"),
        ("pending*", "count after '*'"),
        ("pending*2*3", "count after '*'"),
        ("pending~3", "ms or s"),
        ("pending~0ms", "positive"),
        ("pending~", "ms or s"),
        ("pending*2~3s", "not both"),
        ("429:abc", "429 argument must be whole seconds"),
        ("429:-1", "429 argument must be whole seconds"),
        ("slow:fast", "slow argument must be a duration"),
        ("unknown:pending", "not a ModelGates status"),
        ("unknown:Bad", "lowercase word"),
    ],
)
def test_parse_step_rejects_invalid(text: str, rule: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        parse_step(text)

    assert f"invalid step {text!r}" in str(excinfo.value)
    assert rule in str(excinfo.value)


def test_parse_script_error_names_step() -> None:
    with pytest.raises(ValueError, match=r"invalid step 'bogus\*2': unknown name"):
        parse_script("sim.pending.bogus*2.completed")


def test_parse_script_rejects_missing_prefix() -> None:
    with pytest.raises(ValueError, match="must start with 'sim.'"):
        parse_script("job-abc123")


@pytest.mark.parametrize("script", ["sim.", []])
def test_parse_script_rejects_no_steps(script: str | list[str]) -> None:
    with pytest.raises(ValueError, match="step"):
        parse_script(script)


def test_parse_script_rejects_empty_step_in_job_id() -> None:
    with pytest.raises(ValueError, match="cannot be empty"):
        parse_script("sim.pending.")


# GET /api/v1/videos/{job_id}: statuses


@pytest.mark.parametrize("status", ["pending", "in_progress"])
def test_get_video_running_status(
    client: httpx.Client, base_url: str, status: str
) -> None:
    job_id = f"sim.{status}"
    response = poll(client, job_id)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "id": job_id,
        "polling_url": f"{base_url}/api/v1/videos/{job_id}",
        "status": status,
    }


def test_get_video_completed(client: httpx.Client, base_url: str) -> None:
    body = poll(client, "sim.completed").json()

    assert body["status"] == "completed"
    assert body["id"] == "sim.completed"
    assert body["generation_id"].startswith("gen-")
    assert body["usage"] == {"cost": 0.25, "is_byok": False}
    assert len(body["unsigned_urls"]) == 1
    assert body["unsigned_urls"][0].startswith(f"{base_url}/files/")
    assert "error" not in body


def test_get_video_completed_url_serves_file(client: httpx.Client) -> None:
    url = poll(client, "sim.completed").json()["unsigned_urls"][0]
    response = httpx.get(url, timeout=5.0)

    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    assert response.content[4:8] == b"ftyp"


def test_get_video_failed(client: httpx.Client) -> None:
    body = poll(client, "sim.failed").json()

    assert body["status"] == "failed"
    assert body["error"] == "The model could not render this prompt."
    assert body["generation_id"].startswith("gen-")
    assert "unsigned_urls" not in body
    assert "usage" not in body


@pytest.mark.parametrize("status", ["cancelled", "expired"])
def test_get_video_ended_without_video(client: httpx.Client, status: str) -> None:
    body = poll(client, f"sim.{status}").json()

    assert body["status"] == status
    assert set(body) == {"id", "polling_url", "status"}


def test_get_video_generation_id_stable_per_job(client: httpx.Client) -> None:
    first = poll(client, "sim.completed").json()["generation_id"]
    second = poll(client, "sim.completed").json()["generation_id"]
    other = poll(client, "sim.pending.completed*2").json()

    assert first == second
    assert "generation_id" not in other


def test_get_video_polling_url_polls_same_job(client: httpx.Client) -> None:
    polling_url = poll(client, "sim.pending.completed").json()["polling_url"]
    body = client.get(polling_url).json()

    assert body["status"] == "completed"
    assert job_summary(client, "sim.pending.completed")["polls"] == 2


def test_get_video_accepts_percent_encoded_id(client: httpx.Client) -> None:
    job_id = "sim.pending*2.completed"
    response = poll(client, quote(job_id, safe=""))

    assert response.status_code == 200
    assert response.json()["id"] == job_id


# GET /api/v1/videos/{job_id}: script timing


def test_get_video_count_steps_in_order(client: httpx.Client) -> None:
    job_id = "sim.pending*2.in_progress.completed"
    statuses = [poll(client, job_id).json()["status"] for _ in range(5)]

    assert statuses == [
        "pending",
        "pending",
        "in_progress",
        "completed",
        "completed",
    ]


def test_get_video_duration_step(client: httpx.Client) -> None:
    job_id = "sim.pending~300ms.completed"

    assert poll(client, job_id).json()["status"] == "pending"
    assert poll(client, job_id).json()["status"] == "pending"
    time.sleep(0.35)
    assert poll(client, job_id).json()["status"] == "completed"


def test_get_video_duration_counts_from_first_poll(client: httpx.Client) -> None:
    job_id = "sim.pending.in_progress~300ms.completed"

    assert poll(client, job_id).json()["status"] == "pending"
    time.sleep(0.35)
    # The in_progress step starts with this poll, not when pending started.
    assert poll(client, job_id).json()["status"] == "in_progress"
    assert poll(client, job_id).json()["status"] == "in_progress"
    time.sleep(0.35)
    assert poll(client, job_id).json()["status"] == "completed"


def test_get_video_concurrent_polls_each_counted(client: httpx.Client) -> None:
    job_id = "sim.pending*8.completed"
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda _: poll(client, job_id), range(8)))

    assert [response.json()["status"] for response in responses] == ["pending"] * 8
    assert poll(client, job_id).json()["status"] == "completed"
    assert job_summary(client, job_id)["polls"] == 9


# GET /api/v1/videos/{job_id}: authentication and lookup


def test_get_video_missing_token_401(client: httpx.Client, base_url: str) -> None:
    response = httpx.get(f"{base_url}/api/v1/videos/sim.completed", timeout=5.0)

    assert response.status_code == 401
    assert "Authorization" in assert_error_body(response, 401)


@pytest.mark.parametrize(
    "authorization", ["Bearer wrong-key", f"Basic {API_KEY}", "Bearer", API_KEY]
)
def test_get_video_wrong_token_401(client: httpx.Client, authorization: str) -> None:
    response = client.get(
        "/api/v1/videos/sim.completed", headers={"Authorization": authorization}
    )

    assert response.status_code == 401
    assert_error_body(response, 401)


def test_get_video_401_before_unknown_job(client: httpx.Client) -> None:
    response = client.get(
        "/api/v1/videos/job-abc123", headers={"Authorization": "Bearer wrong"}
    )

    assert response.status_code == 401


def test_get_video_bearer_scheme_case_insensitive(client: httpx.Client) -> None:
    response = client.get(
        "/api/v1/videos/sim.completed", headers={"Authorization": f"bearer {API_KEY}"}
    )

    assert response.status_code == 200


def test_get_video_unauthorized_poll_keeps_step(client: httpx.Client) -> None:
    job_id = "sim.pending.completed"
    rejected = client.get(
        f"/api/v1/videos/{job_id}", headers={"Authorization": "Bearer wrong"}
    )

    assert rejected.status_code == 401
    assert poll(client, job_id).json()["status"] == "pending"
    assert job_summary(client, job_id)["status_codes"] == [401, 200]


def test_get_video_unknown_job_404(client: httpx.Client) -> None:
    response = poll(client, "job-abc123")

    assert response.status_code == 404
    assert "'job-abc123' not found" in assert_error_body(response, 404)


def test_get_video_invalid_script_404(client: httpx.Client) -> None:
    response = poll(client, "sim.pending.render*2")

    assert response.status_code == 404
    message = assert_error_body(response, 404)
    assert "invalid step 'render*2'" in message
    assert "unknown name 'render'" in message


# GET /api/v1/videos/{job_id}: faults


@pytest.mark.parametrize("code", [401, 404, 500])
def test_get_video_scripted_error(client: httpx.Client, code: int) -> None:
    job_id = f"sim.{code}.completed"
    response = poll(client, job_id)

    assert response.status_code == code
    assert "scripted fault" in assert_error_body(response, code)
    assert poll(client, job_id).json()["status"] == "completed"


def test_get_video_429_retry_after(client: httpx.Client) -> None:
    response = poll(client, "sim.429:2.completed")

    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert_error_body(response, 429)
    assert poll(client, "sim.429:2.completed").status_code == 200


def test_get_video_429_default_retry_after(client: httpx.Client) -> None:
    response = poll(client, "sim.429")

    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"


def test_get_video_503_plain_text(client: httpx.Client) -> None:
    response = poll(client, "sim.503")

    assert response.status_code == 503
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text


def test_get_video_slow_times_out(client: httpx.Client) -> None:
    job_id = "sim.slow:1.completed"
    with pytest.raises(httpx.ReadTimeout):
        client.get(f"/api/v1/videos/{job_id}", timeout=0.3)

    assert job_summary(client, job_id)["status_codes"] == [200]
    assert poll(client, job_id).json()["status"] == "completed"


def test_get_video_slow_answers_in_progress(client: httpx.Client) -> None:
    started = time.monotonic()
    response = poll(client, "sim.slow:200ms")
    elapsed_s = time.monotonic() - started

    assert response.status_code == 200
    assert response.json()["status"] == "in_progress"
    assert elapsed_s >= 0.2


def test_get_video_malformed_json(client: httpx.Client) -> None:
    response = poll(client, "sim.malformed")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.text.startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)


def test_get_video_html_502(client: httpx.Client) -> None:
    response = poll(client, "sim.html")

    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    assert "<html>" in response.text


@pytest.mark.parametrize(
    ("job_id", "status"),
    [("sim.unknown", "rendering"), ("sim.unknown:queued", "queued")],
)
def test_get_video_unknown_status(
    client: httpx.Client, job_id: str, status: str
) -> None:
    response = poll(client, job_id)

    assert response.status_code == 200
    assert response.json()["status"] == status
    assert response.json()["id"] == job_id


def test_get_video_noid_lacks_required_fields(client: httpx.Client) -> None:
    body = poll(client, "sim.noid").json()

    assert "id" not in body
    assert "polling_url" not in body


def test_get_video_logs_omit_token(client: httpx.Client) -> None:
    with capture_logs() as entries:
        poll(client, "sim.completed")
        client.get(
            "/api/v1/videos/sim.completed",
            headers={"Authorization": "Bearer leaked-token-value"},
        )

    polls = [entry for entry in entries if entry["event"] == "simulator.poll"]
    assert [entry["status_code"] for entry in polls] == [200, 401]
    assert all(entry["job_id"] == "sim.completed" for entry in polls)
    assert polls[0]["error"] is None
    assert polls[1]["error"] == "Invalid API key."
    assert API_KEY not in repr(entries)
    assert "leaked-token-value" not in repr(entries)


# admin routes


def test_admin_put_sets_script(client: httpx.Client) -> None:
    response = client.put("/_sim/jobs/job-1", json={"steps": ["pending*2", "failed"]})

    assert response.status_code == 200
    assert response.json() == {
        "job_id": "job-1",
        "polls": 0,
        "step": 0,
        "status_codes": [],
        "polls_by_key": {},
    }
    statuses = [poll(client, "job-1").json()["status"] for _ in range(3)]
    assert statuses == ["pending", "pending", "failed"]


def test_admin_put_replaces_and_resets(client: httpx.Client) -> None:
    client.put("/_sim/jobs/job-1", json={"steps": ["pending", "completed"]})
    poll(client, "job-1")
    poll(client, "job-1")

    client.put("/_sim/jobs/job-1", json={"steps": ["in_progress", "expired"]})

    assert job_summary(client, "job-1")["polls"] == 0
    assert poll(client, "job-1").json()["status"] == "in_progress"
    assert poll(client, "job-1").json()["status"] == "expired"


def test_admin_put_overrides_job_id_script(client: httpx.Client) -> None:
    client.put("/_sim/jobs/sim.pending", json={"steps": ["cancelled"]})

    assert poll(client, "sim.pending").json()["status"] == "cancelled"


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        ({"steps": ["pending", "bogus"]}, "invalid step 'bogus'"),
        ({"steps": []}, "at least one step"),
        ({"steps": ["in_progress~1.5s"]}, "invalid step 'in_progress~1.5s'"),
    ],
)
def test_admin_put_rejects_invalid_script(
    client: httpx.Client, payload: dict[str, list[str]], detail: str
) -> None:
    response = client.put("/_sim/jobs/job-1", json=payload)

    assert response.status_code == 400
    assert detail in response.json()["detail"]
    assert poll(client, "job-1").status_code == 404


def test_admin_put_rejects_wrong_body_type(client: httpx.Client) -> None:
    response = client.put("/_sim/jobs/job-1", json={"steps": "pending"})

    assert response.status_code == 400


def test_admin_get_reports_polls(client: httpx.Client) -> None:
    job_id = "sim.500.429.pending*2.completed"
    for _ in range(4):
        poll(client, job_id)

    assert job_summary(client, job_id) == {
        "job_id": job_id,
        "polls": 4,
        "step": 2,
        "status_codes": [500, 429, 200, 200],
        "polls_by_key": {"0": 4},
    }


def test_admin_get_unpolled_script_job(client: httpx.Client) -> None:
    summary = job_summary(client, "sim.completed")

    assert summary["polls"] == 0
    assert summary["status_codes"] == []


@pytest.mark.parametrize("job_id", ["job-abc123", "sim.bogus"])
def test_admin_get_unknown_job_404(client: httpx.Client, job_id: str) -> None:
    response = client.get(f"/_sim/jobs/{job_id}")

    assert response.status_code == 404
    assert job_id in response.json()["detail"]


def test_admin_stats_counts_every_poll(client: httpx.Client) -> None:
    poll(client, "sim.completed")
    poll(client, "sim.503")
    poll(client, "job-abc123")

    response = client.get("/_sim/stats")

    assert response.json() == {"polls": 3}


def test_admin_delete_resets_everything(client: httpx.Client) -> None:
    client.put("/_sim/jobs/job-1", json={"steps": ["completed"]})
    poll(client, "job-1")
    poll(client, "sim.pending.completed")

    response = client.delete("/_sim/jobs")

    assert response.status_code == 204
    assert client.get("/_sim/stats").json() == {"polls": 0}
    assert poll(client, "job-1").status_code == 404
    assert poll(client, "sim.pending.completed").json()["status"] == "pending"


# serve_in_thread


def test_serve_in_thread_stops_server() -> None:
    with serve_in_thread(create_app(API_KEY)) as url:
        assert httpx.get(f"{url}/_sim/stats", timeout=5.0).status_code == 200

    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/_sim/stats", timeout=1.0)
