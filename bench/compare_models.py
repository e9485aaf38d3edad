"""Both model families on the same held-out photos: the bundled Lite0 model and the scratch CNN.

    .venv/bin/python bench/compare_models.py --data ../shared/data/catsdogs-train

Each model was trained with its own split (Lite0: 15% validation, scratch: 20%, both seed 0,
near-duplicates kept together); the photos held out by both are unseen by either model, so
they are the fair common validation set. Writes bench/results/compare_models.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from catdog.training import datasets  # noqa: E402
from catdog.training.evaluate import evaluate_on  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "lite0": (ROOT / "catdog/models/default.keras", 0.15),
    "scratch": (ROOT / "training/results/scratch/model.keras", 0.20),
}
KEYS = ("accuracy", "roc_auc", "log_loss", "ece", "f1")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/compare_models.json")
    args = p.parse_args()
    images = datasets.discover(args.data)
    held_out = None
    for _, fraction in MODELS.values():
        _, val = datasets.split(images, fraction, args.seed)
        held_out = set(val) if held_out is None else held_out & set(val)
    common = sorted(held_out or [])
    results: dict[str, object] = {"common_validation_images": len(common)}
    for name, (model, _) in MODELS.items():
        t0 = time.perf_counter()
        metrics = evaluate_on(model, images, common)
        results[name] = {k: metrics.get(k) for k in KEYS} | {
            "seconds": round(time.perf_counter() - t0, 1),
            "file_mb": round(model.stat().st_size / 1e6, 1),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
