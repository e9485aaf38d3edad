"""The ``catdog`` command: a thin layer over the packages.

Each group of commands lives in its own module and registers itself here; heavy imports
(TensorFlow above all) happen inside the commands, so ``catdog --help`` stays instant and no
process that forks has TensorFlow loaded.
"""

from __future__ import annotations

import logging

import click

from catdog import __version__
from catdog.quiet import quiet_tensorflow_import

# TensorFlow's start-up chatter is noise on a command line; real errors still show.
quiet_tensorflow_import()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="catdog")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """Label huge image archives with a CNN: producer -> Redis -> workers -> SQL."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _register() -> None:
    from catdog.cli import ops, pipeline, training

    for module in (pipeline, training, ops):
        module.register(main)


_register()
