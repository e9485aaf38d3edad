"""Training report of a finished model from its sidecar and its validation split.

    python -m catdog.training.bundle_report --model catdog/models/default.keras \\
        --data ../shared/data/catsdogs-train --fraction 0.15 --out catdog/models/report

For models trained outside ``catdog train`` (the bundled Lite0 model comes from
``training.transfer``): learning curves, confusion matrix, ROC curve, the reliability
diagram (before and after the temperature recorded in the metadata, if any), the most
confidently wrong validation images and, given ``--robustness`` (a
``bench/robustness.py`` result that includes this model), the shifted views' table, as
``report.html`` with PNG plots.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from catdog.db.registry import read_metadata
from catdog.training import datasets
from catdog.training.evaluate import compute_metrics, load_model, predict
from catdog.training.report import write_training_report
from catdog.training.transfer import apply_temperature


def shift_rows(robustness: Path, model: Path) -> list[list[object]]:
    """The per-shift rows of ``model`` in a ``bench/robustness.py`` result."""
    report = json.loads(robustness.read_text())
    for name, summary in report["models"].items():
        if Path(name).resolve() == model.resolve():
            return [
                [shift, r["accuracy"], r["errors"], r["confident_errors"], r["ece"]]
                for shift, r in summary["shifts"].items()
            ]
    raise SystemExit(f"{robustness} has no results for {model}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--fraction", type=float, default=0.15, help="Validation fraction used.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--robustness", type=Path, help="bench/robustness.py output to include")
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
    keys = sorted({k for e in epochs for k in e})
    history = {k: [e[k] for e in epochs if k in e] for k in keys}
    temperature = float(meta.get("training", {}).get("temperature", 1.0))
    out = write_training_report(
        args.out,
        history,
        y_true,
        probs,
        classes,
        [files[i] for i in kept],
        metrics,
        title=f"catdog {meta.get('arch', '')} model report",
        uncalibrated=apply_temperature(probs, 1 / temperature) if temperature != 1.0 else None,
        shifts=shift_rows(args.robustness, args.model) if args.robustness else (),
    )
    print(out)


if __name__ == "__main__":
    main()
