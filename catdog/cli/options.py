"""Options that several commands share, so they read and behave the same everywhere."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import click

from catdog.ops.output import FORMATS

if TYPE_CHECKING:
    from catdog.stores import Store

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


def _not_nan(_ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    # FloatRange lets NaN through (every comparison with it is false); a NaN threshold
    # would silently mark nothing uncertain.
    if value is not None and math.isnan(value):
        raise click.BadParameter("is not a number in the range 0<=x<=1", param=param)
    return value


def threshold_option(command: F) -> F:
    """``--threshold``, for every command that prints labels: applied to the stored model
    confidence when rows are written (default ``CATDOG_CONFIDENCE_THRESHOLD``); the command
    receives it as ``threshold``."""
    return click.option(
        "--threshold",
        type=click.FloatRange(0.0, 1.0),
        default=None,
        callback=_not_nan,
        help="Print 'uncertain' for labels below this confidence, 0 to 1 "
        "[default: CATDOG_CONFIDENCE_THRESHOLD, else none]. Applied when rows are printed: "
        "stored labels keep the model's answer.",
    )(command)


class StoreRootType(click.ParamType):
    """A store root on the command line: a local path that exists, or a store URL."""

    name = "PATH|URL"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> str:
        from catdog.stores import is_url

        text = str(value)
        if is_url(text):
            return text.rstrip("/")
        if not os.path.lexists(text):
            self.fail(f"path {text!r} does not exist.", param, ctx)
        return text


#: A store root argument (``catdog classify``, ``catdog scan``).
STORE_ROOT = StoreRootType()


def open_scan_store(root: str, allowed_roots: list[str]) -> Store:
    """The store to walk for ``root``, or a one-line error (missing s3fs, credentials in it)."""
    from catdog.stores import scan_store

    try:
        return scan_store(root, allowed_roots)
    except ImportError as exc:
        scheme = root.split("://", 1)[0]
        extra = {"s3": "s3", "gs": "gcs", "gcs": "gcs"}.get(scheme)
        hint = f": pip install 'catdog[{extra}]'" if extra else ""
        raise click.ClickException(f"{scheme}:// stores need {exc.name or exc}{hint}") from exc
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
