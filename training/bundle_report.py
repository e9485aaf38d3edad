"""Training report of a finished model from its sidecar and its validation split.

    python -m catdog.training.bundle_report --model catdog/models/default.keras \\
        --data ../shared/data/catsdogs-train --fraction 0.15 --out catdog/models/report

For models trained outside ``catdog train`` (the bundled Lite0 model comes from
``training.transfer``): learning curves, confusion matrix, ROC curve and the most
confidently wrong validation images, as ``report.html`` with PNG plots.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from catdog.db.registry import read_metadata
from catdog.training import datasets
from catdog.training.evaluate import compute_metrics, load_model, predict
from catdog.training.report import write_training_report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--fraction", type=float, default=0.15, help="Validation fraction used.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    meta = read_metadata(args.model)
    classes = list(meta["classes"])
    images = datasets.discover(args.data, classes)
    _, val = datasets.split(images, args.fraction, args.seed)
    files = [str(images.root / images.paths[i]) for i in val]
    labels = [int(images.labels[i]) for i in val]
    y_true, probs, kept = predict(load_model(args.model), files, labels, meta["input_size"])
    metrics = compute_metrics(y_true, probs, classes)
    epochs = meta.get("training", {}).get("history", [])  # a list of per-epoch dicts
    history = {k: [e[k] for e in epochs if k in e] for k in (epochs[0] if epochs else {})}
    out = write_training_report(
        args.out,
        history,
        y_true,
        probs,
        classes,
        [files[i] for i in kept],
        metrics,
        title=f"catdog {meta.get('arch', '')} model report",
    )
    print(out)


if __name__ == "__main__":
    main()
