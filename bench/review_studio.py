"""Wall time of ``catdog review push`` and ``pull`` against a real Label Studio.

    .venv/bin/python bench/review_studio.py [--images 2000]

Starts Label Studio from its own virtual environment (as the tests do: tests/labelstudio.py),
writes ``--images`` synthetic photos under its local-files document root (half cats, half
dogs), labels them with ``catdog classify`` and the tests' tiny model into a fresh SQLite
database, then times, each as a subprocess:

* ``catdog review push --limit N --no-audit`` (every image becomes a task);
* a simulated reviewer answering every task through the API with the true label from the
  folder name (the reviewer's time, not catdog's; recorded apart);
* ``catdog review pull`` (every answer stored), and a second pull (nothing changes).

Figures go to ``bench/results/review_studio.json``.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from labelstudio import label_studio_venv, start_label_studio  # noqa: E402

from helpers import build_tiny_model, make_image  # noqa: E402

#: Where the figures go.
RESULTS = ROOT / "bench" / "results" / "review_studio.json"
#: Concurrent reviewers the simulation plays (requests in flight).
REVIEWERS = 4


def _catdog(env: dict[str, str], *args: str) -> tuple[float, str]:
    """Run ``catdog ARGS``; its wall time and stdout (stderr on failure)."""
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "catdog", *args], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"catdog {' '.join(args)} failed:\n{run.stderr[-3000:]}")
    return wall, run.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()

    from catdog.training.tflite import export_tflite

    work = Path(tempfile.mkdtemp(prefix="catdog-review-bench-"))
    t0 = time.perf_counter()
    server = start_label_studio(work / "ls", label_studio_venv())
    started_s = time.perf_counter() - t0
    try:
        photos = server.document_root / "photos"
        for i in range(args.images):
            kind = "cat" if i % 2 == 0 else "dog"
            make_image(photos / f"{kind}s" / f"{kind}{i}.jpg", kind, size=(160, 120), seed=i)
        model = build_tiny_model(work / "tiny.keras")
        export_tflite(model)
        env = {
            **os.environ,
            "CATDOG_DATABASE_URL": f"sqlite:///{work / 'catdog.db'}",
            "CATDOG_MODEL": str(model),
            "CATDOG_LABEL_STUDIO_URL": server.url,
            "CATDOG_LABEL_STUDIO_TOKEN": server.token,
            "CATDOG_LABEL_STUDIO_DOCUMENT_ROOT": str(server.document_root),
        }
        classify_s, _ = _catdog(env, "classify", str(photos), "--format", "jsonl")
        push_s, push_out = _catdog(env, "review", "push", "--limit", str(args.images), "--no-audit")

        api = server.api()
        project = api.get(f"{server.url}/api/projects/", timeout=60).json()["results"][0]["id"]
        tasks = api.get(
            f"{server.url}/api/tasks/",
            params={"project": project, "fields": "task_only", "page_size": args.images},
            timeout=300,
        ).json()["tasks"]

        def answer(task: dict) -> None:
            truth = "cat" if task["data"]["catdog_path"].startswith("cats/") else "dog"
            body = {
                "result": [
                    {
                        "from_name": "label",
                        "to_name": "image",
                        "type": "choices",
                        "value": {"choices": [truth]},
                    }
                ]
            }
            r = api.post(f"{server.url}/api/tasks/{task['id']}/annotations/", json=body, timeout=60)
            r.raise_for_status()

        start = time.perf_counter()
        with ThreadPoolExecutor(REVIEWERS) as pool:
            list(pool.map(answer, tasks))
        review_s = time.perf_counter() - start

        pull_s, pull_out = _catdog(env, "review", "pull")
        pull2_s, pull2_out = _catdog(env, "review", "pull")
    finally:
        server.stop()

    result = {
        "label_studio": "1.23.2",
        "images": args.images,
        "tasks": len(tasks),
        "label_studio_start_s": round(started_s, 1),
        "classify_s": round(classify_s, 1),
        "push_s": round(push_s, 1),
        "push_tasks_per_s": round(len(tasks) / push_s, 1),
        "simulated_review_s": round(review_s, 1),
        "pull_s": round(pull_s, 1),
        "pull_tasks_per_s": round(len(tasks) / pull_s, 1),
        "second_pull_s": round(pull2_s, 1),
        "push_output": push_out,
        "pull_output": pull_out,
        "second_pull_output": pull2_out,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "note": "wall times of catdog subprocesses (start-up included) on a shared 2-core "
        "machine, Label Studio's SQLite on the same disk",
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
