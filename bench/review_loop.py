"""One full human-review loop on real photos, with a simulated reviewer.

    nice -n 10 .venv/bin/python bench/review_loop.py [--photos 2000] [--limit 200]
        [--audit 60] [--data-photos 400] [--epochs 2]

Photos come from the shared catsdogs-train set, drawn (seeded) from the bundled model's own
validation split, so the model never trained on any of them. Most of them form the
"archive"; the rest are a held-out set that is never reviewed nor trained on. Steps, each
timed, each through catdog's own commands in a fresh SQLite database:

1. ``catdog classify ARCHIVE`` with the bundled model (embedded mode);
2. ``catdog review export --limit L --audit A`` (the doubtful labels + the audit sample);
3. the reviewer, simulated: each task answered with the true label (the photo's folder in
   the shared set), written as a Label Studio JSON export file;
4. ``catdog review import`` that file, then ``catdog review status``;
5. ``run_training(from_reviews=True)``, what ``catdog retrain --from-reviews`` runs on the
   training worker: lite0 continuing from the bundled model on the human labels plus
   ``--data-photos`` photos of the bundled model's training split (the team's labeled
   folder), the gate on the held-out human labels;
6. relabel: ``catdog classify ARCHIVE`` again (embedded mode's relabel: classify labels with
   the model in use, now the promoted one); human labels stay;
7. measure: accuracy of the bundled and the new model on the archive photos the bundled
   model got wrong (all of them, and those not trained on), on the held-out set, and of the
   exported labels (human labels win) before and after.

Writes bench/results/review_loop.json.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.throughput import SHARED  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "review_loop.json"


def _photos(
    n: int, data_n: int, seed: int
) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """(n photos of the bundled model's validation split, data_n of its training split)."""
    from catdog.db.registry import read_metadata
    from catdog.settings import BUNDLED_MODEL
    from catdog.training.datasets import discover, split

    meta = read_metadata(BUNDLED_MODEL)
    recorded = meta["training"]["split"]
    images = discover(SHARED, classes=meta["classes"])
    train_idx, val_idx = split(
        images, float(recorded["validation_fraction"]), int(recorded["seed"])
    )
    rng = random.Random(seed)
    picked = rng.sample(val_idx, min(n, len(val_idx)))
    given = rng.sample(train_idx, data_n)

    def named(idx: list[int]) -> list[tuple[Path, str]]:
        return [(images.root / images.paths[i], images.classes[images.labels[i]]) for i in idx]

    return named(picked), named(given)


class Loop:
    """The working folder, the environment of the catdog commands, and the step timings."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CATDOG_")} | {
            "CATDOG_DATABASE_URL": f"sqlite:///{work / 'catdog.db'}",
            "CATDOG_MODELS_DIR": str(work / "models"),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        self.seconds: dict[str, float] = {}

    def catdog(self, step: str, *args: str) -> str:
        """Run ``catdog ARGS`` as a user would; time it under ``step``; return stdout."""
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "catdog", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - started
        if out.returncode != 0:
            sys.exit(f"catdog {' '.join(args)} failed:\n{out.stderr[-3000:]}")
        print(
            f"  {step}: {self.seconds[step]:.1f} s  {out.stderr.strip().splitlines()[-1:]}",
            flush=True,
        )
        return out.stdout


def _ls_export(tasks: list[dict[str, Any]], truth: dict[str, str]) -> list[dict[str, Any]]:
    """Label Studio's JSON export of the tasks as a reviewer who knows the truth answers."""
    out = []
    for i, task in enumerate(tasks):
        label = truth[task["data"]["catdog_path"]]
        out.append(
            {
                **task,
                "id": i + 1,
                "annotations": [
                    {
                        "id": 10_000 + i,
                        "completed_by": {"id": 1, "email": "reviewer@example.com"},
                        "was_cancelled": False,
                        "created_at": "2026-12-02T12:00:00Z",
                        "updated_at": "2026-12-02T12:00:00Z",
                        "lead_time": 2.0,
                        "result": [
                            {
                                "from_name": "label",
                                "to_name": "image",
                                "type": "choices",
                                "value": {"choices": [label]},
                            }
                        ],
                    }
                ],
            }
        )
    return out


def _model_labels(db_url: str, version: str) -> dict[str, str]:
    """Archive path -> the label ``version`` gave it."""
    from sqlalchemy import create_engine, select

    from catdog.db.models import Image, ModelVersion, Prediction

    engine = create_engine(db_url)
    with engine.connect() as c:
        rows = c.execute(
            select(Image.path, Prediction.label)
            .join(Prediction, Prediction.image_id == Image.id)
            .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
            .where(ModelVersion.version == version, Prediction.error.is_(None))
        ).all()
    engine.dispose()
    return {path: label for path, label in rows}


def _accuracy(labels: dict[str, str], truth: dict[str, str], names: list[str]) -> dict[str, Any]:
    right = sum(labels.get(n) == truth[n] for n in names)
    return {
        "n": len(names),
        "correct": right,
        "accuracy": round(right / len(names), 4) if names else None,
    }


def _exported(loop: Loop) -> dict[str, dict[str, str]]:
    out = loop.catdog("export", "export", "--format", "csv")
    archive = str(loop.work / "archive")
    return {
        Path(r["path"]).relative_to(archive).as_posix(): r for r in csv.DictReader(io.StringIO(out))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=2000, help="photos drawn in all")
    parser.add_argument("--heldout", type=int, default=400, help="of them, never reviewed")
    parser.add_argument("--limit", type=int, default=200, help="doubtful labels sent")
    parser.add_argument("--audit", type=int, default=60, help="audit sample sent")
    parser.add_argument("--data-photos", type=int, default=400, help="--data photos")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep")
    parser.add_argument(
        "--force", action="store_true", help="promote whatever the gate says (retrain --force)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="catdog-review-loop-"))
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    loop = Loop(work)
    started = time.perf_counter()

    # The photos: copies in a flat archive (names say nothing of the label), a held-out set,
    # and links to the training-split photos that stand for the team's labeled folder.
    t = time.perf_counter()
    picked, given = _photos(args.photos, args.data_photos, args.seed)
    archive, heldout = picked[args.heldout :], picked[: args.heldout]
    truth: dict[str, str] = {}
    (work / "archive").mkdir()
    for i, (src, label) in enumerate(archive):
        name = f"img{i:05d}.jpg"
        shutil.copyfile(src, work / "archive" / name)
        truth[name] = label
    for src, label in given:
        (work / "data" / label).mkdir(parents=True, exist_ok=True)
        (work / "data" / label / src.name).symlink_to(src)
    for src, label in heldout:
        (work / "heldout" / label).mkdir(parents=True, exist_ok=True)
        (work / "heldout" / label / src.name).symlink_to(src)
    loop.seconds["prepare photos"] = time.perf_counter() - t
    print(
        f"{len(archive)} archive photos, {len(heldout)} held out, {len(given)} --data photos",
        flush=True,
    )

    # 1. Label the archive with the bundled model.
    loop.catdog("classify", "classify", str(work / "archive"), "--format", "csv")
    before = _exported(loop)
    bundled = next(iter(before.values()))["model_version"]
    wrong = sorted(n for n, r in before.items() if r["label"] != truth[n])
    print(
        f"bundled model {bundled}: {len(wrong)} of {len(before)} archive photos wrong", flush=True
    )

    # 2-4. Review: export tasks, answer them as the truth says, import the answers.
    tasks_file, export_file = work / "tasks.json", work / "ls-export.json"
    loop.catdog(
        "review export",
        "review",
        "export",
        "--limit",
        str(args.limit),
        "--audit",
        str(args.audit),
        "--seed",
        str(args.seed),
        "-o",
        str(tasks_file),
        "--config-out",
        str(work / "config.xml"),
        "--document-root",
        str(work),
    )
    tasks = json.loads(tasks_file.read_text())
    t = time.perf_counter()
    export_file.write_text(json.dumps(_ls_export(tasks, truth)))
    loop.seconds["simulated reviewer (write LS export)"] = time.perf_counter() - t
    imported = loop.catdog("review import", "review", "import", str(export_file))
    status = loop.catdog("review status", "review", "status").strip().splitlines()
    sent = {t["data"]["catdog_path"]: t["data"]["catdog_reason"] for t in tasks}
    changed = sum(truth[p] != before[p]["label"] for p in sent)
    audit = [p for p, why in sent.items() if why == "audit"]

    # 5. Retrain from the reviews, as the training worker runs it.
    from catdog.settings import Settings
    from catdog.training.tasks import HOLDOUT_KEY, run_training

    settings = Settings(database_url=loop.env["CATDOG_DATABASE_URL"], models_dir=work / "models")
    t = time.perf_counter()
    result = run_training(
        str(work / "data"),
        None,
        epochs=args.epochs,
        seed=args.seed,
        force=args.force,
        settings=settings,
        from_reviews=True,
    )
    loop.seconds["retrain --from-reviews"] = time.perf_counter() - t
    print(
        f"  retrain: {loop.seconds['retrain --from-reviews']:.1f} s  {result['message']}",
        flush=True,
    )

    # 6. Relabel with the promoted model (classify labels with the model in use).
    if result["promoted"]:
        loop.catdog(
            "relabel (classify again)", "classify", str(work / "archive"), "--format", "csv"
        )
    after = _exported(loop)

    # 7. Measure both models where it matters.
    from sqlalchemy import create_engine, select

    from catdog.db.models import ModelVersion
    from catdog.settings import BUNDLED_MODEL
    from catdog.training.datasets import discover
    from catdog.training.evaluate import evaluate_on

    engine = create_engine(loop.env["CATDOG_DATABASE_URL"])
    with engine.connect() as c:
        new_file = Path(
            c.execute(
                select(ModelVersion.file).where(ModelVersion.version == result["version"])
            ).scalar_one()
        )
    engine.dispose()
    t = time.perf_counter()
    held = discover(work / "heldout")
    heldout_scores = {
        "bundled": evaluate_on(BUNDLED_MODEL, held),
        "new": evaluate_on(new_file, held),
    }
    loop.seconds["measure held-out set (both models)"] = time.perf_counter() - t
    trained_on = {
        p.name.split(".")[0] for p in (work / "models").rglob("reviews/train/*/reviewed/*.jpg")
    }
    ids = _image_ids(loop.env["CATDOG_DATABASE_URL"])
    wrong_untrained = [n for n in wrong if str(ids[n]) not in trained_on]
    # The photos the bundled model got wrong, scored by both models whether or not the new
    # one was promoted (the Keras files, through the workers' decoder).
    t = time.perf_counter()
    wrong_scores: dict[str, Any] = {}
    if wrong:
        for name in wrong:
            (work / "wrong" / truth[name]).mkdir(parents=True, exist_ok=True)
            (work / "wrong" / truth[name] / name).symlink_to(work / "archive" / name)
        wrong_set = discover(work / "wrong", classes=["cat", "dog"])
        untrained = set(wrong_untrained)
        untrained_idx = [i for i, p in enumerate(wrong_set.paths) if p.split("/")[-1] in untrained]
        for key, model_file in (("bundled", BUNDLED_MODEL), ("new", new_file)):
            wrong_scores[key] = evaluate_on(model_file, wrong_set)
            if untrained_idx:
                wrong_scores[f"{key}_not_trained_on"] = evaluate_on(
                    model_file, wrong_set, untrained_idx
                )
    loop.seconds["measure wrong photos (both models)"] = time.perf_counter() - t
    new_labels = (
        _model_labels(loop.env["CATDOG_DATABASE_URL"], result["version"])
        if result["promoted"]
        else {}
    )
    names = sorted(truth)
    summary = {
        "photos": {
            "archive": len(archive),
            "heldout": len(heldout),
            "data": len(given),
            "source": "catsdogs-train, bundled model's validation split (never trained on)",
        },
        "bundled_version": bundled,
        "archive_wrong_before": len(wrong),
        "sent": {"total": len(tasks), "doubtful": len(tasks) - len(audit), "audit": len(audit)},
        "wrong_among_sent": sum(p in sent for p in wrong),
        "reviewers_changed": changed,
        "import": imported.strip(),
        "status": status,
        "audit_sample": {
            "n": len(audit),
            "model_right": sum(truth[p] == before[p]["label"] for p in audit),
        },
        "retrain": {
            k: result[k]
            for k in (
                "version",
                "promoted",
                "message",
                "metrics",
                "baseline_metrics",
                HOLDOUT_KEY,
                "training_seconds",
            )
        },
        "accuracy": {
            "archive_model_labels": {
                "bundled": _accuracy({n: r["label"] for n, r in before.items()}, truth, names),
                "new": _accuracy(new_labels, truth, names) if new_labels else None,
            },
            "archive_wrong_photos": {
                "n": len(wrong),
                "not_trained_on": len(wrong_untrained),
                "stored_labels": {
                    "bundled": _accuracy({n: before[n]["label"] for n in wrong}, truth, wrong),
                    "new_after_relabel": _accuracy(new_labels, truth, wrong)
                    if new_labels
                    else None,
                    "new_after_relabel_not_trained_on": _accuracy(
                        new_labels, truth, wrong_untrained
                    )
                    if new_labels
                    else None,
                },
                "models": {
                    k: {m: v.get(m) for m in ("n", "accuracy", "log_loss")}
                    for k, v in wrong_scores.items()
                },
            },
            "exported_labels_human_wins": {
                "before": _accuracy({n: r["label"] for n, r in before.items()}, truth, names),
                "after": _accuracy({n: r["label"] for n, r in after.items()}, truth, names),
                "human_rows_after": sum(r["source"] == "human" for r in after.values()),
            },
            "heldout": {
                k: {m: v.get(m) for m in ("n", "accuracy", "log_loss", "roc_auc")}
                for k, v in heldout_scores.items()
            },
        },
        "seconds": {k: round(v, 1) for k, v in loop.seconds.items()},
        "total_seconds": round(time.perf_counter() - started, 1),
        "settings": vars(args)
        | {"keep": str(args.keep) if args.keep else None, "out": str(args.out)},
        "machine": {"cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg()},
    }
    args.out.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(json.dumps(summary["accuracy"], indent=2))
    print(f"wrote {args.out}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


def _image_ids(db_url: str) -> dict[str, int]:
    from sqlalchemy import create_engine, select

    from catdog.db.models import Image

    engine = create_engine(db_url)
    with engine.connect() as c:
        out = {path: id_ for path, id_ in c.execute(select(Image.path, Image.id))}
    engine.dispose()
    return out


if __name__ == "__main__":
    main()
