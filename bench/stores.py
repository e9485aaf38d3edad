"""Labeling from an S3-protocol server against the same files on local disk, side by side.

    .venv/bin/python bench/stores.py --images 2000 [--objects 100000] [--cluster] [--pin]

Starts moto's S3 server (``moto_server``) on a free loopback port as its own process, puts
real photos from ../shared/data/catsdogs-train in a bucket and in a local folder, and runs
`catdog classify` (embedded) on both, alternating, twice each; with ``--cluster`` also
`catdog scan --wait` with one worker (Redis on 127.0.0.1:6379, PostgreSQL on 127.0.0.1:5432).
Then puts ``--objects`` small objects under another prefix and times a first and a second
registration of it (the second lists and registers only: nothing changed). Each run also
records the CPU seconds spent by catdog's processes (client) and by the S3 server, per
image or object, and the load average: moto is Python on the same cores, so its share says
how much of a gap the server alone explains. ``--pin`` gives the S3 server a CPU of its own
and every catdog process (local and S3 runs alike) the others, as when the store is another
machine: the comparison is then of what catdog itself spends on a remote read. Writes
bench/results/stores.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.throughput import SHARED, cluster, embedded  # noqa: E402

BUCKET = "catdog-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_s3(log: Path, cpus: set[int] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """moto's S3 server in a process of its own (on ``cpus`` where given), and its URL."""
    port = free_port()
    server = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,  # noqa: PLW1509
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, url
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not start: {log.read_text()[-1000:]}")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a running process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU seconds used by this process's finished children (catdog commands, workers)."""
    t = os.times()
    return t.children_user + t.children_system


def with_cpu(server: int, images: int, run: Callable[[], dict[str, float]]) -> dict[str, float]:
    """``run``'s figures plus client and server CPU milliseconds per image, and the load."""
    load = os.getloadavg()[0]
    client0, server0 = children_cpu(), process_cpu(server)
    out = run()
    return {
        **out,
        "client_cpu_ms_per_image": round(1000 * (children_cpu() - client0) / images, 2),
        "server_cpu_ms_per_image": round(1000 * (process_cpu(server) - server0) / images, 2),
        "load_average_1m": round(load, 1),
    }


def photos(n: int) -> list[Path]:
    """``n`` real photos, half cats and half dogs."""
    cats = sorted((SHARED / "cat").glob("*.jpg"))[: n // 2]
    dogs = sorted((SHARED / "dog").glob("*.jpg"))[: n - n // 2]
    if len(cats) + len(dogs) < n:
        raise SystemExit(f"need {n} photos under {SHARED}")
    return cats + dogs


def upload(client: object, items: list[tuple[str, bytes]]) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=BUCKET, Key=kv[0], Body=kv[1]), items))  # type: ignore[attr-defined]


def listing(prefix_url: str, tmp: Path, server: int) -> dict[str, float]:
    """First and second registration of a prefix (the producer's walk + register, SQLite).

    The first scan's batches get a stored result at once (a failure row, no model): the
    second scan then sees an unchanged, fully labeled bucket, as a real second scan would.
    The second scan's listing alone (its walk) is timed too, with this process's and the
    server's CPU seconds: folder by folder as catdog lists, and as one chain of pages.
    """
    from catdog.db.engine import make_engine, session_factory
    from catdog.db.migrate import upgrade
    from catdog.db.queries import Outcome, save_outcomes
    from catdog.db.registry import current_version
    from catdog.producer.scan import scan
    from catdog.settings import Settings
    from catdog.stores import scan_store

    url = f"sqlite:///{tmp / 'listing.db'}"
    engine = make_engine(url)
    upgrade(engine)
    sessions = session_factory(engine)
    settings = Settings(database_url=url)  # type: ignore[arg-type]
    with sessions.begin() as session:
        version = current_version(session, settings).id

    def result_at_once(run: int, ids: list[int]) -> None:
        with sessions.begin() as session:
            save_outcomes(session, run, version, [Outcome(image_id=i, error="bench") for i in ids])

    out: dict[str, float] = {}
    for name in ("first", "second"):
        out["load_average_1m"] = round(os.getloadavg()[0], 1)
        client0, server0 = time.process_time(), process_cpu(server)
        t0 = time.perf_counter()
        summary = scan(sessions, settings, [scan_store(prefix_url)], result_at_once)
        secs = time.perf_counter() - t0
        out[f"{name}_seconds"] = round(secs, 2)
        out[f"{name}_objects_per_s"] = round(summary.files_seen / secs)
        out[f"{name}_queued"] = summary.queued
        out[f"{name}_client_cpu_s"] = round(time.process_time() - client0, 2)
        out[f"{name}_server_cpu_s"] = round(process_cpu(server) - server0, 2)
    from catdog import stores

    default = stores.FOLDER_LISTINGS
    for mode, folders in (("listing_only", default), ("listing_one_chain", 0)):
        stores.FOLDER_LISTINGS = folders  # 0: the prefix as one chain of pages
        stores.forget_remote_stores()
        client0, server0 = time.process_time(), process_cpu(server)
        t0 = time.perf_counter()
        listed = sum(1 for _ in scan_store(prefix_url).walk())
        out[f"{mode}_seconds"] = round(time.perf_counter() - t0, 2)
        out[f"{mode}_client_cpu_us_per_object"] = round(
            1e6 * (time.process_time() - client0) / listed, 1
        )
        out[f"{mode}_server_cpu_us_per_object"] = round(
            1e6 * (process_cpu(server) - server0) / listed, 1
        )
    stores.FOLDER_LISTINGS = default
    engine.dispose()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--objects", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cluster", action="store_true")
    p.add_argument(
        "--worker-concurrency", type=int, default=1, help="catdog worker -c N for --cluster"
    )
    p.add_argument(
        "--pin",
        action="store_true",
        help="the S3 server on the last CPU, catdog on the others (a store on another host)",
    )
    p.add_argument("--model", type=Path, default=None, help="default: the bundled model")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results/stores.json")
    args = p.parse_args()

    import boto3

    from catdog.settings import BUNDLED_MODEL

    model = args.model or BUNDLED_MODEL
    tmp = Path(tempfile.mkdtemp(prefix="catdog-bench-stores-"))
    cpus = sorted(os.sched_getaffinity(0))
    pinned = args.pin and len(cpus) > 1
    proc, url = start_s3(tmp / "moto.log", {cpus[-1]} if pinned else None)
    if pinned:
        os.sched_setaffinity(0, set(cpus[:-1]))  # inherited by every catdog process started
    os.environ.update(
        AWS_ENDPOINT_URL=url,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench-secret",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        files = photos(args.images)
        local = tmp / "photos"
        local.mkdir()
        items = []
        for f in files:
            name = f"{f.parent.name}.{f.name}"
            shutil.copy(f, local / name)
            items.append((f"photos/{name}", f.read_bytes()))
        upload(client, items)
        roots = {"local": str(local), "s3": f"s3://{BUCKET}/photos"}

        def alternate(
            mode: str, run: Callable[[str, Path], dict[str, float]]
        ) -> tuple[dict[str, list[dict[str, float]]], list[float]]:
            """``run`` on local disk and S3 in turn, ``--repeats`` times; S3 / local rates."""
            out: dict[str, list[dict[str, float]]] = {"local": [], "s3": []}
            for i in range(args.repeats):
                for kind, root in roots.items():
                    run_tmp = tmp / f"{mode}-{kind}-{i}"
                    run_tmp.mkdir()
                    out[kind].append(
                        with_cpu(proc.pid, len(files), lambda r=root, t=run_tmp: run(r, t))  # type: ignore[misc]
                    )
                    print(mode, kind, f"{out[kind][-1]['images_per_s']:.1f} img/s", flush=True)
            ratios = [
                round(s["images_per_s"] / loc["images_per_s"], 3)
                for s, loc in zip(out["s3"], out["local"], strict=True)
            ]
            return out, ratios

        runs, ratios = alternate("embedded", lambda root, t: embedded(root, model, t))
        result: dict[str, object] = {
            "images": args.images,
            "model": str(model),
            "worker_concurrency": args.worker_concurrency,
            "pinned": {"server_cpus": cpus[-1:], "catdog_cpus": cpus[:-1]} if pinned else None,
            "embedded": runs,
        }
        result["embedded_s3_over_local"] = ratios
        if args.cluster:
            warm = tmp / "warm"
            warm.mkdir()
            for f in files[:64]:
                shutil.copy(f, warm / f"{f.parent.name}.{f.name}")
            worker_args = ["-c", str(args.worker_concurrency)]
            clus, ratios = alternate(
                "cluster", lambda root, t: cluster(root, warm, model, t, worker_args)
            )
            result["cluster"] = clus
            result["cluster_s3_over_local"] = ratios
        if args.objects:
            tiny = b"\xff\xd8\xff" + b"x" * 61
            upload(
                client, [(f"many/{i // 1000:03d}/{i:06d}.jpg", tiny) for i in range(args.objects)]
            )
            result["listing"] = {
                "objects": args.objects,
                **listing(f"s3://{BUCKET}/many", tmp, proc.pid),
            }
            print("listing", result["listing"], flush=True)
        result["host"] = {"platform": platform.platform(), "cpus": os.cpu_count()}
        result["measured"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        proc.terminate()
        try:
            proc.wait(60)  # a server holding 100,000 objects can be slow to go on a busy host
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
