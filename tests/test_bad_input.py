"""A corpus of awkward and hostile files: each ends labeled or failed with a readable reason,
and none stops the batch it is in."""

from __future__ import annotations

import io
import json
import os
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features
from sqlalchemy import select

from catdog.db.migrate import upgrade
from catdog.db.models import Image as ImageRow
from catdog.db.models import Prediction
from catdog.db.queries import register_images
from catdog.images import load
from catdog.producer.scan import scan
from catdog.settings import Settings
from catdog.stores import LINK_DANGLING, LINK_OUT, NOT_REGULAR, FileEntry, LocalStore
from catdog.workers.inference import InferenceContext, classify_batch
from helpers import make_image

#: Outcome wanted for a file: a label, "labeled" (any label), or ("error", reason fragment).
Expect = str | tuple[str, str]


def _blob(kind: str, size: tuple[int, int] = (40, 32)) -> np.ndarray:
    """RGB pixels of a red ('cat') or blue ('dog') blob on a dark background."""
    w, h = size
    arr = np.full((h, w, 3), 20, dtype=np.uint8)
    arr[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4, 0 if kind == "cat" else 2] = 230
    return arr


def _jpeg(arr: np.ndarray, **save: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95, **save)
    return buf.getvalue()


def _png_bomb(width: int, height: int) -> bytes:
    """A 100-byte PNG whose header claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _rotated_jpeg(kind: str) -> bytes:
    """A JPEG stored turned a quarter, with EXIF orientation 6 saying how to stand it up."""
    upright = _blob(kind, (40, 24))
    stored = np.rot90(upright, k=1)  # what a camera held sideways writes
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return _jpeg(np.ascontiguousarray(stored), exif=exif.tobytes())


def build_corpus(root: Path, outside: Path) -> dict[str, Expect]:
    """Write the corpus under ``root``; return what each registered path must end as."""
    cat, dog = _blob("cat"), _blob("dog")
    want: dict[str, Expect] = {}

    def put(rel: str, data: bytes, expect: Expect) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        want[rel] = expect

    def save(rel: str, img: Image.Image, expect: Expect, **kw: object) -> None:
        buf = io.BytesIO()
        img.save(buf, Path(rel).suffix.lstrip(".").upper().replace("JPG", "JPEG"), **kw)
        put(rel, buf.getvalue(), expect)

    put("ok/cat.jpg", _jpeg(cat), "cat")
    put("ok/dog.jpg", _jpeg(dog), "dog")
    put("zero.jpg", b"", ("error", "empty file"))
    put("truncated.jpg", _jpeg(cat)[:300], ("error", "truncated"))
    put("text.jpg", b"Dear diary, today I am not a JPEG.\n", ("error", "not an image"))
    put("jpeg-named.png", _jpeg(dog), "dog")
    rgba = np.zeros((32, 40, 4), dtype=np.uint8)
    rgba[8:24, 10:30] = (230, 0, 0, 255)  # opaque red blob, transparent elsewhere
    save("alpha.png", Image.fromarray(rgba, "RGBA"), "cat")
    save("palette.png", Image.fromarray(dog).convert("P", palette=Image.Palette.ADAPTIVE), "dog")
    gray16 = (np.linspace(0, 65535, 32 * 40).reshape(32, 40)).astype(np.uint16)
    save("gray16.png", Image.fromarray(gray16), "labeled")
    save("gray.jpg", Image.fromarray(cat).convert("L"), "labeled")
    save("cmyk.jpg", Image.fromarray(cat).convert("CMYK"), "cat")
    put("rotated.jpg", _rotated_jpeg("dog"), "dog")
    frames = [Image.fromarray(cat), Image.fromarray(dog)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    put("animated.gif", buf.getvalue(), "cat")  # the first frame is the picture
    if features.check("webp"):
        save("photo.webp", Image.fromarray(dog), "dog")
    put("bomb.png", _png_bomb(60_000, 60_000), ("error", "decompression bomb"))
    # As root (these tests run as root in CI) mode 000 does not stop a read: root bypasses
    # file permissions, so the file is labeled; as anyone else it fails with a reason.
    put("locked.jpg", _jpeg(cat), "cat" if os.geteuid() == 0 else ("error", "permission"))
    os.chmod(root / "locked.jpg", 0)
    os.symlink(root / "gone.jpg", root / "dangling.jpg")
    want["dangling.jpg"] = ("skipped", LINK_DANGLING)
    os.symlink(root / "ok" / "cat.jpg", root / "link-inside.jpg")
    want["link-inside.jpg"] = "cat"
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "secret.jpg").write_bytes(_jpeg(dog))
    os.symlink(outside / "secret.jpg", root / "link-out.jpg")  # never registered by the walk
    put("with space.jpg", _jpeg(cat), "cat")
    put("chat-é-猫.jpg", _jpeg(cat), "cat")
    put("new\nline.jpg", _jpeg(dog), "dog")
    os.mkfifo(root / "pipe.jpg")
    want["pipe.jpg"] = ("skipped", NOT_REGULAR)
    return want


def _split(want: dict[str, Expect]) -> tuple[dict[str, Expect], dict[str, str]]:
    """The corpus files a scan registers, and those it skips (name -> reason)."""
    skipped = {p: e[1] for p, e in want.items() if isinstance(e, tuple) and e[0] == "skipped"}
    return {p: e for p, e in want.items() if p not in skipped}, skipped


def _check(path: str, expect: Expect, label: str | None, error: str | None) -> None:
    if isinstance(expect, tuple):
        assert label is None and error is not None and expect[1] in error, (path, error)
    elif expect == "labeled":
        assert error is None and label in ("cat", "dog"), (path, error)
    else:
        assert (label, error) == (expect, None), path


@pytest.fixture
def ctx(sqlite_url: str, tiny_model: Path) -> InferenceContext:
    """Plain-function context on SQLite, every file in one batch."""
    settings = Settings(database_url=sqlite_url, model=tiny_model, batch_size=500)  # type: ignore[arg-type]
    context = InferenceContext.create(settings)
    upgrade(context.engine)
    yield context
    context.close()


def _results(ctx: InferenceContext) -> dict[str, tuple[str | None, str | None]]:
    with ctx.sessions() as s:
        rows = s.execute(select(ImageRow.path, Prediction.label, Prediction.error).join(Prediction))
        return {path: (label, error) for path, label, error in rows}


def test_every_file_of_the_corpus_is_labeled_or_failed_with_a_reason(ctx, tmp_path: Path):
    """One batch of the whole corpus: the right label or reason per file, one row each."""
    root = tmp_path / "store"
    want = build_corpus(root, tmp_path / "outside")
    batches: list[list[int]] = []

    def send(run: int, ids: list[int]) -> None:
        batches.append(ids)
        classify_batch(ctx, run, ids)

    summary = scan(ctx.sessions, ctx.settings, [LocalStore(root)], send)
    got = _results(ctx)
    assert len(batches) == 1
    registered, skipped = _split(want)
    assert set(got) == set(registered), "link-out.jpg must not be registered; all others must"
    for path, expect in registered.items():
        _check(path, expect, *got[path])
    assert summary.not_registered == {LINK_OUT: 1, **{r: 1 for r in skipped.values()}}


def test_the_upright_picture_is_what_gets_labeled_and_measured(tmp_path: Path):
    """An EXIF-rotated photo decodes to the same pixels and size as the upright one."""
    (tmp_path / "r.jpg").write_bytes(_rotated_jpeg("dog"))
    (tmp_path / "u.jpg").write_bytes(_jpeg(_blob("dog", (40, 24))))
    turned = load(tmp_path / "r.jpg", (24, 40), 10**8, 10**8)
    upright = load(tmp_path / "u.jpg", (24, 40), 10**8, 10**8)
    assert (turned.width, turned.height) == (upright.width, upright.height) == (40, 24)
    diff = np.abs(turned.pixels.astype(int) - upright.pixels.astype(int)).mean()
    assert diff < 8


def test_a_decompression_bomb_is_refused_without_allocating_its_pixels(tmp_path: Path):
    """A 3.6-gigapixel header is refused from the header alone: memory stays small."""
    (tmp_path / "bomb.png").write_bytes(_png_bomb(60_000, 60_000))
    from catdog.images import ImageError

    tracemalloc.start()
    with pytest.raises(ImageError, match="decompression bomb"):
        load(tmp_path / "bomb.png", (32, 32), 100_000_000, 10**8)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 5_000_000


def test_files_deleted_or_escaping_after_the_scan_fail_with_a_reason(ctx, tmp_path: Path):
    """Between scan and batch a file disappears, and a row names ``..`` out of the store:
    both fail with a reason; the good image of the same batch is labeled."""
    root = tmp_path / "store"
    make_image(root / "stays.png", "cat")
    make_image(root / "goes.png", "dog")
    make_image(tmp_path / "outside" / "secret.png", "dog")
    held: list[tuple[int, list[int]]] = []
    scan(ctx.sessions, ctx.settings, [LocalStore(root)], lambda run, ids: held.append((run, ids)))
    (root / "goes.png").unlink()
    with ctx.sessions.begin() as s:
        version = s.scalar(select(Prediction.model_version_id)) or _version(ctx)
        escape, _ = register_images(
            s, str(root.resolve()), [FileEntry("../outside/secret.png", 1, 1.0)], version
        )
    run, ids = held[0]
    classify_batch(ctx, run, ids + escape)
    got = _results(ctx)
    assert got["stays.png"] == ("cat", None)
    _check("goes.png", ("error", "deleted or moved since the scan"), *got["goes.png"])
    _check("..", ("error", "outside the configured store roots"), *got["../outside/secret.png"])


def _version(ctx: InferenceContext) -> int:
    from catdog.db.registry import current_version

    with ctx.sessions.begin() as s:
        return current_version(s, ctx.settings).id


def test_classify_reports_the_corpus_row_by_row(
    env: Callable[..., None], sqlite_url: str, tiny_model: Path, tmp_path: Path
):
    """``catdog classify`` prints one jsonl row per corpus file, with the same outcomes."""
    from click.testing import CliRunner

    from catdog.cli import main

    root = tmp_path / "store"
    want = build_corpus(root, tmp_path / "outside")
    env(database_url=sqlite_url)
    result = CliRunner().invoke(
        main, ["classify", str(root), "--model", str(tiny_model), "--format", "jsonl"]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    got = {str(Path(r["path"]).relative_to(root.resolve())): r for r in rows}
    registered, _ = _split(want)
    assert set(got) == set(registered)
    for path, expect in registered.items():
        _check(path, expect, got[path]["label"], got[path].get("error"))
