"""The HTML results report: counts per label, confidence histogram, doubtful images, failures.

The latest prediction of every image is streamed once from the database and folded into
small aggregates (counters, histogram bins, a bounded heap), so the report of ten million
images needs no more memory than the report of ten.
"""

from __future__ import annotations

import base64
import heapq
import html
import io
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import Session

from catdog.db.queries import latest_predictions

#: Bins of the confidence histogram over [0, 1].
HIST_BINS = 50
#: Least confident images shown in the gallery.
GALLERY_SIZE = 48
#: Longest side of a gallery thumbnail, in pixels.
THUMB_PX = 160
#: Failures listed one by one; the rest are only counted by reason.
FAILURES_LISTED = 500
#: Rows read per database round trip while streaming.
STREAM_CHUNK = 2000
#: Name of the histogram image inside the report folder.
HISTOGRAM_FILE = "confidence.png"


@dataclass(frozen=True, slots=True)
class Doubtful:
    """A successfully labeled image with a low confidence."""

    confidence: float
    location: Path
    label: str
    version: str


@dataclass(frozen=True, slots=True)
class Failure:
    """An image that could not be classified, and why."""

    location: Path
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

    @property
    def total(self) -> int:
        """Images with a result, labeled or failed."""
        return self.labeled + self.failed


def summarize(session: Session, gallery_size: int = GALLERY_SIZE) -> Summary:
    """Fold the latest prediction of every image into a ``Summary``."""
    summary = Summary()
    bins: dict[str, list[int]] = defaultdict(lambda: [0] * HIST_BINS)
    # Max-heap (by negated confidence) of the gallery_size least confident images; the image
    # id breaks ties so Paths are never compared.
    heap: list[tuple[float, int, Doubtful]] = []
    rows = session.execute(latest_predictions(session).execution_options(yield_per=STREAM_CHUNK))
    for image, prediction, version in rows:
        location = Path(image.store) / image.path
        summary.per_version[version] += 1
        if prediction.error is not None:
            summary.failed += 1
            summary.failure_kinds[failure_kind(prediction.error)] += 1
            if len(summary.failures) < FAILURES_LISTED:
                summary.failures.append(Failure(location, prediction.error))
            continue
        label = prediction.label or "?"
        confidence = prediction.confidence if prediction.confidence is not None else 0.0
        summary.labeled += 1
        summary.per_label[label] += 1
        bins[label][min(max(int(confidence * HIST_BINS), 0), HIST_BINS - 1)] += 1
        item = (-confidence, image.id, Doubtful(confidence, location, label, version))
        if len(heap) < gallery_size:
            heapq.heappush(heap, item)
        elif gallery_size and item > heap[0]:
            heapq.heapreplace(heap, item)
    summary.histogram = dict(bins)
    summary.doubtful = [d for _, _, d in sorted(heap, reverse=True)]
    return summary


def failure_kind(reason: str) -> str:
    """The reason without its details: ``file too large (9 bytes > 5)`` -> ``file too large``."""
    return re.split(r"[:(]", reason, maxsplit=1)[0].strip() or reason


def write_report(session: Session, out_dir: Path, store_roots: Sequence[Path] = ()) -> Summary:
    """Write ``index.html`` and the histogram into ``out_dir``; return what they show.

    Thumbnails are embedded in the page, so the folder can be copied anywhere. With
    ``store_roots``, only files under them are opened (as for workers).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(session)
    plot_histogram(summary.histogram, out_dir / HISTOGRAM_FILE)
    roots = [r.resolve() for r in store_roots]
    thumbs = [thumbnail(d.location, roots) for d in summary.doubtful]
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


def thumbnail(location: Path, roots: Sequence[Path] = ()) -> str | None:
    """A JPEG thumbnail as a ``data:`` URL, or None when the file can't be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        path = location.resolve()
        if roots and not any(path.is_relative_to(root) for root in roots):
            return None
        with Image.open(path) as img:
            img.draft("RGB", (THUMB_PX, THUMB_PX))  # JPEG: decode at reduced size
            img.thumbnail((THUMB_PX, THUMB_PX))
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="JPEG", quality=80)
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def render_html(summary: Summary, thumbs: Sequence[str | None]) -> str:
    """The report page."""
    e = html.escape
    total = summary.total or 1
    label_rows = "".join(
        f"<tr><td>{e(label)}</td><td>{n}</td><td>{100 * n / total:.1f}%</td></tr>"
        for label, n in summary.per_label.most_common()
    )
    version_rows = "".join(
        f"<tr><td>{e(version)}</td><td>{n}</td></tr>"
        for version, n in summary.per_version.most_common()
    )
    cards = "".join(
        '<figure class="card">'
        + (f'<img src="{src}" alt="">' if src else '<div class="missing">unreadable</div>')
        + f"<figcaption><b>{e(d.label)}</b> {d.confidence:.3f}<br>"
        f'<span class="path">{e(str(d.location))}</span></figcaption></figure>'
        for d, src in zip(summary.doubtful, thumbs, strict=True)
    )
    kind_rows = "".join(
        f"<tr><td>{e(kind)}</td><td>{n}</td></tr>"
        for kind, n in summary.failure_kinds.most_common()
    )
    failure_rows = "".join(
        f'<tr><td class="path">{e(str(f.location))}</td><td>{e(f.reason)}</td></tr>'
        for f in summary.failures
    )
    more = summary.failed - len(summary.failures)
    more_note = f"<p>… and {more} more failures, counted above.</p>" if more > 0 else ""
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>catdog results</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: .25em .6em; text-align: left; }}
.gallery {{ display: flex; flex-wrap: wrap; gap: .6em; }}
.card {{ width: {THUMB_PX + 20}px; margin: 0; font-size: .8em; }}
.card img, .missing {{ max-width: {THUMB_PX}px; max-height: {THUMB_PX}px; }}
.missing {{ width: {THUMB_PX}px; height: {THUMB_PX}px; background: #eee;
  display: flex; align-items: center; justify-content: center; }}
.path {{ word-break: break-all; color: #555; }}
</style></head><body>
<h1>catdog results</h1>
<p>Generated {generated}. <b id="total">{summary.total}</b> images:
<b id="labeled">{summary.labeled}</b> labeled, <b id="failed">{summary.failed}</b> failed.</p>
<h2>Counts per label</h2>
<table id="labels"><tr><th>label</th><th>images</th><th>share</th></tr>{label_rows}</table>
<h2>Model versions</h2>
<table id="versions"><tr><th>version</th><th>images</th></tr>{version_rows}</table>
<h2>Confidence</h2>
<img src="{HISTOGRAM_FILE}" alt="histogram of confidences per label">
<h2>Least confident images</h2>
<div class="gallery">{cards or "<p>None.</p>"}</div>
<h2>Failures</h2>
<table id="failure-kinds"><tr><th>kind</th><th>images</th></tr>{kind_rows}</table>
<table id="failures"><tr><th>file</th><th>reason</th></tr>{failure_rows}</table>
{more_note}
</body></html>
"""
