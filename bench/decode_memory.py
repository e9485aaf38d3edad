"""Peak memory of a worker's decode threads on near-limit pictures, with and without the budget.

    .venv/bin/python bench/decode_memory.py [--work DIR] [--threads 4 8] [--kinds png-rgb ...]

For each kind it writes one 9,000 x 11,000 picture (99 M pixels, the default limit is 100 M)
of low-amplitude noise, so that it neither compresses to nothing nor passes the 200 MiB file
limit, and links it under 8 names. Each case runs in a fresh child process the code a worker
runs for a batch: ``InferenceContext.create`` (its decode pool and pixel budget, from
settings) and ``_decode_one`` on every file through that pool, as ``start_batch`` does. The
child's peak resident memory comes from ``os.wait4`` (ru_maxrss). Every case runs with the
default budget and with a budget too large to bound anything (the code before it).

The bound checked: the child's resident memory before decoding, plus the budget x
``BYTES_PER_PIXEL`` (or one picture's worth when a picture is larger than the budget), plus
one file's bytes per thread (files are read before their decode waits for the budget).
Writes bench/results/decode_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MiB = 1024 * 1024
#: Near the default CATDOG_MAX_IMAGE_PIXELS (100 M): the size the issue measured.
SIZE = (9_000, 11_000)
#: Files per folder: one batch's worth of near-limit pictures for 8 threads.
FILES = 8
#: A budget that never makes anyone wait: the decoder as it was before budgets.
UNBOUNDED = 10**12
#: kind -> (mode, format, save options). RGB PNG is the issue's case (4 bytes per pixel
#: once decoded); RGBA TIFF the costliest path (8); JPEGs decode at 1/8 scale, except that a
#: progressive one keeps its full-size coefficients (3 bytes per pixel at 4:2:0).
KINDS: dict[str, tuple[str, str, dict[str, object]]] = {
    "png-rgb": ("RGB", "PNG", {"compress_level": 1}),
    "tiff-rgba": ("RGBA", "TIFF", {"compression": "tiff_deflate"}),
    "jpeg": ("RGB", "JPEG", {"quality": 90}),
    "jpeg-progressive": ("RGB", "JPEG", {"quality": 90, "progressive": True}),
}


def make_folder(work: Path, kind: str) -> Path:
    """A folder of FILES names for one near-limit picture of ``kind`` (written once)."""
    mode, fmt, options = KINDS[kind]
    folder = work / kind
    first = folder / f"near-limit-0.{fmt.lower()}"
    if (folder / ".complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    w, h = SIZE
    rng = np.random.default_rng(0)
    # 2 bits of noise per channel (1 for RGBA) over a gradient: about 100 MB per file, under
    # the limit.
    levels = 2 if mode == "RGBA" else 4
    pixels = rng.integers(0, levels, (h, w, len(mode)), dtype=np.uint8) * (256 // levels)
    pixels += np.linspace(0, 63, w, dtype=np.uint8)[None, :, None]
    if mode == "RGBA":
        pixels[..., 3] = 255 - pixels[..., 3] // 8  # nearly opaque, but alpha to blend
    Image.fromarray(pixels, mode).save(first, fmt, **options)
    del pixels
    for i in range(1, FILES):
        link = folder / f"near-limit-{i}.{fmt.lower()}"
        link.unlink(missing_ok=True)
        link.hardlink_to(first)
    (folder / ".complete").touch()
    return folder


def child(folder: Path, threads: int, budget: int) -> None:
    """Decode every file of ``folder`` as a worker does; print what the parent cannot see."""
    from pydantic import SecretStr

    from catdog.settings import Settings
    from catdog.workers.inference import InferenceContext, _decode_one

    settings = Settings(
        database_url=SecretStr(f"sqlite:///{folder.parent / 'bench.db'}"),
        decode_threads=threads,
        decode_pixel_budget=budget,
        store_roots=[str(folder)],
    )
    ctx = InferenceContext.create(settings)
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    before = _status_bytes("VmRSS:")
    started = time.perf_counter()
    futures = [ctx.pool.submit(_decode_one, ctx, str(folder), n, (224, 224)) for n in names]
    failed = [r for r in (f.result() for f in futures) if isinstance(r, str)]
    seconds = time.perf_counter() - started
    ctx.close()
    print(
        json.dumps(
            {
                "rss_before_mib": round(before / MiB, 1),
                "vmhwm_mib": round(_status_bytes("VmHWM:") / MiB, 1),
                "most_pixels_held": ctx.budget.peak,
                "seconds": round(seconds, 2),
                "failed": failed,
            }
        )
    )


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise LookupError(key)


def run_case(folder: Path, threads: int, budget: int) -> dict[str, Any]:
    """One child process; its peak RSS from wait4 (this child's, not the most of all children)
    and from its own VmHWM (the high-water mark since exec).
    """
    cmd = [sys.executable, __file__, "--child", str(folder), str(threads), str(budget)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {out[-2000:]}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mib"] = round(usage.ru_maxrss / 1024, 1)  # ru_maxrss is in KiB on Linux
    return result


def main() -> None:
    from catdog.images import BYTES_PER_PIXEL, DEFAULT_PIXEL_BUDGET

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/catdog-decode-memory"))
    p.add_argument("--threads", type=int, nargs="+", default=[4, 8])
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    p.add_argument("--budget", type=int, default=DEFAULT_PIXEL_BUDGET)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results/decode_memory.json")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--make", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.make:
        make_folder(Path(args.make[0]), args.make[1])
        return
    if args.child:
        folder, threads, budget = args.child
        child(Path(folder), int(threads), int(budget))
        return

    cases = []
    for kind in args.kinds:
        # In a child: a parent grown by writing pictures would pass its size on to every
        # child it forks (Linux counts it in the child's ru_maxrss).
        subprocess.run([sys.executable, __file__, "--make", str(args.work), kind], check=True)
        folder = args.work / kind
        file_mib = (folder / f"near-limit-0.{KINDS[kind][1].lower()}").stat().st_size / MiB
        for threads in args.threads:
            for budget in (args.budget, UNBOUNDED):
                result = run_case(folder, threads, budget)
                if result["failed"]:
                    raise RuntimeError(f"{kind}: decoding failed: {result['failed'][0]}")
                bounded = budget != UNBOUNDED
                held = result["most_pixels_held"]
                bound = (
                    result["rss_before_mib"]
                    + max(budget, SIZE[0] * SIZE[1]) * BYTES_PER_PIXEL / MiB
                    + threads * file_mib
                )
                case = {
                    "kind": kind,
                    "threads": threads,
                    "budget_pixels": budget if bounded else None,
                    "file_mib": round(file_mib, 1),
                    **result,
                    "bound_mib": round(bound, 1) if bounded else None,
                    "within_bound": (float(result["peak_rss_mib"]) <= bound) if bounded else None,
                    "most_pictures_at_once": round(held / (SIZE[0] * SIZE[1]), 2),
                }
                cases.append(case)
                print(
                    f"{kind:<17} threads={threads} budget={'default' if bounded else 'none':<8}"
                    f" peak {case['peak_rss_mib']:>7} MiB (before {result['rss_before_mib']},"
                    f" bound {case['bound_mib']}) pictures at once"
                    f" {case['most_pictures_at_once']} in {result['seconds']} s",
                    flush=True,
                )
    report = {
        "what": "peak RSS of a worker's decode pool on 8 near-limit pictures (99 M pixels each)",
        "picture": {"width": SIZE[0], "height": SIZE[1], "files_per_case": FILES},
        "bytes_per_pixel": BYTES_PER_PIXEL,
        "host": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "cases": cases,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
