"""Train an EfficientNet-Lite classifier fast on a CPU: run the frozen backbone once, train
on its cache.

Fine-tuning end to end costs a full backbone pass per image and epoch. Here the ImageNet
backbone up to the last residual block before the final stage runs once per image and view
(the photo, its mirror image, a zoomed window, a strongly augmented crop: see
``training.views``); its activations are cached, and only the final stage, the top conv
and the new head are trained on them. Then:

- checkpoint averaging: the trained weights are the mean of the last epochs' weights;
- calibration: a temperature fitted on the validation photos is folded into the final
  dense layer (its kernel and bias divided by T), so the saved model needs no new layer.

The trained layers are copied into the same end-to-end model ``training.model.make_model``
builds, so the saved ``.keras`` file maps RGB 0..255 images straight to softmax
probabilities, exactly like every other catdog model, and is evaluated end to end through
the workers' decoder on the validation photos (``bench/robustness.py`` adds shifted views).

    python -m catdog.training.transfer --data DIR --out catdog/models/default.keras \
        --arch lite0 --size 224 --views photo crop
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from rich.console import Console
from rich.progress import track

from catdog.images import ImageError
from catdog.training import datasets
from catdog.training.evaluate import compute_metrics, evaluate_on
from catdog.training.tflite import export_tflite
from catdog.training.views import file_pixels

T = TypeVar("T")

#: Views cached by default and trained on (see ``training.views``): the photo and the
#: strongly augmented crop (random framing, colour, blur and JPEG quality, flipped half the
#: time). ``mirror`` and ``zoom`` are there to choose too.
VIEWS = ("photo", "crop")
#: Images per backbone call; also the batch measured for inference speed.
BATCH = 64
#: Share of images held out for validation (stratified, near-duplicates kept together).
VALIDATION_FRACTION = 0.15
#: Epochs and learning rate of the head alone (on pooled features: seconds per epoch).
HEAD_EPOCHS, HEAD_LR = 20, 1e-3
#: Epochs and learning rate of the final stage + top + head on the cache (minutes each);
#: 0 epochs keeps the whole ImageNet backbone frozen.
TUNE_EPOCHS, TUNE_LR = 4, 2e-4
WEIGHT_DECAY = 0.01
DROPOUT = 0.3
#: Targets are (1 - s) on the true class and s / classes elsewhere while training: keeps
#: the head from pushing confidences to 1 on the photos it fits best.
LABEL_SMOOTHING = 0.1
#: The trained weights are the mean of the weights after each of this many last epochs.
AVERAGE_LAST = 2
PREPROCESSING = "rgb 0..255, resize bilinear to input_size; scaling inside model"


def _batches(
    files: Sequence[str], size: int, view: str, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (float pixels, ok mask) per batch, decoding the next batch in a thread."""
    rng = np.random.default_rng(seed)

    def load(chunk: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((len(chunk), size, size, 3), np.float32)
        ok = np.ones(len(chunk), bool)
        for i, path in enumerate(chunk):
            try:
                out[i] = file_pixels(path, size, view, rng)
            except (ImageError, OSError):
                ok[i] = False
        return out, ok

    chunks = [files[i : i + BATCH] for i in range(0, len(files), BATCH)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, chunks[0]) if chunks else None
        for following in [*chunks[1:], None]:
            assert pending is not None
            batch = pending.result()
            pending = pool.submit(load, following) if following is not None else None
            yield batch


def steps_shown(
    items: Iterable[T], total: int, description: str, console: Console | None = None
) -> Iterator[T]:
    """``items`` with their progress shown: rich's bar on a terminal; in a log file (``nohup
    catdog train ... > train.log``), where a bar shows nothing until it ends, a line at every
    tenth of the work with the time spent and left."""
    console = console or Console()
    if console.is_terminal:
        yield from track(items, total=total, description=description, console=console)
        return
    started = time.monotonic()
    every = max(1, total // 10)
    for done, item in enumerate(items, 1):
        yield item
        if done % every == 0 or done == total:
            spent = time.monotonic() - started
            left = spent / done * max(total - done, 0)
            console.print(
                f"{description.strip()}: {done}/{total} batches, {spent:.0f} s, "
                f"about {left:.0f} s left",
                highlight=False,
            )


def extract(
    model: Any, files: Sequence[str], size: int, view: str, seed: int, cache: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Return `model`'s float16 outputs for `files` seen as `view`, and the decodable mask.

    Results are kept in `cache` (``.npy``), so a second run with the same files is free.
    """
    features_file, ok_file = cache / f"{view}.npy", cache / f"{view}-ok.npy"
    if features_file.is_file() and ok_file.is_file():
        return np.load(features_file, mmap_mode="r"), np.load(ok_file)
    shape = (len(files), *model.output_shape[1:])
    features = np.zeros(shape, np.float16)
    ok = np.zeros(len(files), bool)
    steps = (len(files) + BATCH - 1) // BATCH
    for start, (pixels, good) in zip(
        range(0, len(files), BATCH),
        steps_shown(_batches(files, size, view, seed), steps, f"{view:>6} {size}px"),
        strict=True,
    ):
        features[start : start + len(pixels)] = model.predict_on_batch(pixels)
        ok[start : start + len(pixels)] = good
    cache.mkdir(parents=True, exist_ok=True)
    np.save(features_file, features)
    np.save(ok_file, ok)
    return features, ok


def measure_speed(
    sizes: Sequence[int], files: Sequence[str], batches: int = 5, arch: str = "lite0"
) -> dict[int, float]:
    """Return images per second (JPEG decode + backbone, batch `BATCH`) per input size."""
    from catdog.training.efficientnet_lite import build

    speeds = {}
    chosen = list(files[: batches * BATCH])
    for size in sizes:
        model = build(arch, (size, size, 3))
        model.predict_on_batch(np.zeros((BATCH, size, size, 3), np.float32))  # warm up
        started = time.perf_counter()
        for pixels, _ok in _batches(chosen, size, "photo", 0):
            model.predict_on_batch(pixels)
        speeds[size] = len(chosen) / (time.perf_counter() - started)
    return speeds


def split_backbone(size: int, arch: str = "lite0") -> tuple[Any, Any, Any]:
    """Return (ImageNet backbone, its part up to the cut, the rest as a model).

    The cut is the last residual add before the final stage (``block6d_add`` in Lite0).
    """
    import keras

    from catdog.training.convert import imagenet_backbone
    from catdog.training.efficientnet_lite import last_residual_add

    backbone = imagenet_backbone((size, size, 3), pooling=None, variant=arch)
    cut = backbone.get_layer(last_residual_add(arch))
    front = keras.Model(backbone.input, cut.output, name="front")
    # After the last residual add the graph is a plain chain, so the remaining layers can be
    # called again on a new input; the tail shares (and trains) the backbone's own weights.
    rest = backbone.layers[backbone.layers.index(cut) + 1 :]
    x = tail_input = keras.Input(cut.output.shape[1:], name="cut")
    for layer in rest:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
        x = layer(x)
    return backbone, front, keras.Model(tail_input, x, name="tail")


def _head_layers(num_classes: int, seed: int) -> tuple[Any, Any, Any]:
    from keras import layers

    return (
        layers.GlobalAveragePooling2D(name="avg_pool"),
        layers.Dropout(DROPOUT, seed=seed, name="dropout"),
        layers.Dense(num_classes, activation="softmax", name="predictions"),
    )


def predict_cached(model: Any, inputs: np.ndarray) -> np.ndarray:
    """Run `model` over (memory-mapped) `inputs` in chunks, returning float32 outputs."""
    chunk = 1024
    parts = [
        np.asarray(model.predict_on_batch(np.asarray(inputs[i : i + chunk], np.float32)))
        for i in range(0, len(inputs), chunk)
    ]
    return np.concatenate(parts).astype(np.float32)


def sampler(
    views: dict[str, np.ndarray], rows: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
    """Return a function giving each epoch's shuffled inputs: one random view per image."""

    def sample(_epoch: int) -> tuple[np.ndarray, np.ndarray]:
        names = list(views)
        pick = rng.integers(0, len(names), len(rows))
        x = np.empty((len(rows), *views[names[0]].shape[1:]), np.float32)
        for v, name in enumerate(names):
            x[pick == v] = views[name][rows[pick == v]]
        order = rng.permutation(len(rows))
        return x[order], labels[rows][order]

    return sample


def fit(
    model: Any,
    sample: Callable[[int], tuple[np.ndarray, np.ndarray]],
    epochs: int,
    lr: float,
    steps_per_epoch: int,
    val: tuple[np.ndarray, np.ndarray],
    label_smoothing: float = LABEL_SMOOTHING,
    average_last: int = 1,
) -> list[dict]:
    """Train `model` (AdamW, cosine decay) and leave the mean of its last epochs' weights.

    Labels are class indices; the loss is cross-entropy against smoothed one-hot targets.
    """
    import keras

    classes = int(model.output_shape[-1])
    schedule = keras.optimizers.schedules.CosineDecay(lr, epochs * steps_per_epoch, alpha=0.05)
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=WEIGHT_DECAY),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=["accuracy"],
    )
    one_hot = np.eye(classes, dtype=np.float32)
    val_data = (val[0], one_hot[val[1]])
    history, kept = [], []
    for epoch in range(epochs):
        x, y = sample(epoch)
        fitted = model.fit(
            x, one_hot[y], batch_size=BATCH, epochs=1, verbose=0, validation_data=val_data
        )
        history.append({k: round(float(v[-1]), 5) for k, v in fitted.history.items()})
        print(f"epoch {epoch + 1}/{epochs}", history[-1], flush=True)
        if epoch >= epochs - average_last:
            kept.append([keras.ops.convert_to_numpy(w) for w in model.trainable_weights])
    if len(kept) > 1:
        for variable, *values in zip(model.trainable_weights, *kept, strict=True):
            variable.assign(np.mean(values, axis=0))
    return history


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the log loss of softmax(log(probs) / T) on ``labels``.

    Softmax outputs are logits up to a per-row constant, so ``log(probs)`` serves as logits.
    A golden-section search over log T in [1/20, 20]; the loss is unimodal in T.
    """
    logits = np.log(np.clip(np.asarray(probs, np.float64), 1e-12, 1.0))
    labels = np.asarray(labels, int)

    def loss(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z -= z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-log_p[np.arange(len(labels)), labels].mean())

    lo, hi = np.log(1 / 20), np.log(20)
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if loss(a) < loss(b):
            hi = b
        else:
            lo = a
    return float(np.exp((lo + hi) / 2))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(probs) / T): what the model gives once T is folded into its last layer."""
    z = np.log(np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fold_temperature(dense: Any, temperature: float) -> None:
    """Divide the softmax layer's kernel and bias by T: softmax((Wx + b) / T), no new layer."""
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel / temperature, bias / temperature])


def fit_on_cache(
    tail: Any,
    views: dict[str, np.ndarray],
    labels: np.ndarray,
    num_classes: int,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    seed: int,
    tune_epochs: int = TUNE_EPOCHS,
    label_smoothing: float = LABEL_SMOOTHING,
    average_last: int = AVERAGE_LAST,
    head_epochs: int = HEAD_EPOCHS,
) -> tuple[Callable[[np.ndarray], np.ndarray], Any, list[dict]]:
    """Train the head, then (``tune_epochs`` > 0) the tail with it, on cached activations.

    ``views`` maps view names to activations of every image (``photo`` among them);
    validation uses the photo view. Returns a function from cached activations to
    probabilities, the head's dense layer (trained in place, like the tail) and the history.
    """
    import keras

    pool, drop, dense = _head_layers(max(2, num_classes), seed)
    rng = np.random.default_rng(seed)
    steps = (len(train_rows) + BATCH - 1) // BATCH
    # Stage 1: the head alone, on pooled features of the frozen tail (one pass per view).
    pooled = keras.Sequential([tail, pool])
    features = {view: predict_cached(pooled, activations) for view, activations in views.items()}
    vector = keras.Input((int(pooled.output_shape[-1]),))
    stage1 = keras.Model(vector, dense(drop(vector)))
    val_labels = labels[val_rows]
    history = fit(
        stage1,
        sampler(features, train_rows, labels, rng),
        head_epochs,
        HEAD_LR,
        steps,
        (features["photo"][val_rows], val_labels),
        label_smoothing,
    )
    if tune_epochs <= 0:
        return (lambda a: predict_cached(stage1, predict_cached(pooled, a))), dense, history
    # Stage 2: the final stage and the top conv too (BatchNorm stays frozen), lower rate.
    cut = keras.Input(tail.input.shape[1:])
    final = keras.Model(cut, dense(drop(pool(tail(cut, training=False)))))
    history += fit(
        final,
        sampler(views, train_rows, labels, rng),
        tune_epochs,
        TUNE_LR,
        steps,
        (np.asarray(views["photo"][val_rows], np.float32), val_labels),
        label_smoothing,
        average_last,
    )
    return (lambda a: predict_cached(final, a)), dense, history


def decodable_rows(
    cached: dict[str, tuple[np.ndarray, np.ndarray]],
    train_idx: Sequence[int],
    val_idx: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """The train and validation rows whose every cached view decoded."""
    ok = np.logical_and.reduce([good for _, good in cached.values()])
    return np.array([i for i in train_idx if ok[i]]), np.array([i for i in val_idx if ok[i]])


def cache_path(root: Path, arch: str, fingerprint: str, size: int, seed: int) -> Path:
    """Where one backbone's activations of one data set are cached."""
    # Lite0 keeps the name its caches always had.
    name = "transfer" if arch == "lite0" else f"transfer-{arch}"
    return root / f"{name}-{fingerprint}-{size}-s{seed}"


def train(
    data_dir: str | Path,
    out: str | Path,
    size: int | None = None,
    seed: int = 0,
    cache_root: str | Path | None = None,
    tune_epochs: int = TUNE_EPOCHS,
    views: Sequence[str] = VIEWS,
    arch: str = "lite0",
    label_smoothing: float = LABEL_SMOOTHING,
    average_last: int = AVERAGE_LAST,
    calibrate: bool = True,
) -> dict[str, Any]:
    """Train on `data_dir`, save `out` (``.keras``) with its ``.json``; return the metadata."""
    import keras

    from catdog.training.convert import cache_dir
    from catdog.training.efficientnet_lite import get_variant, last_residual_add
    from catdog.training.model import make_model, save_model
    from catdog.training.views import TRAIN_VIEWS

    size = size or get_variant(arch).input_size
    if "photo" not in views or not set(views) <= set(TRAIN_VIEWS):
        raise ValueError(f"views must include 'photo' and come from {TRAIN_VIEWS}, not {views}")
    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    images = datasets.discover(data_dir)
    train_idx, val_idx = datasets.split(images, VALIDATION_FRACTION, seed)
    files, labels = images.files(), np.asarray(images.labels)
    print(f"{len(images)} images, {len(train_idx)} train / {len(val_idx)} validation", flush=True)

    backbone, front, tail = split_backbone(size, arch)
    fingerprint = datasets.fingerprint(images)
    cache = cache_path(Path(cache_root or cache_dir()), arch, fingerprint, size, seed)
    cached = {view: extract(front, files, size, view, seed, cache) for view in views}
    extracted = time.perf_counter()
    train_rows, val_rows = decodable_rows(cached, train_idx, val_idx)
    probs_of, dense, history = fit_on_cache(
        tail,
        {v: c[0] for v, c in cached.items()},
        labels,
        len(images.classes),
        train_rows,
        val_rows,
        seed,
        tune_epochs,
        label_smoothing,
        average_last,
    )
    val_probs = probs_of(cached["photo"][0][val_rows])
    temperature = fit_temperature(val_probs, labels[val_rows]) if calibrate else 1.0
    cached_metrics = compute_metrics(
        labels[val_rows], apply_temperature(val_probs, temperature), images.classes
    )
    fold_temperature(dense, temperature)
    trained = time.perf_counter()

    model = make_model(
        arch, (size, size, 3), len(images.classes), weights=None, dropout=DROPOUT, seed=seed
    )
    model.get_layer("backbone").set_weights(backbone.get_weights())
    model.get_layer("predictions").set_weights(dense.get_weights())
    out = Path(out)
    meta = {
        "arch": arch,
        "classes": list(images.classes),
        "input_size": [size, size],
        "preprocessing": PREPROCESSING,
        "data_fingerprint": fingerprint,
        "seed": seed,
        "training": {
            "split": {
                "validation_fraction": VALIDATION_FRACTION,
                "seed": seed,
                "train": len(train_rows),
                "validation": len(val_rows),
            },
            "cut_layer": last_residual_add(arch),
            "views": list(views),
            "head_epochs": HEAD_EPOCHS,
            "tune_epochs": tune_epochs,
            "label_smoothing": label_smoothing,
            "averaged_epochs": min(average_last, tune_epochs) if tune_epochs else 0,
            "temperature": round(temperature, 4),
            "uncalibrated_ece": compute_metrics(labels[val_rows], val_probs, images.classes)["ece"],
            "history": history,
            "extract_seconds": round(extracted - started, 1),
            "fit_seconds": round(trained - extracted, 1),
        },
        "training_seconds": round(time.perf_counter() - started, 1),
    }
    save_model(model, out, meta)
    # The saved file, end to end on the validation images, is what the metrics describe.
    metrics = evaluate_on(out, images, val_idx)
    metrics["from_cache"] = {k: cached_metrics[k] for k in ("accuracy", "roc_auc", "log_loss")}
    meta["metrics"] = metrics
    meta["training_seconds"] = round(time.perf_counter() - started, 1)
    save_model(model, out, meta)
    return meta


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: train (default) or measure inference speed per input size."""
    from catdog.training.efficientnet_lite import VARIANTS
    from catdog.training.views import TRAIN_VIEWS

    parser = argparse.ArgumentParser(
        prog="python -m catdog.training.transfer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, help="labeled image folder")
    parser.add_argument("--out", default="catdog/models/default.keras")
    parser.add_argument("--arch", default="lite0", choices=list(VARIANTS))
    parser.add_argument("--size", type=int, help="square input side (default: the arch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--epochs", type=int, default=TUNE_EPOCHS, help="fine-tuning epochs (0: frozen backbone)"
    )
    parser.add_argument("--label-smoothing", type=float, default=LABEL_SMOOTHING)
    parser.add_argument(
        "--average-last", type=int, default=AVERAGE_LAST, help="fine-tuning epochs averaged"
    )
    parser.add_argument("--no-calibrate", action="store_true", help="keep temperature 1")
    parser.add_argument("--cache-dir", help="where activations are cached")
    parser.add_argument(
        "--views",
        nargs="+",
        default=list(VIEWS),
        choices=TRAIN_VIEWS,
        help="views of each image cached and trained on",
    )
    parser.add_argument(
        "--speed", type=int, nargs="*", metavar="SIZE", help="only measure images/s at these sizes"
    )
    args = parser.parse_args(argv)
    if args.speed:
        files = datasets.discover(args.data).files()[::97]
        print(json.dumps(measure_speed(args.speed, files, arch=args.arch)))
        return
    meta = train(
        args.data,
        args.out,
        args.size,
        args.seed,
        args.cache_dir,
        args.epochs,
        args.views,
        args.arch,
        args.label_smoothing,
        args.average_last,
        not args.no_calibrate,
    )
    print("wrote", export_tflite(args.out))  # what CPU workers run, beside the .keras file
    keys = ("accuracy", "roc_auc", "log_loss", "ece")
    print(json.dumps({k: meta["metrics"][k] for k in keys}), meta["training_seconds"], "s")


if __name__ == "__main__":
    main()
