"""Labeled image folders: discovery, a near-duplicate-aware split, a fingerprint, tf.data.

Two layouts are understood, also mixed in one folder:

- class per folder: ``DATA/cat/*.jpg`` (images anywhere below the class folder);
- Kaggle style: ``DATA/cat.1.jpg`` (the label is the name up to the first dot).

Images are the files :data:`catdog.images.IMAGE_EXTENSIONS` names, decoded by
:func:`catdog.images.decode` like the workers do, so a model is trained and evaluated on the
pixels it will be served (EXIF orientation applied, alpha on white, same resize).

TensorFlow is imported only by :func:`make_pipeline`, so discovery and splitting stay cheap
for commands and processes that never train.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catdog.images import (
    IMAGE_EXTENSIONS,
    ImageError,
    PixelBudget,
    decode,
    read_file,
    shared_budget,
)
from catdog.settings import get_settings

log = logging.getLogger(__name__)

#: Optional file in a data folder listing near-identical photos, one pair per line:
#: ``NAME_A NAME_B [DISTANCE]`` (names are file names or paths relative to the folder).
NEAR_DUPLICATES_FILE = "near_duplicate_pairs.txt"
#: Share of the images held out for validation unless the caller says otherwise.
VALIDATION_FRACTION = 0.2


class DatasetError(ValueError):
    """The data folder cannot be used for training or evaluation; the message says why."""


@dataclass(frozen=True)
class LabeledImages:
    """Images found under a root folder, each with a class index into ``classes``."""

    root: Path
    #: Paths relative to ``root`` (POSIX form), sorted.
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    #: File sizes in bytes, aligned with ``paths`` (the fingerprint uses them).
    sizes: tuple[int, ...] = field(repr=False, default=())

    def __len__(self) -> int:
        return len(self.paths)

    def files(self, indices: Sequence[int] | None = None) -> list[str]:
        """Absolute file names of the images at ``indices`` (all when None)."""
        chosen = range(len(self.paths)) if indices is None else indices
        return [str(self.root / self.paths[i]) for i in chosen]

    def counts(self) -> dict[str, int]:
        """Images per class."""
        counts = dict.fromkeys(self.classes, 0)
        for label in self.labels:
            counts[self.classes[label]] += 1
        return counts


def is_image_file(path: Path) -> bool:
    """True for a visible file with an image extension (the workers' list)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def kaggle_label(name: str) -> str | None:
    """The label of a Kaggle-style name (``cat.12.jpg`` -> ``cat``), None for other names."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[0]:
        return parts[0].lower()
    return None


def discover(data_dir: str | Path, classes: Sequence[str] | None = None) -> LabeledImages:
    """Find the labeled images under ``data_dir``.

    ``classes`` fixes the class order (a model's classes when evaluating it); images of
    other classes are then left out. By default the classes are the sorted labels found.
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DatasetError(f"data folder not found: {root}")
    found: list[tuple[str, str, int]] = []  # (relative path, label, size)
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            for path in sorted(entry.rglob("*")):
                if is_image_file(path) and path.is_file():
                    rel = path.relative_to(root).as_posix()
                    found.append((rel, entry.name, path.stat().st_size))
        elif is_image_file(entry):
            label = kaggle_label(entry.name)
            if label is not None:
                found.append((entry.name, label, entry.stat().st_size))
    if not found:
        raise DatasetError(
            f"no labeled images in {root}: expected class folders (DATA/cat/x.jpg) "
            "or Kaggle-style names (DATA/cat.1.jpg)"
        )
    if classes is None:
        names = sorted({label for _, label, _ in found})
    else:
        names = list(classes)
        found = [item for item in found if item[1] in names]
        if not found:
            raise DatasetError(f"no images of the classes {names} in {root}")
    if len(names) < 2:
        raise DatasetError(f"only one class ({names[0]!r}) in {root}: need at least two")
    found.sort()
    index = {name: i for i, name in enumerate(names)}
    return LabeledImages(
        root=root,
        paths=tuple(rel for rel, _, _ in found),
        labels=tuple(index[label] for _, label, _ in found),
        classes=tuple(names),
        sizes=tuple(size for _, _, size in found),
    )


def fingerprint(images: LabeledImages) -> str:
    """A hash of the sorted relative paths and sizes: same files, same fingerprint."""
    digest = hashlib.sha256()
    for rel, size in sorted(zip(images.paths, images.sizes, strict=True)):
        digest.update(f"{rel}\t{size}\n".encode())
    return digest.hexdigest()[:16]


def read_near_duplicates(data_dir: str | Path) -> list[tuple[str, str]]:
    """Pairs listed in the folder's ``near_duplicate_pairs.txt`` (empty when absent)."""
    path = Path(data_dir) / NEAR_DUPLICATES_FILE
    if not path.is_file():
        return []
    pairs = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#"):
            pairs.append((fields[0], fields[1]))
    return pairs


def duplicate_groups(images: LabeledImages, pairs: Sequence[tuple[str, str]]) -> list[int]:
    """A group id per image: images joined by a chain of pairs share one id.

    Hand-written (a small union-find) because scikit-learn's GroupShuffleSplit would be a
    large dependency for one call, and it does not stratify by class as :func:`split` does.

    A pair names files by relative path or by bare file name; names that match no image
    are ignored.
    """
    by_name: dict[str, list[int]] = defaultdict(list)
    for i, rel in enumerate(images.paths):
        by_name[rel].append(i)
        name = rel.rsplit("/", 1)[-1]
        if name != rel:
            by_name[name].append(i)
    parent = list(range(len(images)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        members = by_name.get(a, []) + by_name.get(b, [])
        for other in members[1:]:
            parent[find(other)] = find(members[0])
    return [find(i) for i in range(len(images))]


def split(
    images: LabeledImages,
    validation_fraction: float = VALIDATION_FRACTION,
    seed: int = 0,
    pairs: Sequence[tuple[str, str]] | None = None,
) -> tuple[list[int], list[int]]:
    """Stratified train/validation indices; near-duplicates always land on the same side.

    ``pairs`` defaults to the folder's ``near_duplicate_pairs.txt``. A group of duplicates
    counts towards the class of its first member.
    """
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), not {validation_fraction}")
    if pairs is None:
        pairs = read_near_duplicates(images.root)
    group_of = duplicate_groups(images, pairs)
    members: dict[int, list[int]] = defaultdict(list)
    for i, group in enumerate(group_of):
        members[group].append(i)
    by_class: dict[int, list[int]] = defaultdict(list)
    for group, idx in members.items():
        by_class[images.labels[idx[0]]].append(group)
    rng = random.Random(seed)
    train: list[int] = []
    val: list[int] = []
    for label in sorted(by_class):
        groups = sorted(by_class[label])
        rng.shuffle(groups)
        total = sum(len(members[g]) for g in groups)
        # At least one validation and one training image per class whenever possible.
        want = min(max(1, round(total * validation_fraction)), total - 1)
        taken = 0
        for group in groups:
            if taken < want:
                val.extend(members[group])
                taken += len(members[group])
            else:
                train.extend(members[group])
    if not train or not val:
        raise DatasetError(f"too few images in {images.root} for a train/validation split")
    return sorted(train), sorted(val)


def decode_file(
    path: str | bytes,
    size: tuple[int, int],
    max_pixels: int,
    max_bytes: int,
    budget: PixelBudget | None = None,
) -> np.ndarray | None:
    """The file's pixels at ``size`` (h, w) as the workers decode them; None when unreadable.

    ``budget`` is shared by the pipeline's parallel calls (the process's default when None).
    """
    name = os.fsdecode(path)
    try:
        return decode(read_file(Path(name), max_bytes), size, max_pixels, budget)[0]
    except ImageError as exc:
        log.warning("left out %s: %s", name, exc)
        return None


def make_pipeline(
    files: Sequence[str],
    labels: Sequence[int],
    image_size: tuple[int, int],
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    cache: bool | str = True,
    with_index: bool = False,
) -> Any:
    """A ``tf.data.Dataset`` of ``(images, labels)`` batches (``(images, labels, index)``).

    Images are decoded in parallel by :func:`decode_file` (the workers' decoder and size
    limits: upright per EXIF, PIL bilinear resize to ``image_size``, aspect ratio not kept),
    cached as uint8 at that size (in memory, or in the file named by ``cache``), then
    shuffled, batched as float32 0..255 and prefetched. Files that cannot be read or decoded
    are dropped; ``with_index`` lets callers see which ones came through.
    """
    import tensorflow as tf

    height, width = image_size
    settings = get_settings()
    # tf.data decodes as many files at once as it likes: the budget bounds their memory.
    budget = shared_budget(settings.decode_pixel_budget)
    autotune = tf.data.AUTOTUNE
    blank = np.zeros((height, width, 3), np.uint8)

    def read(path: bytes) -> tuple[np.ndarray, np.bool_]:
        pixels = decode_file(
            path, (height, width), settings.max_image_pixels, settings.max_file_bytes, budget
        )
        return (blank, np.False_) if pixels is None else (pixels, np.True_)

    def load(path: Any, label: Any, index: Any) -> Any:
        # PIL releases the GIL while it decodes and resizes, so parallel calls overlap.
        image, ok = tf.numpy_function(read, [path], (tf.uint8, tf.bool), stateful=False)
        image.set_shape((height, width, 3))
        ok.set_shape(())
        return image, label, index, ok

    ds = tf.data.Dataset.from_tensor_slices(
        (list(files), tf.constant(list(labels), tf.int32), tf.range(len(files), dtype=tf.int32))
    )
    ds = ds.map(load, num_parallel_calls=autotune, deterministic=True)
    ds = ds.filter(lambda image, label, index, ok: ok)
    ds = ds.map(lambda image, label, index, ok: (image, label, index))
    if cache:
        ds = ds.cache(cache if isinstance(cache, str) else "")
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)

    def to_float(image: Any, label: Any, index: Any) -> Any:
        image = tf.cast(image, tf.float32)
        return (image, label, index) if with_index else (image, label)

    return ds.map(to_float, num_parallel_calls=autotune).prefetch(autotune)


#: Share of the human labels held out from training (``retrain --from-reviews``): the gate
#: scores the new and the production model on them.
HOLDOUT_FRACTION = 0.2
#: Folder names inside a class folder built from reviews: human labels, and ``--data``.
REVIEWED, GIVEN = "reviewed", "data"


@dataclass(frozen=True)
class ReviewData:
    """A training folder built from human labels (and a data folder), plus a held-out part."""

    #: Class folders of links (local stores) or fetched copies (object stores).
    train_dir: Path
    #: Held-out human labels, in their own class folders (None when too few to hold out).
    holdout: LabeledImages | None
    #: Human labels linked into ``train_dir`` / into the held-out folder.
    trained: int
    held_out: int
    #: Human labels whose image could not be read (gone or refused), left out.
    unreadable: int
    #: Images the data folder contributed.
    given: int


def _place(rows: Sequence[Any], out: Path, max_bytes: int, roots: Sequence[str]) -> int:
    """Put each human-labeled image under ``out/<label>/<image id><ext>``; return how many
    could not be read. Local files are linked (read later by the one decoder); objects are
    fetched through their store and written."""
    from catdog.stores import LocalStore, open_store

    unreadable = 0
    by_store: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        by_store[row.store].append(row)
    for store_root, group in by_store.items():
        store = open_store(store_root, list(roots))
        targets = []
        for row in group:
            suffix = Path(row.path).suffix.lower()
            target = out / row.label / REVIEWED / f"{row.image_id}{suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            targets.append(target)
        if isinstance(store, LocalStore):
            for row, target in zip(group, targets, strict=True):
                try:
                    source = store.path_of(row.path)
                except ImageError:
                    source = None
                if source is None or not source.is_file():
                    unreadable += 1
                    continue
                target.unlink(missing_ok=True)
                target.symlink_to(source)
            continue
        for row, target, data in zip(
            group, targets, store.read_many([r.path for r in group], max_bytes), strict=True
        ):
            if isinstance(data, ImageError):
                log.warning("left out %s/%s: %s", store_root, row.path, data)
                unreadable += 1
                continue
            target.write_bytes(data)
    return unreadable


def _link_data(data_dir: Path, out: Path, classes: Sequence[str]) -> int:
    """Link the labeled images of ``data_dir`` (of ``classes``) under ``out/<label>/data``."""
    given = discover(data_dir, classes)
    for rel, label in zip(given.paths, given.labels, strict=True):
        target = out / given.classes[label] / GIVEN / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        target.symlink_to((given.root / rel).resolve())
    return len(given)


def review_data(
    rows: Sequence[Any],
    out: Path,
    classes: Sequence[str],
    *,
    data_dir: Path | None = None,
    holdout_fraction: float = HOLDOUT_FRACTION,
    seed: int = 0,
    max_bytes: int | None = None,
    store_roots: Sequence[str] = (),
) -> ReviewData:
    """Build ``out/train`` from human labels (``catdog.db.reviews.HumanRow``) and the images
    of ``data_dir``, and ``out/holdout`` from a stratified, seeded share of the human labels.

    Only labels among ``classes`` are used. Raises ``DatasetError`` when there is nothing to
    train on.
    """
    rows = [r for r in rows if r.label in classes]
    if not rows and data_dir is None:
        raise DatasetError(
            "no human labels of the classes "
            f"{list(classes)} yet: review some (`catdog review`) or pass --data"
        )
    names = sorted({r.label for r in rows})
    held: list[int] = []
    if len(rows) >= 2:
        # split() on the labels alone (no files yet, no near-duplicate pairs).
        index = {name: i for i, name in enumerate(names)}
        by_label = LabeledImages(
            root=out,
            paths=tuple(str(r.image_id) for r in rows),
            labels=tuple(index[r.label] for r in rows),
            classes=tuple(names),
        )
        try:
            _, held = split(by_label, holdout_fraction, seed, pairs=[])
        except DatasetError:
            held = []
    held_set = set(held)
    train_rows = [r for i, r in enumerate(rows) if i not in held_set]
    holdout_rows = [r for i, r in enumerate(rows) if i in held_set]
    limit = max_bytes if max_bytes is not None else get_settings().max_file_bytes
    train_dir, holdout_dir = out / "train", out / "holdout"
    lost_train = _place(train_rows, train_dir, limit, store_roots)
    lost_holdout = _place(holdout_rows, holdout_dir, limit, store_roots)
    given = _link_data(data_dir, train_dir, classes) if data_dir is not None else 0
    holdout = None
    if len(holdout_rows) > lost_holdout:
        holdout = discover(holdout_dir, classes)
    return ReviewData(
        train_dir=train_dir,
        holdout=holdout,
        trained=len(train_rows) - lost_train,
        held_out=len(holdout) if holdout is not None else 0,
        unreadable=lost_train + lost_holdout,
        given=given,
    )
