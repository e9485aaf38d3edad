"""Models are converted to ``.tflite`` once, beside the ``.keras`` file, and CPU processes
(``catdog classify``, inference workers) run them on LiteRT without importing TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from catdog.cli import main
from catdog.db import registry
from catdog.db.engine import engine_for, session_factory
from catdog.db.migrate import upgrade
from catdog.settings import BUNDLED_MODEL, Settings
from catdog.training import tflite
from catdog.workers.runtime import TFLiteRunner
from helpers import build_tiny_model, make_image

pytest_plugins = ["training_fixtures"]

#: Top-level modules a CPU inference process must never load.
HEAVY = ("tensorflow", "keras")

#: Run in a child process: whatever the given code imported, print the heavy modules loaded.
_REPORT_HEAVY = textwrap.dedent(
    """
    import json, sys
    def _report():
        heavy = sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras"})
        print("HEAVY=" + json.dumps(heavy), file=sys.stderr, flush=True)
    """
)


def _keras_probabilities(model_file: Path, pixels: np.ndarray) -> np.ndarray:
    from catdog.training.evaluate import load_model

    return np.asarray(load_model(model_file)(pixels.astype(np.float32), training=False))


def _heavy_modules(stderr: str) -> list[str]:
    lines = [line for line in stderr.splitlines() if line.startswith("HEAVY=")]
    assert lines, stderr
    return list(json.loads(lines[-1].removeprefix("HEAVY=")))


@pytest.fixture
def converted(tmp_path: Path) -> Path:
    """A tiny model with its ``.tflite`` beside it."""
    model = build_tiny_model(tmp_path / "model" / "tiny.keras")
    tflite.export_tflite(model)
    return model


def test_the_converter_writes_a_tflite_beside_the_model_that_matches_keras(converted):
    """``tiny.keras`` gets ``tiny.tflite``; LiteRT's probabilities are Keras' to 1e-4."""
    lite = converted.with_suffix(".tflite")
    assert lite.is_file()
    pixels = np.random.default_rng(3).integers(0, 255, (20, 32, 32, 3), dtype=np.uint8)
    got = TFLiteRunner(lite, (32, 32))(pixels)
    np.testing.assert_allclose(got, _keras_probabilities(converted, pixels), atol=1e-4)


def test_a_model_trained_in_mixed_precision_converts_to_float32(tmp_path):
    """GPU training leaves float16 layers, which TFLite's kernels lack: the file is
    converted from a float32 copy and still matches Keras."""
    import keras

    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_tiny_model(tmp_path / "mixed.keras")
    finally:
        keras.mixed_precision.set_global_policy(policy)
    lite = tflite.export_tflite(model)
    pixels = np.random.default_rng(4).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    got = TFLiteRunner(lite, (32, 32))(pixels)
    np.testing.assert_allclose(got, _keras_probabilities(model, pixels), atol=1e-3)


def test_a_failed_conversion_writes_nothing_and_removes_a_stale_tflite(converted, monkeypatch):
    """When the model changed and no longer converts, its old ``.tflite`` is not left for
    workers to run."""
    lite = converted.with_suffix(".tflite")
    os.utime(lite, (1, 1))  # older than the .keras file: from an earlier model

    def broken(_model: object) -> bytes:
        raise RuntimeError("converter failed\nwith pages of MLIR")

    monkeypatch.setattr(tflite, "convert", broken)
    with pytest.raises(tflite.ConversionError, match="converter failed$"):
        tflite.export_tflite(converted)
    assert not lite.exists()


def test_ensure_tflite_converts_only_when_the_file_is_missing_or_older(converted, monkeypatch):
    """A ``.tflite`` newer than its ``.keras`` file is kept; a missing one is written."""
    lite = converted.with_suffix(".tflite")
    written = lite.stat().st_mtime_ns
    assert tflite.ensure_tflite(converted) == lite and lite.stat().st_mtime_ns == written
    lite.unlink()
    assert tflite.ensure_tflite(converted) == lite and lite.is_file()


def test_the_registry_copies_the_tflite_beside_the_registered_model(
    converted, sqlite_url, tmp_path
):
    """A registered version's folder holds its ``.keras``, ``.json`` and ``.tflite``."""
    engine = engine_for(sqlite_url)
    upgrade(engine)
    with session_factory(engine)() as session:
        row = registry.register(session, converted, tmp_path / "registry")
        session.commit()
    stored = Path(row.file)
    assert stored.parent == tmp_path / "registry"
    assert (
        registry.tflite_path(stored).read_bytes() == converted.with_suffix(".tflite").read_bytes()
    )


def test_the_training_task_registers_a_version_with_its_tflite(
    blob_data, tmp_path, sqlite_url, monkeypatch
):
    """Training writes ``model.tflite`` beside ``model.keras``; the registered copy has it."""
    from catdog.training.tasks import run_training

    monkeypatch.setattr(registry, "BUNDLED_MODEL", tmp_path / "no-bundled-model.keras")
    settings = Settings(database_url=sqlite_url, models_dir=tmp_path / "models")
    result = run_training(blob_data, "tiny", epochs=1, settings=settings)
    run_dir = tmp_path / "models" / "runs" / f"run-{result['run_id']}"
    assert (run_dir / "model.tflite").is_file()
    with session_factory(engine_for(sqlite_url))() as session:
        row = registry.production(session)
        assert row is not None and row.version == result["version"]
        assert registry.tflite_path(Path(row.file)).is_file()


def test_the_bundled_model_ships_a_tflite_that_matches_it():
    """``default.tflite`` was converted from this ``default.keras`` (not an older one)."""
    lite = registry.tflite_path(BUNDLED_MODEL)
    size = tuple(registry.read_metadata(BUNDLED_MODEL)["input_size"])
    pixels = np.random.default_rng(5).integers(0, 255, (4, *size, 3), dtype=np.uint8)
    got = TFLiteRunner(lite, size)(pixels)  # type: ignore[arg-type]
    np.testing.assert_allclose(got, _keras_probabilities(BUNDLED_MODEL, pixels), atol=1e-4)


def test_models_convert_writes_the_tflite_beside_the_file(tmp_path):
    """``catdog models convert FILE`` is the fix the CPU runtime's messages point to."""
    model = build_tiny_model(tmp_path / "m.keras")
    result = CliRunner().invoke(main, ["models", "convert", str(model)])
    assert result.exit_code == 0, result.output
    assert model.with_suffix(".tflite").is_file()


def test_classify_in_a_fresh_process_never_imports_tensorflow(converted, tmp_path):
    """``catdog classify`` labels images on LiteRT and ends with no TensorFlow or Keras
    module loaded."""
    for i, kind in enumerate(("cat", "dog", "cat")):
        make_image(tmp_path / "photos" / f"{kind}{i}.jpg", kind, seed=i)
    code = _REPORT_HEAVY + textwrap.dedent(
        """
        from catdog.cli import main
        try:
            main(sys.argv[1:], standalone_mode=False)
        finally:
            _report()
        """
    )
    args = ["classify", str(tmp_path / "photos"), "--model", str(converted), "--format", "jsonl"]
    env = {**os.environ, "CATDOG_DATABASE_URL": f"sqlite:///{tmp_path / 'classify.db'}"}
    env.pop("CATDOG_RUNTIME", None)
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    rows = {Path(r["path"]).name: r["label"] for r in map(json.loads, out.stdout.splitlines())}
    assert rows == {"cat0.jpg": "cat", "dog1.jpg": "dog", "cat2.jpg": "cat"}
    assert _heavy_modules(out.stderr) == []


def test_an_inference_worker_loads_and_runs_its_model_without_tensorflow(converted, tmp_path):
    """The worker's task module, its context and the model it loads stay TensorFlow-free."""
    code = _REPORT_HEAVY + textwrap.dedent(
        """
        import numpy as np
        try:
            from catdog.db.migrate import upgrade
            from catdog.workers import tasks
            ctx = tasks.context()
            upgrade(ctx.engine)
            with ctx.sessions.begin() as session:
                model = ctx.current_model(session)
            probs = model.predict(np.zeros((3, *model.input_size, 3), np.uint8))
            print(model.runtime, probs.shape)
        finally:
            _report()
        """
    )
    env = {
        **os.environ,
        "CATDOG_DATABASE_URL": f"sqlite:///{tmp_path / 'worker.db'}",
        "CATDOG_MODEL": str(converted),
    }
    env.pop("CATDOG_RUNTIME", None)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["tflite", "(3,", "2)"]
    assert _heavy_modules(out.stderr) == []
