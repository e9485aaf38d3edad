"""`catdog db upgrade` says what it did; read-only commands never create or migrate a schema,
and `catdog status` prints whole roots when piped."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from catdog.cli import main
from catdog.db.engine import make_engine, session_factory
from catdog.db.migrate import head, upgrade
from catdog.db.models import ScanRun

#: Commands that only read, with the arguments they need.
READ_ONLY = [["status"], ["status", "--format", "json"], ["export"], ["models", "list"]]


@pytest.fixture
def catdog(env: Callable[..., None], sqlite_url: str) -> Callable[..., object]:
    """Invoke ``catdog ARGS`` against the test's SQLite file (which does not exist yet)."""
    env(database_url=sqlite_url)
    return lambda *args: CliRunner().invoke(main, list(args))


def test_db_upgrade_says_whether_it_created_upgraded_or_found_the_schema(
    catdog, env: Callable[..., None], sqlite_url: str
):
    """Created at head, then already at head; from 0003 it names both revisions."""
    created = catdog("db", "upgrade")
    again = catdog("db", "upgrade")
    assert created.exit_code == 0 and f"created the schema at revision {head()}" in created.output
    assert f"already at revision {head()}" in again.output
    older = sqlite_url.replace("catdog.db", "older.db")
    engine = make_engine(older)
    upgrade(engine, "0003")
    engine.dispose()
    env(database_url=older)
    result = catdog("db", "upgrade")
    assert f"upgraded from revision 0003 to {head()}" in result.output


@pytest.mark.parametrize("args", READ_ONLY, ids=" ".join)
def test_read_only_commands_on_a_missing_database_say_so_and_create_nothing(
    catdog, tmp_path: Path, args: list[str]
):
    """One line naming the database and the way out, exit 1, and no file left behind."""
    result = catdog(*args)
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        f"Error: no catdog schema in sqlite:///{tmp_path / 'catdog.db'}: run `catdog db upgrade`"
    ]
    assert not (tmp_path / "catdog.db").exists()


@pytest.mark.parametrize("args", [*READ_ONLY, ["report", "--out", "r"]], ids=" ".join)
def test_read_only_commands_never_create_or_migrate_a_schema(
    catdog, tmp_path: Path, args: list[str]
):
    """An empty database stays empty; an older schema stays at its revision."""
    sqlite3.connect(tmp_path / "catdog.db").close()  # an empty database file
    result = catdog(*args)
    assert result.exit_code == 1 and "no catdog schema" in result.output
    with sqlite3.connect(tmp_path / "catdog.db") as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []


def test_status_on_an_older_schema_asks_for_an_upgrade_and_leaves_it(catdog, sqlite_url: str):
    """The schema is not migrated behind the operator's back."""
    engine = make_engine(sqlite_url)
    upgrade(engine, "0003")
    result = catdog("status")
    with engine.connect() as conn:
        revision = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    engine.dispose()
    assert result.exit_code == 1 and "at revision 0003" in result.output and revision == "0003"


def test_status_prints_whole_roots_when_stdout_is_not_a_terminal(catdog, sqlite_url: str):
    """Two long roots differing only at the end both appear in full in the piped table."""
    engine = make_engine(sqlite_url)
    upgrade(engine)
    roots = ["/archive/" + "x" * 200 + "/a", "/archive/" + "x" * 200 + "/b"]
    with session_factory(engine).begin() as s:
        for root in roots:
            s.add(ScanRun(root=root, relabel=False, files_seen=0, skipped=0, total=0, done=0))
    engine.dispose()
    table = catdog("status")
    assert table.exit_code == 0 and all(root in table.output for root in roots)
    rows = json.loads(catdog("status", "--format", "json").output)
    assert sorted(r["root"] for r in rows) == roots
