"""Every command a user can type is documented in the README (sqlite-utils' rule)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from catdog.cli import main

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _commands(group: click.Group, prefix: str = "catdog") -> list[str]:
    out = []
    for name, cmd in group.commands.items():
        full = f"{prefix} {name}"
        out.append(full)
        if isinstance(cmd, click.Group):
            out.extend(_commands(cmd, full))
    return out


@pytest.mark.parametrize("command", _commands(main))
def test_every_command_is_documented_in_the_readme(command: str):
    """The README mentions each command and subcommand by its full name."""
    assert command in README


def test_readme_names_the_test_command_that_ci_runs():
    """The README's test command is the one .ci/run calls."""
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "bash tests/run.sh" in README and "bash tests/run.sh" in ci
