"""The batch function without a broker: labels, failures with reasons, exactly-once rows."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from catdog.db.migrate import upgrade
from catdog.db.models import Image, Prediction, ScanRun
from catdog.producer.scan import ScanSummary, scan
from catdog.settings import Settings
from catdog.stores import LocalStore
from catdog.workers.inference import InferenceContext, classify_batch


def _context(url: str, model: Path, **extra: object) -> InferenceContext:
    settings = Settings(database_url=url, model=model, batch_size=4, **extra)  # type: ignore[arg-type]
    ctx = InferenceContext.create(settings)
    upgrade(ctx.engine)
    return ctx


def _classify_all(ctx: InferenceContext, root: Path) -> ScanSummary:
    """Scan ``root`` and classify every batch in this process."""

    def send(run: int, ids: list[int]) -> None:
        classify_batch(ctx, run, ids)

    return scan(ctx.sessions, ctx.settings, [LocalStore(root)], send)


def test_a_scan_labels_good_images_and_records_broken_ones(photo_dir, sqlite_url, tiny_model):
    """Every registered file ends with a label or a failure reason, and counters agree."""
    ctx = _context(sqlite_url, tiny_model)
    summary = _classify_all(ctx, photo_dir)
    with ctx.sessions() as s:
        rows = {
            path: (p.label, p.error)
            for path, p in s.execute(select(Image.path, Prediction).join(Prediction))
        }
        run = s.get(ScanRun, summary.run_id)
        assert (run.done, run.failed, run.total) == (6, 2, 8) and run.finished is not None
    assert {rows[f"cats/c{i}.jpg"][0] for i in range(3)} == {"cat"}
    assert {rows[f"dogs/d{i}.png"][0] for i in range(3)} == {"dog"}
    assert rows["broken.jpg"] == (None, "not an image (unrecognised format)")
    assert rows["empty.png"] == (None, "empty file (0 bytes)")
    assert "notes.txt" not in rows
    ctx.close()


def test_a_second_scan_sends_nothing(photo_dir, sqlite_url, tiny_model):
    """Images with a result (label or failure) and unchanged are not queued again."""
    ctx = _context(sqlite_url, tiny_model)
    sent: list[list[int]] = []

    def send(run: int, ids: list[int]) -> None:
        sent.append(ids)
        classify_batch(ctx, run, ids)

    scan(ctx.sessions, ctx.settings, [LocalStore(photo_dir)], send)
    sent.clear()
    second = scan(ctx.sessions, ctx.settings, [LocalStore(photo_dir)], send)
    assert sent == [] and second.queued == 0 and second.skipped == 8
    retry = scan(ctx.sessions, ctx.settings, [LocalStore(photo_dir)], send, retry_failed=True)
    assert retry.queued == 2 and len(sent) == 1
    with ctx.sessions() as s:
        assert s.get(ScanRun, second.run_id).finished is not None
    ctx.close()


def test_the_same_batch_twice_leaves_one_result_per_image(photo_dir, sqlite_url, tiny_model):
    """A redelivered batch (worker killed after commit, before ack) duplicates nothing."""
    ctx = _context(sqlite_url, tiny_model)
    batches: list[tuple[int, list[int]]] = []
    scan(
        ctx.sessions,
        ctx.settings,
        [LocalStore(photo_dir)],
        lambda run, ids: batches.append((run, ids)),
    )
    for run, ids in batches + batches:
        classify_batch(ctx, run, ids)
    with ctx.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Prediction)) == 8
        run = s.get(ScanRun, batches[0][0])
        assert run.done + run.failed == 8
    ctx.close()


def test_a_threshold_never_changes_the_stored_label(photo_dir, sqlite_url, tiny_model):
    """Workers store the model's label even above every confidence: output applies the
    threshold (tests/test_threshold.py), so it cannot stick for later runs."""
    ctx = _context(sqlite_url, tiny_model, confidence_threshold=0.999)
    _classify_all(ctx, photo_dir)
    with ctx.sessions() as s:
        labels = set(s.scalars(select(Prediction.label).where(Prediction.error.is_(None))))
    assert labels == {"cat", "dog"}
    ctx.close()


def test_files_outside_configured_roots_are_failed_not_read(
    photo_dir, tmp_path, sqlite_url, tiny_model
):
    """A store outside CATDOG_STORE_ROOTS gets refusals, never labels."""
    allowed = tmp_path / "elsewhere"
    allowed.mkdir()
    ctx = _context(sqlite_url, tiny_model, store_roots=[allowed])
    _classify_all(ctx, photo_dir)
    with ctx.sessions() as s:
        errors = set(s.scalars(select(Prediction.error)))
    assert errors == {"refused: path is outside the configured store roots"}
    ctx.close()


def test_decoding_uses_every_usable_cpu_unless_told(sqlite_url, tiny_model):
    """By default a worker decodes on one thread per usable CPU (at least 4), else as set."""
    import os

    default = _context(sqlite_url, tiny_model)
    chosen = _context(sqlite_url, tiny_model, decode_threads=2)
    try:
        assert default.pool._max_workers == max(4, len(os.sched_getaffinity(0)))
        assert chosen.pool._max_workers == 2
    finally:
        default.close()
        chosen.close()


def test_a_batch_starts_predicting_after_a_small_first_chunk() -> None:
    """The first model call waits for 16 decoded images, not a whole chunk; all are covered."""
    from catdog.workers.inference import _chunks

    assert _chunks(150, 64, 16) == [(0, 16), (16, 80), (80, 144), (144, 150)]
    assert _chunks(10, 64, 16) == [(0, 10)]
    assert _chunks(0, 64, 16) == []
    assert _chunks(128, 64, 64) == [(0, 64), (64, 128)]
