"""Soak: many small images through two workers while one of them is killed again and again.

    .venv/bin/python bench/soak.py --images 20000 [--kills 5] [--bundled | --model FILE]

Runs on a private redis-server (append-only, so nothing queued is lost to a crash) and a
private schema in PostgreSQL on 127.0.0.1:5432. Worker A runs throughout; worker B is
SIGKILLed at random moments and restarted. At the end every registered image must have
exactly one result: prints images/s, failures, lost (must be 0), duplicated (must be 0),
redelivered batches, and worker A's memory at start and end, and writes
bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from sqlalchemy import Engine, create_engine, func, select  # noqa: E402

from bench.common import make_corpus, rss_mb, start_worker  # noqa: E402
from catdog.db.models import Image, Prediction  # noqa: E402

PG = os.environ.get("CATDOG_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
#: Small pictures: the soak is about the queue, not decoding speed.
SIZES = [(64, 48), (96, 72), (120, 90)]
#: Seconds before an abandoned batch is redelivered in the soak (leases keep live ones).
VISIBILITY_TIMEOUT_S = 10


def _schema_url() -> tuple[str, str]:
    from sqlalchemy import create_engine, text

    schema = f"soak_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    return schema, f"{PG}?options=-csearch_path%3D{schema}"


def _drop_schema(schema: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(PG)
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def _redelivered(logs: list[Path]) -> int:
    """Batches received more than once (by any worker), from the workers' logs."""
    seen: Counter[str] = Counter()
    pattern = re.compile(r"Task catdog\.classify_batch\[([0-9a-f-]+)\] received")
    for log in logs:
        seen.update(pattern.findall(log.read_text(errors="replace")))
    return sum(1 for n in seen.values() if n > 1)


def _in_batch(log: Path) -> bool:
    """True when the worker's last batch was received and had not finished."""
    lines = [
        line
        for line in log.read_text(errors="replace").splitlines()
        if "catdog.classify_batch[" in line
    ]
    return bool(lines) and lines[-1].rstrip().endswith("received")


def _results(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(Prediction)) or 0)


def _lost_and_duplicated(database_url: str, run_id: int) -> tuple[int, int, int]:
    """(registered images without a result, extra result rows, distinct images done)."""
    engine = create_engine(database_url)
    with engine.connect() as conn:
        images = conn.scalar(select(func.count()).select_from(Image)) or 0
        rows = conn.scalar(select(func.count()).select_from(Prediction)) or 0
        distinct = conn.scalar(select(func.count(func.distinct(Prediction.image_id)))) or 0
    engine.dispose()
    return images - distinct, rows - distinct, distinct


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs of worker B")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--model", type=Path, help="a .keras file (default: a tiny model)")
    parser.add_argument("--bundled", action="store_true", help="use the bundled model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "soak.json")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for the run")
    args = parser.parse_args()
    rng = random.Random(args.seed)

    from catdog.db.engine import make_engine
    from catdog.db.migrate import upgrade
    from catdog.settings import BUNDLED_MODEL
    from conftest import build_tiny_model
    from runs import count_run, scan_with_broker, wait_for_run
    from services import RedisServer

    work = Path(tempfile.mkdtemp(prefix="catdog-soak-"))
    corpus = make_corpus(
        Path(tempfile.gettempdir()) / f"catdog-soak-corpus-{args.images}",
        args.images,
        seed=args.seed,
        sizes=SIZES,
    )
    if args.bundled:
        model = BUNDLED_MODEL
    else:
        model = args.model or build_tiny_model(work / "tiny" / "tiny.keras")
    redis_server = RedisServer(work / "redis")
    redis_server.start()
    schema, db = _schema_url()
    engine = make_engine(db)
    upgrade(engine)
    engine.dispose()
    env = {
        **os.environ,
        "CATDOG_BROKER_URL": redis_server.url(),
        "CATDOG_DATABASE_URL": db,
        "CATDOG_MODEL": str(model),
        "CATDOG_BATCH_SIZE": str(args.batch_size),
        "CATDOG_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT_S),
        "CATDOG_MAX_RETRIES": str(max(5, args.kills + 1)),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    logs: list[Path] = []

    def worker(name: str) -> subprocess.Popen[bytes]:
        log = work / f"{name}-{len(logs)}.log"
        logs.append(log)
        argv = [sys.executable, "-m", "catdog", "worker", "-n", f"{name}-{len(logs)}@%h"]
        return start_worker(env, log, argv)

    steady = worker("a")
    victim = worker("b")
    summary: dict[str, object] = {}
    started = time.monotonic()
    scanner = threading.Thread(
        target=lambda: summary.update(s=scan_with_broker(env, corpus)), daemon=True
    )
    scanner.start()
    engine = make_engine(db)
    # Memory "at start" once both workers are warm (model traced, pools filled).
    while _results(engine) < 4 * args.batch_size and scanner.is_alive():
        time.sleep(0.5)
    rss_start = rss_mb(steady.pid)
    rss_samples = [rss_start]

    # Kill B at random moments (a few seconds after each restart), and restart it.
    kills = mid_batch = 0
    try:
        while kills < args.kills:
            time.sleep(rng.uniform(1, 5))
            rss_samples.append(rss_mb(steady.pid))
            run = summary.get("s")
            if run is not None and count_run(engine, run.run_id).finished:  # type: ignore[attr-defined]
                break
            # Prefer a moment when B holds a batch: that is the kill that tests redelivery.
            deadline = time.monotonic() + 5
            while not _in_batch(logs[-1]) and time.monotonic() < deadline:
                time.sleep(0.01)
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            kills += 1
            busy = _in_batch(logs[-1])
            mid_batch += busy
            print(
                f"[{time.monotonic() - started:6.1f}s] killed worker B"
                f" ({kills}{', mid-batch' if busy else ''})",
                flush=True,
            )
            victim = worker("b")
        scanner.join(timeout=args.timeout)
        run_id = summary["s"].run_id  # type: ignore[attr-defined]
        count = wait_for_run(db, run_id, timeout=args.timeout)
        elapsed = time.monotonic() - started
        rss_end = rss_mb(steady.pid)
        lost, duplicated, distinct = _lost_and_duplicated(db, run_id)
    finally:
        engine.dispose()
        for proc in (steady, victim):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        redis_server.kill()

    result = {
        "images": args.images,
        "workers": 2,
        "model": "bundled" if args.bundled else str(args.model or "tiny"),
        "batch_size": args.batch_size,
        "kills": kills,
        "kills_mid_batch": mid_batch,
        "seconds": round(elapsed, 1),
        "images_per_s": round(count.run_total / elapsed, 1),
        "labeled": count.labeled,
        "failures": count.failed,
        "lost": lost,
        "duplicated": duplicated,
        "run_counters_match": count.exactly_once,
        "redelivered_batches": _redelivered(logs),
        "worker_rss_mb_start": round(rss_start, 1),
        "worker_rss_mb_end": round(rss_end, 1),
        "worker_rss_mb_max": round(max([*rss_samples, rss_end]), 1),
        "cpu_count": os.cpu_count(),
    }
    _drop_schema(schema)
    print(
        f"{count.run_total} images in {elapsed:.0f}s ({result['images_per_s']} img/s), "
        f"{kills} kills ({mid_batch} mid-batch), "
        f"{result['redelivered_batches']} batches redelivered\n"
        f"failures {count.failed}, lost {lost}, duplicated {duplicated}, "
        f"counters match {count.exactly_once}\n"
        f"worker A RSS {rss_start:.0f} MiB at start, {rss_end:.0f} MiB at end"
    )
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    ok = lost == 0 and duplicated == 0 and count.exactly_once and distinct == args.images
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
