"""What every command shares: exit codes, help text, the --format vocabulary, the settings."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from catdog.cli import main
from catdog.ops.output import FORMATS
from catdog.settings import Settings
from catdog.training.archs import ARCHS

ROOT = Path(__file__).resolve().parents[1]


def _walk(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from _walk(command, (*path, name))


#: Every command and subcommand, as the words a user types after ``catdog``.
COMMANDS = list(_walk(main))


def _command(path: tuple[str, ...]) -> click.Command:
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


@pytest.fixture
def run(env: Callable[..., None], sqlite_url: str) -> Callable[..., object]:
    """Invoke ``catdog ARGS`` on a fresh SQLite database, in embedded mode."""
    env(database_url=sqlite_url)

    def invoke(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, list(args))

    return invoke


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_and_option_has_help_text(path: tuple[str, ...]) -> None:
    """sqlite-utils' rule: nothing a user can type is undocumented in --help."""
    command = _command(path)
    assert command.help and command.help.strip()
    undocumented = [p.name for p in command.params if isinstance(p, click.Option) and not p.help]
    assert undocumented == []


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_an_unknown_option_is_a_usage_error_with_exit_code_2(path: tuple[str, ...]) -> None:
    """Every command, group or not, answers a bad command line with exit code 2."""
    result = CliRunner().invoke(main, [*path, "--no-such-option"])
    assert result.exit_code == 2, result.output
    assert "No such option" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["classify", "{tmp}/missing"],
        ["classify", "{tmp}", "--model", "{tmp}/missing.keras"],
        ["classify", "{tmp}", "--format", "xml"],
        ["scan", "{tmp}/missing"],
        ["train", "--data", "{tmp}/missing"],
        ["train", "--data", "{tmp}", "--arch", "resnet"],
        ["train", "--data", "{tmp}", "--widths", "32,wide"],
        ["train", "--data", "{tmp}", "--init", "{tmp}/missing.keras"],
        ["evaluate", "--data", "{tmp}", "--model", "{tmp}/missing.keras"],
        ["explore", "{tmp}/missing"],
        ["export", "--format", "xml"],
        ["status", "--limit", "0"],
        ["status", "1", "--watch", "--format", "csv"],
        ["settings", "--format", "xml"],
        ["models", "promote"],
    ],
    ids=lambda args: " ".join(args),
)
def test_bad_arguments_are_usage_errors_with_exit_code_2(
    run: Callable[..., object], tmp_path: Path, args: list[str]
) -> None:
    """A path that does not exist or a value out of the vocabulary: exit 2, before any work."""
    result = run(*(a.format(tmp=tmp_path) for a in args))
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    assert result.exception is None or isinstance(result.exception, SystemExit)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "args",
    [
        ["scan", "{tmp}"],
        ["worker"],
        ["retrain", "--data", "{tmp}"],
        ["flower"],
        ["status", "7"],
        ["models", "promote", "v-nope"],
        ["export", "--out", "{tmp}/no/such/folder/out.csv"],
    ],
    ids=lambda args: " ".join(args),
)
def test_runtime_failures_exit_1_with_a_message_not_a_traceback(
    run: Callable[..., object], tmp_path: Path, args: list[str]
) -> None:
    """No broker, no such run or version, an unwritable file: exit 1 and one line saying why."""
    result = run(*(a.format(tmp=tmp_path) for a in args))
    assert result.exit_code == 1, result.output  # type: ignore[attr-defined]
    assert isinstance(result.exception, SystemExit)  # type: ignore[attr-defined]
    assert result.output.startswith("Error: ")  # type: ignore[attr-defined]


def test_classify_without_any_model_is_a_runtime_failure(
    run: Callable[..., object], photo_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No bundled model and none registered: exit 1, and the message names the way out."""
    monkeypatch.setattr("catdog.db.registry.BUNDLED_MODEL", tmp_path / "absent.keras")
    result = run("classify", str(photo_dir))
    assert result.exit_code == 1 and "catdog train" in result.output  # type: ignore[attr-defined]


def test_unreadable_settings_fail_every_command_with_exit_1_naming_the_variable(
    env: Callable[..., None],
) -> None:
    """A bad CATDOG_* value is a runtime error that names the variable, not a traceback, and
    never echoes the value (it may be a password)."""
    env(batch_size="lots", broker_url="redis://user:hunter2@localhost:1/0")
    for args in (["status"], ["settings"], ["export"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, result.output
        assert "CATDOG_BATCH_SIZE" in result.output and "lots" not in result.output


def test_library_code_never_calls_sys_exit() -> None:
    """Only the command line decides exit codes; library modules raise."""
    offenders = []
    # followlinks: catdog/db, catdog/workers, ... are symlinks to the top-level folders.
    paths = [
        Path(folder) / name
        for folder, _, names in os.walk(ROOT / "catdog", followlinks=True)
        for name in names
        if name.endswith(".py")
    ]
    assert any(p.parts[-2] == "workers" for p in paths)
    for path in sorted(paths):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("catdog/cli/") or rel == "catdog/__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "exit"
                and isinstance(node.value, ast.Name)
                and node.value.id == "sys"
            ):
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []


@pytest.mark.parametrize(
    "path",
    [("classify",), ("export",), ("status",), ("settings",), ("models", "list")],
    ids=" ".join,
)
def test_every_command_that_prints_rows_offers_every_output_format(path: tuple[str, ...]) -> None:
    """One --format vocabulary: the table of writers, the same on each command."""
    (fmt,) = [p for p in _command(path).params if p.name == "fmt"]
    assert isinstance(fmt.type, click.Choice)
    assert tuple(fmt.type.choices) == FORMATS


def test_arch_choices_and_help_come_from_the_table_without_keras() -> None:
    """--arch lists the architecture table with its descriptions; importing the CLI (and so
    --help) loads no Keras."""
    for path in (("train",), ("retrain",)):
        (arch,) = [p for p in _command(path).params if p.name == "arch"]
        assert isinstance(arch.type, click.Choice) and list(arch.type.choices) == list(ARCHS)
        assert all(a.description in (arch.help or "") for a in ARCHS.values())
    code = "import catdog.cli, sys; print('keras' in sys.modules, 'tensorflow' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["False", "False"]


def _readme_settings() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `CATDOG_")]
    return {name for row in rows for name in re.findall(r"`(CATDOG_[A-Z0-9_]+)`", row)}


def test_the_readme_settings_table_lists_exactly_the_settings_class() -> None:
    """Every CATDOG_* field of Settings has a README row, and the README names no other."""
    fields = {f"CATDOG_{name.upper()}" for name in Settings.model_fields}
    readme = _readme_settings()
    assert sorted(fields - readme) == [], "settings missing from the README table"
    assert sorted(readme - fields) == [], "README rows for settings the class does not have"


def test_every_setting_has_a_description() -> None:
    """catdog settings shows each field's description: none may be empty."""
    assert [n for n, f in Settings.model_fields.items() if not f.description] == []


def test_settings_lists_every_variable_with_default_and_hides_set_secrets(
    env: Callable[..., None], tmp_path: Path
) -> None:
    """--format json: one object per field; a secret that is set shows as ***."""
    env(
        broker_url="redis://user:hunter2@localhost:6379/0",
        batch_size="32",
        store_roots=f"{tmp_path}/a:{tmp_path}/b",
    )
    result = CliRunner().invoke(main, ["settings", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert set(rows) == {f"CATDOG_{n.upper()}" for n in Settings.model_fields}
    assert rows["CATDOG_BROKER_URL"]["value"] == "***"
    assert rows["CATDOG_BROKER_URL"]["default"] is None
    assert rows["CATDOG_FLOWER_BASIC_AUTH"]["value"] is None  # unset secrets stay null
    assert (rows["CATDOG_BATCH_SIZE"]["value"], rows["CATDOG_BATCH_SIZE"]["default"]) == (32, 256)
    assert rows["CATDOG_STORE_ROOTS"]["value"] == [f"{tmp_path}/a", f"{tmp_path}/b"]
    assert (
        rows["CATDOG_BATCH_SIZE"]["description"] == Settings.model_fields["batch_size"].description
    )
    table = CliRunner().invoke(main, ["settings"]).output
    assert "CATDOG_VISIBILITY_TIMEOUT" in table and "hunter2" not in table
