"""Training commands: explore, train, evaluate, retrain and the model registry.

TensorFlow is imported inside the commands that need it, never at import time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from catdog.cli.options import output_options
from catdog.training.archs import ARCHS

#: Seconds between polls of a queued training job's state (``retrain --wait``).
POLL_SECONDS = 2.0
#: ``--arch``: the names and one-line descriptions of the architecture table (no Keras).
ARCH_CHOICE = click.Choice(list(ARCHS))
ARCH_HELP = "; ".join(f"{a.name}: {a.description}" for a in ARCHS.values())


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


def _user_errors() -> tuple[type[Exception], ...]:
    from catdog.db.registry import ModelNotFound
    from catdog.training.datasets import DatasetError

    return (DatasetError, ModelNotFound, ValueError, FileNotFoundError)


def _session() -> Any:
    from catdog.db.engine import engine_for, session_factory
    from catdog.db.migrate import upgrade
    from catdog.settings import get_settings

    engine = engine_for(get_settings().database())
    upgrade(engine)
    return session_factory(engine)()


def _read_only_session() -> Any:
    """A session that never creates or migrates the schema (``models list``)."""
    from catdog.cli.pipeline import read_only_sessions
    from catdog.settings import get_settings

    return read_only_sessions(get_settings())()


@click.command()
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("explore"),
    show_default=True,
    help="Folder for report.html and its plots.",
)
@click.option(
    "--sample",
    type=int,
    default=None,
    help="Look at most at this many images (default: all up to 30,000).",
)
def explore(data: Path, out_dir: Path, sample: int | None) -> None:
    """Write an exploration report of the labeled images in DATA."""
    from catdog.training.explore import DEFAULT_SAMPLE
    from catdog.training.explore import explore as run

    try:
        report = run(data, out_dir, sample=sample or DEFAULT_SAMPLE)
    except _user_errors() as exc:
        raise _fail(exc) from exc
    click.echo(f"report: {report}")


@click.command()
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="Labeled images: class folders or cat.N.jpg names.",
)
@click.option("--arch", type=ARCH_CHOICE, default="scratch", show_default=True, help=ARCH_HELP)
@click.option("--epochs", type=click.IntRange(1), default=None, help="Default: per arch.")
@click.option(
    "--input-size",
    type=click.IntRange(16),
    default=None,
    help="Square input side in pixels (default: per arch).",
)
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Default: per arch.")
@click.option(
    "--widths", default=None, help="scratch only: stem and block filters, e.g. 32,64,128."
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Output folder (default: runs/ARCH).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seeds the split and the weights."
)
@click.option(
    "--learning-rate",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Peak learning rate (default: per arch).",
)
@click.option(
    "--init",
    "initial_model",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Continue from this .keras model's weights (same classes).",
)
def train(
    data: Path,
    arch: str,
    epochs: int | None,
    input_size: int | None,
    batch_size: int | None,
    widths: str | None,
    out_dir: Path | None,
    seed: int,
    learning_rate: float | None,
    initial_model: Path | None,
) -> None:
    """Train a model locally; writes model.keras, model.json, history and report.html."""
    from rich.console import Console

    from catdog.training.datasets import discover

    try:
        parsed = tuple(int(w) for w in widths.split(",")) if widths else None
    except ValueError as exc:
        raise click.BadParameter(
            "filters as integers, e.g. 32,64,128", param_hint="--widths"
        ) from exc
    try:
        discover(data)  # fail on bad data before TensorFlow loads
    except _user_errors() as exc:
        raise _fail(exc) from exc
    from catdog.training.train import train as run

    console = Console(stderr=True)
    try:
        result = run(
            data,
            out_dir or Path("runs") / arch,
            arch=arch,
            epochs=epochs,
            input_size=input_size,
            batch_size=batch_size,
            seed=seed,
            widths=parsed,
            console=console,
            learning_rate=learning_rate,
            initial_model=initial_model,
        )
    except _user_errors() as exc:
        raise _fail(exc) from exc
    except RuntimeError as exc:
        from catdog.training.convert import WeightsUnavailable

        # lite0 without ImageNet weights: the message says how to install them.
        if isinstance(exc, WeightsUnavailable):
            raise _fail(exc) from exc
        raise
    m = result.metrics
    click.echo(
        f"model: {result.model_file}\nreport: {result.report}\n"
        f"validation: accuracy {m['accuracy']:.4f}  roc_auc {m['roc_auc'] or 0:.4f}  "
        f"log_loss {m['log_loss']:.4f}  n {m['n']}\n"
        f"training time: {result.training_seconds:.0f} s"
    )


def _default_model() -> Path:
    from catdog.db import registry
    from catdog.settings import get_settings

    with _session() as session:
        return Path(registry.current_version(session, get_settings()).file)


def format_metrics(metrics: dict[str, Any]) -> str:
    """Metrics as aligned text: headline numbers, then one line per class."""
    from catdog.training.evaluate import HEADLINE_METRICS

    lines = [
        f"{k:<20}{metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{k:<20}{metrics[k]}"
        for k in (
            *HEADLINE_METRICS,
            "threshold",
            "uncertain_rate",
            "accuracy_when_sure",
            "unreadable",
        )
        if k in metrics and metrics[k] is not None
    ]
    lines.append(f"{'class':<12}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for name, m in metrics["per_class"].items():
        lines.append(
            f"{name:<12}{m['precision']:>10.4f}{m['recall']:>10.4f}{m['f1']:>10.4f}"
            f"{m['support']:>10}"
        )
    return "\n".join(lines)


@click.command()
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="Labeled images: class folders or cat.N.jpg names.",
)
@click.option(
    "--model",
    "model_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A .keras file (default: CATDOG_MODEL, else the production model).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Metrics as aligned text or as one JSON object.",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    default=None,
    help="Count images below this confidence as uncertain.",
)
def evaluate(data: Path, model_file: Path | None, fmt: str, threshold: float | None) -> None:
    """Metrics of a model on the labeled images in DATA."""
    from catdog.training.datasets import discover

    try:
        discover(data)
        model_file = model_file or _default_model()
        if not model_file.is_file():
            raise FileNotFoundError(f"model file not found: {model_file}")
        from catdog.training.evaluate import evaluate as run

        metrics = run(model_file, data, threshold=threshold)
    except _user_errors() as exc:
        raise _fail(exc) from exc
    click.echo(json.dumps(metrics, indent=2) if fmt == "json" else format_metrics(metrics))


@click.command()
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="Labeled images, as seen by the training worker (default: the data of the current model).",
)
@click.option(
    "--arch",
    type=ARCH_CHOICE,
    default=None,
    help="Train a new model of this architecture. Default: continue from the production "
    f"model's weights on the data (same architecture, input size and classes). {ARCH_HELP}",
)
@click.option("--epochs", type=click.IntRange(1), default=None, help="Default: per arch.")
@click.option(
    "--input-size", type=click.IntRange(16), default=None, help="Square input side in pixels."
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seeds the split and the weights."
)
@click.option("--force", is_flag=True, help="Promote the new model even if it is not better.")
@click.option(
    "--from-reviews",
    is_flag=True,
    help="Train on the human labels (`catdog review`), plus --data if given; a stratified "
    "fifth of them is held out, and the new model is promoted only if it beats production "
    "there and is at most 1 point less accurate on the validation split.",
)
@click.option("--wait", is_flag=True, help="Show the job's progress and wait for its result.")
def retrain(
    data: Path | None,
    arch: str | None,
    epochs: int | None,
    input_size: int | None,
    seed: int,
    force: bool,
    from_reviews: bool,
    wait: bool,
) -> None:
    """Queue a training job on the training worker (queue "training")."""
    from catdog.broker import TRAIN_TASK, TRAINING_QUEUE, make_celery
    from catdog.settings import get_settings

    settings = get_settings()
    if settings.embedded:
        raise click.ClickException(
            "retrain needs a broker (set CATDOG_BROKER_URL); train locally with `catdog train`"
        )
    kwargs = {
        "data_dir": str(data.resolve()) if data else None,
        "arch": arch,
        "epochs": epochs,
        "input_size": input_size,
        "seed": seed,
        "force": force,
        "from_reviews": from_reviews,
    }
    from catdog.cli.waits import ConsumerWatch, wait_for_broker

    app = make_celery(settings)
    wait_for_broker(app, settings)  # a wrong URL or password is an error, not a silent hang
    result = app.send_task(TRAIN_TASK, kwargs=kwargs, queue=TRAINING_QUEUE)
    click.echo(f"queued training job {result.id}")
    if wait:
        outcome = wait_for(result, watch=ConsumerWatch(settings, TRAINING_QUEUE))
        click.echo(json.dumps(outcome, indent=2))


def wait_for(result: Any, poll: float = POLL_SECONDS, watch: Any = None) -> dict[str, Any]:
    """Follow a queued training job with a progress bar of epochs; return its result.

    While the job is still queued, ``watch`` (a ``ConsumerWatch``) says when no training
    worker is there to take it.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[metrics]}"),
    ) as bar:
        task = bar.add_task("waiting for the training worker", total=None, metrics="")
        while True:
            state = result.state
            if state == "PROGRESS" and isinstance(result.info, dict):
                info = result.info
                shown = "  ".join(
                    f"{k} {v:.3f}"
                    for k, v in info.get("metrics", {}).items()
                    if k in ("accuracy", "val_accuracy", "val_loss")
                )
                bar.update(
                    task,
                    description="training",
                    completed=info.get("epoch", 0),
                    total=info.get("epochs"),
                    metrics=shown,
                )
            elif state == "STARTED":
                bar.update(task, description="starting")
            elif state == "SUCCESS":
                return dict(result.result)
            elif state in ("FAILURE", "REVOKED"):
                raise click.ClickException(f"training job {state.lower()}: {result.info!r}")
            elif state == "PENDING" and watch is not None:
                watch.check(state)
            time.sleep(poll)


@click.group(invoke_without_command=True)
@click.pass_context
def models(ctx: click.Context) -> None:
    """The model registry (default: list the versions)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_models)


@models.command("list")
@output_options()
def list_models(fmt: str) -> None:
    """List model versions, oldest first: which one is production (the bundled model until a
    first promotion), and each accuracy with the validation set it was measured on."""
    from catdog.ops.model_list import model_rows, write_model_rows

    with _read_only_session() as session:
        rows = model_rows(session)
    if not any(row.registered for row in rows):
        bundled = " yet: the bundled model is production" if rows else ""
        click.echo(
            f"no registered models{bundled} (catdog retrain, or catdog models promote)", err=True
        )
    write_model_rows(rows, fmt)


@models.command("promote")
@click.argument("version")
def promote_model(version: str) -> None:
    """Make VERSION (or a .keras file, registered on the way) the production model."""
    from catdog.db import registry

    with _session() as session:
        try:
            if version.endswith(".keras"):
                version = registry.ensure_version(session, Path(version)).version
            row = registry.promote(session, version)
        except _user_errors() as exc:
            raise _fail(exc) from exc
        session.commit()
        click.echo(f"production model: {row.version}")


@models.command("convert")
@click.argument("model_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def convert_model(model_file: Path) -> None:
    """Write the .tflite CPU workers run beside MODEL_FILE (a .keras file), checked against it."""
    from catdog.training.tflite import export_tflite

    try:
        written = export_tflite(model_file)
    except _user_errors() as exc:
        raise _fail(exc) from exc
    click.echo(f"wrote {written}")


def register(group: click.Group) -> None:
    """Add this module's commands to ``group``."""
    for command in (explore, train, evaluate, retrain, models):
        group.add_command(command)
