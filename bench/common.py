"""Helpers shared by the benchmarks: image corpora, CPU accounting, worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

#: The PostgreSQL the benchmarks write to (the test database of this machine).
PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

#: Photo-like sizes: phone and camera pictures next to small thumbnails.
SIZES = [(200, 200), (640, 480), (1024, 768), (1600, 1200), (2048, 1536), (3000, 2000)]


def make_corpus(
    root: Path,
    n: int,
    seed: int = 0,
    sizes: list[tuple[int, int]] | None = None,
    photos: Path | None = None,
) -> Path:
    """Write ``n`` JPEGs of mixed sizes (once; reused by later runs of the same size).

    With ``photos`` (a folder of real cat/dog pictures) each file is a real photo upscaled to
    its size, so the model sees realistic content; otherwise smooth random images.
    """
    marker = root / f".complete-{n}-{seed}"
    if marker.exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = sorted(photos.rglob("*.jpg"))[:500] if photos and photos.is_dir() else []
    sizes = sizes or SIZES
    for i in range(n):
        w, h = sizes[int(rng.integers(len(sizes)))]
        if sources:
            img = Image.open(sources[i % len(sources)]).convert("RGB").resize((w, h))
        else:
            small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        img.save(root / f"img{i:06d}.jpg", quality=88)
    marker.touch()
    return root


class CpuMeter:
    """System-wide CPU utilisation between start() and stop(), from /proc/stat."""

    def _read(self) -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle

    def start(self) -> CpuMeter:
        self._t0 = self._read()
        return self

    def stop(self) -> float:
        """Fraction of all cores busy (0..1)."""
        total, idle = self._read()
        dt = total - self._t0[0]
        return 0.0 if dt == 0 else 1 - (idle - self._t0[1]) / dt


def peak_rss_mb(pid: int) -> float:
    """High-water resident memory of a running process (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb(pid: int) -> float:
    """Current resident memory of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_worker(
    env: dict[str, str], log: Path, argv: list[str] | None = None, timeout: float = 120
) -> subprocess.Popen[bytes]:
    """Start a worker process and wait until it logs 'ready.'."""
    argv = argv or [sys.executable, "-m", "catdog", "worker", "-n", f"bench-{os.getpid()}@%h"]
    fh = log.open("w")
    proc = subprocess.Popen(
        argv, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    while "ready." not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker failed to start:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    return proc


def pg_schema(name: str) -> str:
    """A fresh schema in the benchmark database, as a URL whose connections use it."""
    from sqlalchemy import create_engine, text

    engine = create_engine(PG)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{name}"'))
    engine.dispose()
    return f"{PG}?options=-csearch_path%3D{name}"
