"""Tiny generated image folders for the training tests: red-ish cats, blue-ish dogs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

#: Side of the generated images; tests train at 32x32, so anything larger is resized.
SIDE = 40


def blob_image(rng: np.random.Generator, label: str, side: int = SIDE) -> Image.Image:
    """A noisy image with a red-ish (cat) or blue-ish (dog) blob somewhere in it."""
    pixels = rng.integers(60, 140, size=(side, side, 3)).astype(np.float32)
    cy, cx = rng.integers(side // 4, 3 * side // 4, size=2)
    radius = rng.integers(side // 5, side // 3)
    yy, xx = np.mgrid[:side, :side]
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    channel = 0 if label == "cat" else 2
    pixels[mask, channel] = rng.integers(200, 255)
    pixels[mask, 2 - channel] = rng.integers(0, 50)
    return Image.fromarray(pixels.astype(np.uint8))


def make_dataset(
    root: Path,
    per_class: int = 24,
    layout: str = "folders",
    classes: tuple[str, ...] = ("cat", "dog"),
    seed: int = 0,
) -> Path:
    """Write ``per_class`` JPEGs per class as class folders or Kaggle-style names."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for label in classes:
        for n in range(per_class):
            if layout == "folders":
                path = root / label / f"{label}.{n}.jpg"
                path.parent.mkdir(exist_ok=True)
            else:
                path = root / f"{label}.{n}.jpg"
            blob_image(rng, label).save(path, quality=90)
    return root


def add_near_duplicates(root: Path, pairs: list[tuple[str, str]]) -> None:
    """Write a ``near_duplicate_pairs.txt`` in the shared data set's format."""
    lines = [f"{a} {b} {i}" for i, (a, b) in enumerate(pairs)]
    (root / "near_duplicate_pairs.txt").write_text("\n".join(lines) + "\n")
