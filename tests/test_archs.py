"""The architecture table: one entry is all a new architecture needs."""

from __future__ import annotations

from typing import Any

import pytest

from catdog.training import archs
from catdog.training.archs import ARCHS, Arch


def one_dense(inputs: Any, num_classes: int, *, dropout: float = 0.0) -> Any:
    """A test architecture: global pooling and a softmax."""
    from keras import layers

    x = layers.GlobalAveragePooling2D()(inputs)
    x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(num_classes, activation="softmax", name="predictions")(x)


def test_every_entry_names_a_builder_that_exists_and_a_known_trainer() -> None:
    """Each builder path resolves to a function; each trainer is one train() knows."""
    for name, arch in ARCHS.items():
        assert arch.name == name and arch.input_size >= 16 and arch.description
        assert callable(arch.build_fn())
        assert arch.trainer in ("fit", "transfer")


def test_a_new_table_entry_is_built_by_make_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """make_model looks the builder up in the table and passes it the options it names."""
    from catdog.training.model import make_model

    entry = Arch(
        "mini",
        input_size=16,
        builder=f"{__name__}:one_dense",
        trainer="fit",
        description="a test architecture",
        epochs=1,
        batch_size=4,
        learning_rate=1e-2,
        augment=False,
    )
    monkeypatch.setitem(archs.ARCHS, "mini", entry)
    model = make_model("mini", (16, 16, 3), 3, dropout=0.25, widths=(8,), weights=None)
    assert model.name == "catdog_mini" and model.output_shape == (None, 3)
    assert model.get_layer("dropout").rate == 0.25
    assert "augmentation" not in [layer.name for layer in model.layers]


def test_every_transfer_arch_is_an_efficientnet_lite_variant_at_its_imagenet_size() -> None:
    """lite0/1/2 train at the input size their ImageNet weights were trained at."""
    from catdog.training.efficientnet_lite import VARIANTS

    transfer = {name: a for name, a in ARCHS.items() if a.trainer == "transfer"}
    assert set(transfer) == {"lite0", "lite1", "lite2"}
    for name, arch in transfer.items():
        assert arch.input_size == VARIANTS[name].input_size


def test_catdog_train_offers_the_larger_lite_models() -> None:
    """``catdog train --arch lite2`` is accepted and --help lists every architecture."""
    from click.testing import CliRunner

    from catdog.cli import main

    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0, result.output
    for name in ARCHS:
        assert name in result.output
