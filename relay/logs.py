"""structlog set-up: JSON lines in production, a readable console in a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgspec
import structlog


def _json_line(event: dict[str, Any], **options: Any) -> str:
    # msgspec encodes a log line several times faster than the json module,
    # which matters on the API's hot path; repr covers exotic values.
    return msgspec.json.encode(event, enc_hook=repr).decode()


def configure(log_format: str = "auto", level: str = "INFO") -> None:
    """Route structlog and the standard library's logging through one renderer."""
    use_json = log_format == "json" or (
        log_format == "auto" and not sys.stderr.isatty()
    )
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_json_line)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(level)
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )

    # Libraries (uvicorn, rq, httpx) log through the standard library; render
    # their records with the same processors so every line has one shape.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request URL at INFO; the relay logs its own lines instead.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
