"""Exceptions the relay raises, in one small tree.

RelayError
├── SettingsError        invalid environment variables; stops start-up
├── SchemaError          Redis keyspace missing or newer than this code
├── StoreUnavailableError Redis unreachable or timing out
└── WorkerUnhealthyError  a worker's heartbeat file is missing or too old

Third-party errors (redis, httpx) are translated into these at the module that
talks to them, with ``raise ... from exc`` so the cause stays in tracebacks.
"""


class RelayError(Exception):
    """Base class of every error the relay raises on purpose."""


class SettingsError(RelayError):
    """An environment variable is missing or invalid."""


class SchemaError(RelayError):
    """The Redis keyspace is not at the version this code expects."""


class StoreUnavailableError(RelayError):
    """Redis could not be reached or did not respond in time."""


class WorkerUnhealthyError(RelayError):
    """A worker's heartbeat file is missing or older than the check allows."""
