"""Messy archives: any file name, any link, any file type; every file is accounted for."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from catdog.db.migrate import upgrade
from catdog.db.models import Image, Prediction, ScanRun
from catdog.images import ImageError, decode
from catdog.producer.scan import scan
from catdog.settings import Settings
from catdog.stores import (
    LINK_DANGLING,
    LINK_LOOP,
    LINK_OUT,
    LINK_TO_FOLDER,
    NOT_AN_IMAGE,
    NOT_REGULAR,
    LocalStore,
    decode_name,
    encode_name,
    open_store,
)
from catdog.workers.inference import InferenceContext, classify_batch
from helpers import make_image

#: A Latin-1 file name, as old Windows and Samba archives hold them: not valid UTF-8.
LATIN1_NAME = b"caf\xe9 \xe0 la cr\xe8me.jpg"


def _walk(store: LocalStore) -> tuple[list[str], dict[str, str]]:
    skipped: dict[str, str] = {}
    listed = [e.path for e in store.walk(lambda name, why: skipped.__setitem__(name, why))]
    return listed, skipped


def test_names_round_trip_between_the_file_system_and_the_stored_text() -> None:
    """Undecodable bytes become \\xNN, backslashes double, and decoding gives the name back."""
    for raw in (LATIN1_NAME, b"plain.jpg", b"back\\slash.jpg", b"lit\\xe9ral.jpg", b"\xff\\\xfe"):
        name = os.fsdecode(raw)
        stored = encode_name(name)
        stored.encode("utf-8")  # storable in any UTF-8 database
        assert os.fsencode(decode_name(stored)) == raw
    assert encode_name(os.fsdecode(LATIN1_NAME)) == "caf\\xe9 \\xe0 la cr\\xe8me.jpg"
    assert encode_name("été.jpg") == "été.jpg"  # valid UTF-8 is stored as it is


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse non-UTF-8 names")
def test_a_latin1_file_name_is_registered_labeled_and_found_again(
    tmp_path: Path, sqlite_url: str, tiny_model: Path
) -> None:
    """The scan goes on past a non-UTF-8 name, and the stored path reads the same file."""
    root = tmp_path / "share"
    make_image(root / "good.jpg", "cat")
    make_image(tmp_path / "latin1.jpg", "dog", seed=3)
    os.rename(tmp_path / "latin1.jpg", os.fsencode(root) + b"/" + LATIN1_NAME)
    settings = Settings(database_url=sqlite_url, model=tiny_model, batch_size=4)  # type: ignore[arg-type]
    ctx = InferenceContext.create(settings)
    upgrade(ctx.engine)
    summary = scan(ctx.sessions, settings, [LocalStore(root)], lambda r, ids: None, keep_ids=True)
    classify_batch(ctx, summary.run_id, summary.image_ids)
    with ctx.sessions() as s:
        rows = dict(s.execute(select(Image.path, Prediction.label).join(Prediction)).all())
        run = s.get(ScanRun, summary.run_id)
        assert run is not None and run.failed == 0
    stored = "caf\\xe9 \\xe0 la cr\\xe8me.jpg"
    assert rows == {"good.jpg": "cat", stored: "dog"}
    data = open_store(LocalStore(root).root).read(stored, 10_000_000)
    assert data == (root / os.fsdecode(LATIN1_NAME)).read_bytes()
    ctx.close()


def test_links_of_every_kind_are_skipped_with_a_reason_and_the_walk_goes_on(
    tmp_path: Path,
) -> None:
    """Loops, dangling links, links out of the root and to folders never stop the walk."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "o.jpg").write_bytes(b"o")
    (root / "in.jpg").write_bytes(b"i")
    (root / "alias.jpg").symlink_to(root / "in.jpg")
    (root / "out.jpg").symlink_to(outside / "o.jpg")
    (root / "outdir").symlink_to(outside)
    (root / "sub").mkdir()
    (root / "sub" / "up.jpg").symlink_to(root / "sub")
    (root / "self.jpg").symlink_to(root / "self.jpg")
    (root / "a.jpg").symlink_to(root / "b.jpg")
    (root / "b.jpg").symlink_to(root / "a.jpg")
    (root / "gone.jpg").symlink_to(root / "missing.jpg")
    (root / "zz_last.jpg").write_bytes(b"z")
    listed, skipped = _walk(LocalStore(root))
    assert listed == ["alias.jpg", "in.jpg", "zz_last.jpg"]
    assert skipped == {
        "a.jpg": LINK_LOOP,
        "b.jpg": LINK_LOOP,
        "self.jpg": LINK_LOOP,
        "gone.jpg": LINK_DANGLING,
        "out.jpg": LINK_OUT,
        "outdir": NOT_AN_IMAGE,
        "sub/up.jpg": LINK_TO_FOLDER,
    }


def test_every_file_under_a_root_is_listed_or_skipped_with_its_reason(tmp_path: Path) -> None:
    """Other file types and pipes are reported, never silently invisible."""
    root = tmp_path / "root"
    make_image(root / "a/cat.jpg", "cat")
    (root / "a/notes.txt").write_text("hello")
    (root / "raw.cr2").write_bytes(b"raw")
    os.mkfifo(root / "pipe.jpg")
    listed, skipped = _walk(LocalStore(root))
    assert listed == ["a/cat.jpg"]
    assert skipped == {
        "a/notes.txt": NOT_AN_IMAGE,
        "raw.cr2": NOT_AN_IMAGE,
        "pipe.jpg": NOT_REGULAR,
    }


def test_a_very_deep_tree_does_not_exhaust_the_stack(tmp_path: Path) -> None:
    """Deeper than Python's recursion limit, the walk still reaches the bottom."""
    depth = sys.getrecursionlimit() + 200
    folders = [str(tmp_path)]
    for _ in range(depth):  # os.makedirs and shutil.rmtree recurse: build and remove by hand
        folders.append(os.path.join(folders[-1], "d"))
        os.mkdir(folders[-1])
    Path(folders[-1], "deep.jpg").write_bytes(b"x")
    try:
        listed, _ = _walk(LocalStore(tmp_path))
    finally:
        os.unlink(os.path.join(folders[-1], "deep.jpg"))
        for folder in reversed(folders[1:]):
            os.rmdir(folder)
    assert listed == ["d/" * depth + "deep.jpg"]


def test_a_file_swapped_for_a_pipe_is_refused_without_blocking(tmp_path: Path) -> None:
    """A listed file later replaced by a FIFO fails with a reason instead of hanging."""
    (tmp_path / "x.jpg").write_bytes(b"x")
    store = LocalStore(tmp_path)
    (tmp_path / "x.jpg").unlink()
    os.mkfifo(tmp_path / "x.jpg")
    outcome: list[object] = []

    def read() -> None:
        try:
            store.read("x.jpg", 1000)
        except ImageError as exc:
            outcome.append(str(exc))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=5)
    assert outcome == ["not a regular file (directory, pipe or device)"]


def test_reads_are_confined_to_the_store_and_the_configured_roots(tmp_path: Path) -> None:
    """Neither '..', a link, nor a store outside the roots reads a file."""
    store_dir, other = tmp_path / "store", tmp_path / "other"
    store_dir.mkdir()
    other.mkdir()
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    (store_dir / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    (other / "x.jpg").write_bytes(b"x")
    store = open_store(str(store_dir))
    for name in ("../secret.jpg", "link.jpg"):
        with pytest.raises(ImageError, match="outside"):
            store.read(name, 1000)
    with pytest.raises(ImageError, match="outside"):
        open_store(str(other), [store_dir]).read("x.jpg", 1000)


def test_formats_that_call_external_programs_are_never_decoded() -> None:
    """An EPS file named .jpg is 'not an image': PIL's Ghostscript plugin is not reachable."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageError, match="not an image"):
        decode(eps, (32, 32), 10_000_000)
