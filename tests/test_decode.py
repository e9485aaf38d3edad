"""Decoding: one read per file, model-sized RGB out, a readable reason for every failure."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catdog.images import ImageError, decode, load

LIMITS = {"max_pixels": 50_000_000, "max_bytes": 10_000_000}


def _jpeg(size: tuple[int, int], color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def test_a_large_jpeg_is_decoded_to_the_model_size():
    """A 2000x1500 photo comes out at exactly the requested (h, w), colours intact."""
    pixels, w, h = decode(_jpeg((2000, 1500)), (32, 48), LIMITS["max_pixels"])
    assert pixels.shape == (32, 48, 3) and pixels.dtype == np.uint8
    assert (w, h) == (2000, 1500)
    assert abs(int(pixels[..., 0].mean()) - 200) < 6


def test_load_hashes_the_bytes_it_decoded(tmp_path: Path):
    """The sha256 stored for an image is the hash of the file's bytes."""
    import hashlib

    data = _jpeg((64, 64))
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    decoded = load(path, (16, 16), **LIMITS)
    assert decoded.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"hello, I am text", "not an image"),
        (_jpeg((300, 300))[:400], "corrupt or truncated"),
    ],
)
def test_bad_files_fail_with_a_reason(tmp_path: Path, data: bytes, reason: str):
    """Empty, non-image and truncated files raise ImageError naming the problem."""
    path = tmp_path / "bad.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=reason):
        load(path, (16, 16), **LIMITS)


def test_a_decompression_bomb_is_refused_before_decoding():
    """An image whose header claims too many pixels is refused by its header alone."""
    buf = io.BytesIO()
    Image.new("L", (6000, 6000)).save(buf, "PNG")
    with pytest.raises(ImageError, match="decompression bomb"):
        decode(buf.getvalue(), (16, 16), max_pixels=10_000_000)


def test_exif_rotation_is_applied_before_resizing():
    """A portrait photo stored sideways with an EXIF orientation comes out upright."""
    img = Image.new("RGB", (80, 40), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 40, 40))  # white on the left half
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    pixels, _, _ = decode(buf.getvalue(), (40, 20), LIMITS["max_pixels"])
    assert pixels.shape == (40, 20, 3)
    assert pixels[:20].mean() > 200 and pixels[20:].mean() < 50  # white on top once upright


def test_transparent_png_is_composited_on_white():
    """Fully transparent pixels become white, not black."""
    buf = io.BytesIO()
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(buf, "PNG")
    pixels, _, _ = decode(buf.getvalue(), (8, 8), LIMITS["max_pixels"])
    assert pixels.min() == 255
