"""Riding out a short database outage: retry a unit of work with backoff and jitter.

The producer and the command line wrap each transaction in :func:`retrying`. A database that
restarts, fails over or drops off the network for a few seconds costs one warning line per
retry instead of a traceback and a half-registered run; one that stays away longer than
``OUTAGE_BUDGET_S`` fails as before. Only outages are retried: a wrong statement, a missing
table or a constraint violation fails at once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Longest a unit of work keeps retrying (seconds): a restart or a fail-over fits, an
#: operator still hears about a database that is really down within a minute.
OUTAGE_BUDGET_S = 60.0
#: First retry delay (seconds); the ceiling doubles per retry.
RETRY_BASE_S = 0.5
#: Largest retry delay (seconds).
RETRY_CAP_S = 8.0
#: SQLite says these when the file is busy or the disk or its mount misbehaves; every other
#: SQLite OperationalError ("no such table", a syntax error) is a bug, not an outage.
SQLITE_OUTAGES = ("database is locked", "disk i/o error", "unable to open database", "disk is full")


#: PostgreSQL answered, and the answer will not change by waiting: a wrong password or user
#: (class 28), a database that does not exist (3D000).
NOT_OUTAGES = ("28", "3D000")
#: The same refusals as libpq words them when they end a connection attempt (psycopg gives
#: those no SQLSTATE).
REFUSALS = ("does not exist", "authentication failed", "no pg_hba.conf entry")


def is_outage(exc: BaseException) -> bool:
    """True for a database that is away or busy (worth a retry), false for a bad request."""
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError):
        return False
    if type(exc.orig).__module__.startswith("sqlite3"):
        return any(marker in str(exc.orig).lower() for marker in SQLITE_OUTAGES)
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    message = str(exc.orig).lower()
    return not sqlstate.startswith(NOT_OUTAGES) and not any(m in message for m in REFUSALS)


def backoff(attempt: int, base: float = RETRY_BASE_S, cap: float = RETRY_CAP_S) -> float:
    """A random delay in [base / 2, capped doubling ceiling]: retries of many clients that
    failed together spread out instead of arriving in lockstep."""
    ceiling = min(base * 2**attempt, cap)
    return random.uniform(min(base, ceiling) / 2, ceiling)


def describe(exc: BaseException) -> str:
    """The cause in one line, without the SQL or any connection password."""
    cause = getattr(exc, "orig", None) or exc
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {first}" if first else type(cause).__name__


def retrying(
    work: Callable[[], T],
    what: str,
    budget_s: float = OUTAGE_BUDGET_S,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run ``work`` (one whole transaction), again after an outage, for at most ``budget_s``.

    ``work`` must be safe to repeat: a transaction that failed was rolled back. One warning
    line per retry names ``what`` was being done and the cause. Past the budget the last
    error is raised.
    """
    deadline = clock() + budget_s
    attempt = 0
    while True:
        try:
            return work()
        except (DBAPIError, PoolTimeout) as exc:
            if not is_outage(exc):
                raise
            delay = backoff(attempt)
            if clock() + delay > deadline:
                raise
            attempt += 1
            log.warning(
                "database unavailable while %s (%s); retry %d in %.1fs",
                what,
                describe(exc),
                attempt,
                delay,
            )
            sleep(delay)
