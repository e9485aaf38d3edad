"""Producer and database speed: files registered per second, result rows written per second.

    .venv/bin/python bench/producer_db.py --files 50000 [--rows 50000]

Registration is measured on a second scan of an already-registered folder (the common case:
a nightly re-scan); writes are `save_outcomes` batches of 256 into PostgreSQL. Also checks that
the producer never holds more than the high-water mark of batches in the queue.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import pg_schema  # noqa: E402
from catdog.db.engine import make_engine, session_factory  # noqa: E402
from catdog.db.migrate import upgrade  # noqa: E402
from catdog.db.models import ModelVersion, ScanRun  # noqa: E402
from catdog.db.queries import Outcome, save_outcomes  # noqa: E402
from catdog.producer.scan import scan  # noqa: E402
from catdog.settings import Settings  # noqa: E402
from catdog.stores import LocalStore  # noqa: E402


def make_tree(root: Path, n: int) -> None:
    """n tiny files in folders of 1,000 (the walk and the database are measured, not decoding)."""
    marker = root / f".complete-{n}"
    if marker.exists():
        return
    for i in range(n):
        d = root / f"d{i // 1000:04d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:07d}.jpg").write_bytes(b"x")
    marker.touch()


def bench_registration(url: str, root: Path, batch: int, high_water: int) -> dict[str, float]:
    engine = make_engine(url)
    upgrade(engine)
    sessions = session_factory(engine)
    model = Path(tempfile.mkdtemp()) / "m.keras"
    model.write_bytes(b"weights")
    model.with_suffix(".json").write_text('{"classes": ["cat", "dog"], "input_size": [8, 8]}')
    settings = Settings(
        database_url=url,
        model=model,
        batch_size=batch,  # type: ignore[arg-type]
        queue_high_water=high_water,
    )
    store = LocalStore(root)
    queued: list[int] = []  # a fake queue, drained by a fake worker slower than the producer
    max_depth = 0
    calls = 0

    def send(run_id: int, ids: list[int]) -> None:
        nonlocal max_depth
        queued.append(len(ids))
        max_depth = max(max_depth, len(queued))

    def depth() -> int:
        nonlocal calls
        calls += 1
        if queued and calls % 4 == 0:  # the "worker" finishes a batch every 4th look
            queued.pop(0)
        return len(queued)

    import catdog.producer.scan

    catdog.producer.scan.BACKPRESSURE_POLL_S = 0.001  # the fake worker is instant; don't sleep
    t0 = time.perf_counter()
    first = scan(sessions, settings, [store], send, depth)
    t_first = time.perf_counter() - t0
    # Mark everything as labeled, as workers would have.
    with sessions.begin() as s:
        vid = s.get(ScanRun, first.run_id).model_version_id  # type: ignore[union-attr]
        from sqlalchemy import select

        from catdog.db.models import Image

        ids = list(s.scalars(select(Image.id)))
    for i in range(0, len(ids), 5000):
        with sessions.begin() as s:
            save_outcomes(s, None, vid, [Outcome(x, "cat", 0.9) for x in ids[i : i + 5000]])
    t0 = time.perf_counter()
    second = scan(sessions, settings, [store], send, depth)
    t_second = time.perf_counter() - t0
    engine.dispose()
    return {
        "files": first.files_seen,
        "first_scan_files_per_s": first.files_seen / t_first,
        "second_scan_files_per_s": second.files_seen / t_second,
        "second_scan_queued": second.queued,
        "max_batches_in_queue": max_depth,
        "high_water": high_water,
    }


def _write_batches(url: str, run_id: int, vid: int, batches: list[list[int]]) -> None:
    """One writer (a worker's share of the batches), on its own connection."""
    engine = make_engine(url)
    sessions = session_factory(engine)
    probs = {"cat": 0.9, "dog": 0.1}
    for ids in batches:
        with sessions.begin() as s:
            save_outcomes(
                s,
                run_id,
                vid,
                [Outcome(x, "cat", 0.9, probs, None, "ab" * 32, 640, 480) for x in ids],
            )
    engine.dispose()


def bench_writes(url: str, rows: int, writers: int = 1) -> dict[str, float]:
    """``rows`` results in batches of 256 into one run, from ``writers`` processes at once."""
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    from sqlalchemy import func, insert, select

    from catdog.db.models import Image, Prediction

    engine = make_engine(url)
    upgrade(engine)
    sessions = session_factory(engine)
    with sessions.begin() as s:
        mv = ModelVersion(
            version="bench",
            file="x",
            sha256="x",
            arch="x",
            classes=["cat", "dog"],
            input_size=[8, 8],
            metrics={},
        )
        s.add(mv)
        s.flush()
        vid = mv.id
        s.execute(
            insert(Image),
            [{"store": "/s", "path": f"{i}.jpg", "size": 1, "mtime": 0.0} for i in range(rows)],
        )
        run = ScanRun(
            root="/s", relabel=False, files_seen=rows, skipped=0, total=rows, done=0, failed=0
        )
        s.add(run)
        s.flush()
        run_id = run.id
        ids = list(s.scalars(select(Image.id).order_by(Image.id)))
    batches = [ids[i : i + 256] for i in range(0, rows, 256)]
    shares = [batches[w::writers] for w in range(writers)]  # as a queue hands them out
    write = partial(_write_batches, url, run_id, vid)
    with ProcessPoolExecutor(writers) as pool:
        list(pool.map(write, [[]] * writers))  # start the processes and their imports untimed
        t0 = time.perf_counter()
        list(pool.map(write, shares))
        secs = time.perf_counter() - t0
    with sessions() as s:
        done = s.get(ScanRun, run_id).done  # type: ignore[union-attr]
        stored = s.scalar(select(func.count()).select_from(Prediction))
    engine.dispose()
    if done != rows or stored != rows:
        raise SystemExit(f"{writers} writers: counted {done}, stored {stored}, expected {rows}")
    return {"rows": rows, "rows_per_s": rows / secs, "batch": 256, "writers": writers}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=50_000)
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--tree", type=Path, default=Path(tempfile.gettempdir()) / "catdog-tree")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results/producer_db.json")
    args = p.parse_args()
    make_tree(args.tree / str(args.files), args.files)
    results = {
        "registration_postgresql": bench_registration(
            pg_schema("bench_producer"), args.tree / str(args.files), 256, 64
        ),
        "registration_sqlite": bench_registration(
            f"sqlite:///{tempfile.mkdtemp()}/bench.db", args.tree / str(args.files), 256, 64
        ),
        "writes_postgresql": bench_writes(pg_schema("bench_writes"), args.rows),
        "writes_postgresql_4_writers": bench_writes(pg_schema("bench_writes"), args.rows, 4),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
