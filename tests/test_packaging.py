"""What an install gets: one top-level name, pinned dependencies, clean CPU and GPU images."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "requirements"


#: The platform every lock file is resolved for (requirements/compile.sh).
LOCK_PLATFORM = {"platform_machine": "x86_64", "sys_platform": "linux", "python_version": "3.11"}


def _name(requirement: str) -> str:
    """The normalised project name of a requirement string."""
    return canonicalize_name(Requirement(requirement).name)


def _names(requirements: list[str]) -> list[str]:
    """Names of the requirements that apply on the locked platform."""
    reqs = [Requirement(r) for r in requirements]
    return [_name(str(r)) for r in reqs if r.marker is None or r.marker.evaluate(LOCK_PLATFORM)]


def _pinned(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        if line and not line.startswith((" ", "#", "-")):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name.split("[")[0])] = version.strip()
    return pins


@pytest.mark.slow
def test_the_wheel_installs_exactly_one_top_level_name(tmp_path: Path) -> None:
    """db, workers, producer and training ship inside catdog, with migrations and the model."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("catdog-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"catdog"}
    for expected in (
        "catdog/db/models.py",
        "catdog/db/migrations/env.py",
        "catdog/workers/tasks.py",
        "catdog/producer/scan.py",
        "catdog/training/tasks.py",
        "catdog/models/default.keras",
    ):
        assert expected in names


def test_every_lock_file_pins_the_dependencies_of_its_install() -> None:
    """Each lock pins every direct dependency of its extras, and none pulls in torch."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = _names(project["dependencies"])
    extras = {k: _names(v) for k, v in project["optional-dependencies"].items()}
    wanted = {
        "base.lock": base,
        "train.lock": base + extras["train"],
        "gpu.lock": base + extras["gpu"],
        "dev.lock": base + extras["train"] + extras["dev"],
    }
    for lock, names in wanted.items():
        pins = _pinned(LOCKS / lock)
        missing = sorted(set(names) - set(pins))
        assert not missing, f"{lock} lacks {missing}"
        assert "torch" not in pins, f"{lock} pulls in torch"
    assert not {"tensorflow", "tensorflow-cpu", "keras"} & set(_pinned(LOCKS / "base.lock"))
    assert "tensorflow-cpu" not in _pinned(LOCKS / "gpu.lock")


def test_the_dockerfiles_install_from_the_lock_files_with_the_engines_own_frontend() -> None:
    """No remote BuildKit frontend, no uninstall-and-force-reinstall of TensorFlow builds."""
    for dockerfile, lock in (("Dockerfile", "train.lock"), ("Dockerfile.gpu", "gpu.lock")):
        text = (ROOT / "docker" / dockerfile).read_text()
        assert f"pip install -r requirements/{lock}" in text
        assert "# syntax=" not in text
        assert "uninstall" not in text and "--force-reinstall" not in text
