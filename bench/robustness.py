"""How models hold up on photos unlike their training set: accuracy under common shifts.

    .venv/bin/python bench/robustness.py [--model A.keras --model B.keras] [--n 600]

Other collections differ from the Kaggle photos in size, aspect, framing, colour,
compression, focus, exposure, background and orientation. This takes ``n`` photos from the
validation split (the seed and fraction recorded in the first model's metadata, so none
were trained on; every model given must share that split), applies each shift of
``catdog.training.views.SHIFTS``, runs the result through the workers' decoder and each
model as the workers load it (the ``.tflite`` on LiteRT when there is one), and reports per
model and shift: accuracy, errors, confident errors (top probability >= 0.98) and the
calibration error. The summary gives the mean over shifts, the worst shift, and the
accuracy on the hard slice: the (photo, shift) pairs that at least one of the compared
models gets wrong or is less than 90 % sure of, the same pairs for every model.
Writes bench/results/robustness.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.throughput import SHARED, load, resolve_model  # noqa: E402

#: A prediction at or above this confidence is "confident"; issue 14 counts such errors.
CONFIDENT = 0.98
#: Below this confidence a prediction counts as unsure (puts its pair in the hard slice).
UNSURE = 0.9


def _validation_photos(model_file: Path, data: Path, n: int) -> tuple[list[str], np.ndarray]:
    from catdog.db.registry import read_metadata
    from catdog.training.datasets import discover, split

    meta = read_metadata(model_file)
    # The split as recorded: top level (catdog train) or under training.split (bundled ones).
    recorded = {**meta, **meta.get("training", {}).get("split", {})}
    fraction = float(recorded.get("validation_fraction", 0.2))
    seed = int(recorded.get("seed", 0))
    images = discover(data, classes=meta["classes"])
    _, val = split(images, fraction, seed)
    picked = np.random.default_rng(0).choice(val, min(n, len(val)), replace=False)
    picked = np.sort(picked)
    return images.files([int(i) for i in picked]), np.array([images.labels[int(i)] for i in picked])


def shifted_probs(model_file: Path, files: list[str], truth: np.ndarray) -> dict[str, np.ndarray]:
    """Probabilities of every shift of every file, from the model as workers run it."""
    from catdog.training.views import SHIFTS, view_pixels

    model = load(model_file)
    size = int(model.input_size[0])
    raw = [Path(f).read_bytes() for f in files]
    out = {}
    for name in SHIFTS:
        pixels = np.stack([view_pixels(data, size, name) for data in raw])
        out[name] = np.asarray(model.predict(pixels), np.float64)
        print(f"  {name:<34}{np.mean(out[name].argmax(1) == truth):>9.4f}", flush=True)
    return out


def summarise(probs: dict[str, np.ndarray], truth: np.ndarray, hard: np.ndarray) -> dict[str, Any]:
    """Per-shift and overall figures of one model; ``hard`` masks (shift, photo) pairs."""
    from catdog.training.evaluate import expected_calibration_error

    shifts: dict[str, dict[str, float]] = {}
    for name, p in probs.items():
        correct = p.argmax(1) == truth
        confidence = p.max(1)
        shifts[name] = {
            "accuracy": float(correct.mean()),
            "errors": int((~correct).sum()),
            "confident_errors": int((~correct & (confidence >= CONFIDENT)).sum()),
            "ece": expected_calibration_error(correct, confidence),
            "mean_confidence": float(confidence.mean()),
        }
    stacked = np.stack([probs[name].argmax(1) == truth for name in probs])
    worst = min(shifts, key=lambda s: shifts[s]["accuracy"])
    return {
        "mean_accuracy": float(np.mean([r["accuracy"] for r in shifts.values()])),
        "worst_shift": worst,
        "worst_accuracy": shifts[worst]["accuracy"],
        "errors": int(sum(r["errors"] for r in shifts.values())),
        "confident_errors": int(sum(r["confident_errors"] for r in shifts.values())),
        "mean_ece": float(np.mean([r["ece"] for r in shifts.values()])),
        "hard_slice_accuracy": float(stacked[hard].mean()) if hard.any() else None,
        "shifts": shifts,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=SHARED)
    p.add_argument("--model", action="append", help="repeat to compare models side by side")
    p.add_argument("--n", type=int, default=600, help="validation photos to use")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results/robustness.json")
    p.add_argument("--save-probs", type=Path, help="also write every probability (.npz)")
    args = p.parse_args()

    model_files = [resolve_model(m) for m in (args.model or [None])]
    files, truth = _validation_photos(model_files[0], args.data, args.n)
    probs = {}
    for model_file in model_files:
        print(model_file, flush=True)
        started = time.perf_counter()
        probs[str(model_file)] = shifted_probs(model_file, files, truth)
        print(f"  {time.perf_counter() - started:.0f} s", flush=True)
    # The hard slice: pairs any model gets wrong or is unsure of (shifts x photos).
    hard = np.zeros((len(next(iter(probs.values()))), len(files)), bool)
    for by_shift in probs.values():
        for s, pr in enumerate(by_shift.values()):
            hard[s] |= (pr.argmax(1) != truth) | (pr.max(1) < UNSURE)
    summaries = {name: summarise(pr, truth, hard) for name, pr in probs.items()}
    report = {
        "photos": len(files),
        "hard_slice_pairs": int(hard.sum()),
        "confident": CONFIDENT,
        "models": summaries,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    if args.save_probs:
        arrays = {f"{m}|{s}": pr for m, by_shift in probs.items() for s, pr in by_shift.items()}
        arrays.update(truth=truth, files=np.array(files))
        np.savez(args.save_probs, **arrays)  # type: ignore[arg-type]
    keys = ("mean_accuracy", "worst_accuracy", "hard_slice_accuracy", "confident_errors")
    print(f"{'model':<48}" + "".join(f"{k:>22}" for k in keys))
    for name, summary in summaries.items():
        print(f"{name[-48:]:<48}" + "".join(f"{summary[k]:>22.4f}" for k in keys))


if __name__ == "__main__":
    main()
