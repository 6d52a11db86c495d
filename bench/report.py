"""Results of the scenarios: figures, targets, the markdown report and the JSON file."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from relay.redis_server import server_binary


@dataclass(frozen=True)
class Options:
    """Command-line choices every scenario receives."""

    quick: bool = False
    # Worker counts of the latency scenario, or None for the scenario's default.
    latency_workers: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Figure:
    """One measured value, such as a rate or a latency percentile."""

    key: str
    label: str
    value: float | int | str | None
    unit: str = ""


@dataclass(frozen=True)
class Target:
    """One goal from the performance targets and whether this run met it."""

    label: str
    goal: str
    measured: str
    met: bool


@dataclass
class Result:
    """Figures and target checks of one scenario, and the settings it ran with."""

    name: str
    figures: list[Figure] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    duration_s: float = 0.0

    def add(self, key: str, label: str, value: Any, unit: str = "") -> Any:
        """Record a figure and return its value."""
        self.figures.append(Figure(key, label, value, unit))
        return value

    def check(self, label: str, goal: str, measured: str, met: bool) -> None:
        """Record whether a target was met."""
        self.targets.append(Target(label, goal, measured, met))


def say(message: str) -> None:
    """Print a progress line to stderr, so stdout carries only the report."""
    print(message, file=sys.stderr, flush=True)  # noqa: T201 - a terminal program


def percentile(values: list[float], share: float) -> float | None:
    """Return the nearest-rank percentile of ``values`` (share 0.99 for p99)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(share * len(ordered) + 0.5)))
    return ordered[rank - 1]


def format_value(value: Any, unit: str = "") -> str:
    """Format a figure for the table: thousands separated, units after."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or isinstance(value, str):
        text = str(value)
    elif isinstance(value, int) or (isinstance(value, float) and abs(value) >= 100):
        text = f"{value:,.0f}"
    elif isinstance(value, float) and abs(value) >= 10:
        text = f"{value:,.1f}"
    elif isinstance(value, float):
        text = f"{value:.3g}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def machine() -> dict[str, Any]:
    """Describe this machine: cores, CPU model, memory, Python and Redis versions."""
    cpu_model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    version = subprocess.run(  # noqa: S603 - the bundled server binary, fixed flag
        [server_binary(), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "redis_server": version,
        "kernel": platform.release(),
    }


def code_version(root: Path) -> dict[str, Any]:
    """Describe the measured code: the commit and any uncommitted changes to it.

    ``changed`` lists the files under relay/, workers/ and migrations/ that
    differ from the commit, and ``diff_sha256`` identifies those changes.
    """

    def git(*args: str) -> str:
        completed = subprocess.run(  # noqa: S603 - fixed git arguments
            ["git", *args],  # noqa: S607 - git from PATH, like a developer's shell
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
        return completed.stdout.strip() if completed.returncode == 0 else ""

    paths = ("relay", "workers", "migrations")
    diff = git("diff", "HEAD", "--", *paths)
    return {
        "commit": git("rev-parse", "--short", "HEAD") or "unknown",
        "changed": git("diff", "HEAD", "--name-only", "--", *paths).split(),
        "diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:12] if diff else "",
    }


def markdown(results: list[Result], info: dict[str, Any], quick: bool) -> str:
    """Return the report as markdown tables, ready to paste into a document."""
    mode = "quick sizes; timings are not judged" if quick else "full sizes"
    lines = [
        f"Run of `python -m bench{' --quick' if quick else ''}` ({mode}), "
        f"{info['started_at']}, {info['duration_s']:.0f} s.",
        "",
        f"Machine: {info['machine']['nproc']} cores ({info['machine']['cpu_model']}), "
        f"{info['machine']['memory_gib']} GiB, Python {info['machine']['python']}, "
        f"{info['machine']['redis_server']}. Load average (1 min) "
        f"{info['load_average_1m_before']:.2f} before the run, "
        f"{info['load_average_1m_after']:.2f} after it."
        + (
            " **Another benchmark run was active, so every figure is skewed.**"
            if info.get("overlapped_another_run")
            else ""
        ),
        "",
        f"Code: commit {info['code']['commit']}"
        + (
            f" plus uncommitted changes to {', '.join(info['code']['changed'])} "
            f"(diff {info['code']['diff_sha256']})."
            if info["code"]["changed"]
            else ", no uncommitted changes to relay/, workers/ or migrations/."
        ),
        "",
        "| scenario | figure | value |",
        "| --- | --- | --- |",
    ]
    for result in results:
        if result.error:
            lines.append(f"| {result.name} | failed | {result.error} |")
        for figure in result.figures:
            value = format_value(figure.value, figure.unit)
            lines.append(f"| {result.name} | {figure.label} | {value} |")
    lines += ["", "| target | goal | measured | met |", "| --- | --- | --- | --- |"]
    for result in results:
        for target in result.targets:
            if quick:
                met = "-"
            elif target.met:
                met = "yes"
            else:
                met = "**no**"
            lines.append(
                f"| {result.name}: {target.label} | {target.goal} | "
                f"{target.measured} | {met} |"
            )
    return "\n".join(lines) + "\n"


def write_json(
    path: Path, results: list[Result], info: dict[str, Any], quick: bool
) -> None:
    """Write the results as JSON: figures by key, targets, settings, errors."""
    document = {
        "format": 1,
        "quick": quick,
        **info,
        "scenarios": {
            result.name: {
                "duration_s": round(result.duration_s, 1),
                "error": result.error,
                "settings": result.settings,
                "figures": {figure.key: figure.value for figure in result.figures},
                "units": {f.key: f.unit for f in result.figures if f.unit},
                "targets": [asdict(target) for target in result.targets],
            }
            for result in results
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")


def timestamp() -> str:
    """Return the current UTC time as ``YYYY-MM-DD HH:MM UTC``."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
