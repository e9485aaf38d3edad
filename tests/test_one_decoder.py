"""Serving, evaluation and training see the same pixels: one decoder, EXIF orientation applied.

The model here tells left from right, so a photo stored sideways with an EXIF orientation
tag gets its upright twin's probabilities only where the tag is honoured.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import create_engine, select

from catdog.cli import main
from catdog.db.models import Image as ImageRow
from catdog.db.models import Prediction
from catdog.images import EXIF_ORIENTATION
from catdog.training.datasets import discover, make_pipeline
from catdog.training.evaluate import load_model, predict

#: The model's input side; the photos are larger, so every path resizes (JPEGs via draft).
SIDE = 32
#: Agreement asked of every path (the database keeps probabilities to 6 digits).
ATOL = 1e-5
#: EXIF orientation 6: the stored picture must turn 90 degrees clockwise to stand upright.
CLOCKWISE = 6


def build_left_right_model(path: Path) -> Path:
    """A fixed-weight model: red on the left half says 'cat', red on the right says 'dog'."""
    import keras

    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs)
    weights = np.zeros((SIDE, SIDE, 3, 2), np.float32)
    weights[:, : SIDE // 2, 0] = [1.0, -1.0]
    weights[:, SIDE // 2 :, 0] = [-1.0, 1.0]
    scale = 8.0 / (SIDE * SIDE / 2)  # a full-red half moves the logit by 8
    model.get_layer("head").set_weights([weights.reshape(-1, 2) * scale, np.zeros(2, np.float32)])
    model.save(path)
    meta = {"arch": "tiny", "classes": ["cat", "dog"], "input_size": [SIDE, SIDE], "metrics": {}}
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path


def photo(side: str, seed: int) -> Image.Image:
    """A 96x64 noisy picture with a red blob on its ``side`` ('left' or 'right')."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(40, 120, (64, 96, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:64, :96]
    cx = 20 + seed % 5 if side == "left" else 76 - seed % 5
    blob = (yy - 32) ** 2 + (xx - cx) ** 2 <= 14**2
    pixels[blob] = (230, 30, 30)
    return Image.fromarray(pixels)


def save_sideways(img: Image.Image, path: Path) -> None:
    """Store ``img`` turned a quarter to the left, with the tag that says how to undo it."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = CLOCKWISE
    img.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Class folders of upright photos and their sideways-with-EXIF twins, PNG and JPEG."""
    root = tmp_path_factory.mktemp("one_decoder") / "data"
    for label, side in (("cat", "left"), ("dog", "right")):
        (root / label).mkdir(parents=True)
        for n in range(3):
            img = photo(side, seed=n + (10 if label == "dog" else 0))
            for ext in ("png", "jpg"):
                img.save(root / label / f"{label}{n}-upright.{ext}")
                save_sideways(img, root / label / f"{label}{n}-sideways.{ext}")
    return root


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The left/right model, saved with its sidecar."""
    return build_left_right_model(tmp_path_factory.mktemp("model") / "leftright.keras")


@pytest.fixture(scope="module")
def served(
    photos: Path, model_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, np.ndarray]:
    """Probabilities per file name from ``catdog classify --format jsonl``, read back from
    the database it wrote."""
    tmp = tmp_path_factory.mktemp("classify")
    url = f"sqlite:///{tmp / 'catdog.db'}"
    env = {"CATDOG_DATABASE_URL": url, "CATDOG_CACHE_DIR": str(tmp / "cache")}
    from catdog.settings import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner(env=env).invoke(
            main, ["classify", str(photos), "--model", str(model_file), "--format", "jsonl"]
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    rows = {Path(r["path"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert len(rows) == 24 and not any("error" in r for r in rows.values())
    with create_engine(url).connect() as conn:
        stored = conn.execute(
            select(ImageRow.path, Prediction.probabilities).join(
                Prediction, Prediction.image_id == ImageRow.id
            )
        ).all()
    probs = {Path(path).name: np.array([p["cat"], p["dog"]]) for path, p in stored}
    for name, row in rows.items():
        assert row["confidence"] == pytest.approx(probs[name].max(), abs=1e-4)
    return probs


def test_a_sideways_photo_with_its_exif_tag_is_served_as_its_upright_twin(
    served: dict[str, np.ndarray],
) -> None:
    """Workers turn the photo upright: same probabilities as the upright file, right label."""
    for label, n in ((label, n) for label in ("cat", "dog") for n in range(3)):
        upright = served[f"{label}{n}-upright.png"]
        assert upright.argmax() == ("cat", "dog").index(label)
        np.testing.assert_allclose(served[f"{label}{n}-sideways.png"], upright, atol=ATOL)
        # JPEG compresses the turned picture a little differently: close, not identical.
        np.testing.assert_allclose(served[f"{label}{n}-sideways.jpg"], upright, atol=0.05)


def test_evaluate_predicts_what_classify_serves(
    photos: Path, model_file: Path, served: dict[str, np.ndarray]
) -> None:
    """``predict`` (behind ``catdog evaluate``) gives every file the served probabilities."""
    images = discover(photos)
    y, probs, kept = predict(load_model(model_file), images.files(), images.labels, (SIDE, SIDE))
    assert list(kept) == list(range(24))
    assert list(y) == list(images.labels)
    for i, p in zip(kept, probs, strict=True):
        np.testing.assert_allclose(p, served[Path(images.paths[i]).name], atol=ATOL)


def test_catdog_evaluate_scores_the_served_probabilities(
    photos: Path, model_file: Path, served: dict[str, np.ndarray]
) -> None:
    """``catdog evaluate --format json`` reports the log loss of the served probabilities."""
    result = CliRunner().invoke(
        main, ["evaluate", "--data", str(photos), "--model", str(model_file), "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    truth = [(name, ("cat", "dog").index(name[:3])) for name in served]
    expected = -np.mean([np.log(served[name][k]) for name, k in truth])
    assert metrics["n"] == 24 and metrics["unreadable"] == 0 and metrics["accuracy"] == 1.0
    assert metrics["log_loss"] == pytest.approx(expected, abs=ATOL)


def test_training_validation_batches_carry_the_served_pixels(
    photos: Path, model_file: Path, served: dict[str, np.ndarray]
) -> None:
    """The training pipeline's batches, fed to the model, give the served probabilities."""
    model = load_model(model_file)
    images = discover(photos)
    ds = make_pipeline(images.files(), images.labels, (SIDE, SIDE), 5, with_index=True)
    seen = 0
    for x, _, index in ds:
        for i, p in zip(index.numpy(), np.asarray(model(x, training=False)), strict=True):
            np.testing.assert_allclose(p, served[Path(images.paths[i]).name], atol=ATOL)
            seen += 1
    assert seen == 24
