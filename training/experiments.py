"""Recipe experiments on cached backbone activations: the table in TRAINING_NOTES.md.

Each experiment trains a head (and optionally the final stage) the way
``training.transfer.train`` does, on activations cached once per view, and scores it,
with and without temperature scaling, on:

- the validation photos (3,749 in the Kaggle split);
- the same shifts of 600 validation photos that ``bench/robustness.py`` applies (mean
  accuracy, the worst shift, confident errors at >= 0.98 summed over shifts);
- the hard slice: validation photos, shifted or not, that a reference model (the old
  bundled default) gets wrong or is less than 90 % sure of.

Nothing is saved but one JSON line per experiment: the winner is then trained for real by
``training.transfer`` (same code, same caches) and evaluated end to end.

    python -m catdog.training.experiments cache --data DIR --cache-dir /tmp/cache \\
        --views photo crop mirror --shifts
    python -m catdog.training.experiments run --data DIR --cache-dir /tmp/cache \\
        --name frozen-photo-crop --views photo crop --epochs 0 --reference OLD.keras
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from catdog.training import datasets
from catdog.training.evaluate import compute_metrics
from catdog.training.transfer import (
    HEAD_EPOCHS,
    VALIDATION_FRACTION,
    apply_temperature,
    cache_path,
    decodable_rows,
    extract,
    fit_on_cache,
    fit_temperature,
    split_backbone,
)

#: Validation photos the shifts are applied to (as in bench/robustness.py).
SHIFT_PHOTOS = 600
#: Confidence of a "confident" error, and below which a reference prediction is unsure.
CONFIDENT, UNSURE = 0.98, 0.9


def shift_dir(name: str) -> str:
    """A file-system-safe folder name for a shift."""
    return "".join(c if c.isalnum() else "_" for c in name)


def shift_rows(val_idx: Sequence[int] | np.ndarray) -> np.ndarray:
    """The validation rows shifted: bench/robustness.py's choice of ``SHIFT_PHOTOS``."""
    picked = np.random.default_rng(0).choice(val_idx, SHIFT_PHOTOS, replace=False)
    return np.sort(picked)


def cache(args: argparse.Namespace) -> None:
    """Cache the activations of every view (all images) and of every shift (600 photos)."""
    from catdog.training.views import SHIFTS

    images = datasets.discover(args.data)
    _, val_idx = datasets.split(images, VALIDATION_FRACTION, args.seed)
    files = images.files()
    _, front, _ = split_backbone(args.size, args.arch)
    root = cache_path(Path(args.cache_dir), args.arch, datasets.fingerprint(images), args.size, 0)
    for view in args.views:
        started = time.perf_counter()
        extract(front, files, args.size, view, args.seed, root)
        print(f"{view}: {time.perf_counter() - started:.0f} s", flush=True)
    if args.shifts:
        rows = shift_rows(val_idx)
        for name in SHIFTS:
            if name != "unchanged":
                extract(
                    front,
                    [files[i] for i in rows],
                    args.size,
                    name,
                    0,
                    root / "shifts" / shift_dir(name),
                )
        print("shifts cached", flush=True)


def _reference(model_file: Path, files: Sequence[str], labels: Sequence[int]) -> np.ndarray:
    """The reference model's probabilities on ``files``, decoded as the workers decode them."""
    from catdog.db.registry import read_metadata
    from catdog.training.evaluate import load_model, predict

    size = read_metadata(model_file)["input_size"]
    _, probs, kept = predict(load_model(model_file), files, labels, size)
    if len(kept) != len(files):
        raise SystemExit("the reference model could not read every validation photo")
    return probs


def _scores(probs: np.ndarray, y: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    m = compute_metrics(y, probs, classes)
    wrong = probs.argmax(1) != y
    return {
        "accuracy": round(m["accuracy"], 4),
        "log_loss": round(m["log_loss"], 4),
        "ece": round(m["ece"], 4),
        "confident_errors": int((wrong & (probs.max(1) >= CONFIDENT)).sum()),
    }


def _summary(
    val_probs: np.ndarray,
    val_labels: np.ndarray,
    shift_probs: dict[str, np.ndarray],
    truth: np.ndarray,
    classes: Sequence[str],
) -> dict[str, Any]:
    val_scores = _scores(val_probs, val_labels, classes)
    per_shift = {name: _scores(p, truth, classes) for name, p in shift_probs.items()}
    if not per_shift:
        return {"validation": val_scores}
    worst = min(per_shift, key=lambda s: per_shift[s]["accuracy"])
    return {
        "validation": val_scores,
        "shift_mean_accuracy": round(
            float(np.mean([s["accuracy"] for s in per_shift.values()])), 4
        ),
        "worst_shift": worst,
        "worst_accuracy": per_shift[worst]["accuracy"],
        "shift_confident_errors": sum(s["confident_errors"] for s in per_shift.values()),
        "shift_ece": round(float(np.mean([s["ece"] for s in per_shift.values()])), 4),
        "shifts": len(per_shift),
        "per_shift": {name: r["accuracy"] for name, r in per_shift.items()},
    }


def _saved_probs(
    model_file: Path, shifts_file: Path | None, images: datasets.LabeledImages, val_rows: np.ndarray
) -> dict[str, np.ndarray]:
    """A saved model's probabilities on the validation photos and (from its
    ``bench/robustness.py --save-probs`` file) on the shifted photos."""
    result = {
        "photo": _reference(
            model_file,
            images.files([int(i) for i in val_rows]),
            [images.labels[int(i)] for i in val_rows],
        )
    }
    if shifts_file is not None:
        rows = shift_rows(val_rows)
        with np.load(shifts_file) as z:
            if not np.array_equal(z["files"], np.array(images.files([int(i) for i in rows]))):
                raise SystemExit(f"{shifts_file}: the shifts were made on other photos")
            prefix = f"{model_file}|"
            keys = [k for k in z.files if k.startswith(prefix)] or [k for k in z.files if "|" in k]
            for key in keys:
                result[key.split("|", 1)[1]] = z[key]
    return result


def score_saved(args: argparse.Namespace) -> dict[str, Any]:
    """A saved model's row (``--model``, else the reference's own), scored like the
    experiments; the hard slice is always the reference's."""
    from catdog.training.views import SHIFTS

    images = datasets.discover(args.data)
    _, val_idx = datasets.split(images, VALIDATION_FRACTION, args.seed)
    labels = np.asarray(images.labels)
    val_rows = np.asarray(val_idx)
    reference = _reference_probs(args, images, val_rows, shift_rows(val_idx))
    scored = reference
    if args.model:
        shifts_file = Path(args.model_shifts) if args.model_shifts else None
        scored = _saved_probs(Path(args.model), shifts_file, images, val_rows)
    shifts = {n: scored[n] for n in SHIFTS if n in scored and n != "unchanged"}
    truth = labels[shift_rows(val_idx)]
    summary = _summary(scored["photo"], labels[val_rows], shifts, truth, images.classes)
    hard, hits = 0, 0
    for name, probs in {"photo": scored["photo"], **shifts}.items():
        y = labels[val_rows] if name == "photo" else truth
        ref = reference[name]
        mask = (ref.argmax(1) != y) | (ref.max(1) < UNSURE)
        hard += int(mask.sum())
        hits += int((probs.argmax(1) == y)[mask].sum())
    result = {
        "name": args.name,
        "temperature": 1.0,
        "raw": summary,
        "calibrated": summary,
        "hard_slice": {"n": hard, "accuracy": round(hits / max(1, hard), 4)},
    }
    with open(args.out, "a") as out:
        out.write(json.dumps(result) + "\n")
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train one recipe on the caches and score it; append the result to ``--out``."""
    import keras

    from catdog.training.views import SHIFTS

    started = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    images = datasets.discover(args.data)
    train_idx, val_idx = datasets.split(images, VALIDATION_FRACTION, args.seed)
    labels = np.asarray(images.labels)
    root = cache_path(Path(args.cache_dir), args.arch, datasets.fingerprint(images), args.size, 0)
    _, front, tail = split_backbone(args.size, args.arch)
    cached = {v: extract(front, images.files(), args.size, v, args.seed, root) for v in args.views}
    train_rows, val_rows = decodable_rows(cached, train_idx, val_idx)
    rows = shift_rows(val_idx)
    shift_files = {n: root / "shifts" / shift_dir(n) / f"{n}.npy" for n in SHIFTS}
    shifted = {n: np.load(f, mmap_mode="r") for n, f in shift_files.items() if f.is_file()}
    probs_of, _dense, history = fit_on_cache(
        tail,
        {v: c[0] for v, c in cached.items()},
        labels,
        len(images.classes),
        train_rows,
        val_rows,
        args.seed,
        args.epochs,
        args.label_smoothing,
        args.average_last,
        args.head_epochs,
    )
    val_probs = probs_of(cached["photo"][0][val_rows])
    temperature = fit_temperature(val_probs, labels[val_rows])
    shift_probs = {name: probs_of(a) for name, a in shifted.items()}
    truth = labels[rows]
    result: dict[str, Any] = {
        "name": args.name,
        "arch": args.arch,
        "size": args.size,
        "views": list(args.views),
        "head_epochs": args.head_epochs,
        "tune_epochs": args.epochs,
        "label_smoothing": args.label_smoothing,
        "average_last": args.average_last,
        "temperature": round(temperature, 3),
    }
    for tag, t in (("raw", 1.0), ("calibrated", temperature)):
        result[tag] = _summary(
            apply_temperature(val_probs, t),
            labels[val_rows],
            {name: apply_temperature(p, t) for name, p in shift_probs.items()},
            truth,
            images.classes,
        )
    if args.reference:
        # The hard slice: photos/shifts the reference gets wrong or is unsure of.
        reference = _reference_probs(args, images, val_rows, rows)
        hits, total = 0, 0
        for name, ref in reference.items():
            hard = (ref.argmax(1) != (labels[val_rows] if name == "photo" else truth)) | (
                ref.max(1) < UNSURE
            )
            mine = val_probs if name == "photo" else shift_probs.get(name)
            if mine is None:
                continue
            y = labels[val_rows] if name == "photo" else truth
            hits += int((mine.argmax(1) == y)[hard].sum())
            total += int(hard.sum())
        result["hard_slice"] = {"n": total, "accuracy": round(hits / max(1, total), 4)}
    result["history_last"] = history[-1]
    result["seconds"] = round(time.perf_counter() - started)
    with open(args.out, "a") as out:
        out.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=1), flush=True)
    return result


def _reference_probs(
    args: argparse.Namespace, images: datasets.LabeledImages, val_rows: np.ndarray, rows: np.ndarray
) -> dict[str, np.ndarray]:
    """The reference's probabilities on the validation photos and (from a
    ``bench/robustness.py --save-probs`` file) on the shifts; cached beside ``--out``."""
    saved = Path(args.out).with_suffix(".reference.npz")
    if saved.is_file():
        with np.load(saved) as z:
            return {k: z[k] for k in z.files}
    shifts_file = Path(args.reference_shifts) if args.reference_shifts else None
    result = _saved_probs(Path(args.reference), shifts_file, images, val_rows)
    np.savez(saved, **result)  # type: ignore[arg-type]
    return result


def table(results: Sequence[dict[str, Any]]) -> str:
    """The experiments as a Markdown table (calibrated figures; raw confident errors too)."""
    head = (
        "| recipe | val acc | val log loss | val ECE | val conf. errors | shifts mean acc "
        "| worst shift | conf. errors on shifts (raw) | hard slice acc | T |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in results:
        c, raw = r["calibrated"], r["raw"]
        v = c["validation"]
        rows.append(
            f"| {r['name']} | {v['accuracy']:.4f} | {v['log_loss']:.4f} | {v['ece']:.4f} "
            f"| {v['confident_errors']} | {c.get('shift_mean_accuracy', float('nan')):.4f} "
            f"| {c.get('worst_accuracy', float('nan')):.3f} ({c.get('worst_shift', '-')}) "
            f"| {c.get('shift_confident_errors', '-')} ({raw.get('shift_confident_errors', '-')}) "
            f"| {r.get('hard_slice', {}).get('accuracy', float('nan')):.4f} "
            f"| {r['temperature']:.2f} |"
        )
    return head + "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    from catdog.training.views import TRAIN_VIEWS

    p = argparse.ArgumentParser(prog="python -m catdog.training.experiments", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("table", help="print the results of --out as a Markdown table")
    t.add_argument("--out", default="training/results/experiments.jsonl")
    for name in ("cache", "run", "reference"):
        s = sub.add_parser(name)
        s.add_argument("--data", required=True)
        s.add_argument("--cache-dir", required=True)
        s.add_argument("--arch", default="lite0")
        s.add_argument("--size", type=int, default=224)
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--views", nargs="+", default=["photo"], choices=TRAIN_VIEWS)
    c = sub.choices["cache"]
    c.add_argument("--shifts", action="store_true", help="also the shifted validation photos")
    f = sub.choices["reference"]
    f.add_argument("--name", default="reference (old default)")
    f.add_argument("--model", help="score this saved model instead (hard slice: reference's)")
    f.add_argument("--model-shifts", help="its bench/robustness.py --save-probs file")
    f.add_argument("--reference", required=True)
    f.add_argument("--reference-shifts")
    f.add_argument("--out", default="training/results/experiments.jsonl")
    r = sub.choices["run"]
    r.add_argument("--name", required=True)
    r.add_argument("--epochs", type=int, default=0, help="final-stage epochs (0: frozen)")
    r.add_argument("--head-epochs", type=int, default=HEAD_EPOCHS)
    r.add_argument("--label-smoothing", type=float, default=0.0)
    r.add_argument("--average-last", type=int, default=1)
    r.add_argument("--reference", help="model whose errors and doubts define the hard slice")
    r.add_argument("--reference-shifts", help="its bench/robustness.py --save-probs file")
    r.add_argument("--out", default="training/results/experiments.jsonl")
    args = p.parse_args(argv)
    if args.command == "table":
        lines = Path(args.out).read_text().splitlines()
        print(table([json.loads(line) for line in lines if line.strip()]), end="")
    elif args.command == "reference":
        score_saved(args)
    elif args.command == "cache":
        cache(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
