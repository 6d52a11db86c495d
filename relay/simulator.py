"""A ModelGates simulator: the video polling endpoint, with scripted jobs.

The simulator serves ``GET /api/v1/videos/{job_id}`` as ModelGates does: bearer-token
auth, ``VideoGenerationResponse`` bodies, and ``{"error": {...}, "user_id": null}``
error bodies for 401, 404 and 500. Each job follows a script of steps, so a test
chooses the statuses it moves through, how long each lasts and which faults it sends.

A script comes from the job ID itself (``sim.pending*2.in_progress~1500ms.completed``)
or from ``PUT /_sim/jobs/{job_id}`` with ``{"steps": ["pending*2", "completed"]}``.
One step is ``NAME[:ARG][*COUNT|~DURATION]``:

- NAME is a status (pending, in_progress, completed, failed, cancelled, expired) or
  one of these faults:

  - 401, 404, 500: the ModelGates error body with that status.
  - 429: an error body with Retry-After set to ARG whole seconds (default 1).
  - 503: a plain-text body.
  - slow: waits ARG (default 5 s), then returns in_progress.
  - malformed: truncated JSON labelled application/json.
  - html: an HTML page with status 502.
  - unknown: reports status ARG (default ``rendering``), which is outside the enum.
  - noid: a body without ``id`` and ``polling_url``.

- ``*COUNT`` makes the step serve COUNT polls (default 1). ``~DURATION`` makes it last
  DURATION from its first poll, written as whole ``ms`` or ``s`` (``~1500ms``, ``~3s``),
  because a dot would split the job ID. The slow argument takes the same form or a bare
  number of seconds.
- The last step repeats for every later poll.

The ``/_sim`` admin routes take no token, so serve the simulator on loopback only.
"""

import asyncio
import hashlib
import hmac
import ipaddress
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

import structlog
import uvicorn
from litestar import Litestar, Request, Response, delete, get, put
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import FromPath, JSONBody

logger = structlog.get_logger(__name__)

SCRIPT_PREFIX = "sim."
STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled", "expired")
ERROR_FAULTS = ("401", "404", "500", "429", "503", "html")
BODY_FAULTS = ("slow", "malformed", "unknown", "noid")
FAULTS = ERROR_FAULTS + BODY_FAULTS
STEP_NAMES = STATUSES + FAULTS

DEFAULT_RETRY_AFTER_S = 1
DEFAULT_SLOW_DELAY_S = 5.0
DEFAULT_UNKNOWN_STATUS = "rendering"
FAILED_JOB_ERROR = "The model could not render this prompt."
COMPLETED_USAGE = {"cost": 0.25, "is_byok": False}

# The first bytes of an MP4 file (an ``ftyp`` box), enough for a file-type check.
FAKE_VIDEO_BYTES = b"\x00\x00\x00\x14ftypisom\x00\x00\x02\x00isom"

_COUNT_PATTERN = re.compile(r"[0-9]+")
_DURATION_PATTERN = re.compile(r"(?P<amount>[0-9]+)(?P<unit>ms|s)")
_SLOW_ARG_PATTERN = re.compile(r"(?P<amount>[0-9]+)(?P<unit>ms|s)?")
_STATUS_WORD_PATTERN = re.compile(r"[a-z_]+")
# Characters a job ID may keep unescaped in the URLs the simulator builds.
_URL_SAFE_JOB_CHARS = ":*"


@dataclass(frozen=True, slots=True)
class Step:
    """One parsed step of a job script.

    A step ends after ``count`` polls, or ``duration_s`` seconds after its first poll
    when ``duration_s`` is set. The last step of a script never ends.
    """

    text: str
    name: str
    count: int = 1
    duration_s: float | None = None
    retry_after_s: int = DEFAULT_RETRY_AFTER_S
    delay_s: float = DEFAULT_SLOW_DELAY_S
    reported_status: str = DEFAULT_UNKNOWN_STATUS


def parse_script(job_id_or_steps: str | Sequence[str]) -> list[Step]:
    """Parse a ``sim.``-prefixed job ID, or a list of step texts, into steps.

    Raises ValueError naming the invalid step and the rule it breaks.
    """
    if isinstance(job_id_or_steps, str):
        step_texts = _split_job_id(job_id_or_steps)
    else:
        step_texts = list(job_id_or_steps)

    if not step_texts:
        raise ValueError("a script needs at least one step, e.g. ['completed']")

    return [parse_step(text) for text in step_texts]


def parse_step(text: str) -> Step:
    """Parse one ``NAME[:ARG][*COUNT|~DURATION]`` step."""
    if not text:
        raise ValueError("invalid step '': a step cannot be empty")

    try:
        return _parse_step_parts(text)
    except ValueError as exc:
        raise ValueError(f"invalid step {text!r}: {exc}") from None


def _split_job_id(job_id: str) -> list[str]:
    if not job_id.startswith(SCRIPT_PREFIX):
        raise ValueError(
            f"job ID {job_id!r} is not a script: it must start with {SCRIPT_PREFIX!r}"
        )

    steps_text = job_id.removeprefix(SCRIPT_PREFIX)
    if not steps_text:
        raise ValueError(
            f"job ID {job_id!r} has no steps after {SCRIPT_PREFIX!r}, "
            "e.g. sim.pending.completed"
        )

    return steps_text.split(".")


def _parse_step_parts(text: str) -> Step:
    if "*" in text and "~" in text:
        raise ValueError("a step takes '*COUNT' or '~DURATION', not both")

    body, _, count_text = text.partition("*")
    body, _, duration_text = body.partition("~")
    name, has_arg, arg = body.partition(":")

    if name not in STEP_NAMES:
        raise ValueError(
            f"unknown name {name!r}, expected one of {', '.join(STEP_NAMES)}"
        )
    if has_arg and not arg:
        raise ValueError("the argument after ':' is empty")

    step = Step(text=text, name=name)
    if arg:
        step = _with_argument(step, arg)
    if "*" in text:
        step = _with_count(step, count_text)
    if "~" in text:
        step = _with_duration(step, duration_text)
    return step


def _with_argument(step: Step, arg: str) -> Step:
    if step.name == "429":
        if not _COUNT_PATTERN.fullmatch(arg):
            raise ValueError(f"the 429 argument must be whole seconds, got {arg!r}")
        return replace(step, retry_after_s=int(arg))

    if step.name == "slow":
        match = _SLOW_ARG_PATTERN.fullmatch(arg)
        if match is None:
            raise ValueError(
                f"the slow argument must be a duration like 2, 2s or 500ms, got {arg!r}"
            )
        return replace(step, delay_s=_to_seconds(match))

    if step.name == "unknown":
        if not _STATUS_WORD_PATTERN.fullmatch(arg) or arg in STATUSES:
            raise ValueError(
                "the unknown argument must be a lowercase word that is not a "
                f"ModelGates status, e.g. rendering, got {arg!r}"
            )
        return replace(step, reported_status=arg)

    raise ValueError(f"{step.name!r} takes no argument, got {arg!r}")


def _with_count(step: Step, count_text: str) -> Step:
    if not _COUNT_PATTERN.fullmatch(count_text) or int(count_text) < 1:
        raise ValueError(
            "the count after '*' must be a whole number of at least 1, "
            f"got {count_text!r}"
        )
    return replace(step, count=int(count_text))


def _with_duration(step: Step, duration_text: str) -> Step:
    match = _DURATION_PATTERN.fullmatch(duration_text)
    if match is None or int(match["amount"]) < 1:
        raise ValueError(
            "the duration after '~' must be a positive whole number of ms or s, "
            f"e.g. 1500ms or 3s, got {duration_text!r}"
        )
    return replace(step, duration_s=_to_seconds(match))


def _to_seconds(match: re.Match[str]) -> float:
    amount = int(match["amount"])
    if match["unit"] == "ms":
        return amount / 1000
    return float(amount)


@dataclass(slots=True)
class JobState:
    """Position of one job in its script, and the polls it has received."""

    steps: list[Step]
    step_index: int = 0
    step_polls: int = 0
    step_started_at: float | None = None
    polls: int = 0
    status_codes: list[int] = field(default_factory=list)
    # Accepted polls per key, by the key's position in the simulator's list.
    polls_by_key: dict[int, int] = field(default_factory=dict)

    def advance(self, now: float) -> Step:
        """Move past finished steps, then count this poll against the current step."""
        while self.step_index < len(self.steps) - 1 and self._step_finished(now):
            self.step_index += 1
            self.step_polls = 0
            self.step_started_at = None

        if self.step_started_at is None:
            self.step_started_at = now
        self.step_polls += 1
        return self.steps[self.step_index]

    def record(self, status_code: int, key_index: int | None = None) -> None:
        self.polls += 1
        self.status_codes.append(status_code)
        if key_index is not None:
            self.polls_by_key[key_index] = self.polls_by_key.get(key_index, 0) + 1

    def summary(self, job_id: str) -> dict[str, object]:
        return {
            "job_id": job_id,
            "polls": self.polls,
            "step": self.step_index,
            "status_codes": list(self.status_codes),
            "polls_by_key": {str(k): n for k, n in sorted(self.polls_by_key.items())},
        }

    def _step_finished(self, now: float) -> bool:
        step = self.steps[self.step_index]
        if step.duration_s is None:
            return self.step_polls >= step.count
        if self.step_started_at is None:
            return False
        return now - self.step_started_at >= step.duration_s


@dataclass(frozen=True, slots=True)
class Reply:
    """HTTP response to one poll, with the step and error message behind it."""

    status_code: int
    content: object
    media_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    step: Step | None = None
    error: str | None = None

    def to_response(self) -> Response[Any]:
        return Response(
            self.content,
            status_code=self.status_code,
            media_type=self.media_type,
            headers=self.headers,
        )


def error_reply(
    code: int, message: str, headers: dict[str, str] | None = None
) -> Reply:
    """Build an error reply with the ModelGates error body."""
    body = {"error": {"code": code, "message": message}, "user_id": None}
    return Reply(code, body, headers=headers or {}, error=message)


def render_step(step: Step, job_id: str, base_url: str) -> Reply:
    """Build the reply that ``step`` sends for a poll of ``job_id``."""
    reply = _render_step_content(step, job_id, base_url)
    return replace(reply, step=step)


def _render_step_content(step: Step, job_id: str, base_url: str) -> Reply:
    if step.name in STATUSES:
        return Reply(200, video_body(job_id, step.name, base_url))

    match step.name:
        case "401":
            return error_reply(401, "Invalid API key (scripted fault).")
        case "404":
            message = f"Video job {job_id!r} not found (scripted fault)."
            return error_reply(404, message)
        case "500":
            return error_reply(500, "Internal server error (scripted fault).")
        case "429":
            return error_reply(
                429,
                f"Rate limit exceeded. Retry after {step.retry_after_s} s.",
                headers={"Retry-After": str(step.retry_after_s)},
            )
        case "503":
            return Reply(503, "Service temporarily unavailable.", "text/plain")
        case "slow":
            return Reply(200, video_body(job_id, "in_progress", base_url))
        case "malformed":
            full = json.dumps(video_body(job_id, "in_progress", base_url))
            return Reply(200, full[: len(full) // 2].encode())
        case "html":
            return Reply(502, _BAD_GATEWAY_PAGE, "text/html")
        case "unknown":
            body = video_body(job_id, "in_progress", base_url)
            return Reply(200, body | {"status": step.reported_status})
        case "noid":
            return Reply(200, {"status": "in_progress"})

    raise AssertionError(f"parse_script accepted an unhandled step name {step.name!r}")


def video_body(job_id: str, status: str, base_url: str) -> dict[str, object]:
    """Build a ``VideoGenerationResponse`` for a job in ``status``."""
    job_path = quote(job_id, safe=_URL_SAFE_JOB_CHARS)
    body: dict[str, object] = {
        "id": job_id,
        "polling_url": f"{base_url}/api/v1/videos/{job_path}",
        "status": status,
    }

    generation_id = "gen-" + hashlib.sha256(job_id.encode()).hexdigest()[:12]
    if status == "completed":
        body["generation_id"] = generation_id
        body["unsigned_urls"] = [f"{base_url}/files/{job_path}.mp4"]
        body["usage"] = dict(COMPLETED_USAGE)
    elif status == "failed":
        body["generation_id"] = generation_id
        body["error"] = FAILED_JOB_ERROR
    return body


_BAD_GATEWAY_PAGE = (
    "<html><head><title>502 Bad Gateway</title></head>"
    "<body><h1>502 Bad Gateway</h1><p>The upstream server did not respond.</p>"
    "</body></html>"
)


class Simulator:
    """The in-memory jobs of one simulator app, and the API keys it accepts.

    Each job counts its accepted polls per key, by the key's position in
    ``api_keys``, so tests can tell which key a relay polled with.

    Hold ``lock`` while calling the other methods, so concurrent requests see each
    job's state change one poll at a time.
    """

    def __init__(self, api_keys: Sequence[str]) -> None:
        self._api_keys = [key.encode() for key in api_keys]
        self.lock = asyncio.Lock()
        self.jobs: dict[str, JobState] = {}
        self.total_polls = 0

    def answer_poll(
        self, job_id: str, authorization: str | None, base_url: str
    ) -> Reply:
        """Build the reply to one poll, advance the job's script and record the poll.

        Authentication comes first, as on ModelGates, so a bad token gets 401 even for
        an unknown job. Polls that fail authentication do not advance the script.
        """
        self.total_polls += 1
        job = self.find_job(job_id)

        key_index, auth_error = self._check_authorization(authorization)
        if auth_error is not None:
            reply = error_reply(401, auth_error)
        elif job is None:
            reply = error_reply(404, not_found_message(job_id))
        else:
            step = job.advance(time.monotonic())
            reply = render_step(step, job_id, base_url)

        if job is not None:
            job.record(reply.status_code, key_index)
        return reply

    def find_job(self, job_id: str) -> JobState | None:
        """Return the job's state, creating it for a valid ``sim.`` job ID."""
        job = self.jobs.get(job_id)
        if job is not None or not job_id.startswith(SCRIPT_PREFIX):
            return job

        try:
            steps = parse_script(job_id)
        except ValueError:
            return None
        job = self.jobs[job_id] = JobState(steps)
        return job

    def set_script(self, job_id: str, steps: list[Step]) -> JobState:
        job = self.jobs[job_id] = JobState(steps)
        return job

    def reset(self) -> None:
        self.jobs.clear()
        self.total_polls = 0

    def _check_authorization(
        self, authorization: str | None
    ) -> tuple[int | None, str | None]:
        """Return the accepted key's position, or an error message."""
        if not authorization:
            return None, (
                "Missing Authorization header. Send 'Authorization: Bearer <API key>'."
            )

        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, (
                "The Authorization header must have the form 'Bearer <API key>'."
            )
        sent = token.strip().encode()
        for index, key in enumerate(self._api_keys):
            if hmac.compare_digest(sent, key):
                return index, None
        return None, "Invalid API key."


def not_found_message(job_id: str) -> str:
    """Describe why a job is unknown, naming the invalid step of a bad script."""
    if job_id.startswith(SCRIPT_PREFIX):
        try:
            parse_script(job_id)
        except ValueError as exc:
            return f"Video job {job_id!r} not found: {exc}."
    return f"Video job {job_id!r} not found."


@dataclass(frozen=True, slots=True)
class JobScript:
    """Body of ``PUT /_sim/jobs/{job_id}``."""

    steps: list[str]


@get("/api/v1/videos/{job_id:str}")
async def get_video(
    request: Request[Any, Any, Any],
    job_id: FromPath[str],
    simulator: NamedDependency[Simulator],
) -> Response[Any]:
    """Respond to a poll with the job's current step."""
    base_url = str(request.base_url).rstrip("/")
    authorization = request.headers.get("authorization")
    async with simulator.lock:
        reply = simulator.answer_poll(job_id, authorization, base_url)

    step = reply.step
    logger.info(
        "simulator.poll",
        job_id=job_id,
        status_code=reply.status_code,
        step=step.text if step else None,
        error=reply.error,
    )

    if step is not None and step.name == "slow":
        await asyncio.sleep(step.delay_s)
    return reply.to_response()


@get("/files/{file_name:str}", media_type="video/mp4")
async def get_file(file_name: FromPath[str]) -> bytes:
    """Serve a few bytes of MP4 for any ``.mp4`` name, as the unsigned URLs need."""
    if not file_name.endswith(".mp4"):
        raise NotFoundException(
            detail=f"File {file_name!r} not found. Only .mp4 files exist."
        )
    return FAKE_VIDEO_BYTES


@put("/_sim/jobs/{job_id:str}")
async def put_job(
    job_id: FromPath[str],
    data: JSONBody[JobScript],
    simulator: NamedDependency[Simulator],
) -> dict[str, object]:
    """Set or replace a job's script and reset its state."""
    try:
        steps = parse_script(data.steps)
    except ValueError as exc:
        raise ValidationException(detail=str(exc)) from None

    async with simulator.lock:
        job = simulator.set_script(job_id, steps)
        summary = job.summary(job_id)

    logger.info("simulator.job_scripted", job_id=job_id, steps=data.steps)
    return summary


@get("/_sim/jobs/{job_id:str}")
async def get_job(
    job_id: FromPath[str], simulator: NamedDependency[Simulator]
) -> dict[str, object]:
    """Return the polls a job has received and the step it is on."""
    async with simulator.lock:
        job = simulator.find_job(job_id)
        if job is None:
            raise NotFoundException(detail=not_found_message(job_id))
        return job.summary(job_id)


@get("/_sim/stats")
async def get_stats(simulator: NamedDependency[Simulator]) -> dict[str, object]:
    """Return the number of polls received for all jobs."""
    async with simulator.lock:
        return {"polls": simulator.total_polls}


@delete("/_sim/jobs")
async def delete_jobs(simulator: NamedDependency[Simulator]) -> None:
    """Forget every job and reset the poll counters."""
    async with simulator.lock:
        simulator.reset()
    logger.info("simulator.reset")


def create_app(api_key: str, *more_keys: str) -> Litestar:
    """Create a simulator app that accepts ``api_key`` and ``more_keys``."""
    simulator = Simulator([api_key, *more_keys])

    def provide_simulator() -> Simulator:
        return simulator

    return Litestar(
        route_handlers=[get_video, get_file, put_job, get_job, get_stats, delete_jobs],
        dependencies={"simulator": Provide(provide_simulator, sync_to_thread=False)},
        openapi_config=None,
    )


def serve(host: str, port: int, api_key: str) -> None:
    """Serve the simulator with uvicorn until interrupted."""
    if not _is_loopback(host):
        logger.warning("simulator.admin_routes_exposed", host=host)

    logger.info("simulator.starting", host=host, port=port)
    uvicorn.run(create_app(api_key), host=host, port=port, log_level="warning")
    logger.info("simulator.stopped", host=host, port=port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
