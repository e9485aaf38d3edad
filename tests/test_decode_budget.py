"""Decode memory is bounded by the pixel budget, not by the number of threads or luck.

The decode threads of a process share one :class:`catdog.images.PixelBudget`; each decode
holds what it will allocate (a JPEG's pixels after ``draft``) and each pixel costs at most
``BYTES_PER_PIXEL`` bytes, so a worker's decode buffers stay under budget x that. Memory is
measured as resident memory in a child process: PIL allocates outside tracemalloc's view.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import SecretStr

from catdog.images import (
    BYTES_PER_PIXEL,
    DEFAULT_PIXEL_BUDGET,
    EXIF_ORIENTATION,
    ImageError,
    PixelBudget,
    decode,
    decode_cost,
    shared_budget,
    thumbnail_jpeg,
)
from catdog.settings import Settings

MiB = 1024 * 1024
#: Decoder state, the resize's intermediate rows and allocator slack on top of the pixels.
SLACK_BYTES = 24 * MiB

needs_proc = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="reads peak memory from /proc (Linux)"
)

#: Run in a child process: decode the files given, on a pool, under a budget; print the peak
#: resident memory the decoding added, in bytes.
CHILD = """
import json, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from PIL import Image
from catdog.images import PixelBudget, decode
import io

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise LookupError(key)

files, budget, threads = json.loads(sys.argv[1])
datas = [Path(f).read_bytes() for f in files]
for data in datas[:1]:  # load the codec libraries before the baseline
    small = Image.open(io.BytesIO(data))
    buf = io.BytesIO()
    Image.new(small.mode, (8, 8)).save(buf, small.format)
    decode(buf.getvalue(), (8, 8), 10**9, PixelBudget(10**9))
base = status("VmRSS:")
try:
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts here
except OSError:
    pass
budget = PixelBudget(budget)
with ThreadPoolExecutor(threads) as pool:
    list(pool.map(lambda d: decode(d, (224, 224), 10**9, budget), datas))
print(json.dumps({"peak": status("VmHWM:") - base, "held": budget.peak}))
"""


def _peak_in_child(files: list[Path], budget: int, threads: int) -> dict[str, int]:
    """Peak resident memory a child adds while decoding ``files`` under ``budget``."""
    arg = json.dumps([[str(f) for f in files], budget, threads])
    out = subprocess.run(
        [sys.executable, "-c", CHILD, arg], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result: dict[str, int] = json.loads(out.stdout)
    return result


def _wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_the_budget_never_lets_more_pixels_than_its_size_be_in_flight() -> None:
    """Eight threads asking for random amounts never hold more than the budget together."""
    budget = PixelBudget(1_000)
    lock = threading.Lock()
    in_flight = most = 0

    def work(pixels: int) -> None:
        nonlocal in_flight, most
        with budget.hold(pixels):
            with lock:
                in_flight += pixels
                most = max(most, in_flight)
            time.sleep(0.002)
            with lock:
                in_flight -= pixels

    sizes = np.random.default_rng(0).integers(50, 600, 200).tolist()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, sizes))
    assert most <= 1_000 and budget.peak == most
    assert most > 600  # the threads shared the budget rather than taking turns
    assert budget.held == 0 and budget.waiting == 0


def test_a_request_larger_than_the_budget_waits_for_the_others_then_runs_alone() -> None:
    """A picture bigger than the whole budget still decodes: alone, once nothing else is held."""
    budget = PixelBudget(100)
    events: list[str] = []

    def big() -> None:
        with budget.hold(150):
            events.append("big holds")
            time.sleep(0.05)
            events.append("big done")

    def small() -> None:
        with budget.hold(10):
            events.append("small holds")

    with budget.hold(60):
        first = threading.Thread(target=big)
        first.start()
        _wait_until(lambda: budget.waiting == 1)
        assert events == [] and budget.held == 60
    _wait_until(lambda: events == ["big holds"])
    second = threading.Thread(target=small)
    second.start()
    first.join()
    second.join()
    assert events == ["big holds", "big done", "small holds"]
    assert budget.peak == 150


def test_a_large_request_is_served_before_smaller_ones_that_came_after_it() -> None:
    """Arrival order: a small request that would fit waits behind a large one, so none starves."""
    budget = PixelBudget(100)
    order: list[str] = []

    def ask(name: str, pixels: int) -> threading.Thread:
        def run() -> None:
            with budget.hold(pixels):
                order.append(name)

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    with budget.hold(60):
        large = ask("large", 100)
        _wait_until(lambda: budget.waiting == 1)
        small = ask("small", 10)  # 60 + 10 fits, but the large one came first
        _wait_until(lambda: budget.waiting == 2)
        assert order == []
    large.join()
    small.join()
    assert order == ["large", "small"]


def test_a_picture_larger_than_the_budget_still_decodes() -> None:
    """A 400x300 PNG under a 1,000-pixel budget decodes, holding its 120,000 pixels alone."""
    buf = io.BytesIO()
    Image.new("RGBA", (400, 300), (10, 200, 30, 255)).save(buf, "PNG")
    budget = PixelBudget(1_000)
    pixels, w, h = decode(buf.getvalue(), (32, 32), 10**9, budget)
    assert pixels.shape == (32, 32, 3) and (w, h) == (400, 300)
    assert budget.peak == 120_000 and budget.held == 0


def test_a_picture_that_fails_to_decode_gives_its_pixels_back() -> None:
    """A truncated PNG fails with a reason and leaves nothing held for the threads after it."""
    buf = io.BytesIO()
    _noise("RGB", (400, 300)).save(buf, "PNG")
    budget = PixelBudget(1_000_000)
    with pytest.raises(ImageError, match="corrupt or truncated"):
        decode(buf.getvalue()[:2_000], (32, 32), 10**9, budget)
    assert budget.peak == 120_000 and budget.held == 0 and budget.waiting == 0


def test_report_thumbnails_decode_under_the_budget_too() -> None:
    """catdog report's thumbnails hold their pictures' pixels like the workers' decodes."""
    buf = io.BytesIO()
    _noise("RGBA", (400, 300)).save(buf, "PNG")
    budget = PixelBudget(1_000_000)
    thumbnail_jpeg(buf.getvalue(), 64, 10**9, budget)
    assert budget.peak == 120_000 and budget.held == 0


def test_a_jpeg_holds_only_the_pixels_it_decodes_at_reduced_size() -> None:
    """A 4000x3000 baseline JPEG decoded for 224x224 holds its 1/4-scale pixels, not 12 M."""
    buf = io.BytesIO()
    Image.new("RGB", (4000, 3000), (200, 30, 30)).save(buf, "JPEG")
    budget = PixelBudget(10**9)
    decode(buf.getvalue(), (224, 224), 10**9, budget)
    assert budget.peak == 1000 * 750


def test_a_progressive_jpeg_also_holds_its_full_size_coefficients() -> None:
    """libjpeg keeps every coefficient of a progressive JPEG: 2 bytes per pixel per channel."""
    buf = io.BytesIO()
    Image.new("RGB", (4000, 3000), (200, 30, 30)).save(buf, "JPEG", progressive=True)
    img = Image.open(io.BytesIO(buf.getvalue()))
    img.draft("RGB", (448, 448))
    full = 4000 * 3000
    assert decode_cost(img, full) == 1000 * 750 + full * 3 * 2 // BYTES_PER_PIXEL


def test_the_settings_default_is_the_decoders_default_budget() -> None:
    """CATDOG_DECODE_PIXEL_BUDGET unset and a decode without a budget share one budget."""
    default = Settings.model_fields["decode_pixel_budget"].default
    assert default == DEFAULT_PIXEL_BUDGET
    assert shared_budget(default) is shared_budget()


def test_a_workers_decode_threads_share_the_budget_its_settings_give(tmp_path: Path) -> None:
    """InferenceContext decodes under CATDOG_DECODE_PIXEL_BUDGET: every file holds from it."""
    from catdog.workers.inference import InferenceContext, _decode_one

    Image.new("RGB", (300, 200), (1, 2, 3)).save(tmp_path / "a.png")
    settings = Settings(
        database_url=SecretStr(f"sqlite:///{tmp_path / 'c.db'}"),
        decode_pixel_budget=12_345,
    )
    ctx = InferenceContext.create(settings)
    try:
        assert ctx.budget is shared_budget(12_345)
        before = ctx.budget.peak
        decoded = _decode_one(ctx, str(tmp_path), "a.png", (32, 32))
        assert not isinstance(decoded, str), decoded
        assert ctx.budget.peak == max(before, 60_000)  # larger than the budget: held alone
    finally:
        ctx.close()


def _noise(mode: str, size: tuple[int, int]) -> Image.Image:
    """A picture of ``mode`` whose pixels vary (blocks of noise: cheap to encode)."""
    w, h = size
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 4), dtype=np.uint8)
    rgba = Image.fromarray(blocks).resize((w, h), Image.Resampling.NEAREST)
    if mode in ("RGBA", "CMYK", "LA", "RGB", "L"):
        return rgba.convert(mode)
    if mode == "P":
        return rgba.convert("RGB").quantize(64)
    if mode == "I;16":
        return Image.fromarray(np.asarray(rgba.convert("L"), np.uint16) * 250)
    if mode == "F":
        return Image.fromarray(np.asarray(rgba.convert("L"), np.float32) / 2)
    raise ValueError(mode)


def _sideways() -> bytes:
    """EXIF saying the picture must turn a quarter to stand upright."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return exif.tobytes()


#: (mode, format, save options): every path of the decoder, the costly ones above all.
CASES: list[tuple[str, str, dict[str, object]]] = [
    ("RGB", "PNG", {}),
    ("RGBA", "PNG", {}),
    ("RGBA", "PNG", {"exif": _sideways()}),  # turned upright: one more copy for a moment
    ("LA", "PNG", {}),
    ("P", "PNG", {"transparency": 0}),
    ("L", "PNG", {}),
    ("I;16", "PNG", {}),
    ("F", "TIFF", {}),
    ("CMYK", "TIFF", {"compression": "tiff_deflate"}),
    ("RGB", "TIFF", {"compression": "tiff_deflate", "strip_size": 2**30}),  # one strip
    ("CMYK", "JPEG", {"progressive": True, "subsampling": 0}),
    ("RGBA", "WEBP", {"lossless": True, "method": 0}),
    ("RGB", "BMP", {}),
]
CASE_IDS = [f"{m}-{f}" + ("-sideways" if "exif" in o else "") for m, f, o in CASES]


@needs_proc
@pytest.mark.parametrize(("mode", "fmt", "options"), CASES, ids=CASE_IDS)
def test_each_kind_of_picture_costs_at_most_bytes_per_pixel_of_what_it_holds(
    tmp_path: Path, mode: str, fmt: str, options: dict[str, object]
) -> None:
    """Decoding a 3000x2500 picture adds no more than BYTES_PER_PIXEL x its held pixels."""
    path = tmp_path / f"picture.{fmt.lower()}"
    _noise(mode, (3000, 2500)).save(path, fmt, **options)
    result = _peak_in_child([path], budget=10**9, threads=1)
    assert result["held"] >= 3000 * 2500 // 64  # at least a JPEG's 1/8 scale
    assert result["peak"] <= BYTES_PER_PIXEL * result["held"] + SLACK_BYTES


@needs_proc
def test_large_pictures_on_a_pool_stay_under_budget_times_bytes_per_pixel(
    tmp_path: Path,
) -> None:
    """Four 12 M-pixel RGBA PNGs on four threads under a 20 M budget: at most 160 MiB, not 4x."""
    path = tmp_path / "large.png"
    _noise("RGBA", (4000, 3000)).save(path, "PNG", compress_level=1)
    copies = [path] + [path.with_name(f"copy{i}.png") for i in range(3)]
    for copy in copies[1:]:
        copy.hardlink_to(path)
    budget = 20_000_000
    result = _peak_in_child(copies, budget=budget, threads=4)
    assert result["held"] <= budget
    assert result["peak"] <= BYTES_PER_PIXEL * budget + SLACK_BYTES
    assert result["peak"] >= 4 * 12_000_000  # the measurement does see the decode buffers
