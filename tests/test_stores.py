"""Walking a local store: recursive, image files only, no links out of the root."""

from __future__ import annotations

from pathlib import Path

import pytest

from catdog.stores import LocalStore


def test_walk_finds_images_recursively_and_ignores_other_files(tmp_path: Path):
    """Nested images are listed relative to the root; text files are not."""
    (tmp_path / "a/b").mkdir(parents=True)
    for rel in ("x.jpg", "a/y.PNG", "a/b/z.webp", "a/readme.txt"):
        (tmp_path / rel).write_bytes(b"data")
    paths = sorted(e.path for e in LocalStore(tmp_path).walk())
    assert paths == ["a/b/z.webp", "a/y.PNG", "x.jpg"]


def test_symlinks_leaving_the_root_are_not_followed(tmp_path: Path):
    """A linked file or folder outside the root is skipped; links inside it are kept."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "o.jpg").write_bytes(b"o")
    (root / "in.jpg").write_bytes(b"i")
    (root / "out.jpg").symlink_to(outside / "o.jpg")
    (root / "outdir").symlink_to(outside)
    (root / "alias.jpg").symlink_to(root / "in.jpg")
    (root / "dangling.jpg").symlink_to(root / "missing.jpg")
    paths = sorted(e.path for e in LocalStore(root).walk())
    assert paths == ["alias.jpg", "in.jpg"]


def test_a_single_file_is_a_store_of_one(tmp_path: Path):
    """Pointing at a file registers just that file, relative to its folder."""
    (tmp_path / "one.jpg").write_bytes(b"1")
    (tmp_path / "two.jpg").write_bytes(b"2")
    store = LocalStore(tmp_path / "one.jpg")
    assert [e.path for e in store.walk()] == ["one.jpg"]
    assert store.root == str(tmp_path.resolve())


def test_a_missing_root_is_a_clear_error(tmp_path: Path):
    """A path that does not exist is refused up front."""
    with pytest.raises(FileNotFoundError, match="no such file"):
        LocalStore(tmp_path / "nope")
