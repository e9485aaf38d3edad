"""The training report: learning curves, confusion matrix, ROC curve, reliability diagram,
confident mistakes.

Also renders the exploration report's page: both are jinja2 templates in
``training/templates`` with autoescape on. Plots are PNG files next to the HTML page, so the
folder can be copied or served as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import matplotlib

matplotlib.use("Agg")  # no display on servers and workers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageOps  # noqa: E402

from catdog.training.evaluate import (  # noqa: E402
    ECE_BINS,
    HEADLINE_METRICS,
    expected_calibration_error,
    roc_curve,
)

#: Wrong validation images shown in the report, most confident first.
MISTAKES_SHOWN = 16
#: Thumbnails per row and thumbnail side (pixels) of the image grids.
SHEET_COLUMNS = 8
SHEET_TILE = 128

#: Folder of the page templates, inside this package (``training/templates``).
TEMPLATES = "templates"


def render_page(template: str, title: str, **context: Any) -> str:
    """A complete, self-contained HTML page from ``templates/<template>``, values escaped."""
    return _templates().get_template(template).render(title=title, **context)


def _cell(value: Any) -> str:
    """A table cell's text: floats with four decimals."""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


@cache
def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("catdog.training", TEMPLATES),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["cell"] = _cell
    return env


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def plot_learning_curves(history: dict[str, list[float]], path: Path) -> str:
    """Loss and accuracy per epoch, training and validation."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        for name, style in ((key, "-"), (f"val_{key}", "--")):
            if history.get(name):
                epochs = range(1, len(history[name]) + 1)
                ax.plot(epochs, history[name], style, marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_confusion(confusion: Sequence[Sequence[int]], classes: Sequence[str], path: Path) -> str:
    """Confusion matrix with counts (rows: true class, columns: predicted)."""
    matrix = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.2 * len(classes) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(count),
            ha="center",
            va="center",
            color="white" if count > matrix.max() / 2 else "black",
        )
    return _save(fig, path)


def plot_roc(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], path: Path) -> str:
    """ROC curve of each class against the rest (only the second class for two classes)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    shown = [1] if len(classes) == 2 else range(len(classes))
    for k in shown:
        fpr, tpr = roc_curve(y_true == k, probs[:, k])
        ax.plot(fpr, tpr, label=f"{classes[k]} vs rest" if len(classes) > 2 else classes[k])
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def reliability_bins(
    correct: np.ndarray, confidence: np.ndarray, bins: int = ECE_BINS
) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, count) of each non-empty equal-width confidence bin, the
    bins of :func:`~catdog.training.evaluate.expected_calibration_error`."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    return [
        (float(confidence[which == b].mean()), float(correct[which == b].mean()), int(n))
        for b in range(bins)
        if (n := int((which == b).sum()))
    ]


def plot_reliability(
    y_true: np.ndarray,
    series: dict[str, np.ndarray],
    path: Path,
) -> str:
    """Reliability diagram: accuracy against confidence per bin, for each set of ``series``
    probabilities (e.g. before and after calibration), with each one's ECE in the legend.

    Points on the diagonal are calibrated: of the photos given 0.9, nine in ten are right.
    Marker areas grow with the photos in the bin; the lower panel counts them (log scale).
    """
    fig, (ax, counts) = plt.subplots(
        2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True
    )
    low = 1.0
    for name, probs in series.items():
        confidence = probs.max(axis=1)
        correct = probs.argmax(axis=1) == y_true
        rows = reliability_bins(correct, confidence)
        x, acc, n = (np.array(v) for v in zip(*rows, strict=True))
        low = min(low, float(confidence.min()), float(acc.min()))
        ece = expected_calibration_error(correct, confidence)
        ax.plot(x, acc, "o-", label=f"{name} (ECE {ece:.4f})", markersize=3)
        ax.scatter(x, acc, s=4 + 60 * n / n.max(), alpha=0.4)
        counts.step(x, n, where="mid", label=name)
    start = min(0.5, np.floor(low * 10) / 10)
    ax.plot([start, 1], [start, 1], ":", color="grey", label="calibrated")
    ax.set_ylabel("accuracy in bin")
    ax.set_ylim(start, 1.005)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    counts.set_yscale("log")
    counts.set_xlabel("confidence (top probability)")
    counts.set_ylabel("photos")
    counts.set_xlim(start, 1.005)
    counts.grid(alpha=0.3)
    return _save(fig, path)


def confident_mistakes(
    y_true: np.ndarray, probs: np.ndarray, limit: int = MISTAKES_SHOWN
) -> list[int]:
    """Indices of wrong predictions, the most confident first."""
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != y_true)
    order = np.argsort(-probs[wrong, pred[wrong]], kind="mergesort")
    return [int(i) for i in wrong[order][:limit]]


def contact_sheet(
    files: Sequence[str | Path],
    captions: Sequence[str],
    path: Path,
    cols: int = SHEET_COLUMNS,
    tile: int = SHEET_TILE,
) -> str:
    """A grid of thumbnails with a caption (one or two lines) under each, drawn with PIL.

    Far cheaper than one matplotlib axis per image; unreadable files become grey tiles.
    """
    caption_h = 26
    cols = max(1, min(cols, len(files)))
    rows = max(1, -(-len(files) // cols))
    sheet = Image.new("RGB", (cols * tile, rows * (tile + caption_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for n, (file, caption) in enumerate(zip(files, captions, strict=True)):
        x, y = (n % cols) * tile, (n // cols) * (tile + caption_h)
        try:
            with Image.open(file) as im:
                im.draft("RGB", (tile, tile))
                thumb = ImageOps.contain(im.convert("RGB"), (tile - 4, tile - 4))
        except Exception:  # noqa: BLE001 - any decoder failure: show a blank tile
            thumb = Image.new("RGB", (tile - 4, tile - 4), "lightgrey")
        sheet.paste(thumb, (x + (tile - thumb.width) // 2, y + (tile - thumb.height) // 2))
        draw.multiline_text((x + 3, y + tile), caption, fill="black", spacing=1)
    sheet.save(path)
    return path.name


def plot_mistakes(
    indices: Sequence[int],
    files: Sequence[str],
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    path: Path,
) -> str:
    """A grid of images with their true class, predicted class and confidence."""
    captions = []
    for i in indices:
        k = int(probs[i].argmax())
        captions.append(
            f"{Path(files[i]).name[:24]}\ntrue {classes[int(y_true[i])]}, "
            f"said {classes[k]} {probs[i, k]:.2f}"
        )
    return contact_sheet([files[i] for i in indices], captions, path)


def write_training_report(
    out_dir: Path,
    history: dict[str, list[float]],
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    files: Sequence[str],
    metrics: dict[str, Any],
    title: str = "catdog training report",
    uncalibrated: np.ndarray | None = None,
    shifts: Sequence[Sequence[Any]] = (),
) -> Path:
    """Write ``report.html`` and its PNG plots into ``out_dir``; return the HTML path.

    ``uncalibrated`` (the probabilities before temperature scaling) adds a second series to
    the reliability diagram; ``shifts`` rows (shift, accuracy, errors, confident errors,
    ECE) add a table of shifted views of the validation photos.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    y_true = np.asarray(y_true, int)
    headline = [(k, metrics[k]) for k in HEADLINE_METRICS if metrics.get(k) is not None]
    per_class = [
        (
            name,
            m["precision"],
            m["recall"],
            m["f1"],
            m["support"],
            m["roc_auc"] if m["roc_auc"] is not None else "-",
        )
        for name, m in metrics["per_class"].items()
    ]
    mistakes = confident_mistakes(y_true, probs)
    plots = {
        "learning_curves": plot_learning_curves(history, out_dir / "learning_curves.png"),
        "confusion": plot_confusion(
            metrics["confusion"], classes, out_dir / "confusion_matrix.png"
        ),
        "roc": (
            plot_roc(y_true, probs, classes, out_dir / "roc_curve.png")
            if metrics.get("roc_auc") is not None
            else None
        ),
        "reliability": plot_reliability(
            y_true,
            {"model": probs}
            if uncalibrated is None
            else {"before calibration": uncalibrated, "model (calibrated)": probs},
            out_dir / "reliability.png",
        ),
        "mistakes": (
            plot_mistakes(
                mistakes, files, y_true, probs, classes, out_dir / "confident_mistakes.png"
            )
            if mistakes
            else None
        ),
    }
    page = render_page(
        "training.html",
        title,
        headline=headline,
        per_class=per_class,
        plots=plots,
        shifts=[list(row) for row in shifts],
    )
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
