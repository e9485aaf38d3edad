"""The one image decoder: read a file once (hash + decode) into a model-sized RGB array.

Scans, workers, ``catdog classify``, training and evaluation all use it, so every path sees
the same pixels (EXIF orientation applied, alpha on white, JPEGs at reduced size).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from dataclasses import dataclass
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


def decode(data: bytes, size: tuple[int, int], max_pixels: int) -> tuple[np.ndarray, int, int]:
    """Decode ``data`` to RGB uint8 at ``size`` (h, w); upright per EXIF; JPEGs at reduced size."""
    height, width = size
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
            if img.getexif().get(EXIF_ORIENTATION) in TURNED_ORIENTATIONS:
                full_w, full_h = full_h, full_w  # record the size of the upright picture
            img = ImageOps.exif_transpose(img) or img
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                backdrop = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(backdrop, rgba)
            if img.mode == "I;16" or img.mode.startswith("I;16") or img.mode == "I":
                arr16 = np.asarray(img, dtype=np.float32)
                scale = 255.0 / max(float(arr16.max()), 1.0)
                img = Image.fromarray((arr16 * scale).astype(np.uint8), "L")
            img = img.convert("RGB")
            img = img.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=None)
            pixels = np.asarray(img, dtype=np.uint8)
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


def thumbnail_jpeg(data: bytes, longest: int, max_pixels: int) -> bytes:
    """A JPEG of the picture, upright, at most ``longest`` pixels on its longer side."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img: Image.Image = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
            if img.size[0] * img.size[1] > max_pixels:
                raise ImageError("image too large for a thumbnail")
            img.draft("RGB", (longest, longest))  # JPEG: decode at reduced size
            img = ImageOps.exif_transpose(img) or img
            img.thumbnail((longest, longest))
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="JPEG", quality=80)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageError(f"no thumbnail: {exc}") from None
    return buf.getvalue()


def from_bytes(data: bytes, size: tuple[int, int], max_pixels: int) -> Decoded:
    """Hash and decode bytes already read (through a store's guarded reader)."""
    pixels, width, height = decode(data, size, max_pixels)
    return Decoded(pixels, hashlib.sha256(data).hexdigest(), width, height)


def load(path: Path, size: tuple[int, int], max_pixels: int, max_bytes: int) -> Decoded:
    """Read a local file once, hash it, decode it at model size."""
    return from_bytes(read_file(path, max_bytes), size, max_pixels)
