"""Train the Lite0 classifier fast on a CPU: run the frozen backbone once, train on its cache.

Fine-tuning end to end costs a full backbone pass per image and epoch. Here the ImageNet
backbone up to block 6 runs once per image and view (the photo, its mirror image, a random
zoomed crop); its activations are cached, and only block 7, the top conv and the new head
are trained on them. The trained layers are then copied into the same end-to-end model
``training.model.make_model("lite0", ...)`` builds, so the saved ``.keras`` file maps RGB
0..255 images straight to softmax probabilities, exactly like every other catdog model.

    python -m catdog.training.transfer --data DIR --out catdog/models/default.keras --size 160
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import track

from catdog.images import ImageError, decode
from catdog.training import datasets
from catdog.training.evaluate import compute_metrics, evaluate_on
from catdog.training.tflite import export_tflite

#: The backbone is cut after this block: what follows (block7a, top) is trained on the cache.
CUT_LAYER = "block6d_add"
#: Views of every image that are cached: the photo, its mirror image and a zoomed crop.
VIEWS = ("photo", "mirror", "zoom")
#: The zoom view decodes at this multiple of the input size and crops a random window.
ZOOM = 1.2
#: Images per backbone call; also the batch measured for inference speed.
BATCH = 64
#: Share of images held out for validation (stratified, near-duplicates kept together).
VALIDATION_FRACTION = 0.15
#: Epochs and learning rate of the head alone (on pooled features: seconds per epoch).
HEAD_EPOCHS, HEAD_LR = 20, 1e-3
#: Epochs and learning rate of block 7 + top + head on the cache (about a minute each).
TUNE_EPOCHS, TUNE_LR = 4, 2e-4
WEIGHT_DECAY = 0.01
DROPOUT = 0.3
#: Decoding refuses larger images (the worker default).
MAX_PIXELS = 100_000_000
PREPROCESSING = "rgb 0..255, resize bilinear to input_size; scaling inside model"


def _pixels(path: str, size: int, view: str, rng: np.random.Generator) -> np.ndarray:
    """Decode one file as the inference workers do, then apply `view`."""
    data = Path(path).read_bytes()
    if view != "zoom":
        pixels = decode(data, (size, size), MAX_PIXELS)[0]
        return pixels[:, ::-1] if view == "mirror" else pixels
    big = round(size * ZOOM)
    pixels = decode(data, (big, big), MAX_PIXELS)[0]
    top, left = rng.integers(0, big - size + 1, 2)
    crop = pixels[top : top + size, left : left + size]
    return crop[:, ::-1] if rng.random() < 0.5 else crop


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
                out[i] = _pixels(path, size, view, rng)
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
        track(_batches(files, size, view, seed), total=steps, description=f"{view:>6} {size}px"),
        strict=True,
    ):
        features[start : start + len(pixels)] = model.predict_on_batch(pixels)
        ok[start : start + len(pixels)] = good
    cache.mkdir(parents=True, exist_ok=True)
    np.save(features_file, features)
    np.save(ok_file, ok)
    return features, ok


def measure_speed(sizes: Sequence[int], files: Sequence[str], batches: int = 5) -> dict[int, float]:
    """Return images per second (JPEG decode + Lite0 + head, batch `BATCH`) per input size."""
    from catdog.training.lite0 import build_lite0

    speeds = {}
    chosen = list(files[: batches * BATCH])
    for size in sizes:
        model = build_lite0((size, size, 3))
        model.predict_on_batch(np.zeros((BATCH, size, size, 3), np.float32))  # warm up
        started = time.perf_counter()
        for pixels, _ok in _batches(chosen, size, "photo", 0):
            model.predict_on_batch(pixels)
        speeds[size] = len(chosen) / (time.perf_counter() - started)
    return speeds


def _split_backbone(size: int) -> tuple[Any, Any, Any]:
    """Return (ImageNet backbone, its part up to `CUT_LAYER`, the rest as a model)."""
    import keras

    from catdog.training.convert import imagenet_backbone

    backbone = imagenet_backbone((size, size, 3), pooling=None)
    cut = backbone.get_layer(CUT_LAYER)
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


def _predict(model: Any, inputs: np.ndarray) -> np.ndarray:
    """Run `model` over (memory-mapped) `inputs` in chunks, returning float32 outputs."""
    chunk = 1024
    parts = [
        np.asarray(model.predict_on_batch(np.asarray(inputs[i : i + chunk], np.float32)))
        for i in range(0, len(inputs), chunk)
    ]
    return np.concatenate(parts).astype(np.float32)


def _sampler(
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


def _fit(
    model: Any,
    sample: Callable[[int], tuple[np.ndarray, np.ndarray]],
    epochs: int,
    lr: float,
    steps_per_epoch: int,
    val: tuple[np.ndarray, np.ndarray],
) -> list[dict]:
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(lr, epochs * steps_per_epoch, alpha=0.05)
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=WEIGHT_DECAY),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history = []
    for epoch in range(epochs):
        x, y = sample(epoch)
        fitted = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, validation_data=val)
        history.append({k: round(float(v[-1]), 5) for k, v in fitted.history.items()})
        print(f"epoch {epoch + 1}/{epochs}", history[-1], flush=True)
    return history


def train(
    data_dir: str | Path,
    out: str | Path,
    size: int = 160,
    seed: int = 0,
    cache_root: str | Path | None = None,
    tune_epochs: int = TUNE_EPOCHS,
    views: Sequence[str] = VIEWS,
) -> dict[str, Any]:
    """Train on `data_dir`, save `out` (``.keras``) with its ``.json``; return the metadata."""
    import keras

    from catdog.training.convert import cache_dir
    from catdog.training.model import make_model, save_model

    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    images = datasets.discover(data_dir)
    train_idx, val_idx = datasets.split(images, VALIDATION_FRACTION, seed)
    files, labels = images.files(), np.asarray(images.labels)
    print(f"{len(images)} images, {len(train_idx)} train / {len(val_idx)} validation", flush=True)

    backbone, front, tail = _split_backbone(size)
    fingerprint = datasets.fingerprint(images)
    cache = Path(cache_root or cache_dir()) / f"transfer-{fingerprint}-{size}-s{seed}"
    if "photo" not in views or not set(views) <= set(VIEWS):
        raise ValueError(f"views must include 'photo' and come from {VIEWS}, not {views}")
    cached = {view: extract(front, files, size, view, seed, cache) for view in views}
    extracted = time.perf_counter()
    ok = np.logical_and.reduce([good for _, good in cached.values()])
    train_rows = np.array([i for i in train_idx if ok[i]])
    val_rows = np.array([i for i in val_idx if ok[i]])
    val = (np.asarray(cached["photo"][0][val_rows], np.float32), labels[val_rows])
    rng = np.random.default_rng(seed)

    pool, drop, dense = _head_layers(len(images.classes), seed)
    steps = (len(train_rows) + BATCH - 1) // BATCH
    # Stage 1: the head alone, on pooled features of the frozen tail (one pass per view).
    pooled = keras.Sequential([tail, pool])
    features = {view: _predict(pooled, cached[view][0]) for view in views}
    vector = keras.Input((int(pooled.output_shape[-1]),))
    stage1 = keras.Model(vector, dense(drop(vector)))
    pooled_val = (features["photo"][val_rows], val[1])
    history = _fit(
        stage1, _sampler(features, train_rows, labels, rng), HEAD_EPOCHS, HEAD_LR, steps, pooled_val
    )
    # Stage 2: block 7 and the top conv too (BatchNorm stays frozen), at a lower rate.
    cut = keras.Input(tail.input.shape[1:])
    stage2 = keras.Model(cut, dense(drop(pool(tail(cut, training=False)))))
    history += _fit(
        stage2,
        _sampler({v: c[0] for v, c in cached.items()}, train_rows, labels, rng),
        tune_epochs,
        TUNE_LR,
        steps,
        val,
    )
    cached_metrics = compute_metrics(
        val[1], np.asarray(stage2.predict(val[0], verbose=0)), images.classes
    )
    trained = time.perf_counter()

    model = make_model(
        "lite0", (size, size, 3), len(images.classes), weights=None, dropout=DROPOUT, seed=seed
    )
    model.get_layer("backbone").set_weights(backbone.get_weights())
    model.get_layer("predictions").set_weights(dense.get_weights())
    out = Path(out)
    meta = {
        "arch": "lite0",
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
            "cut_layer": CUT_LAYER,
            "views": list(views),
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
    parser = argparse.ArgumentParser(
        prog="python -m catdog.training.transfer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, help="labeled image folder")
    parser.add_argument("--out", default="catdog/models/default.keras")
    parser.add_argument("--size", type=int, default=160, help="square input side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=TUNE_EPOCHS, help="fine-tuning epochs")
    parser.add_argument("--cache-dir", help="where activations are cached")
    parser.add_argument(
        "--views",
        nargs="+",
        default=list(VIEWS),
        choices=VIEWS,
        help="views of each image cached and trained on",
    )
    parser.add_argument(
        "--speed", type=int, nargs="*", metavar="SIZE", help="only measure images/s at these sizes"
    )
    args = parser.parse_args(argv)
    if args.speed:
        files = datasets.discover(args.data).files()[::97]
        print(json.dumps(measure_speed(args.speed, files)))
        return
    meta = train(args.data, args.out, args.size, args.seed, args.cache_dir, args.epochs, args.views)
    print("wrote", export_tflite(args.out))  # what CPU workers run, beside the .keras file
    keys = ("accuracy", "roc_auc", "log_loss", "ece")
    print(json.dumps({k: meta["metrics"][k] for k in keys}), meta["training_seconds"], "s")


if __name__ == "__main__":
    main()
