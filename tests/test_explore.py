"""The exploration report of a labeled image folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from PIL import Image

from catdog.training.explore import average_hash, explore
from training_data import make_dataset


def test_the_report_counts_classes_and_draws_its_plots(tmp_path: Path) -> None:
    """report.html, summary.json and the plots describe the folder's classes and images."""
    root = make_dataset(tmp_path / "d", per_class=5)
    report = explore(root, tmp_path / "out")
    out = report.parent
    for name in ("class_counts.png", "distributions.png", "samples_cat.png", "samples_dog.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_class"] == {"cat": 5, "dog": 5}
    assert summary["modes"] == {"RGB": 10} and summary["sizes"] == {"40x40": 10}
    assert not summary["sampled"] and summary["looked_at"] == 10
    # The generated cats are red-ish and the dogs blue-ish: the channel means show it.
    assert summary["channels"]["cat"]["r"] > summary["channels"]["dog"]["r"]
    html = report.read_text()
    assert "Near-duplicates across classes" in html and "samples_cat.png" in html


def test_unreadable_files_are_listed_with_a_reason(tmp_path: Path) -> None:
    """A broken JPEG is reported, not fatal."""
    root = make_dataset(tmp_path / "d", per_class=3)
    (root / "dog" / "broken.jpg").write_bytes(b"not a jpeg at all")
    summary_file = explore(root, tmp_path / "out").parent / "summary.json"
    unreadable = json.loads(summary_file.read_text())["unreadable"]
    assert [u["path"] for u in unreadable] == ["dog/broken.jpg"]
    assert unreadable[0]["reason"]


def test_the_same_photo_in_two_classes_is_a_cross_class_near_duplicate(tmp_path: Path) -> None:
    """A cat photo copied (and re-saved) into the dog folder is found."""
    root = make_dataset(tmp_path / "d", per_class=4)
    Image.open(root / "cat" / "cat.1.jpg").save(root / "dog" / "dog.copy.jpg", quality=70)
    shutil.copy(root / "cat" / "cat.2.jpg", root / "dog" / "dog.same.jpg")
    out = explore(root, tmp_path / "out").parent
    summary = json.loads((out / "summary.json").read_text())
    found = {(p["a"], p["b"]) for p in summary["near_duplicates_across_classes"]}
    assert ("cat/cat.1.jpg", "dog/dog.copy.jpg") in found
    assert ("cat/cat.2.jpg", "dog/dog.same.jpg") in found
    assert (out / "near_duplicates.png").is_file()


def test_big_folders_are_sampled_and_the_report_says_so(tmp_path: Path) -> None:
    """With more images than the sample size, a seeded sample is read and reported."""
    root = make_dataset(tmp_path / "d", per_class=6, layout="kaggle")
    report = explore(root, tmp_path / "out", sample=5)
    summary = json.loads((report.parent / "summary.json").read_text())
    assert summary["sampled"] and summary["looked_at"] == 5 and summary["images"] == 12
    assert "random sample" in report.read_text()


def test_the_average_hash_ignores_resaving_but_not_content(tmp_path: Path) -> None:
    """A JPEG re-save keeps the hash close; a different image does not."""
    root = make_dataset(tmp_path / "d", per_class=2)
    a = Image.open(root / "cat" / "cat.0.jpg")
    a.save(tmp_path / "again.jpg", quality=60)
    b = Image.open(root / "dog" / "dog.0.jpg")
    near = bin(average_hash(a) ^ average_hash(Image.open(tmp_path / "again.jpg"))).count("1")
    far = bin(average_hash(a) ^ average_hash(b)).count("1")
    assert near <= 3 < far
