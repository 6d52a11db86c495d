"""``python -m bench [--quick] [--only NAMES]``: run the benchmark scenarios.

Prints progress to stderr and the report, as markdown tables, to stdout. The
report is also written to ``bench/results/latest.md`` and the figures to
``bench/results/latest.json`` (``quick.md`` and ``quick.json`` with
``--quick``). Exits 1 when a scenario failed to run; missed targets change
the exit status only with ``--strict``.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import IO, Any

from bench import processes
from bench.report import (
    Options,
    Result,
    code_version,
    machine,
    markdown,
    say,
    timestamp,
    write_json,
)
from relay import logs

SCENARIOS = ("throughput", "latency", "scale", "politeness", "api", "isolation")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
LOCK_PATH = Path(tempfile.gettempdir()) / "modelgates-relay-bench.lock"


def run_scenario(name: str, options: Options) -> Result:
    """Run one scenario module and return its result, any exception as its error."""
    say(f"== {name}")
    started = time.monotonic()
    try:
        module = importlib.import_module(f"bench.{name}")
        result: Result = module.run(options)
    except Exception as exc:  # noqa: BLE001 - reported, and the next scenario runs
        traceback.print_exc(file=sys.stderr)
        result = Result(name, error=f"{type(exc).__name__}: {exc}".splitlines()[0])
    finally:
        processes.stop_all()
    result.duration_s = time.monotonic() - started
    say(f"== {name} finished in {result.duration_s:.0f} s")
    return result


def hold_run_lock() -> IO[str] | None:
    """Take the lock that marks a running benchmark; None if another run holds it.

    Two runs on one machine skew each other's figures, so the report marks
    a run that overlapped one that started earlier.
    """
    lock_file = LOCK_PATH.open("a")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        return None
    return lock_file


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Run the relay's benchmarks."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="run every scenario at a small size, in under a minute",
    )
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios to run (default: {','.join(SCENARIOS)})",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="JSON results file (default: bench/results/latest.json, "
        "or quick.json with --quick)",
    )
    parser.add_argument(
        "--latency-workers",
        help="comma-separated worker counts for the latency scenario "
        "(default: 2, or 1 with --quick)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 3 when a target is missed"
    )
    args = parser.parse_args()
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; known: {SCENARIOS}")

    latency_workers = None
    if args.latency_workers:
        try:
            latency_workers = tuple(int(n) for n in args.latency_workers.split(","))
        except ValueError:
            parser.error(
                "--latency-workers must be comma-separated integers such as 1,2, "
                f"got {args.latency_workers!r}"
            )
    options = Options(quick=args.quick, latency_workers=latency_workers)

    # SIGTERM (a CI timeout, say) unwinds like Ctrl-C, so every scenario
    # stops the processes and servers it started.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    logs.configure("console", "WARNING")
    run_lock = hold_run_lock()
    if run_lock is None:
        say("warning: another benchmark run is active; both runs' figures are skewed")
    # Other work on the machine skews every figure, and the load averages show it.
    info: dict[str, Any] = {
        "started_at": timestamp(),
        "machine": machine(),
        "code": code_version(processes.REPO_ROOT),
        "load_average_1m_before": os.getloadavg()[0],
        "overlapped_another_run": run_lock is None,
    }
    started = time.monotonic()
    results = [run_scenario(name, options) for name in names]
    info["duration_s"] = round(time.monotonic() - started, 1)
    info["load_average_1m_after"] = os.getloadavg()[0]

    output = args.output or RESULTS_DIR / (
        "quick.json" if args.quick else "latest.json"
    )
    write_json(output, results, info, args.quick)
    report = markdown(results, info, args.quick)
    output.with_suffix(".md").write_text(report)
    print(report)  # noqa: T201 - the report is this command's output
    say(f"results written to {output} and {output.with_suffix('.md')}")

    if any(result.error for result in results):
        return 1
    missed = [t for r in results for t in r.targets if not t.met]
    if args.strict and not args.quick and missed:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
