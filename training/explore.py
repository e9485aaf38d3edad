"""The exploration report of a labeled image folder: what is in it before training on it.

Images per class, sizes and aspect ratios, colour modes and channel statistics, brightness,
file sizes, unreadable files, near-duplicates across classes (8x8 average hash, confirmed on
16x16 thumbnails) and sample grids. Large folders are sampled; JPEGs are decoded at reduced
size (PIL ``draft``) in a thread pool: the 25,000 real photos take about 40 s of CPU.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from catdog.training.datasets import LabeledImages, discover
from catdog.training.report import contact_sheet, plt, render_page

#: Images looked at by default; more are sampled down to this many (seeded).
DEFAULT_SAMPLE = 30_000
#: Threads reading images (PIL releases the GIL while decoding).
THREADS = 4
#: Side images are decoded down to (at least) for the statistics and the hash.
THUMB_SIDE = 64
#: Average-hash bit distance at or below which two images are near-duplicate candidates.
NEAR_DUPLICATE_BITS = 3
#: Side of the grey thumbnail that confirms a candidate pair. The 8x8 hash alone matches
#: many unrelated low-contrast photos; the 16x16 thumbnails of real copies still correlate.
CONFIRM_SIDE = 16
#: Correlation of the normalised 16x16 grey thumbnails from which a candidate is confirmed
#: (on the 25k real photos: exactly the two known cross-class copies; 0.9 lets in 21 look-alikes).
NEAR_DUPLICATE_CORRELATION = 0.95
#: Sample images shown per class, and near-duplicate pairs listed.
SAMPLES_PER_CLASS = 16
PAIRS_LISTED = 50


@dataclass
class ImageStats:
    """What one readable file looks like."""

    index: int
    width: int
    height: int
    mode: str
    format: str
    brightness: float
    mean_r: float
    mean_g: float
    mean_b: float
    std: float
    ahash: int
    #: Zero-mean, unit-norm 16x16 grey thumbnail (flattened) that confirms near-duplicates.
    signature: np.ndarray


def average_hash(image: Image.Image) -> int:
    """The 64-bit average hash: 8x8 grey pixels, each bit set where brighter than the mean."""
    grey = np.asarray(image.convert("L").resize((8, 8), Image.Resampling.BILINEAR), float)
    bits = (grey > grey.mean()).flatten()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def signature(image: Image.Image) -> np.ndarray:
    """A grey ``CONFIRM_SIDE`` square thumbnail, zero mean and unit norm, as float32."""
    grey = image.convert("L").resize((CONFIRM_SIDE, CONFIRM_SIDE), Image.Resampling.BILINEAR)
    vector = np.asarray(grey, np.float32).flatten()
    vector -= vector.mean()
    return vector / max(float(np.linalg.norm(vector)), 1e-6)


def inspect(path: Path, index: int) -> ImageStats:
    """Statistics of one image (raises ``OSError`` and friends when it is unreadable)."""
    with Image.open(path) as im:
        width, height, mode, fmt = im.width, im.height, im.mode, im.format or "?"
        im.draft("RGB", (THUMB_SIDE, THUMB_SIDE))  # JPEG: decode at 1/2..1/8 scale
        im.thumbnail((THUMB_SIDE, THUMB_SIDE))
        rgb = im.convert("RGB")
    pixels = np.asarray(rgb, float)
    return ImageStats(
        index=index,
        width=width,
        height=height,
        mode=mode,
        format=fmt,
        brightness=float(np.asarray(rgb.convert("L"), float).mean()),
        mean_r=float(pixels[..., 0].mean()),
        mean_g=float(pixels[..., 1].mean()),
        mean_b=float(pixels[..., 2].mean()),
        std=float(pixels.std()),
        ahash=average_hash(rgb),
        signature=signature(rgb),
    )


def cross_class_near_duplicates(
    stats: list[ImageStats], labels: list[int], max_bits: int = NEAR_DUPLICATE_BITS
) -> list[tuple[int, int, int]]:
    """Pairs ``(index_a, index_b, distance)`` of images of different classes that look alike.

    Candidates have average hashes within ``max_bits``; their 16x16 thumbnails must also
    correlate above ``NEAR_DUPLICATE_CORRELATION``.
    """
    hashes = np.array([s.ahash for s in stats], dtype=np.uint64)
    label = np.array(labels)
    pairs = []
    chunk = 512
    for start in range(0, len(hashes), chunk):
        block = hashes[start : start + chunk, None] ^ hashes[None, :]
        dist = np.bitwise_count(block)
        rows, cols = np.nonzero(dist <= max_bits)
        for r, c in zip(rows + start, cols, strict=True):
            if (
                r < c
                and label[r] != label[c]
                and float(stats[r].signature @ stats[c].signature) >= NEAR_DUPLICATE_CORRELATION
            ):
                pairs.append((stats[r].index, stats[c].index, int(dist[r - start, c])))
    return sorted(pairs, key=lambda p: (p[2], p[0], p[1]))


def _read_all(images: LabeledImages, chosen: list[int]) -> tuple[list[ImageStats], list[Any]]:
    def one(i: int) -> ImageStats | tuple[str, str]:
        try:
            return inspect(images.root / images.paths[i], i)
        except Exception as exc:  # noqa: BLE001 - any decoder failure makes a file unreadable
            return images.paths[i], f"{type(exc).__name__}: {exc}"

    stats: list[ImageStats] = []
    unreadable: list[tuple[str, str]] = []
    with ThreadPoolExecutor(THREADS) as pool:
        for item in pool.map(one, chosen, chunksize=64):
            if isinstance(item, ImageStats):
                stats.append(item)
            else:
                unreadable.append(item)
    return stats, unreadable


def _hist(ax: Any, groups: dict[str, list[float]], title: str, bins: int = 30) -> None:
    for name, values in groups.items():
        if values:
            ax.hist(values, bins=bins, alpha=0.5, label=name, histtype="stepfilled")
    ax.set_title(title)
    ax.legend()


def explore(
    data_dir: str | Path, out_dir: str | Path, sample: int = DEFAULT_SAMPLE, seed: int = 0
) -> Path:
    """Write ``report.html``, its PNG plots and ``summary.json`` to ``out_dir``."""
    images = discover(data_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chosen = list(range(len(images)))
    sampled = len(chosen) > sample
    if sampled:
        chosen = sorted(random.Random(seed).sample(chosen, sample))
    stats, unreadable = _read_all(images, chosen)
    labels = [images.labels[s.index] for s in stats]
    by_class = {
        name: [s for s, lab in zip(stats, labels, strict=True) if lab == k]
        for k, name in enumerate(images.classes)
    }
    pairs = cross_class_near_duplicates(stats, labels)
    summary: dict[str, Any] = {
        "data": str(images.root),
        "images": len(images),
        "per_class": images.counts(),
        "looked_at": len(chosen),
        "sampled": sampled,
        "sample_seed": seed if sampled else None,
        "unreadable": [{"path": p, "reason": r} for p, r in unreadable],
        "modes": dict(Counter(s.mode for s in stats)),
        "formats": dict(Counter(s.format for s in stats)),
        "sizes": dict(Counter(f"{s.width}x{s.height}" for s in stats).most_common(10)),
        "file_bytes": {
            "mean": float(np.mean(images.sizes)),
            "min": min(images.sizes),
            "max": max(images.sizes),
        },
        "channels": {
            name: {
                c: float(np.mean([getattr(s, f"mean_{c}") for s in group])) if group else None
                for c in "rgb"
            }
            for name, group in by_class.items()
        },
        "brightness": {
            name: float(np.mean([s.brightness for s in group])) if group else None
            for name, group in by_class.items()
        },
        "near_duplicates_across_classes": [
            {"a": images.paths[a], "b": images.paths[b], "distance": d}
            for a, b, d in pairs[:PAIRS_LISTED]
        ],
        "near_duplicate_pairs_found": len(pairs),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(list(images.counts()), list(images.counts().values()), color="tab:blue")
    ax.set_title("images per class")
    fig.savefig(out / "class_counts.png", dpi=90, bbox_inches="tight")
    plt.close(fig)

    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    _hist(axes[0, 0], {n: [s.width for s in g] for n, g in by_class.items()}, "width (px)")
    _hist(axes[0, 1], {n: [s.height for s in g] for n, g in by_class.items()}, "height (px)")
    _hist(
        axes[0, 2],
        {n: [s.width / s.height for s in g] for n, g in by_class.items()},
        "aspect ratio (w / h)",
    )
    _hist(
        axes[1, 0],
        {n: [s.brightness for s in g] for n, g in by_class.items()},
        "brightness (mean grey)",
    )
    _hist(
        axes[1, 1],
        {n: [images.sizes[s.index] / 1024 for s in g] for n, g in by_class.items()},
        "file size (KiB)",
    )
    for name, group in by_class.items():
        means = [np.mean([getattr(s, f"mean_{c}") for s in group]) if group else 0 for c in "rgb"]
        axes[1, 2].plot(["R", "G", "B"], means, marker="o", label=name)
    axes[1, 2].set_title("mean channel value")
    axes[1, 2].legend()
    fig.subplots_adjust(hspace=0.3, wspace=0.25, left=0.05, right=0.98, top=0.95, bottom=0.06)
    fig.savefig(out / "distributions.png", dpi=90)
    plt.close(fig)

    rng = random.Random(seed)
    overview = [
        ("data folder", str(images.root)),
        ("images", len(images)),
        (
            "looked at",
            f"{len(chosen)}" + (f" (random sample, seed {seed})" if sampled else " (all)"),
        ),
        ("unreadable", len(unreadable)),
        ("colour modes", ", ".join(f"{k}: {v}" for k, v in summary["modes"].items())),
        ("formats", ", ".join(f"{k}: {v}" for k, v in summary["formats"].items())),
        ("most common sizes", ", ".join(f"{k} ({v})" for k, v in summary["sizes"].items())),
        ("near-duplicate pairs across classes", len(pairs)),
    ]
    per_class = [
        (
            name,
            images.counts()[name],
            *(summary["channels"][name][c] or 0.0 for c in "rgb"),
            summary["brightness"][name] or 0.0,
        )
        for name in images.classes
    ]
    pairs_sheet = None
    if pairs:
        shown = pairs[:8]
        files = [images.root / images.paths[i] for a, b, _ in shown for i in (a, b)]
        titles = [images.paths[i].rsplit("/", 1)[-1] for a, b, _ in shown for i in (a, b)]
        pairs_sheet = contact_sheet(files, titles, out / "near_duplicates.png")
    samples = []
    for name, group in by_class.items():
        picks = rng.sample(group, min(SAMPLES_PER_CLASS, len(group)))
        grid = contact_sheet(
            [images.root / images.paths[s.index] for s in picks],
            [f"{s.width}x{s.height}" for s in picks],
            out / f"samples_{name}.png",
        )
        samples.append((name, grid))
    page = render_page(
        "explore.html",
        f"catdog data exploration: {images.root.name}",
        overview=overview,
        per_class=per_class,
        unreadable=unreadable,
        near_duplicate_bits=NEAR_DUPLICATE_BITS,
        near_duplicate_correlation=NEAR_DUPLICATE_CORRELATION,
        pairs=[(images.paths[a], images.paths[b], d) for a, b, d in pairs[:PAIRS_LISTED]],
        pairs_sheet=pairs_sheet,
        samples=samples,
    )
    report = out / "report.html"
    report.write_text(page, encoding="utf-8")
    return report
