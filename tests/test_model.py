"""``make_model`` and ``save_model``: the model contract every other part relies on."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from catdog.db.registry import read_metadata
from catdog.training.model import make_model, save_model


@pytest.mark.parametrize("arch,size", [("tiny", 32), ("scratch", 64)])
def test_every_arch_maps_raw_pixels_to_softmax_probabilities(arch: str, size: int) -> None:
    """Each architecture takes 0..255 images and returns rows of probabilities summing to 1."""
    model = make_model(arch, (size, size, 3), 2, weights=None)
    images = np.random.default_rng(0).uniform(0, 255, (3, size, size, 3)).astype("float32")
    probs = np.asarray(model(images, training=False))
    assert probs.shape == (3, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("arch", ["lite0", "lite1", "lite2"])
def test_the_lite_archs_put_a_softmax_head_on_the_named_backbone(
    arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each Lite arch wraps ``efficientnet_lite.build`` of its own variant (stubbed here:
    tests/test_lite0.py covers the real ones)."""
    from catdog.training import efficientnet_lite

    built: list[str] = []

    def small_backbone(
        variant: str,
        input_shape: tuple[int, int, int],
        include_top: bool = False,
        pooling: str = "avg",
    ) -> keras.Model:
        built.append(variant)
        inputs = keras.Input(input_shape)
        return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))

    monkeypatch.setattr(efficientnet_lite, "build", small_backbone)
    model = make_model(arch, (32, 32, 3), 3, weights=None, dropout=0.1)
    assert built == [arch]
    assert model.get_layer("dropout").rate == 0.1
    assert model.get_layer("backbone").output_shape == (None, 3)
    assert model.output_shape == (None, 3)
    assert model.get_layer("predictions").get_config()["activation"] == "softmax"


def test_a_single_class_still_gets_two_output_units() -> None:
    """Softmax heads always have at least two units."""
    assert make_model("tiny", (32, 32, 3), 1).output_shape == (None, 2)


def test_unknown_architectures_are_refused() -> None:
    """A typo in the architecture name is an error that lists the choices."""
    with pytest.raises(ValueError, match="tiny, scratch, lite0"):
        make_model("resnet", (32, 32, 3), 2)


def test_a_saved_model_serves_uint8_pixels_as_the_trained_model_predicts_them(
    tmp_path: Path,
) -> None:
    """The worker loads the saved file from its sidecar and labels raw uint8 pixels unchanged."""
    from catdog.workers.model import load_model

    model = make_model("scratch", (32, 24, 3), 2, widths=(8, 16), seed=3)
    path = save_model(model, tmp_path / "m.keras", {"classes": ["cat", "dog"], "arch": "scratch"})
    meta = read_metadata(path)
    assert meta["classes"] == ["cat", "dog"] and meta["input_size"] == [32, 24]
    served = load_model(
        path, 1, "v1", meta["classes"], tuple(meta["input_size"]), runtime="tensorflow"
    )
    # What a worker hands the model: decoded RGB at the sidecar's size, uint8, never rescaled.
    pixels = np.random.default_rng(1).integers(0, 256, (5, 32, 24, 3), dtype=np.uint8)
    probs = served.predict(pixels)
    # The augmentation and rescaling layers travel in the file; only rescaling runs here.
    expected = np.asarray(model(pixels.astype("float32"), training=False))
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-6)
    assert probs.shape == (5, 2) and not np.allclose(probs[0], probs[1])


def _modules(config: object) -> set[str]:
    if isinstance(config, dict):
        found = {config["module"]} if isinstance(config.get("module"), str) else set()
        return found.union(*(_modules(v) for v in config.values()))
    if isinstance(config, list):
        return set().union(*(_modules(v) for v in config))
    return set()


def test_saved_models_use_only_keras_layers_and_load_in_safe_mode(tmp_path: Path) -> None:
    """The .keras file has no custom or Lambda layers and loads with safe_mode, no compile."""
    model = make_model("scratch", (32, 32, 3), 2, widths=(8, 16))
    path = save_model(model, tmp_path / "m.keras", {"classes": ["cat", "dog"], "arch": "scratch"})
    with zipfile.ZipFile(path) as archive:
        config = archive.read("config.json").decode()
    assert "Lambda" not in config
    assert all(m.startswith("keras") for m in _modules(json.loads(config)))
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    image = np.full((1, 32, 32, 3), 128.0, "float32")
    # training=False matters: Keras random layers default to active when called bare.
    np.testing.assert_allclose(
        loaded(image, training=False), model(image, training=False), rtol=1e-5
    )


def test_the_sidecar_carries_the_contract_fields(tmp_path: Path) -> None:
    """model.json sits beside model.keras with arch, classes, input size and preprocessing."""
    model = make_model("tiny", (32, 24, 3), 2)
    path = save_model(
        model, tmp_path / "m.keras", {"classes": ["cat", "dog"], "arch": "tiny", "seed": 7}
    )
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["classes"] == ["cat", "dog"] and meta["arch"] == "tiny" and meta["seed"] == 7
    assert meta["input_size"] == [32, 24]
    assert {"preprocessing", "metrics", "created"} <= meta.keys()


def test_saving_without_matching_classes_is_refused(tmp_path: Path) -> None:
    """Metadata must name the classes, as many as the model has outputs."""
    model = make_model("tiny", (32, 32, 3), 2)
    with pytest.raises(ValueError, match="classes"):
        save_model(model, tmp_path / "m.keras", {"arch": "tiny"})
    with pytest.raises(ValueError, match="3 outputs|2 outputs"):
        save_model(model, tmp_path / "m.keras", {"classes": ["a", "b", "c"]})
