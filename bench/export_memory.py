"""Peak memory of ``catdog export`` on a million results, from SQLite and from PostgreSQL.

    .venv/bin/python bench/export_memory.py [--rows 1000000] [--formats csv jsonl]

Fills a fresh database quickly (executemany on SQLite, one ``INSERT ... SELECT`` over
``generate_series`` on PostgreSQL, into a database this script creates and drops), then runs
``catdog export --out FILE`` as a subprocess per format and records its peak RSS (the
child's ``ru_maxrss``, read with ``os.wait4`` so each run has its own), its wall time and rows
per second, in ``bench/results/export_memory.json``. The budget is 300 MiB (issue 11).
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
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, make_url, text  # noqa: E402

from catdog.db.engine import make_engine  # noqa: E402
from catdog.db.migrate import upgrade  # noqa: E402

#: The PostgreSQL server (trust auth); the script makes and drops its own database on it.
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
#: Peak RSS ``catdog export`` must stay under, whatever the number of rows.
BUDGET_MIB = 300
#: Rows per executemany call while filling SQLite.
FILL_CHUNK = 50_000
#: Where the figures go.
RESULTS = Path(__file__).resolve().parent / "results" / "export_memory.json"
#: Class probabilities of every fake result (``--details`` is not measured; they ride along).
PROBS = json.dumps({"cat": 0.9, "dog": 0.1})


def _model_version(conn) -> int:  # type: ignore[no-untyped-def]
    conn.execute(
        text(
            "INSERT INTO model_versions (version, file, sha256, arch, classes, input_size, "
            "metrics, created, is_production) VALUES ('bench', '/m.keras', '0', 'tiny', "
            "'[\"cat\", \"dog\"]', '[32, 32]', '{}', CURRENT_TIMESTAMP, true)"
        )
    )
    return int(conn.scalar(text("SELECT id FROM model_versions WHERE version = 'bench'")))


def fill_sqlite(url: str, rows: int) -> None:
    """``rows`` images, each with one prediction (every tenth a failure), by executemany."""
    engine = make_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        version = _model_version(conn)
        raw = conn.connection.driver_connection
        assert raw is not None
        cur = raw.cursor()
        now = "2026-01-01 00:00:00.000000"
        for start in range(1, rows + 1, FILL_CHUNK):
            ids = range(start, min(start + FILL_CHUNK, rows + 1))
            cur.executemany(
                "INSERT INTO images (id, store, path, size, mtime, registered) "
                "VALUES (?, '/archive', ?, 1000, 0.0, ?)",
                [(i, f"d{i // 1000:04d}/img{i:08d}.jpg", now) for i in ids],
            )
            cur.executemany(
                "INSERT INTO predictions (id, image_id, model_version_id, run_id, label, "
                "confidence, probabilities, error, sha256, width, height, created) "
                "VALUES (?, ?, ?, NULL, ?, ?, ?, ?, NULL, 640, 480, ?)",
                [
                    (i, i, version, None, None, None, "not an image", now)
                    if i % 10 == 0
                    else (i, i, version, "cat", 0.9, PROBS, None, now)
                    for i in ids
                ],
            )
    engine.dispose()


def fill_postgres(url: str, rows: int) -> None:
    """The same rows in two ``INSERT ... SELECT FROM generate_series`` statements."""
    engine = make_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        version = _model_version(conn)
        conn.execute(
            text(
                "INSERT INTO images (id, store, path, size, mtime, registered) "
                "SELECT i, '/archive', 'd' || lpad((i / 1000)::text, 4, '0') || '/img' "
                "|| lpad(i::text, 8, '0') || '.jpg', 1000, 0.0, now() "
                "FROM generate_series(1, CAST(:n AS bigint)) AS i"
            ),
            {"n": rows},
        )
        conn.execute(
            text(
                "INSERT INTO predictions (id, image_id, model_version_id, label, confidence, "
                "probabilities, error, width, height, created) "
                "SELECT i, i, :v, CASE WHEN i % 10 = 0 THEN NULL ELSE 'cat' END, "
                "CASE WHEN i % 10 = 0 THEN NULL ELSE 0.9 END, "
                "CASE WHEN i % 10 = 0 THEN NULL ELSE CAST(:p AS json) END, "
                "CASE WHEN i % 10 = 0 THEN 'not an image' END, 640, 480, now() "
                "FROM generate_series(1, CAST(:n AS bigint)) AS i"
            ),
            {"n": rows, "v": version, "p": PROBS},
        )
        # Sequences follow the explicit ids, as they would after real inserts.
        for table in ("images", "predictions"):
            conn.execute(
                text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), :n)"), {"n": rows}
            )
        conn.execute(text("ANALYZE"))
    engine.dispose()


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on ``PG_SERVER``, dropped afterwards (no other database is touched)."""
    name = f"catdog_bench_export_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(PG_SERVER, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_SERVER).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def measure_export(url: str, fmt: str, out: Path) -> dict[str, object]:
    """Run ``catdog export`` once; its peak RSS, seconds and rows per second."""
    env = {**os.environ, "CATDOG_DATABASE_URL": url}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "catdog", "export", "--format", fmt, "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"export failed ({proc.returncode}): {stderr}")
    with out.open("rb") as fh:
        rows = sum(1 for _ in fh) - (1 if fmt == "csv" else 0)
    peak_mib = usage.ru_maxrss / 1024  # kilobytes on Linux
    return {
        "format": fmt,
        "rows": rows,
        "seconds": round(seconds, 1),
        "rows_per_s": round(rows / seconds),
        "peak_rss_mib": round(peak_mib, 1),
        "output_mib": round(out.stat().st_size / 2**20, 1),
        "under_budget": peak_mib < BUDGET_MIB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--formats", nargs="+", default=["csv", "jsonl"])
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    runs: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for database in args.databases:
            with (
                postgres_database()
                if database == "postgresql"
                else _sqlite(work / "bench.db") as url
            ):
                started = time.perf_counter()
                (fill_postgres if database == "postgresql" else fill_sqlite)(url, args.rows)
                fill_s = time.perf_counter() - started
                print(f"{database}: {args.rows} rows filled in {fill_s:.0f} s", file=sys.stderr)
                for fmt in args.formats:
                    result = {"database": database, "fill_seconds": round(fill_s, 1)}
                    result |= measure_export(url, fmt, work / f"export.{fmt}")
                    print(json.dumps(result), file=sys.stderr)
                    runs.append(result)
    report = {
        "benchmark": "catdog export: peak RSS of the process, streaming rows",
        "rows": args.rows,
        "budget_mib": BUDGET_MIB,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "runs": runs,
        "all_under_budget": all(r["under_budget"] for r in runs),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


@contextmanager
def _sqlite(path: Path) -> Iterator[str]:
    yield f"sqlite:///{path}"


if __name__ == "__main__":
    main()
