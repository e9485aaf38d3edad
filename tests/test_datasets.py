"""Discovery, the near-duplicate-aware split, the fingerprint and the tf.data pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catdog.training.datasets import (
    DatasetError,
    discover,
    fingerprint,
    make_pipeline,
    read_near_duplicates,
    split,
)
from training_data import add_near_duplicates, make_dataset

#: Shared fixtures: blob_data (generated images) and tiny_run (a model trained on them).
pytest_plugins = ["training_fixtures"]


def test_class_folders_become_sorted_classes_with_their_images(blob_data: Path) -> None:
    """Each top-level folder is a class; classes are sorted and images counted per class."""
    images = discover(blob_data)
    assert images.classes == ("cat", "dog")
    assert images.counts() == {"cat": 24, "dog": 24}
    assert all(p.startswith(("cat/", "dog/")) for p in images.paths)


def test_kaggle_style_names_take_their_label_from_the_prefix(tmp_path: Path) -> None:
    """``cat.1.jpg`` at the top level is a cat; names without a prefix are ignored."""
    root = make_dataset(tmp_path / "kaggle", per_class=3, layout="kaggle")
    (root / "readme.jpg").write_bytes(b"")
    images = discover(root)
    assert images.counts() == {"cat": 3, "dog": 3}
    assert images.classes[images.labels[images.paths.index("dog.2.jpg")]] == "dog"


@pytest.mark.parametrize("problem", ["missing", "empty", "one class"])
def test_unusable_folders_are_refused_with_a_reason(tmp_path: Path, problem: str) -> None:
    """A missing folder, one without images and one with a single class are clear errors."""
    root = tmp_path / "data"
    if problem == "empty":
        root.mkdir()
        (root / "notes.txt").write_text("no images")
    elif problem == "one class":
        make_dataset(root, per_class=2, classes=("cat",))
    with pytest.raises(
        DatasetError,
        match={"missing": "not found", "empty": "no labeled", "one class": "only one class"}[
            problem
        ],
    ):
        discover(root)


def test_split_is_stratified_by_class(tmp_path: Path) -> None:
    """Each class sends the same share of its images to validation."""
    root = make_dataset(tmp_path / "d", per_class=20)
    images = discover(root)
    train, val = split(images, 0.25, seed=3)
    assert sorted(train + val) == list(range(len(images)))
    val_labels = [images.labels[i] for i in val]
    assert val_labels.count(0) == val_labels.count(1) == 5


def test_split_keeps_near_duplicate_pairs_on_one_side(tmp_path: Path) -> None:
    """Paired files (even across classes, and chained) land in the same split, whatever the seed."""
    root = make_dataset(tmp_path / "d", per_class=20)
    pairs = [("cat.1.jpg", "cat.2.jpg"), ("cat.2.jpg", "dog.7.jpg"), ("dog/dog.3.jpg", "dog.4.jpg")]
    add_near_duplicates(root, pairs)
    assert read_near_duplicates(root)[0] == ("cat.1.jpg", "cat.2.jpg")
    images = discover(root)
    index = {p.rsplit("/", 1)[-1]: i for i, p in enumerate(images.paths)}
    for seed in range(10):
        _, val = split(images, 0.3, seed=seed)
        side = {name: index[name] in val for name in index}
        assert side["cat.1.jpg"] == side["cat.2.jpg"] == side["dog.7.jpg"]
        assert side["dog.3.jpg"] == side["dog.4.jpg"]


def test_split_is_reproducible_with_a_seed(blob_data: Path) -> None:
    """The same seed gives the same split; another seed a different one."""
    images = discover(blob_data)
    assert split(images, seed=1) == split(images, seed=1)
    assert split(images, seed=1) != split(images, seed=2)


def test_fingerprint_follows_file_names_and_sizes(tmp_path: Path) -> None:
    """Same files, same fingerprint; a changed file size changes it."""
    root = make_dataset(tmp_path / "d", per_class=3)
    before = fingerprint(discover(root))
    assert fingerprint(discover(root)) == before
    with (root / "cat" / "cat.0.jpg").open("ab") as fh:
        fh.write(b"\0")
    assert fingerprint(discover(root)) != before


def test_pipeline_yields_float_batches_at_model_size_and_drops_broken_files(
    tmp_path: Path,
) -> None:
    """Images come out resized, 0..255 float, batched; an undecodable file is left out."""
    root = make_dataset(tmp_path / "d", per_class=3)
    (root / "cat" / "cat.99.jpg").write_bytes(b"not a jpeg")
    images = discover(root)
    ds = make_pipeline(images.files(), images.labels, (16, 24), 4, shuffle=True, with_index=True)
    batches = list(ds)
    seen = [int(i) for _, _, idx in batches for i in idx.numpy()]
    assert len(seen) == 6 and images.paths.index("cat/cat.99.jpg") not in seen
    x, y, _ = batches[0]
    assert x.shape[1:] == (16, 24, 3) and x.dtype.name == "float32"
    assert float(x.numpy().min()) >= 0.0 and float(x.numpy().max()) <= 255.0


def test_training_reads_every_image_format_the_workers_read(tmp_path: Path) -> None:
    """WebP, TIFF and .jpe files are training images too, decoded like any other."""
    root = make_dataset(tmp_path / "d", per_class=2)
    extra = {"cat/cat.x.webp": "WEBP", "dog/dog.x.tiff": "TIFF", "dog/dog.y.jpe": "JPEG"}
    for rel, fmt in extra.items():
        Image.new("RGB", (40, 30), "red").save(root / rel, format=fmt)
    images = discover(root)
    assert set(extra) <= set(images.paths) and images.counts() == {"cat": 3, "dog": 4}
    ds = make_pipeline(images.files(), images.labels, (8, 8), 16, with_index=True)
    (x, _, index), *_ = list(ds)
    assert sorted(int(i) for i in index.numpy()) == list(range(7))
    webp = list(index.numpy()).index(images.paths.index("cat/cat.x.webp"))
    assert np.allclose(x.numpy()[webp], [255.0, 0.0, 0.0], atol=3)  # lossy WebP
