"""Bounded, logged retries of MLflow calls on a locked sqlite store.

Why it exists: many jobs log into one sqlite store at once (the workflow's `--cores all`, trainings
sharing $MLFLOW_TRACKING_URI). sqlite lets one writer in at a time, and a caller that waits for the
lock longer than the busy timeout gets "database is locked". Through MLflow 3's SqlAlchemyStore that
is an MlflowException (error code TEMPORARILY_UNAVAILABLE) raised from sqlalchemy's OperationalError,
or the raw OperationalError while the store opens. MLflow waits up to 20 s in silence, then fails the
job. `call` instead retries the call with exponential backoff and jitter, logs a WARNING for each
retry (store, operation, attempt, wait) and, after the last attempt, raises StoreLockedError naming
the store and the number of attempts. Any other error passes through at once.

Settings, environment variables read at each call:
  MOSAIC_MLFLOW_ATTEMPTS        attempts per call, >= 1; 1 turns retries off (default 8)
  MOSAIC_MLFLOW_BACKOFF_S       wait after the first locked attempt, doubled after each one (default 0.5)
  MOSAIC_MLFLOW_BACKOFF_MAX_S   the longest single wait (default 30)
  MOSAIC_SQLITE_BUSY_TIMEOUT_S  how long sqlite itself waits for the lock within one attempt
                                (default 5; replaces the 20 s MLflow sets on each session)
Each wait is the backoff times a random factor in [0.5, 1), so jobs locked out together do not retry
together. With the defaults a call gives up after 8 attempts of 5 s and 30 to 60 s of waits between them.

A retried call runs again from the start, so only idempotent calls may be passed as they are
(MLflow's log_batch is: params of equal value, tags and identical metrics are not written twice).
A call that creates something must first look for what an earlier, failed attempt left.
"""
from __future__ import annotations

import logging
import os
import random
import time
from typing import Any, Callable, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULTS = {"MOSAIC_MLFLOW_ATTEMPTS": 8, "MOSAIC_MLFLOW_BACKOFF_S": 0.5, "MOSAIC_MLFLOW_BACKOFF_MAX_S": 30.0,
            "MOSAIC_SQLITE_BUSY_TIMEOUT_S": 5.0}
LOCKED = ("database is locked", "database table is locked", "database is busy")


class StoreLockedError(RuntimeError):
    """The store stayed locked through every attempt."""


def setting(name: str) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return DEFAULTS[name]
    try:
        value = type(DEFAULTS[name])(raw)
    except ValueError:
        value = -1
    if value < (1 if name == "MOSAIC_MLFLOW_ATTEMPTS" else 0):
        kind = "an integer >= 1" if name == "MOSAIC_MLFLOW_ATTEMPTS" else "a number of seconds >= 0"
        raise ValueError(f"environment variable {name}={raw!r}: expected {kind}")
    return value


def is_locked(exc: BaseException | None) -> bool:
    """A "database is locked" error anywhere in the chain of causes (not one already retried)."""
    seen = set()
    while exc is not None and id(exc) not in seen and not isinstance(exc, StoreLockedError):
        if any(m in str(exc).lower() for m in LOCKED):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def store_name(uri: str) -> str:
    return uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else uri


def call(uri: str, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """fn(*args, **kwargs), retried while the store at `uri` is locked; `what` names the operation in logs."""
    attempts = setting("MOSAIC_MLFLOW_ATTEMPTS")
    start = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not is_locked(e):
                raise
            if attempt == attempts:
                raise StoreLockedError(
                    f"{store_name(uri)}: MLflow {what} failed after {attempts} attempt{'s' * (attempts > 1)} over "
                    f"{time.monotonic() - start:.1f} s: the sqlite database stayed locked by another process "
                    f"(raise MOSAIC_MLFLOW_ATTEMPTS or MOSAIC_SQLITE_BUSY_TIMEOUT_S to wait longer)") from e
            wait = min(setting("MOSAIC_MLFLOW_BACKOFF_MAX_S"), setting("MOSAIC_MLFLOW_BACKOFF_S") * 2 ** (attempt - 1))
            wait *= random.uniform(0.5, 1.0)
            log.warning("MLflow store %s: %s: database is locked (attempt %d of %d); retrying in %.2f s",
                        store_name(uri), what, attempt, attempts, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def _busy_timeout(conn, cursor, statement, parameters, context, executemany):
    """Replace the busy timeout MLflow's sqlite sessions set (20 s) by MOSAIC_SQLITE_BUSY_TIMEOUT_S."""
    if statement.startswith("PRAGMA busy_timeout"):
        statement = f"PRAGMA busy_timeout = {int(setting('MOSAIC_SQLITE_BUSY_TIMEOUT_S') * 1000)};"
    return statement, parameters


class _QuietLocked(logging.Filter):
    """Drops MLflow's ERROR with traceback for each locked attempt: the WARNING above replaces it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(m in record.getMessage().lower() for m in LOCKED)


def client(uri: str):
    """An MlflowClient for `uri` (opening the store is retried too) with the busy timeout above."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "before_cursor_execute", _busy_timeout):
        event.listen(Engine, "before_cursor_execute", _busy_timeout, retval=True)
    mlflow_log = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _QuietLocked) for f in mlflow_log.filters):
        mlflow_log.addFilter(_QuietLocked())
    return call(uri, "open store", MlflowClient, uri)
