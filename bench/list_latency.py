"""A second scan of a 100,000-object S3 prefix when each listing page costs a round trip.

    .venv/bin/python bench/list_latency.py [--objects 100000] [--latency-ms 0 50 100]

moto (bench/stores.py) renders every listed key in about 165 us of its CPU and scans its
whole bucket for every page, so against it a listing measures moto. AWS, MinIO and Ceph
keep keys in sorted indexes: a page costs a round trip (on AWS roughly 50-200 ms for 1,000
keys) whatever the bucket holds, and pages of different prefixes are served in parallel.
This benchmark models that server: ListObjectsV2 pages of at most 1,000 keys cut from a
sorted list by bisection, each answered after ``--latency-ms``, any number at once. The
client side is catdog's own: its signed listing, parsing and registration against SQLite.
For each latency it times the listing alone (one chain of pages, then folder by folder as
catdog lists) and a whole second scan (list, compare with the database, queue nothing).
Writes bench/results/list_latency.json.
"""

from __future__ import annotations

import argparse
import bisect
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit
from xml.sax.saxutils import escape

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BUCKET = "catdog-bench"
PAGE_CAP = 1000  # what AWS, MinIO and Ceph answer at most, whatever MaxKeys asks


class ModelS3:
    """ListObjectsV2 over a sorted key list, each page after ``latency`` seconds, served by a
    process of its own (its CPU is not counted as the client's)."""

    def __init__(self, keys: list[str], size: int) -> None:
        self.keys = sorted(keys)
        #: Seconds before each page, and pages answered: shared with the serving process.
        self.latency = multiprocessing.Value("d", 0.0)
        self.pages = multiprocessing.Value("i", 0)
        stamp = datetime(2026, 1, 1, tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        self.entry = (
            "<Contents><Key>{}</Key><LastModified>" + stamp + "</LastModified>"
            '<ETag>"{}"</ETag><Size>' + str(size) + "</Size></Contents>"
        )
        model = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as S3 answers

            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                body = model.page(parse_qs(urlsplit(self.path).query)).encode()
                time.sleep(model.latency.value)
                self.send_response(200)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self.process = multiprocessing.get_context("fork").Process(
            target=server.serve_forever, daemon=True
        )
        self.process.start()
        server.socket.close()  # the child serves it

    def page(self, q: dict[str, list[str]]) -> str:
        with self.pages.get_lock():
            self.pages.value += 1
        prefix = q.get("prefix", [""])[0]
        delimiter = q.get("delimiter", [""])[0]
        limit = min(int(q.get("max-keys", ["1000"])[0]), PAGE_CAP)
        after = q.get("continuation-token", [q.get("start-after", [""])[0]])[0]
        i = (
            bisect.bisect_right(self.keys, after)
            if after
            else bisect.bisect_left(self.keys, prefix)
        )
        contents: list[str] = []
        folders: list[str] = []
        last = ""
        while i < len(self.keys) and len(contents) + len(folders) < limit:
            key = self.keys[i]
            if not key.startswith(prefix):
                break
            rest = key[len(prefix) :]
            if delimiter and delimiter in rest:
                folder = prefix + rest.split(delimiter, 1)[0] + delimiter
                folders.append(folder)
                last = folder + "\uffff"  # past every key of the folder
                i = bisect.bisect_right(self.keys, last)
                continue
            contents.append(self.entry.format(escape(quote(key)), f"{i:032x}"))
            last = key
            i += 1
        truncated = i < len(self.keys) and self.keys[i].startswith(prefix)
        parts = [
            '<?xml version="1.0" encoding="UTF-8"?>',
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
            f"<Name>{BUCKET}</Name><Prefix>{escape(quote(prefix))}</Prefix>",
            f"<KeyCount>{len(contents) + len(folders)}</KeyCount><MaxKeys>{limit}</MaxKeys>",
            "<EncodingType>url</EncodingType>",
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>",
            *contents,
            *(
                f"<CommonPrefixes><Prefix>{escape(quote(f))}</Prefix></CommonPrefixes>"
                for f in folders
            ),
        ]
        if truncated:
            parts.append(f"<NextContinuationToken>{escape(last)}</NextContinuationToken>")
        parts.append("</ListBucketResult>")
        return "".join(parts)


def listing_once(url: str, folders: bool) -> tuple[float, float, int]:
    """Seconds and client CPU seconds of one walk of the prefix, and objects found."""
    from catdog import stores

    stores.forget_remote_stores()
    saved = stores.FOLDER_LISTINGS
    stores.FOLDER_LISTINGS = saved if folders else 0
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        n = sum(1 for _ in stores.scan_store(url).walk())
        return time.perf_counter() - t0, time.process_time() - c0, n
    finally:
        stores.FOLDER_LISTINGS = saved


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objects", type=int, default=100_000)
    p.add_argument("--latency-ms", type=float, nargs="+", default=[0, 50, 100])
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results/list_latency.json")
    args = p.parse_args()

    keys = [f"many/{i // 1000:03d}/{i:06d}.jpg" for i in range(args.objects)]
    model = ModelS3(keys, 64)
    os.environ.update(
        AWS_ENDPOINT_URL=model.url,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench-secret",
        AWS_DEFAULT_REGION="us-east-1",
    )
    from bench.stores import listing

    url = f"s3://{BUCKET}/many"
    tmp = Path(tempfile.mkdtemp(prefix="catdog-bench-listlat-"))
    rows = []
    try:
        for ms in args.latency_ms:
            model.latency.value = ms / 1000
            row: dict[str, object] = {"latency_ms": ms}
            for name, folders in (("one_chain", False), ("folder_by_folder", True)):
                model.pages.value = 0
                secs, cpu, n = listing_once(url, folders)
                assert n == args.objects, (n, args.objects)
                row[name] = {
                    "seconds": round(secs, 2),
                    "objects_per_s": round(n / secs),
                    "client_cpu_s": round(cpu, 2),
                    "pages": model.pages.value,
                }
            run = tmp / f"scan-{ms:g}"
            run.mkdir()
            scans = listing(url, run, model.process.pid)  # first and second registration
            row["second_scan"] = {
                k.removeprefix("second_"): v for k, v in scans.items() if k.startswith("second_")
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        model.process.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "objects": args.objects,
        "folders": len({k.rsplit("/", 1)[0] for k in keys}),
        "runs": rows,
        "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "load_average_1m": round(os.getloadavg()[0], 1),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
