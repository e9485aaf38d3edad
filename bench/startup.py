"""Start-up cost of CPU inference: `catdog classify` of one image, and a worker's memory.

    .venv/bin/python bench/startup.py [--runs 3] [--model FILE] [--no-compare]

Every figure is a whole fresh process on a fresh SQLite database, so imports, migrations
and the model load are all counted:

- classify: `python -m catdog classify ONE.jpg` on the bundled model (or --model); wall time
  from spawn to exit and the process's peak resident memory (``ru_maxrss`` from ``wait4``).
  One extra run under ``-X importtime`` records whether TensorFlow or Keras was imported.
  With the comparison on, the same with ``CATDOG_RUNTIME=tensorflow``: the ``.keras`` file on
  TensorFlow, as GPU workers run it (and as every CPU process did before LiteRT).
- worker: a process that does what a CPU inference worker does (imports the Celery task
  module, builds its context, loads the model, labels one batch of real-size photos with
  ``classify_batch``); its resident memory after the load, after the batch, and its peak.
  No broker is needed: the images are registered first, by this process.

Writes bench/results/startup.json. Targets: classify < 3 s and < 600 MiB, worker < 600 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import make_corpus  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "catsdogs-train"
RESULTS = Path(__file__).resolve().parent / "results" / "startup.json"
#: The targets of issue 10, measured whole-process.
TARGETS = {"classify_seconds": 3.0, "classify_peak_mib": 600.0, "worker_peak_mib": 600.0}
#: Modules whose import marks a process as running TensorFlow.
HEAVY = ("tensorflow", "keras")

#: The worker process: what `catdog worker -Q inference` runs for its first batch.
WORKER_CODE = """
import json, sys, time
from pathlib import Path
from typing import Any

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")

from catdog.workers import tasks  # the Celery app and task module, as a worker imports them
from catdog.workers.inference import classify_batch

ids = json.loads(sys.argv[1])
ctx = tasks.context()
t0 = time.perf_counter()
with ctx.sessions.begin() as session:
    model = ctx.current_model(session)
loaded = {"load_seconds": round(time.perf_counter() - t0, 2), "rss_mib": round(status("VmRSS"), 1)}
t0 = time.perf_counter()
result = classify_batch(ctx, None, ids)
print(json.dumps({
    "runtime": model.runtime,
    "images": result.images,
    "done": result.done,
    "after_load": loaded,
    "batch_seconds": round(time.perf_counter() - t0, 2),
    "rss_after_batch_mib": round(status("VmRSS"), 1),
    "peak_rss_mib": round(status("VmHWM"), 1),
    "heavy_modules": sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras"}),
}))
"""


def _env(db: Path, model: Path | None, runtime: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATDOG_")}
    env["CATDOG_DATABASE_URL"] = f"sqlite:///{db}"
    if model is not None:
        env["CATDOG_MODEL"] = str(model)
    if runtime is not None:
        env["CATDOG_RUNTIME"] = runtime
    return env


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, str, str]:
    """(wall seconds, peak RSS in MiB, stdout, stderr) of one child process run to its end."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the sum
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}:\n{stderr[-3000:]}")
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    peak = usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    return wall, peak, stdout, stderr


def one_image(folder: Path) -> Path:
    """A real photo at a phone's size (or a generated one where the photos are absent)."""
    make_corpus(folder, 1, seed=1, sizes=[(1600, 1200)], photos=SHARED)
    return next(folder.glob("*.jpg"))


def classify_runs(
    image: Path, model: Path | None, runtime: str | None, runs: int, work: Path
) -> dict[str, object]:
    """`catdog classify IMAGE` ``runs`` times, then once under -X importtime."""
    argv = [sys.executable, "-m", "catdog", "classify", str(image), "--format", "jsonl"]
    rows = []
    for i in range(runs):
        db = work / f"classify-{runtime or 'auto'}-{i}.db"
        wall, peak, stdout, _ = timed(argv, _env(db, model, runtime))
        rows.append(
            {
                "seconds": round(wall, 2),
                "peak_rss_mib": round(peak, 1),
                "label": json.loads(stdout.splitlines()[-1]).get("label"),
            }
        )
        print(f"  classify ({runtime or 'auto'}) run {i + 1}: {wall:.2f} s, {peak:.0f} MiB")
    db = work / f"classify-{runtime or 'auto'}-importtime.db"
    _, _, _, stderr = timed(
        [sys.executable, "-X", "importtime", *argv[1:]], _env(db, model, runtime)
    )
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in stderr.splitlines()
        if line.startswith("import time:")
    }
    return {
        "runtime": runtime or "auto",
        "runs": rows,
        "seconds": {"min": min(r["seconds"] for r in rows), "max": max(r["seconds"] for r in rows)},
        "peak_rss_mib": {
            "min": min(r["peak_rss_mib"] for r in rows),
            "max": max(r["peak_rss_mib"] for r in rows),
        },
        "heavy_modules_imported": sorted(imported & set(HEAVY)),
    }


def worker_run(model: Path | None, images: int, work: Path) -> dict[str, Any]:
    """A CPU worker's memory after loading the model and labeling one batch."""
    from catdog.db.engine import engine_for, session_factory
    from catdog.db.migrate import upgrade
    from catdog.producer.scan import scan
    from catdog.settings import Settings
    from catdog.stores import LocalStore

    folder = make_corpus(work / "batch", images, seed=2, photos=SHARED)
    db = work / "worker.db"
    env = _env(db, model, None)
    settings = Settings.model_validate(
        {"database_url": env["CATDOG_DATABASE_URL"], "batch_size": images}
    )
    engine = engine_for(settings.database())
    upgrade(engine)
    ids: list[int] = []
    scan(session_factory(engine), settings, [LocalStore(folder)], lambda _run, b: ids.extend(b))
    engine.dispose()
    _, peak, stdout, _ = timed([sys.executable, "-c", WORKER_CODE, json.dumps(ids)], env)
    row = json.loads(stdout.splitlines()[-1])
    row["ru_maxrss_mib"] = round(peak, 1)
    print(
        f"  worker: {row['runtime']}, {row['after_load']['rss_mib']:.0f} MiB after load, "
        f"{row['rss_after_batch_mib']:.0f} MiB after {row['images']} images, "
        f"peak {row['peak_rss_mib']:.0f} MiB"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="Runs of each classify figure.")
    parser.add_argument("--model", type=Path, help="A .keras file (default: the bundled one).")
    parser.add_argument("--batch", type=int, default=256, help="Images in the worker's batch.")
    parser.add_argument(
        "--no-compare", action="store_true", help="Skip the CATDOG_RUNTIME=tensorflow runs."
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="catdog-startup-") as tmp:
        work = Path(tmp)
        image = one_image(work / "one")
        print(f"classify of one image ({image.name}), {args.runs} runs each")
        classify = classify_runs(image, args.model, None, args.runs, work)
        compare = (
            None
            if args.no_compare
            else classify_runs(image, args.model, "tensorflow", args.runs, work)
        )
        worker = worker_run(args.model, args.batch, work)

    classify_s = classify["seconds"]["max"]  # type: ignore[index]
    classify_mib = classify["peak_rss_mib"]["max"]  # type: ignore[index]
    result = {
        "what": "whole-process start-up of CPU inference on a fresh SQLite database",
        "model": str(args.model or "bundled"),
        "host": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            # Other work on a shared machine slows every figure: read them with this.
            "load_average_before_after": [
                load_before,
                os.getloadavg() if hasattr(os, "getloadavg") else None,
            ],
        },
        "targets": TARGETS,
        "met": {
            "classify_seconds": classify_s < TARGETS["classify_seconds"],
            "classify_peak_mib": classify_mib < TARGETS["classify_peak_mib"],
            "worker_peak_mib": worker["peak_rss_mib"] < TARGETS["worker_peak_mib"],
        },
        "classify": classify,
        "classify_tensorflow_runtime": compare,
        "worker": worker,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["met"]), "->", args.out)


if __name__ == "__main__":
    main()
