"""Operations commands: ``flower``, ``metrics`` and ``report``."""

from __future__ import annotations

import ipaddress
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


def register(group: click.Group) -> None:
    """Add this module's commands to ``group``."""
    for command in (flower, metrics, report):
        group.add_command(command)


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # a host name or "" (every interface)
        return False


def flower_argv(settings: Settings, port: int, address: str) -> list[str]:
    """The ``celery flower`` arguments for ``settings``; refuses an open or placeholder login.

    Off the loopback interface Flower can revoke tasks and shut workers down, so it needs
    ``CATDOG_FLOWER_BASIC_AUTH`` with real passwords there.
    """
    argv = [
        "flower",
        f"--port={port}",
        f"--address={address}",
        f"--purge_offline_workers={FLOWER_PURGE_OFFLINE_S}",
    ]
    auth = settings.flower_basic_auth.get_secret_value() if settings.flower_basic_auth else ""
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
def flower(port: int, address: str) -> None:
    """Start Flower for the catdog workers (task events on, Prometheus at /metrics)."""
    settings = get_settings()
    if settings.embedded:
        raise click.ClickException("Flower watches a broker: set CATDOG_BROKER_URL")
    argv = flower_argv(settings, port, address)
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
