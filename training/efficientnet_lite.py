"""EfficientNet-Lite0, Lite1 and Lite2 as pure Keras 3 functional models.

The layout is EfficientNet-B0 without squeeze-excitation, with ReLU6, scaled in width and
depth per variant as the Lite models were published: the stem (32 channels), the head
(1280) and the repeats of the first and last stage stay fixed, the other stages' channels
are multiplied by the width factor (rounded to multiples of 8) and their repeats by the
depth factor (rounded up). The ImageNet checkpoints' own tensor shapes
(``tests/test_lite0.py`` compares them) are the ground truth for these rules.

The model takes raw RGB pixels (0..255, float) and scales them with a ``Rescaling`` layer,
so a saved model needs no outside preprocessing and loads with ``safe_mode=True`` and no
catdog import. Layer names follow ``keras.applications.EfficientNetB0`` (``stem_conv``,
``block3b_dwconv``, ``top_conv``) so callers can freeze or unfreeze the last blocks by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
from keras import layers

#: (repeats, kernel, first stride, expansion, output channels) per stage, as in B0.
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
#: Lite models keep the stem and head widths fixed.
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
#: Channel counts are rounded to multiples of this (and never more than 10 % down).
CHANNEL_DIVISOR = 8
#: BatchNorm epsilon of the TensorFlow checkpoints (PyTorch's default, 1e-5, would be wrong).
BN_EPSILON = 1e-3
#: The Lite models were trained on (x - 127) / 128.
INPUT_SCALE = 1 / 128
INPUT_OFFSET = -127 / 128
IMAGENET_CLASSES = 1000


@dataclass(frozen=True, slots=True)
class Variant:
    """One EfficientNet-Lite size: width and depth factors and its ImageNet input side."""

    name: str
    width: float
    depth: float
    input_size: int

    def stages(self) -> tuple[tuple[int, int, int, int, int], ...]:
        """``STAGES`` scaled: the first and last stage keep one block each."""
        scaled = []
        for index, (repeats, kernel, stride, expansion, filters) in enumerate(STAGES):
            fixed = index in (0, len(STAGES) - 1)
            scaled.append(
                (
                    repeats if fixed else math.ceil(self.depth * repeats),
                    kernel,
                    stride,
                    expansion,
                    round_filters(filters, self.width),
                )
            )
        return tuple(scaled)


def round_filters(filters: int, width: float, divisor: int = CHANNEL_DIVISOR) -> int:
    """Channels of a stage at ``width``: the nearest multiple of ``divisor`` not 10 % lower."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


#: The variants catdog builds, by name.
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("lite0", 1.0, 1.0, 224),
        Variant("lite1", 1.0, 1.1, 240),
        Variant("lite2", 1.1, 1.2, 260),
    )
}


def get_variant(name: str) -> Variant:
    """The variant called ``name``; a ValueError listing the choices otherwise."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}: choose one of {', '.join(VARIANTS)}") from None


def block_names(variant: str = "lite0") -> list[str]:
    """Return the names of the inverted-residual blocks, input side first."""
    names = []
    for stage, (repeats, *_rest) in enumerate(get_variant(variant).stages(), start=1):
        names += [f"block{stage}{chr(ord('a') + i)}" for i in range(repeats)]
    return names


def last_residual_add(variant: str = "lite0") -> str:
    """The name of the last block's ``Add`` before the final stage (where caches cut)."""
    return f"{block_names(variant)[-2]}_add"


def block_layers(model: keras.Model, block: str) -> list[keras.layers.Layer]:
    """Return the layers of `model` that belong to a block, or to ``stem`` or ``top``."""
    return [layer for layer in model.layers if layer.name.startswith(f"{block}_")]


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, relu: bool = True):
    x = layers.Conv2D(
        filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    if relu:
        x = layers.ReLU(max_value=6.0, name=f"{name}_relu")(x)
    return x


def _block(x, name: str, kernel: int, stride: int, expansion: int, filters: int):
    inputs = x
    in_filters = x.shape[-1]
    if expansion != 1:
        x = _conv_bn(x, in_filters * expansion, 1, 1, f"{name}_expand")
    # "same" in Keras is TensorFlow's SAME: the extra padding goes bottom/right, as trained.
    x = layers.DepthwiseConv2D(
        kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dwconv"
    )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    x = layers.ReLU(max_value=6.0, name=f"{name}_relu")(x)
    x = _conv_bn(x, filters, 1, 1, f"{name}_project", relu=False)
    if stride == 1 and in_filters == filters:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def build(
    variant: str = "lite0",
    input_shape: tuple[int, int, int] | None = None,
    include_top: bool = False,
    pooling: str | None = "avg",
) -> keras.Model:
    """Build an EfficientNet-Lite variant (random weights) for raw 0..255 RGB input.

    ``input_shape`` defaults to the variant's ImageNet size. Without the top, `pooling` is
    ``"avg"``, ``"max"`` or ``None`` (the 1280-channel map). With the top, the output is the
    1000-class ImageNet softmax.
    """
    spec = get_variant(variant)
    if input_shape is None:
        input_shape = (spec.input_size, spec.input_size, 3)
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Rescaling(scale=INPUT_SCALE, offset=INPUT_OFFSET, name="rescaling")(inputs)
    x = layers.Conv2D(
        STEM_CHANNELS, 3, strides=2, padding="same", use_bias=False, name="stem_conv"
    )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="stem_bn")(x)
    x = layers.ReLU(max_value=6.0, name="stem_relu")(x)

    names = iter(block_names(variant))
    for repeats, kernel, stride, expansion, filters in spec.stages():
        for i in range(repeats):
            x = _block(x, next(names), kernel, stride if i == 0 else 1, expansion, filters)

    x = _conv_bn(x, HEAD_CHANNELS, 1, 1, "top")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(IMAGENET_CLASSES, activation="softmax", name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    elif pooling is not None:
        raise ValueError(f"pooling must be 'avg', 'max' or None, not {pooling!r}")
    return keras.Model(inputs, x, name=f"efficientnet_{variant}")


def build_lite0(
    input_shape: tuple[int, int, int] = (224, 224, 3),
    include_top: bool = False,
    pooling: str | None = "avg",
) -> keras.Model:
    """Build EfficientNet-Lite0: ``build("lite0", ...)``."""
    return build("lite0", input_shape, include_top, pooling)
