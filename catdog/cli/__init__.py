"""The ``catdog`` command: a thin layer over the packages.

Each group of commands lives in its own module and registers itself here; heavy imports
(TensorFlow above all) happen inside the commands, so ``catdog --help`` stays instant and no
process that forks has TensorFlow loaded.

Exit codes are click's, the same for every command: 2 for a usage error (``UsageError``,
``BadParameter``), 1 for a failure while running (``ClickException``). Library code raises
its own exceptions; only this package turns them into exits.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import traceback
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from pydantic import ValidationError

from catdog import __version__
from catdog.cli.errors import explain
from catdog.quiet import quiet_tensorflow_import
from catdog.settings import SecretFileError, Settings, get_settings

# TensorFlow's start-up chatter is noise on a command line; real errors still show.
quiet_tensorflow_import()


class CatdogGroup(click.Group):
    """The ``catdog`` group: settings that cannot be read, and services that cannot be
    reached, fail any command with one line on stderr and exit 1 (``-v`` adds the traceback).
    """

    def invoke(self, ctx: click.Context) -> object:
        from pydantic import ValidationError

        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except SecretFileError as exc:
            raise click.ClickException(str(exc)) from exc
        except ValidationError as exc:
            if exc.title != "Settings":
                raise
            raise click.ClickException(settings_error(exc)) from exc
        except Exception as exc:
            line = explain(exc, _settings_or_none())
            if line is None:
                raise
            if ctx.params.get("verbose"):
                traceback.print_exception(exc, file=sys.stderr)
            raise click.ClickException(line) from exc


def _settings_or_none() -> Settings | None:
    """The settings, to name a service in an error; None when they cannot be read either."""
    try:
        return get_settings()
    except Exception:  # noqa: BLE001 - the error being reported matters more
        return None


def settings_error(exc: ValidationError) -> str:
    """Which ``CATDOG_*`` variables are wrong and why, without echoing their values."""
    from catdog.cli.settings import env_name

    wrong = [
        f"{env_name(str(e['loc'][0])) if e['loc'] else 'settings'}: {e['msg']}"
        for e in exc.errors(include_input=False, include_url=False)
    ]
    return "invalid settings: " + "; ".join(wrong)


@click.group(cls=CatdogGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="catdog")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """Label huge image archives with a CNN: producer -> Redis -> workers -> SQL."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _register() -> None:
    from catdog.cli import ops, pipeline, review, settings, training

    for module in (pipeline, training, ops, settings, review):
        module.register(main)
    # Label Studio's push/pull attach themselves to the review group when present.
    if importlib.util.find_spec("catdog.cli.review_studio") is not None:
        importlib.import_module("catdog.cli.review_studio")


_register()
