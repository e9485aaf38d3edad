"""Views of a photo: augmented ones to train on, shifted ones to evaluate on.

Every view is made on the upright picture and saved again as an image file, and the bytes
go through :func:`catdog.images.decode`, the workers' decoder. So training, evaluation and
serving see pixels made the same way (the one-decoder rule), whatever the view did.

Training views (``TRAIN_VIEWS``): the photo, its mirror image, a random window of the
photo decoded 1.2x larger (``zoom``), and ``crop``: a random resized crop (a third of the
photo up to all of it) with random colour, contrast, brightness, greyscale, blur and JPEG
quality, the strong augmentation that makes a model less Kaggle-specific.

Evaluation shifts (``SHIFTS``): how other collections differ from Kaggle's 200x200 photos
in size, aspect, framing, colour, compression, focus, exposure, background and orientation.
``bench/robustness.py`` reports a saved model's accuracy per shift; the trainer scores its
candidates on the same shifts of the validation photos and tracks the hardest.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from catdog.images import decode

#: Decoding refuses larger images (the worker default).
MAX_PIXELS = 100_000_000
#: The zoom view decodes at this multiple of the input size and crops a random window.
ZOOM = 1.2
#: Training views, by name.
TRAIN_VIEWS = ("photo", "mirror", "zoom", "crop")
#: Area share and aspect-ratio range of the ``crop`` view's random window.
CROP_AREA = (0.33, 1.0)
CROP_ASPECT = (3 / 4, 4 / 3)

Shift = Callable[[Image.Image], Image.Image]


def encode(img: Image.Image, quality: int | None = None) -> bytes:
    """The picture as a file: JPEG at ``quality``, else lossless PNG."""
    buf = io.BytesIO()
    if quality is None:
        img.save(buf, "PNG", compress_level=1)
    else:
        img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def upright(data: bytes) -> Image.Image:
    """The picture in ``data`` as RGB, turned upright per EXIF (as the decoder does)."""
    with Image.open(io.BytesIO(data)) as img:
        return ImageOps.exif_transpose(img).convert("RGB")


def _crop_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random window of ``CROP_AREA`` of the picture with an aspect in ``CROP_ASPECT``."""
    for _ in range(10):
        area = width * height * rng.uniform(*CROP_AREA)
        aspect = math.exp(rng.uniform(math.log(CROP_ASPECT[0]), math.log(CROP_ASPECT[1])))
        w = round(math.sqrt(area * aspect))
        h = round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    return 0, 0, width, height


def strong_augment(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int]:
    """A random resized crop with random photometric changes; returns it and a JPEG quality."""
    img = img.crop(_crop_box(img.width, img.height, rng))
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.6, 1.4))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.6, 1.4))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.4, 1.6))
    if rng.random() < 0.1:
        img = ImageOps.grayscale(img).convert("RGB")
    if rng.random() < 0.15:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
    return img, int(rng.integers(30, 96))


def view_pixels(
    data: bytes, size: int, view: str, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Pixels (size x size RGB uint8) of one training view of the image file ``data``."""
    rng = rng or np.random.default_rng()
    if view in ("photo", "mirror"):
        pixels = decode(data, (size, size), MAX_PIXELS)[0]
        return pixels[:, ::-1] if view == "mirror" else pixels
    if view == "zoom":
        big = round(size * ZOOM)
        pixels = decode(data, (big, big), MAX_PIXELS)[0]
        top, left = rng.integers(0, big - size + 1, 2)
        crop = pixels[top : top + size, left : left + size]
        return crop[:, ::-1] if rng.random() < 0.5 else crop
    if view == "crop":
        img, quality = strong_augment(upright(data), rng)
        return decode(encode(img, quality), (size, size), MAX_PIXELS)[0]
    if view in SHIFTS:
        shift, saved_as = SHIFTS[view]
        return decode(encode(shift(upright(data)), saved_as), (size, size), MAX_PIXELS)[0]
    raise ValueError(f"unknown view {view!r}: choose from {TRAIN_VIEWS} or {tuple(SHIFTS)}")


def file_pixels(path: str | Path, size: int, view: str, rng: np.random.Generator) -> np.ndarray:
    """:func:`view_pixels` of the file at ``path``."""
    return view_pixels(Path(path).read_bytes(), size, view, rng)


def _fraction_crop(left: float, top: float, right: float, bottom: float) -> Shift:
    def crop(im: Image.Image) -> Image.Image:
        w, h = im.size
        return im.crop((int(w * left), int(h * top), int(w * right), int(h * bottom)))

    return crop


def _on_background(scale: float, colour: tuple[int, int, int] | None) -> Shift:
    """The photo shrunk to ``scale`` of a canvas (plain ``colour``, else a noisy texture)."""

    def place(im: Image.Image) -> Image.Image:
        w, h = im.size
        if colour is None:
            noise = np.random.default_rng(w * 7919 + h).integers(
                0, 256, (h // 8 + 1, w // 8 + 1, 3)
            )
            canvas = Image.fromarray(noise.astype(np.uint8)).resize(
                (w, h), Image.Resampling.BICUBIC
            )
        else:
            canvas = Image.new("RGB", (w, h), colour)
        small = im.resize(
            (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS
        )
        canvas.paste(small, ((w - small.width) // 3, (h - small.height) // 2))
        return canvas

    return place


def _tint(red: float, green: float, blue: float) -> Shift:
    """A colour cast (white balance): each channel multiplied by its factor."""

    def tint(im: Image.Image) -> Image.Image:
        a = np.asarray(im, np.float32) * np.array([red, green, blue], np.float32)
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))

    return tint


def _letterbox(im: Image.Image) -> Image.Image:
    """A wide 16:9 frame with the photo in the middle (a phone video still, a banner)."""
    w, h = im.size
    canvas = Image.new("RGB", (round(h * 16 / 9), h), (20, 20, 20))
    canvas.paste(im, ((canvas.width - w) // 2, 0))
    return canvas


#: name -> (shift, JPEG quality of the result, None for PNG). Deterministic, so every model
#: is scored on the same pixels.
SHIFTS: dict[str, tuple[Shift, int | None]] = {
    "unchanged": (lambda im: im, 95),
    "4:3 photo at 1600x1200": (lambda im: im.resize((1600, 1200), Image.Resampling.BICUBIC), 92),
    "grayscale": (lambda im: ImageOps.grayscale(im).convert("RGB"), 92),
    "heavy JPEG (quality 25)": (lambda im: im, 25),
    "out of focus (blur 2 px)": (lambda im: im.filter(ImageFilter.GaussianBlur(2)), 92),
    "underexposed (x0.4)": (lambda im: Image.eval(im, lambda v: int(v * 0.4)), 92),
    "overexposed (x1.6)": (lambda im: Image.eval(im, lambda v: min(255, int(v * 1.6))), 92),
    "mirrored": (ImageOps.mirror, 92),
    "tight crop (70%)": (_fraction_crop(0.15, 0.15, 0.85, 0.85), 92),
    "close crop (50%)": (_fraction_crop(0.25, 0.25, 0.75, 0.75), 92),
    "corner crop (top left 60%)": (_fraction_crop(0.0, 0.0, 0.6, 0.6), 92),
    "small on grey (50%)": (_on_background(0.5, (128, 128, 128)), 92),
    "small on clutter (60%)": (_on_background(0.6, None), 92),
    "letterboxed 16:9": (_letterbox, 92),
    "warm cast": (_tint(1.25, 1.0, 0.75), 92),
    "cool cast": (_tint(0.8, 1.0, 1.25), 92),
    "desaturated (30%)": (lambda im: ImageEnhance.Color(im).enhance(0.3), 92),
    "low contrast (50%)": (lambda im: ImageEnhance.Contrast(im).enhance(0.5), 92),
    "sideways, no EXIF (90 degrees)": (lambda im: im.rotate(90, expand=True), 92),
}
