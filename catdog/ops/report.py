"""The HTML results report: counts per label, confidence histogram, doubtful images, failures.

The latest prediction of every image is streamed once from the database and folded into
small aggregates (counters, histogram bins, a bounded heap), so the report of ten million
images needs no more memory than the report of ten.
"""

from __future__ import annotations

import base64
import heapq
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import jinja2
from sqlalchemy.orm import Session

from catdog.db.queries import latest_predictions
from catdog.db.reviews import join_human_labels
from catdog.images import ImageError, thumbnail_jpeg
from catdog.ops.output import shown_label
from catdog.ops.status import review_status
from catdog.settings import Settings
from catdog.stores import open_store

#: Bins of the confidence histogram over [0, 1].
HIST_BINS = 50
#: Least confident images shown in the gallery.
GALLERY_SIZE = 48
#: The workers' limits, for reports written without settings at hand.
DEFAULT_MAX_FILE_BYTES: int = Settings.model_fields["max_file_bytes"].default
DEFAULT_MAX_PIXELS: int = Settings.model_fields["max_image_pixels"].default
#: Longest side of a gallery thumbnail, in pixels.
THUMB_PX = 160
#: Failures listed one by one; the rest are only counted by reason.
FAILURES_LISTED = 500
#: Rows read per database round trip while streaming.
STREAM_CHUNK = 2000
#: Name of the histogram image inside the report folder.
HISTOGRAM_FILE = "confidence.png"
#: The page's template, in ``catdog/ops/templates``.
REPORT_TEMPLATE = "results.html"


@dataclass(frozen=True, slots=True)
class Doubtful:
    """A successfully labeled image with a low confidence."""

    confidence: float
    store: str
    name: str
    label: str
    version: str

    @property
    def location(self) -> str:
        """Where the image is, as stored (readable, undecodable bytes as ``\\xNN``)."""
        return f"{self.store}/{self.name}"


@dataclass(frozen=True, slots=True)
class Failure:
    """An image that could not be classified, and why."""

    location: str
    reason: str


@dataclass
class Summary:
    """What the report shows, aggregated from the latest prediction of every image."""

    labeled: int = 0
    failed: int = 0
    per_label: Counter[str] = field(default_factory=Counter)
    per_version: Counter[str] = field(default_factory=Counter)
    #: label -> counts of its confidences in HIST_BINS equal bins over [0, 1].
    histogram: dict[str, list[int]] = field(default_factory=dict)
    #: The least confident images, least confident first.
    doubtful: list[Doubtful] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    #: Failure counts by kind (see ``failure_kind``).
    failure_kinds: Counter[str] = field(default_factory=Counter)
    #: Images whose label is a reviewer's (counted under that label, never as doubtful).
    human: int = 0
    #: Human review in a few lines (``catdog.ops.status.review_lines``); empty when unused.
    review: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Images with a result, labeled or failed."""
        return self.labeled + self.failed


def summarize(
    session: Session, gallery_size: int = GALLERY_SIZE, threshold: float | None = None
) -> Summary:
    """Fold the latest prediction of every image into a ``Summary``; labels below
    ``threshold`` count as ``uncertain``, as export and classify print them."""
    summary = Summary()
    bins: dict[str, list[int]] = defaultdict(lambda: [0] * HIST_BINS)
    # Max-heap (by negated confidence) of the gallery_size least confident images; the image
    # id breaks ties so Paths are never compared.
    heap: list[tuple[float, int, Doubtful]] = []
    stmt = join_human_labels(latest_predictions(session))
    rows = session.execute(stmt.execution_options(yield_per=STREAM_CHUNK))
    for image, prediction, version, human in rows:
        location = f"{image.store}/{image.path}"
        summary.per_version[version] += 1
        if human is not None:  # a reviewer's label wins, whatever the model said
            summary.labeled += 1
            summary.human += 1
            summary.per_label[human] += 1
            continue
        if prediction.error is not None:
            summary.failed += 1
            summary.failure_kinds[failure_kind(prediction.error)] += 1
            if len(summary.failures) < FAILURES_LISTED:
                summary.failures.append(Failure(location, prediction.error))
            continue
        label = shown_label(prediction.label, prediction.confidence, threshold) or "?"
        confidence = prediction.confidence if prediction.confidence is not None else 0.0
        summary.labeled += 1
        summary.per_label[label] += 1
        bins[label][min(max(int(confidence * HIST_BINS), 0), HIST_BINS - 1)] += 1
        item = (
            -confidence,
            image.id,
            Doubtful(confidence, image.store, image.path, label, version),
        )
        if len(heap) < gallery_size:
            heapq.heappush(heap, item)
        elif gallery_size and item > heap[0]:
            heapq.heapreplace(heap, item)
    summary.histogram = dict(bins)
    summary.doubtful = [d for _, _, d in sorted(heap, reverse=True)]
    summary.review = review_status(session)
    return summary


def failure_kind(reason: str) -> str:
    """The reason without its details: ``file too large (9 bytes > 5)`` -> ``file too large``."""
    return re.split(r"[:(]", reason, maxsplit=1)[0].strip() or reason


def write_report(
    session: Session,
    out_dir: Path,
    store_roots: Sequence[str | Path] = (),
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    threshold: float | None = None,
) -> Summary:
    """Write ``index.html`` and the histogram into ``out_dir``; return what they show.

    Thumbnails are embedded in the page, so the folder can be copied anywhere. Files are read
    through the stores' guarded reader, as workers read them: inside the store and
    ``store_roots``, never blocking on a pipe, bounded in bytes and pixels.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(session, threshold=threshold)
    plot_histogram(summary.histogram, out_dir / HISTOGRAM_FILE)
    roots = list(store_roots)
    thumbs = [
        thumbnail(d.store, d.name, roots, max_file_bytes, max_pixels) for d in summary.doubtful
    ]
    (out_dir / "index.html").write_text(render_html(summary, thumbs), encoding="utf-8")
    return summary


def plot_histogram(histogram: dict[str, list[int]], out: Path) -> None:
    """Stacked histogram of confidences per label, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display in a container or over ssh
    from matplotlib.figure import Figure

    edges = [i / HIST_BINS for i in range(HIST_BINS + 1)]
    centres = [(a + b) / 2 for a, b in zip(edges, edges[1:], strict=False)]
    fig = Figure(figsize=(8, 4), dpi=100)
    ax = fig.add_subplot()
    labels = sorted(histogram)
    if labels:
        ax.hist(
            [centres] * len(labels),
            bins=edges,
            weights=[histogram[label] for label in labels],
            stacked=True,
            label=labels,
        )
        ax.legend()
    ax.set_xlim(0, 1)
    ax.set_xlabel("confidence of the predicted label")
    ax.set_ylabel("images")
    ax.set_title("Confidence per label")
    fig.tight_layout()
    fig.savefig(out, format="png")


def thumbnail(
    store: str,
    name: str,
    roots: Sequence[str | Path] = (),
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> str | None:
    """A JPEG thumbnail as a ``data:`` URL, or None when the file can't be read."""
    try:
        data = open_store(store, list(roots)).read(name, max_file_bytes)
        jpeg = thumbnail_jpeg(data, THUMB_PX, max_pixels)
    except ImageError:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def render_html(summary: Summary, thumbs: Sequence[str | None]) -> str:
    """The report page (``templates/results.html``; every value is HTML-escaped)."""
    return (
        _templates()
        .get_template(REPORT_TEMPLATE)
        .render(
            summary=summary,
            cards=list(zip(summary.doubtful, thumbs, strict=True)),
            thumb_px=THUMB_PX,
            histogram_file=HISTOGRAM_FILE,
            generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        )
    )


@cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("catdog.ops", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
