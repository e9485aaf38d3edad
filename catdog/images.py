"""The one image decoder: read a file once (hash + decode) into a model-sized RGB array.

Scans, workers, ``catdog classify``, training and evaluation all use it, so every path sees
the same pixels (EXIF orientation applied, alpha on white, JPEGs at reduced size).
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import os
import stat
import sys
import threading
import warnings
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

#: PIL's own bomb check is replaced by ours (a clear reason instead of a warning).
Image.MAX_IMAGE_PIXELS = None
#: Truncated files must fail, not decode silently as grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


#: File name extensions read as images, everywhere: scans, training, evaluation (lower case).
#: Each is a format PIL decodes in-process (no external program).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
)

#: The PIL decoders a file may reach, whatever its name says. All decode in-process: PIL's
#: EPS, PDF and other plugins that hand a file to an external program are never tried.
PIL_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")

#: EXIF tag saying how the camera was held.
EXIF_ORIENTATION = 0x0112
#: Orientations whose upright picture swaps width and height (turned a quarter).
TURNED_ORIENTATIONS = frozenset({5, 6, 7, 8})
#: Orientations that need a transposition (1 is upright, anything else is not a camera's).
ORIENTATIONS = frozenset(range(2, 9))

#: Bytes of decode buffers per pixel a budget accounts for: the most any decode path holds at
#: once, measured per mode (bench/decode_memory.py; tests/test_decode_budget.py checks each).
#: RGBA, LA with alpha, palette with transparency and CMYK hold the picture twice (4 + 4
#: bytes: PIL keeps RGB in 4 bytes); plain RGB holds it once, greyscale at 1 to 2 bytes.
BYTES_PER_PIXEL = 8
#: Pixels decoding at once per process unless ``CATDOG_DECODE_PIXEL_BUDGET`` says otherwise:
#: 150 M x 8 bytes, about 1.1 GiB of decode buffers, one and a half near-limit pictures.
DEFAULT_PIXEL_BUDGET = 150_000_000
#: Freed buffers this large or larger go back to the operating system at once (glibc's
#: ``M_MMAP_THRESHOLD``). Left alone, glibc raises the threshold after the first large free
#: and keeps freed pixels in per-thread arenas: four threads taking turns on 12 M-pixel
#: pictures then kept 229 MB resident instead of 97 MB, and a budget bounded nothing.
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
#: Free memory at the top of a heap kept for reuse rather than returned (glibc's
#: ``M_TRIM_THRESHOLD``): twice the mmap threshold, glibc's own rule, which it stops
#: applying once the threshold is set. At its 128 KiB default, heaps shrank and grew again
#: around every decoded photo: a third fewer photos per second.
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES
#: mallopt's parameter numbers for them (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: WebP counts this many times its pixels: libwebp decodes into a canvas of its own that PIL
#: copies twice (bytes, then the image); measured 18 (RGB) to 23 (RGBA) bytes per pixel.
WEBP_COST = 3
#: Rows converted at a time on the 16-bit greyscale path (a strip, not a full-size float copy).
STRIP_ROWS = 256


class PixelBudget:
    """How many pixels the decode threads of a process may hold at once, shared by all of them.

    A counting semaphore served in arrival order: a request waits until it is first in line
    and fits. A picture larger than the whole budget waits until nothing else is decoding,
    then decodes alone. First in line, so a large picture is not starved by small ones.
    """

    def __init__(self, pixels: int) -> None:
        if pixels < 1:
            raise ValueError(f"a pixel budget must be positive, not {pixels}")
        return_freed_buffers()
        self.capacity = pixels
        #: Most pixels ever held at once (tests and benchmarks read it).
        self.peak = 0
        self._held = 0
        self._line: deque[object] = deque()
        self._changed = threading.Condition()

    @property
    def held(self) -> int:
        """Pixels held now."""
        with self._changed:
            return self._held

    @property
    def waiting(self) -> int:
        """Requests waiting for their pixels."""
        with self._changed:
            return len(self._line)

    def _fits(self, ticket: object, pixels: int) -> bool:
        return self._line[0] is ticket and (self._held == 0 or self._held + pixels <= self.capacity)

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Hold ``pixels`` of the budget for the duration of the block, waiting for them."""
        ticket = object()
        with self._changed:
            self._line.append(ticket)
            try:
                self._changed.wait_for(lambda: self._fits(ticket, pixels))
            finally:
                # Served or interrupted, the ticket leaves the line and the next one may fit.
                self._line.remove(ticket)
                self._changed.notify_all()
            self._held += pixels
            self.peak = max(self.peak, self._held)
        try:
            yield
        finally:
            with self._changed:
                self._held -= pixels
                self._changed.notify_all()


def shared_budget(pixels: int = DEFAULT_PIXEL_BUDGET) -> PixelBudget:
    """The process's budget of that size: every decode path with the same setting shares it."""
    return _budget_of(pixels)


@lru_cache
def _budget_of(pixels: int) -> PixelBudget:
    return PixelBudget(pixels)


@lru_cache(maxsize=1)
def return_freed_buffers() -> bool:
    """Have glibc map large buffers on their own, so that freeing one returns its memory.

    Process-wide, once; True where it took effect (glibc), False elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)) and bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    )


class ImageError(Exception):
    """An image that cannot be classified; the message is stored as the failure reason."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded image at model size plus what we learnt about the file on the way."""

    pixels: np.ndarray  # (H, W, 3) uint8 at model input size
    sha256: str
    width: int
    height: int


def read_file(path: Path, max_bytes: int) -> bytes:
    """The file's bytes, with readable reasons for the usual failures.

    Opened non-blocking and checked on the open descriptor: a file swapped for a pipe or a
    device after it was listed is refused instead of hanging the reader.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ImageError("file not found (deleted or moved since the scan)") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ImageError("not a regular file (directory, pipe or device)")
            if st.st_size == 0:
                raise ImageError("empty file (0 bytes)")
            if st.st_size > max_bytes:
                raise ImageError(f"file too large ({st.st_size} bytes > limit {max_bytes})")
            # One byte more than fstat said: a file still being written is noticed, and the
            # buffer is sized by the file, not by the limit.
            data = fh.read(st.st_size + 1)
        except OSError as exc:
            raise ImageError(f"cannot read file: {exc.strerror or exc}") from None
    if len(data) != st.st_size:
        raise ImageError("file changed while it was read (still being written?)")
    return data


def decode(
    data: bytes, size: tuple[int, int], max_pixels: int, budget: PixelBudget | None = None
) -> tuple[np.ndarray, int, int]:
    """Decode ``data`` to RGB uint8 at ``size`` (h, w); upright per EXIF; JPEGs at reduced size.

    The full-size pixels are held only while ``budget`` (the process's default one when None)
    has room for them, so the decode threads of a process never hold more than its budget.
    """
    height, width = size
    budget = budget or shared_budget()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns about odd but readable files
            img: Image.Image = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
            full_w, full_h = img.size
            if full_w * full_h > max_pixels:
                raise ImageError(
                    f"image too large ({full_w}x{full_h} pixels > limit {max_pixels}); "
                    "refused as a possible decompression bomb"
                )
            if img.format == "JPEG":
                # Let the JPEG decoder scale by 1/2, 1/4 or 1/8 while decoding: on large
                # photos this is most of the decoding time saved.
                img.draft("RGB", (width * 2, height * 2))
            img.seek(0)  # animated GIF/WebP: the first frame
            with budget.hold(decode_cost(img, full_w * full_h)):
                orientation = img.getexif().get(EXIF_ORIENTATION)  # may load the pixels
                if orientation in TURNED_ORIENTATIONS:
                    full_w, full_h = full_h, full_w  # record the size of the upright picture
                if orientation in ORIENTATIONS:
                    upright = ImageOps.exif_transpose(img)
                    if upright is not None:  # never None when not in place; mypy can't tell
                        img = _replace(img, upright)
                pixels = _model_pixels(img, width, height)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"refused as a possible decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # PIL reports truncation and corrupt streams as OSError/SyntaxError.
        raise ImageError(f"corrupt or truncated image: {exc}") from None
    except MemoryError:
        raise ImageError("image too large to decode in memory") from None
    return pixels, full_w, full_h


def decode_cost(img: Image.Image, full_pixels: int) -> int:
    """Pixels of budget an opened (not yet loaded) image needs to decode.

    The pixels it will load (a JPEG's after ``draft``); a progressive JPEG also keeps every
    DCT coefficient of the full picture (2 bytes per pixel per channel) until it is done, and
    WebP decodes through two more full-size buffers (``WEBP_COST``).
    """
    cost = img.size[0] * img.size[1]
    if img.format == "WEBP":
        cost *= WEBP_COST
    if img.format == "JPEG" and img.info.get("progressive"):
        coefficients = full_pixels * len(img.getbands()) * 2
        cost += -(-coefficients // BYTES_PER_PIXEL)
    return cost


def _model_pixels(img: Image.Image, width: int, height: int) -> np.ndarray:
    """An upright picture as RGB uint8 at (width, height); ``img`` is closed on the way.

    Each full-size copy replaces the one before (closed at once, not when the garbage
    collector gets to it), so at most two are held: ``BYTES_PER_PIXEL`` covers them.
    """
    if img.mode in ("RGBA", "PA") or (img.mode == "P" and "transparency" in img.info):
        if img.mode != "RGBA":
            img = _replace(img, img.convert("RGBA"))
        # Alpha on white, blended into the backdrop in place (one full-size copy).
        flat = Image.new("RGB", img.size, (255, 255, 255))
        flat.paste(img, (0, 0), img)
        img = _replace(img, flat)
    elif img.mode == "LA":
        flat = Image.new("L", img.size, 255)  # grey stays grey: 1 byte per pixel
        flat.paste(img.getchannel("L"), (0, 0), img.getchannel("A"))
        img = _replace(img, flat)
    elif img.mode.startswith("I;16") or img.mode == "I":
        img = _replace(img, _eight_bit(img))
    elif img.mode in ("1", "F"):
        img = _replace(img, img.convert("L"))  # what PIL does on its way to RGB
    if img.mode not in ("RGB", "L"):
        img = _replace(img, img.convert("RGB"))
    # Greyscale is resized before it becomes RGB: the same pixels for a quarter of the memory.
    small = img.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=None)
    small = small.convert("RGB")
    img.close()
    return np.asarray(small, dtype=np.uint8)


def _replace(old: Image.Image, new: Image.Image) -> Image.Image:
    """``new``, once ``old``'s pixels are freed."""
    old.close()
    return new


def _eight_bit(img: Image.Image) -> Image.Image:
    """16- or 32-bit greyscale scaled to 8 bits by its brightest pixel, strip by strip."""
    w, h = img.size
    strips = [(top, min(top + STRIP_ROWS, h)) for top in range(0, h, STRIP_ROWS)]

    def strip(top: int, bottom: int) -> np.ndarray:
        return np.asarray(img.crop((0, top, w, bottom)), dtype=np.float32)

    brightest = max((float(strip(t, b).max()) for t, b in strips), default=0.0)
    scale = 255.0 / max(brightest, 1.0)
    out = np.empty((h, w), np.uint8)
    for top, bottom in strips:
        out[top:bottom] = (strip(top, bottom) * scale).astype(np.uint8)
    return Image.fromarray(out, "L")


def thumbnail_jpeg(
    data: bytes, longest: int, max_pixels: int, budget: PixelBudget | None = None
) -> bytes:
    """A JPEG of the picture, upright, at most ``longest`` pixels on its longer side."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img: Image.Image = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
            full_pixels = img.size[0] * img.size[1]
            if full_pixels > max_pixels:
                raise ImageError("image too large for a thumbnail")
            img.draft("RGB", (longest, longest))  # JPEG: decode at reduced size
            with (budget or shared_budget()).hold(decode_cost(img, full_pixels)):
                img = ImageOps.exif_transpose(img) or img
                img.thumbnail((longest, longest))
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="JPEG", quality=80)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageError(f"no thumbnail: {exc}") from None
    return buf.getvalue()


def from_bytes(
    data: bytes, size: tuple[int, int], max_pixels: int, budget: PixelBudget | None = None
) -> Decoded:
    """Hash and decode bytes already read (through a store's guarded reader)."""
    pixels, width, height = decode(data, size, max_pixels, budget)
    return Decoded(pixels, hashlib.sha256(data).hexdigest(), width, height)


def load(
    path: Path,
    size: tuple[int, int],
    max_pixels: int,
    max_bytes: int,
    budget: PixelBudget | None = None,
) -> Decoded:
    """Read a local file once, hash it, decode it at model size."""
    return from_bytes(read_file(path, max_bytes), size, max_pixels, budget)
