"""Batch inference as a plain function: ids in, one bulk upsert of results out.

The Celery task and the embedded ``catdog classify`` both call :func:`classify_batch`; neither
the broker nor the task framework is needed to test it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from catdog.db import registry
from catdog.db.engine import engine_for, session_factory
from catdog.db.queries import Outcome, image_locations, save_outcomes
from catdog.images import Decoded, ImageError, PixelBudget, from_bytes, shared_budget
from catdog.settings import Settings
from catdog.stores import is_url, open_store
from catdog.workers.model import LoadedModel, load_model

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """What one batch did, for task results, metrics and logs."""

    done: int
    failed: int
    images: int
    #: Seconds from the model being ready to the results being stored (loading excluded).
    seconds: float
    model_version: str
    #: Seconds this batch waited for its model to load (0 when it was already loaded).
    load_seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form (Celery results are JSON)."""
        return {
            "done": self.done,
            "failed": self.failed,
            "images": self.images,
            "seconds": round(self.seconds, 3),
            "model_version": self.model_version,
            "load_seconds": round(self.load_seconds, 3),
        }


def _usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):  # Linux; not macOS or Windows
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass
class InferenceContext:
    """Per-process resources built once: engine, decode threads and their budget, the model."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    pool: ThreadPoolExecutor
    #: Shared by the decode threads: how many pixels they may hold at once, all together.
    budget: PixelBudget = field(default_factory=shared_budget)
    #: Fetches from object stores, ahead of the decode threads (see :data:`FETCH_GROUP`).
    fetch_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="fetch")
    )
    model: LoadedModel | None = None
    _pinned_version_id: int | None = field(default=None, repr=False)

    @classmethod
    def create(cls, settings: Settings) -> InferenceContext:
        """Build the context for this process (engine and threads, not yet the model)."""
        engine = engine_for(settings.database())
        threads = settings.decode_threads or max(4, _usable_cpus())
        pool = ThreadPoolExecutor(threads, thread_name_prefix="decode")
        budget = shared_budget(settings.decode_pixel_budget)
        return cls(settings, engine, session_factory(engine), pool, budget)

    def current_model(self, session: Session) -> LoadedModel:
        """The model to use for the next batch, reloaded if production changed."""
        if self.settings.model is not None and self.model is not None:
            return self.model  # pinned by CATDOG_MODEL: no registry look-up per batch
        version = registry.current_version(session, self.settings)
        if self.model is None or self.model.version_id != version.id:
            log.info("switching to model %s", version.version)
            self.model = load_model(
                version.file,
                version.id,
                version.version,
                [str(c) for c in version.classes],
                (int(version.input_size[0]), int(version.input_size[1])),
                self.settings.predict_batch_size,
                self.settings.gpu_memory_limit_mb,
                self.settings.mixed_precision,
                self.settings.runtime,
            )
        return self.model

    def close(self) -> None:
        """Stop decode threads and close pooled connections."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.fetch_pool.shutdown(wait=False, cancel_futures=True)
        self.engine.dispose()


#: Objects fetched by one call to a remote store, which sends them concurrently (S3 on its
#: own pool, ``catdog.stores.READS_IN_FLIGHT`` GETs at a time; other fsspec stores as one
#: batched call). An object store answers in milliseconds, not microseconds: a batch's
#: objects are fetched in groups ahead of the decode threads instead of one blocking GET per
#: decode, and a group is decoded as soon as its slowest object is in.
FETCH_GROUP = 16
#: Fetch calls in flight per process: with FETCH_GROUP, up to 64 requests queued.
FETCH_THREADS = 4


def _decode_fetched(
    ctx: InferenceContext,
    fetched: Future[list[bytes | ImageError]],
    index: int,
    size: tuple[int, int],
) -> Decoded | str:
    """Decode one object of a fetched group, or return why it failed."""
    try:
        data = fetched.result()[index]
        if isinstance(data, ImageError):
            return str(data)
        return from_bytes(data, size, ctx.settings.max_image_pixels, ctx.budget)
    except ImageError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - one odd object must not stop the batch
        log.exception("unexpected error reading or decoding an object")
        return f"unexpected error: {type(exc).__name__}: {exc}"


def _decode_all(
    ctx: InferenceContext, locations: list[tuple[str, str]], size: tuple[int, int]
) -> list[Future[Decoded | str]]:
    """Queue the decoding of every (store, name), remote objects fetched in groups first."""
    s = ctx.settings
    futures: list[Future[Decoded | str] | None] = [None] * len(locations)
    remote: dict[str, list[int]] = {}
    for k, (store, name) in enumerate(locations):
        if is_url(store):
            remote.setdefault(store, []).append(k)
        else:
            futures[k] = ctx.pool.submit(_decode_one, ctx, store, name, size)
    for store, positions in remote.items():
        reader = open_store(store, list(s.store_roots))
        for g in range(0, len(positions), FETCH_GROUP):
            group = positions[g : g + FETCH_GROUP]
            names = [locations[k][1] for k in group]
            fetched = ctx.fetch_pool.submit(reader.read_many, names, s.max_file_bytes)
            for j, k in enumerate(group):
                futures[k] = ctx.pool.submit(_decode_fetched, ctx, fetched, j, size)
    return [f for f in futures if f is not None]


def _decode_one(
    ctx: InferenceContext, store: str, relpath: str, size: tuple[int, int]
) -> Decoded | str:
    """Decode one image or return the failure reason (never raises for bad input)."""
    s = ctx.settings
    try:
        data = open_store(store, list(s.store_roots)).read(relpath, s.max_file_bytes)
        return from_bytes(data, size, s.max_image_pixels, ctx.budget)
    except ImageError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop the batch
        log.exception("unexpected error decoding %s/%s", store, relpath)
        return f"unexpected error: {type(exc).__name__}: {exc}"


def _label(
    model: LoadedModel, probs: np.ndarray, threshold: float | None = None
) -> tuple[str, float]:
    """The model's top class and its probability, the stored fact.

    ``threshold`` is not applied here: a stored ``uncertain`` would stick for every later
    run and make a threshold do nothing on images already labeled. Output applies it
    (``catdog.ops.output.shown_label``).
    """
    del threshold  # kept in the signature for the caller; applied when rows are written
    top = int(np.argmax(probs))
    return model.classes[top], float(probs[top])


@dataclass
class StartedBatch:
    """A batch whose files are being decoded on the pool; ``finish_batch`` labels and stores it."""

    run_id: int | None
    model: LoadedModel
    ids: list[int]
    futures: list[Future[Decoded | str]]
    #: When the batch's own work began: after its model was ready.
    started: float
    load_seconds: float = 0.0


def start_batch(
    ctx: InferenceContext, run_id: int | None, image_ids: Sequence[int]
) -> StartedBatch:
    """Look up where the images are and queue their decoding on the thread pool.

    A model switch (seconds of loading) happens here; the batch's clock starts once the
    model is ready, so batch latency and images per second describe labeling, not loading.
    """
    started = time.perf_counter()
    with ctx.sessions.begin() as session:  # commits a first sight of the model file
        previous = ctx.model
        model = ctx.current_model(session)
        load_seconds = 0.0
        if model is not previous:
            ready = time.perf_counter()
            load_seconds, started = ready - started, ready
            log.info("model %s loaded in %.1fs", model.version, load_seconds)
        where = image_locations(session, image_ids)
    ids = [i for i in image_ids if i in where]  # rows deleted since the scan have no result
    size = model.input_size
    futures = _decode_all(ctx, [where[i] for i in ids], size)
    return StartedBatch(run_id, model, ids, futures, started, load_seconds)


#: Images in the first model call of a batch on LiteRT (its own batch size): the model starts
#: as soon as these are decoded instead of waiting for a whole chunk, so decoding the start
#: of a batch overlaps with predicting it (cluster throughput 0.78-0.86 of the ceiling with
#: 64, see the README's performance section).
FIRST_CHUNK = 16


def _first_chunk(model: LoadedModel) -> int:
    # TensorFlow pads every call to its fixed batch: a small first call would cost a full one.
    return (
        min(FIRST_CHUNK, model.predict_batch) if model.runtime == "tflite" else model.predict_batch
    )


def _chunks(n: int, step: int, first: int) -> list[tuple[int, int]]:
    """(start, end) of each model call over ``n`` images: ``first`` images, then ``step``."""
    bounds, start = [], 0
    size = first
    while start < n:
        bounds.append((start, min(n, start + size)))
        start += size
        size = step
    return bounds


def finish_batch(ctx: InferenceContext, batch: StartedBatch) -> BatchResult:
    """Predict chunk by chunk as decoding completes, then store every result in one transaction."""
    model, ids, futures = batch.model, batch.ids, batch.futures
    outcomes: list[Outcome] = []
    threshold = ctx.settings.confidence_threshold
    for start, end in _chunks(len(ids), model.predict_batch, _first_chunk(model)):
        chunk_ids = ids[start:end]
        decoded = [f.result() for f in futures[start:end]]
        good = [(i, d) for i, d in zip(chunk_ids, decoded, strict=True) if isinstance(d, Decoded)]
        outcomes.extend(
            Outcome(image_id=i, error=d)
            for i, d in zip(chunk_ids, decoded, strict=True)
            if isinstance(d, str)
        )
        if not good:
            continue
        probs = model.predict_chunk(np.stack([d.pixels for _, d in good]))
        for (image_id, d), p in zip(good, probs, strict=True):
            label, confidence = _label(model, p, threshold)
            outcomes.append(
                Outcome(
                    image_id=image_id,
                    label=label,
                    confidence=confidence,
                    probabilities={
                        c: round(float(v), 6) for c, v in zip(model.classes, p, strict=True)
                    },
                    sha256=d.sha256,
                    width=d.width,
                    height=d.height,
                )
            )

    with ctx.sessions.begin() as session:
        done, failed = save_outcomes(session, batch.run_id, model.version_id, outcomes)
    elapsed = time.perf_counter() - batch.started
    log.info(
        "batch run=%s images=%d done=%d failed=%d in %.2fs (%.0f img/s)",
        batch.run_id,
        len(ids),
        done,
        failed,
        elapsed,
        len(ids) / max(elapsed, 1e-9),
    )
    return BatchResult(done, failed, len(ids), elapsed, model.version, batch.load_seconds)


def classify_batch(
    ctx: InferenceContext, run_id: int | None, image_ids: Sequence[int]
) -> BatchResult:
    """Label the given images with the current model and store all results in one transaction.

    Files are read once (hash + decode) by a thread pool that keeps decoding the next chunk
    while the model predicts the current one. Bad files become failed rows with a reason.
    """
    return finish_batch(ctx, start_batch(ctx, run_id, image_ids))
