"""Retrying a unit of work through a database outage: what is retried, how long, how loud."""

from __future__ import annotations

import logging
import sqlite3

import psycopg
import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from catdog.db.retry import RETRY_CAP_S, backoff, is_outage, retrying

OUTAGE = OperationalError("SELECT 1", {}, psycopg.OperationalError("connection refused"))


class Clock:
    """A fake clock that the fake sleep moves forward."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_an_outage_is_retried_until_the_work_succeeds_with_one_warning_per_retry(caplog):
    """Two failures, then success: the result comes back and two one-line warnings were logged."""
    clock, calls = Clock(), []

    def work() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OUTAGE
        return "done"

    caplog.set_level(logging.WARNING, logger="catdog.db.retry")
    assert retrying(work, "testing", sleep=clock.sleep, clock=lambda: clock.now) == "done"
    warnings = [r.getMessage() for r in caplog.records if r.name == "catdog.db.retry"]
    assert len(warnings) == len(clock.sleeps) == 2
    assert all("\n" not in w and "testing" in w for w in warnings)


def test_a_database_that_stays_away_fails_within_the_budget():
    """Past the time budget the outage is raised; the sleeps never add up to more."""
    clock = Clock()

    def work() -> None:
        raise OUTAGE

    with pytest.raises(OperationalError):
        retrying(work, "testing", budget_s=20, sleep=clock.sleep, clock=lambda: clock.now)
    assert sum(clock.sleeps) <= 20 and len(clock.sleeps) >= 3


@pytest.mark.parametrize(
    "exc",
    [
        IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation("duplicate key")),
        OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: scan_runs")),
        OperationalError("CONNECT", {}, psycopg.errors.InvalidCatalogName("no such database")),
        OperationalError("CONNECT", {}, psycopg.errors.InvalidPassword("wrong password")),
        ValueError("not a database error"),
    ],
    ids=["constraint", "sqlite missing table", "no such database", "wrong password", "other"],
)
def test_errors_that_are_not_outages_are_raised_at_once(exc):
    """A bad statement or a missing table is a bug: no retry, no wait."""
    clock = Clock()

    def work() -> None:
        raise exc

    with pytest.raises(type(exc)):
        retrying(work, "testing", sleep=clock.sleep, clock=lambda: clock.now)
    assert clock.sleeps == []


def test_a_database_that_does_not_exist_is_not_waited_for(postgres_url: str):
    """The server answers that there is no such database: that does not change by waiting."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from catdog.db.engine import make_engine

    missing = make_url(postgres_url).set(database="catdog_no_such_db", query={})
    engine = make_engine(missing.render_as_string(hide_password=False))
    with pytest.raises(OperationalError) as caught, engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    engine.dispose()
    assert not is_outage(caught.value)


def test_a_locked_or_full_sqlite_file_and_a_dropped_connection_are_outages():
    """SQLite's busy and disk errors and any invalidated connection are worth a retry."""
    locked = OperationalError("UPDATE", {}, sqlite3.OperationalError("database is locked"))
    full = OperationalError("UPDATE", {}, sqlite3.OperationalError("database or disk is full"))
    assert is_outage(locked) and is_outage(full) and is_outage(OUTAGE)


def test_backoff_is_jittered_and_capped():
    """Delays spread over [ceiling / 4, ceiling] early and never exceed the cap later."""
    early = [backoff(1) for _ in range(200)]
    assert min(early) >= 0.25 and max(early) <= 1.0 and len(set(early)) > 100
    assert all(backoff(30) <= RETRY_CAP_S for _ in range(200))
