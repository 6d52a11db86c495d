"""The client examples in docs/examples run against a live relay and succeed.

Each example registers a job, reads the registration back, lists its
attempts and deletes it. The API runs in a thread with real Redis behind it
and no worker, so the callback on 127.0.0.1:9000 is stored but never called.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import API_TOKEN, PREFIX

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
NODE_DIR = ROOT / "tests" / "node"
TSC = NODE_DIR / "node_modules" / ".bin" / "tsc"
JOB_ID = "job-docs-example"
PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def example_env(api: httpx.Client) -> dict[str, str]:
    """Return the environment for an example: the relay's URL, key and a job."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name.lower() not in PROXY_VARIABLES
    }
    env["RELAY_URL"] = str(api.base_url)
    env["RELAY_API_KEY"] = API_TOKEN
    env["RELAY_JOB_ID"] = JOB_ID
    return env


def curl_command(tmp_path: Path) -> list[str]:
    for tool in ("curl", "jq", "bash"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed; the curl example needs it")
    return ["bash", str(EXAMPLES / "client.sh")]


def python_command(tmp_path: Path) -> list[str]:
    return [sys.executable, str(EXAMPLES / "client.py")]


def typescript_command(tmp_path: Path) -> list[str]:
    """Compile the TypeScript example with tsc and return the node command."""
    node = shutil.which("node")
    if node is None or not TSC.exists():
        pytest.skip("Node.js or tests/node/node_modules missing; run `make test`")
    config = {
        "compilerOptions": {
            "strict": True,
            "target": "es2022",
            "module": "nodenext",
            "rootDir": str(EXAMPLES),
            "outDir": str(tmp_path),
            "typeRoots": [str(NODE_DIR / "node_modules" / "@types")],
            "types": ["node"],
        },
        "files": [str(EXAMPLES / "client.ts")],
    }
    config_path = tmp_path / "tsconfig.json"
    config_path.write_text(json.dumps(config))
    compiled = subprocess.run(
        [str(TSC), "--project", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    return [node, str(tmp_path / "client.js")]


COMMANDS = [curl_command, python_command, typescript_command]
COMMAND_IDS = ["curl", "python", "typescript"]


@pytest.mark.parametrize("command", COMMANDS, ids=COMMAND_IDS)
def test_example_runs_against_relay(
    api: httpx.Client,
    migrated: redis.Redis,
    tmp_path: Path,
    command: object,
) -> None:
    argv = command(tmp_path)  # type: ignore[operator]

    result = subprocess.run(
        argv,
        env=example_env(api),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    registered = re.fullmatch(r"registered (reg_\S+) \(state tracking\)", lines[0])
    assert registered, lines
    registration_id = registered.group(1)
    assert lines[1:] == [
        f"read {registration_id}: state tracking, 0 polls",
        "attempts: 0",
        f"deleted {registration_id}",
    ]
    assert api.get(f"/v1/registrations/{registration_id}").status_code == 404
    assert migrated.keys(f"{PREFIX}reg:*") == []


@pytest.mark.parametrize("command", COMMANDS, ids=COMMAND_IDS)
def test_example_reports_rejected_key(
    api: httpx.Client,
    tmp_path: Path,
    command: object,
) -> None:
    argv = command(tmp_path)  # type: ignore[operator]
    env = example_env(api) | {"RELAY_API_KEY": "wrong-key-0123456789"}

    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode != 0
    assert "401" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("command", COMMANDS, ids=COMMAND_IDS)
def test_example_requires_settings(
    api: httpx.Client,
    tmp_path: Path,
    command: object,
) -> None:
    argv = command(tmp_path)  # type: ignore[operator]
    env = example_env(api)
    del env["RELAY_URL"]

    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode == 2
    assert "RELAY_URL" in result.stderr
