"""``make_model(...)``: the classifiers catdog trains, and ``save_model`` with its sidecar.

The architectures are listed in ``catdog.training.archs.ARCHS``; each names one of the
builder functions below (``tiny``, ``scratch``, ``lite0``, ``lite1``, ``lite2``).

Every model maps float RGB images (0..255, shape ``(H, W, 3)``) to softmax probabilities
over the classes. Rescaling and augmentation are layers inside the model, so inference
reuses training's preprocessing exactly, and the saved ``.keras`` file loads with
``safe_mode=True`` without importing catdog (no Lambda or custom layers).

Call a model with ``model(x, training=False)`` or ``model.predict(x)``: a bare ``model(x)``
runs the augmentation layers, whose Keras default is to be active.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
from keras import layers

from catdog.training.archs import ARCHS, get_arch

#: Square input side used when the caller gives none (a view of ``ARCHS``).
DEFAULT_INPUT_SIZE = {a.name: a.input_size for a in ARCHS.values()}
#: Filters of the scratch CNN's stem and of its conv blocks (each block halves the map).
SCRATCH_WIDTHS = (32, 64, 128, 256)
#: How the images reaching a model were prepared (recorded in every model's metadata).
PREPROCESSING = {
    "input": "RGB float32 0..255",
    "resize": "bilinear with antialias, aspect ratio not kept",
    "rescaling": "inside the model",
}


def augmentation(seed: int | None = None, name: str = "augmentation") -> keras.Sequential:
    """Random flips, small rotations and zooms; active only while training."""
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomRotation(0.05, fill_mode="reflect", seed=seed),
            layers.RandomZoom((-0.15, 0.0), fill_mode="reflect", seed=seed),
        ],
        name=name,
    )


def _conv_bn_relu(x: Any, filters: int, stride: int = 1, name: str = "") -> Any:
    x = layers.Conv2D(
        filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def scratch(
    inputs: Any, num_classes: int, *, widths: Sequence[int] = SCRATCH_WIDTHS, dropout: float = 0.3
) -> Any:
    """The from-scratch CNN: rescaling, a strided stem, residual conv blocks, softmax."""
    # The keras-io tutorial's shape, sized for a CPU: a strided stem, then blocks of two
    # 3x3 convs with a strided 1x1 shortcut around them and max pooling, then global
    # pooling and dropout.
    x = layers.Rescaling(1.0 / 255, name="rescaling")(inputs)
    x = _conv_bn_relu(x, widths[0], stride=2, name="stem")
    # Pooling right after the stem (as in ResNet) keeps the big early feature maps, whose
    # memory traffic dominates training time on a CPU, out of the conv blocks.
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for i, filters in enumerate(widths[1:], start=1):
        shortcut = x
        x = _conv_bn_relu(x, filters, name=f"block{i}a")
        x = _conv_bn_relu(x, filters, name=f"block{i}b")
        x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"block{i}_pool")(x)
        shortcut = layers.Conv2D(filters, 1, strides=2, padding="same", name=f"block{i}_shortcut")(
            shortcut
        )
        x = layers.Add(name=f"block{i}_add")([x, shortcut])
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)


def tiny(inputs: Any, num_classes: int) -> Any:
    """Two strided convs and a softmax: a model that trains in seconds, for tests."""
    x = layers.Rescaling(1.0 / 255, name="rescaling")(inputs)
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv1")(x)
    x = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)


def _lite_backbone(
    variant: str, input_shape: tuple[int, int, int], weights: str | None
) -> keras.Model:
    from catdog.training import efficientnet_lite

    if weights is None:
        return efficientnet_lite.build(variant, input_shape, include_top=False, pooling="avg")
    from catdog.training.convert import imagenet_backbone

    return imagenet_backbone(input_shape, variant=variant)


def efficientnet_lite(
    inputs: Any,
    num_classes: int,
    *,
    variant: str,
    input_shape: tuple[int, int, int],
    weights: str | None = "imagenet",
    dropout: float = 0.3,
) -> Any:
    """An EfficientNet-Lite variant (a layer named ``backbone``, so trainers can freeze it),
    dropout and a softmax head."""
    backbone = _lite_backbone(variant, input_shape, weights)
    backbone.name = "backbone"
    x = backbone(inputs)
    x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)


def lite0(inputs: Any, num_classes: int, **options: Any) -> Any:
    """EfficientNet-Lite0 (``efficientnet_lite`` with ``variant="lite0"``)."""
    return efficientnet_lite(inputs, num_classes, variant="lite0", **options)


def lite1(inputs: Any, num_classes: int, **options: Any) -> Any:
    """EfficientNet-Lite1: Lite0 1.1x deeper, ImageNet-trained at 240 px."""
    return efficientnet_lite(inputs, num_classes, variant="lite1", **options)


def lite2(inputs: Any, num_classes: int, **options: Any) -> Any:
    """EfficientNet-Lite2: 1.1x wider and 1.2x deeper, ImageNet-trained at 260 px."""
    return efficientnet_lite(inputs, num_classes, variant="lite2", **options)


def _options(builder: Any, options: dict[str, Any]) -> dict[str, Any]:
    # Each builder takes the options it uses; make_model offers them all. The Lite
    # builders pass theirs on to efficientnet_lite, whose signature names them.
    accepted = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        accepted = inspect.signature(efficientnet_lite).parameters
    return {k: v for k, v in options.items() if k in accepted and k != "variant"}


def make_model(
    arch: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    augment: bool | None = None,
    dropout: float = 0.3,
    widths: Sequence[int] = SCRATCH_WIDTHS,
    weights: str | None = "imagenet",
    seed: int | None = None,
) -> keras.Model:
    """Build an uncompiled classifier of architecture ``arch`` (a name in ``ARCHS``).

    ``augment`` defaults to the architecture's own setting (off for ``tiny``). ``widths``
    sizes the ``scratch`` CNN; ``weights`` is ``"imagenet"`` or None for the Lite models.
    """
    spec = get_arch(arch)
    builder = spec.build_fn()
    num_classes = max(2, int(num_classes))
    if augment is None:
        augment = spec.augment
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = augmentation(seed)(inputs) if augment else inputs
    options = {
        "input_shape": tuple(input_shape),
        "dropout": dropout,
        "widths": widths,
        "weights": weights,
    }
    outputs = builder(x, num_classes, **_options(builder, options))
    return keras.Model(inputs, outputs, name=f"catdog_{arch}")


def save_model(model: keras.Model, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Save ``model`` as ``path`` (``.keras``) and its metadata as the ``.json`` beside it.

    ``metadata`` must name the ``classes``; ``input_size``, ``preprocessing`` and
    ``created`` are filled in from the model when missing.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"model files end in .keras, not {path.name}")
    if not metadata.get("classes"):
        raise ValueError("metadata needs the 'classes' the model's outputs stand for")
    classes = list(metadata["classes"])
    units = model.output_shape[-1]
    if units != max(2, len(classes)):
        raise ValueError(f"model has {units} outputs but metadata lists classes {classes}")
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    meta = {
        "arch": "unknown",
        "input_size": [int(d) for d in model.input_shape[1:3]],
        "preprocessing": PREPROCESSING,
        "metrics": {},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **metadata,
        "classes": classes,
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path
