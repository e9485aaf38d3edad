"""A service that cannot be reached or a URL that cannot be used: one line, exit 1, no password."""

from __future__ import annotations

import inspect
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.engine import make_url

from catdog.cli import main
from catdog.cli.errors import explain
from catdog.settings import redact_url
from services import free_port

#: A password that must never be printed.
PASSWORD = "s3cret-Pa55"
#: Seconds commands here retry a database that does not answer.
OUTAGE_BUDGET_S = 1.0
#: Commands that read or write the database, as a user types them.
DATABASE_COMMANDS = [["db", "upgrade"], ["status"], ["export"], ["models", "list"]]


def one_line_error(result: Result) -> str:
    """The single stderr line of a failed command, after checking the failure's shape."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert PASSWORD not in result.output
    return lines[0]


@pytest.fixture
def catdog(env: Callable[..., None], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """Run ``catdog ARGS`` in this process with the given CATDOG_* settings.

    Commands ride out a database outage for a minute (catdog.db.retry); here a second.
    """
    from catdog.db import retry

    params = list(inspect.signature(retry.retrying).parameters.values())
    defaults = [p.default for p in params if p.default is not p.empty]
    position = [p.name for p in params if p.default is not p.empty].index("budget_s")
    defaults[position] = OUTAGE_BUDGET_S
    monkeypatch.setattr(retry.retrying, "__defaults__", tuple(defaults))

    def invoke(args: list[str], **settings: str) -> Result:
        env(**settings)
        return CliRunner().invoke(main, args)

    return invoke


@pytest.mark.parametrize("args", DATABASE_COMMANDS, ids=" ".join)
def test_a_closed_postgresql_port_is_one_line_naming_host_port_and_database(
    catdog: Callable[..., Result], args: list[str]
) -> None:
    """Nothing listens on the port: the line names host:port/database, never the password."""
    port = free_port()
    result = catdog(args, database_url=f"postgresql://ops:{PASSWORD}@127.0.0.1:{port}/labels")
    line = one_line_error(result)
    assert f"postgresql://ops@127.0.0.1:{port}/labels" in line
    assert "refused" in line.lower()


@pytest.mark.parametrize("args", DATABASE_COMMANDS, ids=" ".join)
def test_a_database_that_does_not_exist_is_one_line_naming_it(
    catdog: Callable[..., Result], postgres_url: str, args: list[str]
) -> None:
    """The server answers but has no such database: the line says which one."""
    missing = make_url(postgres_url).set(database="catdog_no_such_db", query={})
    result = catdog(args, database_url=missing.render_as_string(hide_password=False))
    line = one_line_error(result)
    assert f"{missing.host}:{missing.port}/catdog_no_such_db" in line
    assert "does not exist" in line


@pytest.mark.parametrize("args", DATABASE_COMMANDS, ids=" ".join)
def test_a_database_url_without_a_scheme_is_one_line_naming_the_variable(
    catdog: Callable[..., Result], args: list[str]
) -> None:
    """``host:port/db`` is not a URL SQLAlchemy can read: the line names the setting."""
    result = catdog(args, database_url=f"ops:{PASSWORD}@127.0.0.1:5432/labels")
    line = one_line_error(result)
    assert "CATDOG_DATABASE_URL" in line and "127.0.0.1:5432/labels" in line


def test_retrain_with_the_broker_down_is_one_line_within_the_broker_timeout(
    catdog: Callable[..., Result], tmp_path: Path
) -> None:
    """Redis is not there: retrain says it waited for it, then fails naming it."""
    port = free_port()
    result = catdog(
        ["retrain", "--data", str(tmp_path)],
        broker_url=f"redis://:{PASSWORD}@127.0.0.1:{port}/0",
        broker_timeout="1",
    )
    assert result.exit_code == 1, result.output
    assert PASSWORD not in result.output
    *waiting, error = result.stderr.strip().splitlines()
    assert error.startswith("Error: broker ") and f"127.0.0.1:{port}/0" in error
    assert all(line.startswith("waiting for the broker") for line in waiting)


def test_verbose_adds_the_traceback(tmp_path: Path) -> None:
    """``catdog -v`` prints the traceback before the same one-line error."""
    env = {"CATDOG_DATABASE_URL": "ops@127.0.0.1:5432/labels"}  # no scheme: fails at once
    plain, verbose = (
        subprocess.run(
            [sys.executable, "-m", "catdog", *flags, "status"],
            env={**_clean_env(), **env},
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
        )
        for flags in ([], ["-v"])
    )
    assert plain.returncode == verbose.returncode == 1
    assert len(plain.stderr.strip().splitlines()) == 1 and "Traceback" not in plain.stderr
    assert "Traceback" in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1] == plain.stderr.strip()


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("CATDOG_")}


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            f"postgresql+psycopg://ops:{PASSWORD}@db:5432/catdog",
            "postgresql+psycopg://ops@db:5432/catdog",
        ),
        (f"redis://:{PASSWORD}@redis:6379/0", "redis://redis:6379/0"),
        (f"redis://:pa/ss@w{PASSWORD}@redis:6379/0", "redis://redis:6379/0"),
        (f"postgresql://ops@db/catdog?password={PASSWORD}", "postgresql://ops@db/catdog"),
        ("sqlite:///catdog.db", "sqlite:///catdog.db"),
    ],
)
def test_a_redacted_url_keeps_the_place_and_drops_the_password(url: str, shown: str) -> None:
    """Passwords go, also with a slash or an at sign in them, and query parameters go too."""
    assert redact_url(url) == shown


def test_errors_that_are_not_about_services_are_left_alone() -> None:
    """A bug stays a traceback: only connection and configuration failures become a line."""
    assert explain(KeyError("x"), None) is None
    assert explain(ZeroDivisionError(), None) is None


def test_scan_with_a_closed_postgresql_port_is_one_line(
    catdog: Callable[..., Result], photo_dir: Path
) -> None:
    """scan checks its database before the broker: the line names the database."""
    port = free_port()
    result = catdog(
        ["scan", str(photo_dir)],
        database_url=f"postgresql://ops:{PASSWORD}@127.0.0.1:{port}/labels",
        broker_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    assert f"127.0.0.1:{port}/labels" in one_line_error(result)
