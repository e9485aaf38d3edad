"""Options that several commands share, so they read and behave the same everywhere."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from catdog.ops.output import FORMATS

F = TypeVar("F", bound=Callable[..., object])


def output_options(default: str = "table") -> Callable[[F], F]:
    """``--format``, for every command that prints rows: one vocabulary (``FORMATS``), one
    help text; the command receives it as ``fmt``."""
    if default not in FORMATS:
        raise ValueError(f"default format {default!r} is not one of {', '.join(FORMATS)}")

    def decorate(command: F) -> F:
        return click.option(
            "--format",
            "fmt",
            type=click.Choice(FORMATS),
            default=default,
            show_default=True,
            help="How to print the rows (jsonl: one JSON object a line; json: one array).",
        )(command)

    return decorate
