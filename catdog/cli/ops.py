"""Operations commands: ``flower``, ``metrics``, ``report`` and ``health``."""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path

import click

from catdog.cli.options import threshold_option
from catdog.settings import Settings, get_settings

#: Flower's usual port.
FLOWER_PORT = 5555
#: Milliseconds between saves of Flower's state file (it also saves at shutdown).
FLOWER_SAVE_INTERVAL_MS = 60_000
#: Offline workers leave Flower after this long; every container restart is a new worker.
FLOWER_PURGE_OFFLINE_S = 24 * 3600
#: Passwords that only ever appear in examples (``.env.example``).
PLACEHOLDER_PASSWORDS = frozenset({"", "change-me", "changeme", "password", "admin"})
#: User of a generated Flower login (``catdog flower --login-file``).
GENERATED_USER = "admin"
#: Random bytes in a generated Flower password (32 URL-safe characters).
GENERATED_PASSWORD_BYTES = 24
#: ``catdog health --max-age`` when not given: several missed beats of a worker's heartbeat
#: (catdog.workers.health.HEALTHY_AGE_S; not imported, so ``catdog --help`` stays light).
HEALTHY_AGE_S = 30.0


def register(group: click.Group) -> None:
    """Add this module's commands to ``group``."""
    for command in (flower, metrics, report, health):
        group.add_command(command)


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # a host name or "" (every interface)
        return False


def check_basic_auth(auth: str) -> None:
    """Refuse a login list Flower would accept and then answer 401 to, never echoing it.

    Flower splits ``user:password,user:password`` on commas and compares whole entries, so
    an entry without a colon, user or password can never log in.
    """
    entries = auth.split(",")
    for n, credential in enumerate(entries, 1):
        user, colon, password = credential.partition(":")
        problem = (
            "has no colon"
            if not colon
            else "has an empty user"
            if not user.strip()
            else "has an empty password"
            if not password
            else None
        )
        if problem is not None:
            which = f"entry {n} of {len(entries)}" if len(entries) > 1 else "the login"
            raise click.ClickException(
                f"CATDOG_FLOWER_BASIC_AUTH: {which} {problem}; expected user:password"
                "[,user:password...]"
            )


def generated_login(path: Path) -> str:
    """The login kept in ``path``; on first use, a new one with a random password.

    The password is never printed: the operator reads the file (mode 600).
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        login = f"{GENERATED_USER}:{secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(login + "\n")
        click.echo(
            f"CATDOG_FLOWER_BASIC_AUTH is not set: generated a login for user "
            f"{GENERATED_USER!r}, password in {path}",
            err=True,
        )
    return path.read_text(encoding="utf-8").strip()


def flower_argv(
    settings: Settings, port: int, address: str, login_file: Path | None = None
) -> list[str]:
    """The ``celery flower`` arguments for ``settings``; refuses an open or placeholder login.

    Off the loopback interface Flower can revoke tasks and shut workers down, so it needs
    ``CATDOG_FLOWER_BASIC_AUTH`` with real passwords there, or ``login_file``, where a login
    with a random password is generated when that variable is unset.
    """
    argv = [
        "flower",
        f"--port={port}",
        f"--address={address}",
        f"--purge_offline_workers={FLOWER_PURGE_OFFLINE_S}",
    ]
    auth = settings.flower_basic_auth.get_secret_value() if settings.flower_basic_auth else ""
    if not auth and login_file is not None:
        auth = generated_login(login_file)
    if auth:
        check_basic_auth(auth)
    if not _is_loopback(address):
        if not auth:
            raise click.ClickException(
                f"Flower on {address or 'every interface'} needs a login: "
                "set CATDOG_FLOWER_BASIC_AUTH=user:password"
            )
        for credential in auth.split(","):
            _, _, password = credential.partition(":")
            if password.strip().lower() in PLACEHOLDER_PASSWORDS:
                raise click.ClickException(
                    "CATDOG_FLOWER_BASIC_AUTH still holds a placeholder password"
                )
    if auth:
        argv.append(f"--basic_auth={auth}")
    if settings.flower_db is not None:
        settings.flower_db.parent.mkdir(parents=True, exist_ok=True)
        argv += [
            "--persistent=True",
            f"--db={settings.flower_db}",
            f"--state_save_interval={FLOWER_SAVE_INTERVAL_MS}",
        ]
    return argv


@click.command()
@click.option("--port", default=FLOWER_PORT, show_default=True, help="HTTP port.")
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on (0.0.0.0 in a container; needs CATDOG_FLOWER_BASIC_AUTH).",
)
@click.option(
    "--login-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Without CATDOG_FLOWER_BASIC_AUTH: the login kept in this file, generated with a "
    "random password on first start.",
)
def flower(port: int, address: str, login_file: Path | None) -> None:
    """Start Flower for the catdog workers (task events on, Prometheus at /metrics)."""
    settings = get_settings()
    if settings.embedded:
        raise click.ClickException("Flower watches a broker: set CATDOG_BROKER_URL")
    argv = flower_argv(settings, port, address, login_file)
    from catdog.broker import make_celery

    # In-process rather than exec: the password never shows in the process list.
    make_celery(settings).start(argv)


@click.command()
@click.option("--port", default=None, type=int, help="HTTP port [default: 9808].")
@click.option("--address", default="127.0.0.1", show_default=True, help="Interface.")
def metrics(port: int | None, address: str) -> None:
    """Serve catdog's Prometheus metrics at /metrics (runs, queues, worker throughput)."""
    from catdog.db.engine import engine_for, session_factory
    from catdog.ops.exporter import DEFAULT_PORT, make_registry, make_server

    settings = get_settings()
    registry = make_registry(session_factory(engine_for(settings.database())), settings)
    server = make_server(address, DEFAULT_PORT if port is None else port, registry)
    click.echo(f"catdog metrics on http://{address}:{server.server_port}/metrics", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@click.command()
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write index.html and its images into.",
)
@threshold_option
def report(out_dir: Path, threshold: float | None) -> None:
    """Write an HTML results report: counts, confidence histogram, doubtful images, failures."""
    from catdog.cli.pipeline import read_only_sessions
    from catdog.ops.report import write_report

    settings = get_settings()
    with read_only_sessions(settings)() as session:
        summary = write_report(
            session,
            out_dir,
            settings.store_roots,
            settings.max_file_bytes,
            settings.max_image_pixels,
            settings.confidence_threshold if threshold is None else threshold,
        )
    click.echo(
        f"{summary.total} images ({summary.labeled} labeled, {summary.failed} failed): "
        f"{out_dir / 'index.html'}"
    )


@click.command()
@click.option(
    "--max-age",
    type=click.FloatRange(min=0, min_open=True),
    default=HEALTHY_AGE_S,
    show_default=True,
    help="Seconds since the worker's last heartbeat that still count as healthy.",
)
def health(max_age: float) -> None:
    """Exit 0 if the worker on this host beat recently (its broker and database answer).

    A container health check: it reads CATDOG_HEARTBEAT_FILE, which the worker touches every
    few seconds from a thread of its own, so a worker busy with a long batch or a training
    job stays healthy, and one that lost its broker or database does not.
    """
    from catdog.workers.health import heartbeat_age

    path = get_settings().heartbeat_file
    age = heartbeat_age(path)
    if age is None:
        raise click.ClickException(f"unhealthy: no heartbeat file {path} (no worker here)")
    if age > max_age:
        raise click.ClickException(
            f"unhealthy: last heartbeat {age:.0f} s ago (limit {max_age:g} s): the worker "
            "is gone or cannot reach its broker or database"
        )
    click.echo(f"healthy: last heartbeat {age:.0f} s ago")
