"""``catdog export`` streams: memory does not grow with the number of results, on SQLite and on
PostgreSQL (bench/export_memory.py measures the million-row case)."""

from __future__ import annotations

import importlib.util
import io
import tracemalloc
from pathlib import Path

import pytest

from catdog.db.engine import make_engine, session_factory
from catdog.ops.output import all_rows, write_rows


def _bench_module(name: str):  # type: ignore[no-untyped-def]
    """A benchmark script as a module (bench/ is not installed: it is not part of catdog)."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_fill = _bench_module("export_memory")
fill_postgres, fill_sqlite = _fill.fill_postgres, _fill.fill_sqlite

#: A small and a ten times larger database: a streaming export peaks alike on both.
SMALL, LARGE = 2_000, 20_000


def _export_peak(url: str, fmt: str) -> tuple[int, int]:
    """Rows written and the peak of Python allocations while writing them."""
    engine = make_engine(url)
    try:
        with session_factory(engine)() as session:
            tracemalloc.start()
            try:
                n = write_rows(all_rows(session), fmt, _Sink())
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    finally:
        engine.dispose()
    return n, peak


class _Sink(io.TextIOBase):
    """A stdout that forgets what it is given (the output itself is not what is measured)."""

    def write(self, s: str) -> int:
        return len(s)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_exporting_ten_times_more_rows_from_sqlite_needs_no_more_memory(tmp_path, fmt):
    """Peak allocations of 20,000 rows stay within twice those of 2,000 (buffering: 10x)."""
    peaks = []
    for rows in (SMALL, LARGE):
        url = f"sqlite:///{tmp_path / f'{rows}.db'}"
        fill_sqlite(url, rows)
        n, peak = _export_peak(url, fmt)
        assert n == rows
        peaks.append(peak)
    assert peaks[1] < 2 * peaks[0], peaks


def test_exporting_ten_times_more_rows_from_postgresql_needs_no_more_memory(postgres_url):
    """The same on PostgreSQL: a server-side cursor, not the whole result on the client."""
    fill_postgres(postgres_url, SMALL)
    small = _export_peak(postgres_url, "csv")
    fill_postgres_more(postgres_url, SMALL, LARGE)
    large = _export_peak(postgres_url, "csv")
    assert (small[0], large[0]) == (SMALL, LARGE)
    assert large[1] < 2 * small[1], (small, large)


def fill_postgres_more(url: str, have: int, want: int) -> None:
    """Grow the database of ``fill_postgres(url, have)`` to ``want`` results."""
    from sqlalchemy import text

    engine = make_engine(url)
    with engine.begin() as conn:
        version = conn.scalar(text("SELECT id FROM model_versions WHERE version = 'bench'"))
        conn.execute(
            text(
                "INSERT INTO images (id, store, path, size, mtime, registered) "
                "SELECT i, '/archive', 'x' || i || '.jpg', 1, 0.0, now() "
                "FROM generate_series(CAST(:a AS bigint), CAST(:b AS bigint)) AS i"
            ),
            {"a": have + 1, "b": want},
        )
        conn.execute(
            text(
                "INSERT INTO predictions (id, image_id, model_version_id, label, confidence, "
                "created) SELECT i, i, :v, 'cat', 0.9, now() "
                "FROM generate_series(CAST(:a AS bigint), CAST(:b AS bigint)) AS i"
            ),
            {"a": have + 1, "b": want, "v": version},
        )
    engine.dispose()
