"""Throughput side by side, in one run: ceiling, model only, embedded, cluster, naive.

    .venv/bin/python bench/throughput.py --images 2000 [--model FILE] [--naive 100]

Needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 for the cluster and naive
figures. Prints a table and writes bench/results/throughput.json.
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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import CpuMeter, make_corpus, peak_rss_mb, pg_schema, start_worker  # noqa: E402

REDIS = "redis://127.0.0.1:6379/14"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "catsdogs-train"


def resolve_model(arg: str | None) -> Path:
    """The model file to benchmark: --model, CATDOG_MODEL, else the bundled one."""
    from catdog.settings import BUNDLED_MODEL

    path = Path(arg or os.environ.get("CATDOG_MODEL") or BUNDLED_MODEL)
    if not path.is_file():
        sys.exit(f"no model at {path}: pass --model FILE")
    return path


def load(model_file: Path):  # type: ignore[no-untyped-def]
    from catdog.db.registry import read_metadata
    from catdog.workers.model import load_model

    meta = read_metadata(model_file)
    return load_model(model_file, 0, "bench", meta["classes"], tuple(meta["input_size"]))


def ceiling(files: list[Path], model_file: Path, threads: int) -> dict[str, float]:
    """Read + decode (parallel, reduced-size JPEG decode) overlapped with batched predict."""
    from catdog.images import load as decode_file

    m = load(model_file)
    m.predict(np.zeros((m.predict_batch, *m.input_size, 3), np.uint8))  # trace + warm up
    cpu = CpuMeter().start()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        futs = [pool.submit(decode_file, f, m.input_size, 10**9, 10**9) for f in files]
        for s in range(0, len(futs), m.predict_batch):
            batch = np.stack([f.result().pixels for f in futs[s : s + m.predict_batch]])
            m.predict_chunk(batch)
    wall = time.perf_counter() - t0
    return {"images_per_s": len(files) / wall, "seconds": wall, "cpu": cpu.stop()}


def model_only(files: list[Path], model_file: Path) -> dict[str, float]:
    """Predict on pre-decoded arrays: the model's own speed."""
    from catdog.images import load as decode_file

    m = load(model_file)
    arrays = np.stack([decode_file(f, m.input_size, 10**9, 10**9).pixels for f in files])
    m.predict(arrays[: m.predict_batch])
    cpu = CpuMeter().start()
    t0 = time.perf_counter()
    m.predict(arrays)
    wall = time.perf_counter() - t0
    return {"images_per_s": len(files) / wall, "seconds": wall, "cpu": cpu.stop()}


def decode_only(files: list[Path], size: tuple[int, int], threads: int) -> dict[str, float]:
    """Read + decode + resize alone, on the decode threads."""
    from catdog.images import load as decode_file

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda f: decode_file(f, size, 10**9, 10**9), files))
    wall = time.perf_counter() - t0
    return {"images_per_s": len(files) / wall, "seconds": wall}


def _run_seconds(url: str) -> tuple[float, int, int]:
    """Duration of the newest scan run, from its own timestamps, and its counters."""
    from sqlalchemy import create_engine, select

    from catdog.db.models import ScanRun

    engine = create_engine(url)
    with engine.connect() as conn:
        run = conn.execute(select(ScanRun).order_by(ScanRun.id.desc()).limit(1)).one()
    engine.dispose()
    return (run.finished - run.started).total_seconds(), run.done, run.failed


def embedded(corpus: Path, model_file: Path, tmp: Path) -> dict[str, float]:
    """`catdog classify` into SQLite; timed by the run's own start and finish."""
    url = f"sqlite:///{tmp / 'embedded.db'}"
    env = {**os.environ, "CATDOG_DATABASE_URL": url, "CATDOG_MODEL": str(model_file)}
    cpu = CpuMeter().start()
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "catdog", "classify", str(corpus), "--format", "csv"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - t0
    secs, done, failed = _run_seconds(url)
    return {
        "images_per_s": (done + failed) / secs,
        "seconds": secs,
        "wall_with_startup": wall,
        "cpu": cpu.stop(),
    }


def cluster(
    corpus: Path, warm: Path, model_file: Path, tmp: Path, worker_args: Sequence[str] = ()
) -> dict[str, float]:
    """`catdog scan --wait` with one warm worker (started with ``worker_args`` added, e.g.
    ``["-c", "2"]``) through Redis into PostgreSQL."""
    import redis

    redis.Redis.from_url(REDIS).flushdb()
    url = pg_schema("bench_cluster")
    env = {
        **os.environ,
        "CATDOG_DATABASE_URL": url,
        "CATDOG_BROKER_URL": REDIS,
        "CATDOG_MODEL": str(model_file),
    }
    subprocess.run(
        [sys.executable, "-m", "catdog", "db", "upgrade"], env=env, check=True, capture_output=True
    )
    argv = [sys.executable, "-m", "catdog", "worker", "-n", f"bench-{os.getpid()}@%h"]
    worker = start_worker(env, tmp / "worker.log", [*argv, *worker_args])
    try:
        # Warm-up run: the worker loads the model on its first batch, as in production.
        subprocess.run(
            [sys.executable, "-m", "catdog", "scan", str(warm), "--wait"],
            env=env,
            check=True,
            capture_output=True,
        )
        cpu = CpuMeter().start()
        subprocess.run(
            [sys.executable, "-m", "catdog", "scan", str(corpus), "--wait"],
            env=env,
            check=True,
            capture_output=True,
        )
        util = cpu.stop()
        secs, done, failed = _run_seconds(url)
        peak = peak_rss_mb(worker.pid)
    finally:
        worker.terminate()
        worker.wait(30)
    return {
        "images_per_s": (done + failed) / secs,
        "seconds": secs,
        "cpu": util,
        "worker_peak_rss_mb": peak,
    }


def naive(files: list[Path], model_file: Path, tmp: Path) -> dict[str, float]:
    """One task per image, full-size decode, one INSERT per result."""
    import psycopg
    import redis

    redis.Redis.from_url(REDIS).flushdb()
    dsn = "postgresql://postgres@127.0.0.1:5432/test"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS naive_results")
        conn.execute(
            "CREATE TABLE naive_results (id serial primary key, path text, "
            "label int, confidence float)"
        )
    env = {
        **os.environ,
        "NAIVE_BROKER_URL": REDIS,
        "NAIVE_MODEL": str(model_file),
        "NAIVE_PG_DSN": dsn,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.naive_app",
        "worker",
        "-Q",
        "naive",
        "--pool",
        "solo",
        "--loglevel",
        "INFO",
        "-n",
        f"naive-{os.getpid()}@%h",
    ]
    worker = start_worker(env, tmp / "naive.log", argv)
    os.environ["NAIVE_BROKER_URL"] = REDIS
    from bench.naive_app import app

    try:
        app.send_task("naive.classify_one", args=[str(files[0])], queue="naive")  # warm-up
        _wait_rows(dsn, 1)
        t0 = time.perf_counter()
        for f in files:
            app.send_task("naive.classify_one", args=[str(f)], queue="naive")
        _wait_rows(dsn, len(files) + 1)
        wall = time.perf_counter() - t0
    finally:
        worker.terminate()
        worker.wait(30)
    return {"images_per_s": len(files) / wall, "seconds": wall}


def _wait_rows(dsn: str, n: int) -> None:
    import psycopg

    while True:
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT count(*) FROM naive_results").fetchone()
        if row and row[0] >= n:
            return
        time.sleep(0.2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--naive", type=int, default=100, help="Images for the naive baseline.")
    p.add_argument("--model")
    p.add_argument("--threads", type=int, default=4, help="Decode threads.")
    p.add_argument("--corpus", type=Path, default=Path(tempfile.gettempdir()) / "catdog-bench")
    p.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="Subset of: ceiling model_only decode embedded cluster naive",
    )
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results/throughput.json")
    args = p.parse_args()

    model_file = resolve_model(args.model)
    corpus = make_corpus(args.corpus / f"mixed-{args.images}", args.images, photos=SHARED)
    warm = make_corpus(args.corpus / "warm", 16, seed=1, sizes=[(320, 240)], photos=SHARED)
    files = sorted(corpus.glob("*.jpg"))
    want = set(args.only or ["ceiling", "model_only", "decode", "embedded", "cluster", "naive"])
    from catdog.db.registry import read_metadata

    size = tuple(read_metadata(model_file)["input_size"])
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        steps = {
            "ceiling": lambda: ceiling(files, model_file, args.threads),
            "model_only": lambda: model_only(files, model_file),
            "decode": lambda: decode_only(files, size, args.threads),  # type: ignore[arg-type]
            "embedded": lambda: embedded(corpus, model_file, tmp),
            "cluster": lambda: cluster(corpus, warm, model_file, tmp),
            "naive": lambda: naive(files[: args.naive], model_file, tmp),
        }
        for name, step in steps.items():
            if name in want:
                print(f"running {name} ...", file=sys.stderr, flush=True)
                results[name] = step()
    top = results.get("ceiling", {}).get("images_per_s")
    for r in results.values():
        if top:
            r["ratio_to_ceiling"] = r["images_per_s"] / top
    if "cluster" in results and "naive" in results:
        results["cluster"]["ratio_to_naive"] = (
            results["cluster"]["images_per_s"] / results["naive"]["images_per_s"]
        )
    report = {
        "images": len(files),
        "model": str(model_file),
        "input_size": size,
        "machine": f"{platform.machine()} {os.cpu_count()} cpu",
        "results": results,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"{'mode':<12}{'img/s':>10}{'x ceiling':>11}{'cpu':>7}")
    for name, r in results.items():
        ratio = f"{r['ratio_to_ceiling']:.2f}" if "ratio_to_ceiling" in r else "-"
        cpu = f"{r['cpu']:.0%}" if "cpu" in r else "-"
        print(f"{name:<12}{r['images_per_s']:>10.1f}{ratio:>11}{cpu:>7}")
    if "cluster" in results:
        c = results["cluster"]
        print(
            f"worker peak RSS {c['worker_peak_rss_mb']:.0f} MiB;"
            f" cluster/naive {c.get('ratio_to_naive', float('nan')):.1f}x"
        )


if __name__ == "__main__":
    main()
