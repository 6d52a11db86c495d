"""A pytest plugin that fails the run when a secret appears in test output.

It scans every section of captured output that pytest attaches to a report:
stdout, stderr and log records of setup, call and teardown, for passing
tests too. Fixtures hand whole files to ``scan_file``, such as the logs of
worker subprocesses. Secrets are found by shape (signing secrets, relay API
keys, webhook signatures, ``ID:BASE64`` encryption-key entries) and by value
for the fixed test secrets passed to ``install``. The report at the end of
the run names the test, the section, the line and the kind of secret, and
shows at most six leading characters of each value.

Output that tests capture themselves, such as ``subprocess.run`` with
``capture_output=True``, is test data and is not scanned.

NOTE: a line that a server thread writes while pytest is between two phases
of a test is not captured, so it goes to the terminal unscanned. The
in-process API's ``http.request`` log lines sometimes do this.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

# Secrets recognised by their shape, whatever their value. Standard Webhooks
# secrets and signatures carry base64, the API key's secret part is the
# base64url of 32 bytes, and each RELAY_ENCRYPTION_KEYS entry is an ID, a
# colon and the base64 of 32 bytes.
SHAPES: tuple[tuple[str, str], ...] = (
    ("signing secret", r"whsec_[A-Za-z0-9+/]{32,}={0,2}"),
    ("relay API key", r"rk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}"),
    ("webhook signature", r"v1,[A-Za-z0-9+/]{43}="),
    ("encryption key", r"[A-Za-z0-9_-]{1,32}:[A-Za-z0-9+/]{43}="),
)
PREVIEW_MAX_CHARS = 6
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_CONSOLE_EVENT = re.compile(
    r"\[\s*(?:debug|info|warning|error|critical)\s*\]\s+(\S+)", re.IGNORECASE
)
_CHECK_KEY = pytest.StashKey["SecretCheck"]()


@dataclass(frozen=True)
class Finding:
    """The first occurrence of one kind of secret in one section of output."""

    nodeid: str
    where: str
    kind: str
    line: int
    event: str | None
    preview: str


@dataclass(frozen=True)
class Match:
    """One secret found in a text, with its 1-based line number."""

    kind: str
    value: str
    line: int


class SecretDetector:
    """A matcher for secrets, by shape and by known value."""

    def __init__(self, known: Mapping[str, Iterable[str]]) -> None:
        alternatives: list[str] = []
        self._kinds: list[str] = []
        for kind, pattern in SHAPES:
            alternatives.append(pattern)
            self._kinds.append(kind)
        for kind, values in known.items():
            for value in values:
                alternatives.append(re.escape(value))
                self._kinds.append(kind)
        # One alternation with a group per secret, so finditer makes a single
        # pass and a value matched as a whole entry is not reported again as
        # its parts.
        self._pattern = re.compile(
            "|".join(f"({alternative})" for alternative in alternatives)
        )

    def find(self, text: str) -> list[Match]:
        """Return every secret in ``text``, in order of position."""
        line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        matches = []
        for found in self._pattern.finditer(text):
            assert found.lastindex is not None
            line = bisect.bisect_right(line_starts, found.start())
            matches.append(Match(self._kinds[found.lastindex - 1], found.group(), line))
        return matches


def redact(value: str) -> str:
    """Return at most six leading characters of ``value``, and at most an eighth."""
    return value[: min(PREVIEW_MAX_CHARS, len(value) // 8)] + "..."


def event_of(line: str) -> str | None:
    """Return the structlog event name of a JSON or console log line."""
    stripped = _ANSI_ESCAPE.sub("", line).strip()
    if stripped.startswith("{"):
        try:
            record = json.loads(stripped)
        except ValueError:
            return None
        event = record.get("event") if isinstance(record, dict) else None
        return event if isinstance(event, str) else None
    console = _CONSOLE_EVENT.search(stripped)
    return console.group(1) if console else None


class SecretCheck:
    """The pytest plugin that scans output and fails the session on a finding."""

    def __init__(self, known: Mapping[str, Iterable[str]]) -> None:
        self.detector = SecretDetector(known)
        self.findings: dict[tuple[str, str, str], tuple[Finding, int]] = {}
        self._scanned: set[tuple[str, str]] = set()

    def scan(self, nodeid: str, where: str, text: str) -> None:
        """Record the secrets in one section of a test's output.

        Each report carries the sections of the phases before it too, so a
        section already scanned for this test is skipped.
        """
        if (nodeid, where) in self._scanned:
            return
        self._scanned.add((nodeid, where))

        lines = text.split("\n")
        for match in self.detector.find(text):
            key = (nodeid, where, match.kind)
            if key in self.findings:
                first, count = self.findings[key]
                self.findings[key] = (first, count + 1)
                continue
            finding = Finding(
                nodeid=nodeid,
                where=where,
                kind=match.kind,
                line=match.line,
                event=event_of(lines[match.line - 1]),
                preview=redact(match.value),
            )
            self.findings[key] = (finding, 1)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for title, text in report.sections:
            self.scan(report.nodeid, title, text)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        for title, text in report.sections:
            self.scan(report.nodeid or "<collection>", title, text)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        passing = (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
        if self.findings and session.exitstatus in passing:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(
        self, terminalreporter: pytest.TerminalReporter, config: pytest.Config
    ) -> None:
        if config.getoption("capture") == "no":
            terminalreporter.write_line(
                "secret check: output capture is off (-s), so only files passed "
                "to scan_file were scanned",
                yellow=True,
            )
        if not self.findings:
            if terminalreporter.verbosity >= 0:
                terminalreporter.write_line(
                    f"secret check: no secrets in {len(self._scanned)} sections "
                    "of captured output"
                )
            return
        self._write_findings(terminalreporter)

    def _write_findings(self, terminalreporter: pytest.TerminalReporter) -> None:
        terminalreporter.section("secrets in captured output", sep="=", red=True)
        tests = sorted({nodeid for nodeid, _, _ in self.findings})
        for nodeid in tests:
            terminalreporter.write_line(nodeid)
            for (owner, _, _), (finding, count) in sorted(self.findings.items()):
                if owner == nodeid:
                    terminalreporter.write_line("  " + format_finding(finding, count))
        terminalreporter.write_line(
            f"secret check failed: {len(self.findings)} findings in {len(tests)} "
            "tests (values cut to a short prefix). Remove the secret from the log "
            "call, message or print that wrote it.",
            red=True,
            bold=True,
        )


def format_finding(finding: Finding, count: int) -> str:
    """Format one line of the report: the location, kind and prefix of a secret."""
    event = f", event {finding.event}" if finding.event else ""
    repeats = f" ({count} occurrences)" if count > 1 else ""
    return (
        f"{finding.where}, line {finding.line}{event}: "
        f"{finding.kind} {finding.preview!r}{repeats}"
    )


def install(config: pytest.Config, known: Mapping[str, Iterable[str]]) -> None:
    """Register the check, with the fixed test secrets it looks for by value."""
    check = SecretCheck(known)
    config.stash[_CHECK_KEY] = check
    config.pluginmanager.register(check, "secret-check")


def scan_file(request: pytest.FixtureRequest, path: Path) -> None:
    """Scan a whole file that the requesting test's processes wrote."""
    check = request.config.stash.get(_CHECK_KEY, None)
    if check is not None:
        text = path.read_text(errors="replace")
        check.scan(request.node.nodeid, f"{path.name} (whole file)", text)
