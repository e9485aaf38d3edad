"""Training views and evaluation shifts: made on the picture, decoded by the one decoder."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from catdog.images import decode
from catdog.training.views import SHIFTS, TRAIN_VIEWS, encode, view_pixels


def _photo(width: int = 120, height: int = 90) -> bytes:
    """A photo with a left-right and top-bottom gradient, so flips and crops show."""
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    rgb = np.concatenate(
        [
            np.broadcast_to(x, (height, width, 1)),
            np.broadcast_to(y, (height, width, 1)),
            np.full((height, width, 1), 90.0),
        ],
        axis=2,
    )
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_the_photo_view_is_exactly_what_the_workers_decode() -> None:
    """No view-specific resize: the photo view is catdog.images.decode's output."""
    data = _photo()
    np.testing.assert_array_equal(view_pixels(data, 48, "photo"), decode(data, (48, 48), 10**8)[0])
    np.testing.assert_array_equal(
        view_pixels(data, 48, "mirror"), decode(data, (48, 48), 10**8)[0][:, ::-1]
    )


@pytest.mark.parametrize("view", TRAIN_VIEWS)
def test_every_training_view_has_the_model_size_and_is_repeatable_with_a_seed(view: str) -> None:
    data = _photo()
    first = view_pixels(data, 40, view, np.random.default_rng(3))
    again = view_pixels(data, 40, view, np.random.default_rng(3))
    assert first.shape == (40, 40, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)


def test_the_crop_view_changes_framing_and_colour_from_one_draw_to_the_next() -> None:
    data = _photo()
    rng = np.random.default_rng(0)
    views = [view_pixels(data, 40, "crop", rng) for _ in range(6)]
    photo = view_pixels(data, 40, "photo")
    assert all(np.abs(v.astype(int) - photo).mean() > 2 for v in views)
    assert len({v.tobytes() for v in views}) == 6


@pytest.mark.parametrize("name", list(SHIFTS))
def test_every_shift_is_deterministic_and_decodes_at_the_model_size(name: str) -> None:
    data = _photo()
    first = view_pixels(data, 32, name)
    assert first.shape == (32, 32, 3)
    np.testing.assert_array_equal(first, view_pixels(data, 32, name))


def test_shifts_do_what_their_names_say() -> None:
    """Spot checks: grayscale has equal channels, the mirror flips, the grey canvas is grey."""
    data = _photo()
    grey = view_pixels(data, 32, "grayscale").astype(int)
    assert np.abs(grey[..., 0] - grey[..., 1]).max() <= 2
    mirrored = view_pixels(data, 32, "mirrored").astype(int)
    assert mirrored[:, 0, 0].mean() > mirrored[:, -1, 0].mean()  # red gradient reversed
    small = view_pixels(data, 64, "small on grey (50%)").astype(int)
    assert np.abs(small[-3:, :, :] - 128).max() <= 3  # bottom rows are the canvas


def test_an_unknown_view_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown view 'sepia'"):
        view_pixels(_photo(), 32, "sepia")


def test_encode_writes_png_losslessly_and_jpeg_at_the_quality_asked() -> None:
    img = Image.open(io.BytesIO(_photo())).convert("RGB")
    assert Image.open(io.BytesIO(encode(img))).format == "PNG"
    assert len(encode(img, 20)) < len(encode(img, 95))
