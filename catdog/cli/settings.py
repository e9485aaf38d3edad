"""``catdog settings``: every ``CATDOG_*`` setting with its value, default and meaning."""

from __future__ import annotations

from pathlib import Path

import click
from pydantic import SecretStr

from catdog.cli.options import output_options
from catdog.ops.output import write_records
from catdog.settings import Settings, get_settings

#: Columns of ``catdog settings``.
COLUMNS = ("name", "value", "default", "description")
#: How a secret that holds a value is shown.
HIDDEN = "***"


def env_name(field: str) -> str:
    """The environment variable of a ``Settings`` field."""
    prefix = Settings.model_config.get("env_prefix") or ""
    return f"{prefix}{field}".upper()


def _plain(value: object, hide: bool) -> object:
    """A value as JSON can carry it; a secret with a value as ``HIDDEN``."""
    if isinstance(value, SecretStr):
        return HIDDEN if hide else value.get_secret_value()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v, hide) for v in value]
    return value


def setting_records(settings: Settings) -> list[dict[str, object]]:
    """One record per field of ``Settings``, in the class's order.

    Secrets set to a value show as ``***``; defaults are code, shown as they are.
    """
    records = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        records.append(
            {
                "name": env_name(name),
                "value": _plain(getattr(settings, name), hide=True),
                "default": _plain(default, hide=False),
                "description": field.description or "",
            }
        )
    return records


@click.command("settings")
@output_options()
def settings_cmd(fmt: str) -> None:
    """List every CATDOG_* setting: its value here, its default and what it does."""
    write_records(setting_records(get_settings()), COLUMNS, fmt)


def register(group: click.Group) -> None:
    """Add this module's commands to ``group``."""
    group.add_command(settings_cmd)
