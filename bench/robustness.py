"""How a model holds up on photos unlike its training set: accuracy under common shifts.

    .venv/bin/python bench/robustness.py [--data ../shared/data/catsdogs-train] [--n 800]

Other collections differ from the Kaggle photos in size, aspect, colour, compression,
focus, exposure and orientation. This takes ``n`` photos from the model's own validation
split (the seed and fraction recorded in its metadata, so none were trained on), applies
each shift, runs them through the worker's decoder and model, and reports accuracy per
shift. Writes bench/results/robustness.json.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.throughput import SHARED, load, resolve_model  # noqa: E402

Shift = Callable[[Image.Image], Image.Image]


def _jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


#: name -> (shift, JPEG quality of the saved result)
SHIFTS: dict[str, tuple[Shift, int]] = {
    "unchanged": (lambda im: im, 95),
    "4:3 photo at 1600x1200": (lambda im: im.resize((1600, 1200), Image.Resampling.BICUBIC), 92),
    "grayscale": (lambda im: ImageOps.grayscale(im).convert("RGB"), 92),
    "heavy JPEG (quality 25)": (lambda im: im, 25),
    "out of focus (blur 2 px)": (lambda im: im.filter(ImageFilter.GaussianBlur(2)), 92),
    "underexposed (x0.4)": (lambda im: Image.eval(im, lambda v: int(v * 0.4)), 92),
    "mirrored": (ImageOps.mirror, 92),
    "tight crop (70%)": (
        lambda im: im.crop(
            (
                int(im.width * 0.15),
                int(im.height * 0.15),
                int(im.width * 0.85),
                int(im.height * 0.85),
            )
        ),
        92,
    ),
    "sideways, no EXIF (90 degrees)": (lambda im: im.rotate(90, expand=True), 92),
}


def main() -> None:
    from catdog.db.registry import read_metadata
    from catdog.images import decode
    from catdog.training.datasets import discover, split

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=SHARED)
    p.add_argument("--model")
    p.add_argument("--n", type=int, default=800, help="validation photos to use")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results/robustness.json")
    args = p.parse_args()

    model_file = resolve_model(args.model)
    meta = read_metadata(model_file)
    # The split as recorded: top level (catdog train) or under training.split (the bundled one).
    recorded = {**meta, **meta.get("training", {}).get("split", {})}
    fraction = float(recorded.get("validation_fraction", 0.2))
    seed = int(recorded.get("seed", 0))
    images = discover(args.data)
    _, val = split(images, fraction, seed)
    picked = np.random.default_rng(0).choice(val, min(args.n, len(val)), replace=False)
    files = images.files([int(i) for i in picked])
    truth = np.array([images.labels[int(i)] for i in picked])
    model = load(model_file)
    size = model.input_size
    # Upright as the decoder sees them (EXIF orientation), before each shift re-encodes them.
    originals = [ImageOps.exif_transpose(Image.open(f)).convert("RGB") for f in files]

    results: dict[str, dict[str, float]] = {}
    for name, (shift, quality) in SHIFTS.items():
        pixels = np.stack([decode(_jpeg(shift(im), quality), size, 10**9)[0] for im in originals])
        probs = model.predict(pixels)
        results[name] = {
            "accuracy": float(np.mean(probs.argmax(1) == truth)),
            "mean_confidence": float(probs.max(1).mean()),
        }
        print(f"{name:<34}{results[name]['accuracy']:>9.4f}", flush=True)
    report = {
        "model": str(model_file),
        "photos": len(files),
        "validation_split": {"fraction": fraction, "seed": seed},
        "results": results,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
