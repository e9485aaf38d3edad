"""Apply Alembic migrations programmatically (``catdog db upgrade``, embedded start-up), and
tell read-only commands whether the schema is there without ever creating it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

#: The migration scripts ship inside the package.
MIGRATIONS = Path(__file__).parent / "migrations"


class SchemaNotReady(Exception):
    """The database has no catdog schema, or an older one, and this command does not write."""


def alembic_config() -> Config:
    """An Alembic config pointing at the packaged scripts."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head() -> str:
    """The newest revision this catdog knows."""
    found = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert found is not None
    return found


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None when it has no catdog schema."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Bring the database schema up to ``revision``; return (revision before, after)."""
    before = current_revision(engine)
    _migrate(engine, command.upgrade, revision)
    return before, current_revision(engine)


def upgrade_message(before: str | None, after: str | None) -> str:
    """What ``upgrade`` did, in words."""
    if before is None:
        return f"created the schema at revision {after}"
    if before == after:
        return f"already at revision {after}"
    return f"upgraded from revision {before} to {after}"


def downgrade(engine: Engine, revision: str) -> None:
    """Take the database schema back to ``revision``."""
    _migrate(engine, command.downgrade, revision)


def _migrate(engine: Engine, step: Callable[[Config, str], None], revision: str) -> None:
    cfg = alembic_config()
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        step(cfg, revision)


def safe_url(url: str) -> str:
    """The URL as people may see it: the password as ***, no query (it may hold secrets)."""
    return make_url(url).set(query={}).render_as_string(hide_password=True)


def missing_sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL when it does not exist (connecting would create it)."""
    parsed = make_url(url)
    name = parsed.database
    if not parsed.drivername.startswith("sqlite") or not name or name == ":memory:":
        return None
    if name.startswith("file:"):  # a URI filename: let SQLite interpret it
        return None
    path = Path(name)
    return None if path.exists() else path


def require_schema(engine: Engine, url: str) -> None:
    """Raise ``SchemaNotReady`` unless the database is at this catdog's revision.

    Read-only commands call this instead of migrating: they never create or change a schema.
    For SQLite, call it before anything connects (see ``missing_sqlite_file``).
    """
    where = safe_url(url)
    if missing_sqlite_file(url) is not None:
        raise SchemaNotReady(f"no catdog schema in {where}: run `catdog db upgrade`")
    current = current_revision(engine)
    if current is None:
        raise SchemaNotReady(f"no catdog schema in {where}: run `catdog db upgrade`")
    if current != head():
        raise SchemaNotReady(
            f"the catdog schema in {where} is at revision {current}, this catdog needs "
            f"{head()}: run `catdog db upgrade`"
        )
