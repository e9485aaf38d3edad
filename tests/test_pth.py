"""Reading PyTorch state_dict files with numpy: values, layouts, and refusing code."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from catdog.training.pth import load_state_dict

#: Written once by torch 2.13 (not needed to run these tests):
#:   base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
#:   state = {"a": torch.arange(6.0).reshape(2, 3), "t": base.t(), "col": base[:, 2],
#:            "row": base[1, 1:], "step": base[::2, ::3],
#:            "half": torch.tensor([0.5, -2.0], dtype=torch.float16), "n": torch.tensor(7),
#:            "mask": torch.tensor([True, False, True]), "empty": torch.zeros(0, 3),
#:            "p": torch.nn.Parameter(torch.tensor([1.0, 2.0]))}
#:   torch.save(state, "state.pth")  # zip layout
#:   torch.save(state, "state-legacy.pth", _use_new_zipfile_serialization=False)
FIXTURES = Path(__file__).parent / "data"
BASE = np.arange(12, dtype=np.float32).reshape(3, 4)
EXPECTED = {
    "a": np.arange(6, dtype=np.float32).reshape(2, 3),
    "t": BASE.T,
    "col": BASE[:, 2],
    "row": BASE[1, 1:],
    "step": BASE[::2, ::3],
    "half": np.array([0.5, -2.0], np.float16),
    "n": np.array(7, np.int64),
    "mask": np.array([True, False, True]),
    "empty": np.zeros((0, 3), np.float32),
    "p": np.array([1.0, 2.0], np.float32),
}


def _pickled_tensor(dtype: bytes, numel: int, size: int | None = None) -> bytes:
    """Return the pickle torch writes for ``{"x": 1-d tensor}`` over `numel` items of storage 0."""

    def text(value: str) -> bytes:
        return b"X" + len(value).to_bytes(4, "little") + value.encode()

    storage_id = (
        b"(" + text("storage") + b"ctorch\n" + dtype + b"\n" + text("0") + text("cpu")
        + b"K" + bytes([numel]) + b"t"
    )  # fmt: skip
    args = (
        b"(" + storage_id + b"Q" + b"K\x00" + b"K" + bytes([size or numel]) + b"\x85K\x01\x85\x89)t"
    )
    return b"\x80\x02}(" + text("x") + b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"Ru."


def _archive(path: Path, data_pkl: bytes, storages: dict[str, bytes], byteorder: str = "") -> Path:
    """Write a zip-layout .pth file with a hand-made pickle, as torch lays it out."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("weights/data.pkl", data_pkl)
        if byteorder:
            archive.writestr("weights/byteorder", byteorder)
        for key, raw in storages.items():
            archive.writestr(f"weights/data/{key}", raw)
    return path


@pytest.mark.parametrize("name", ["state.pth", "state-legacy.pth"])
def test_every_tensor_of_a_torch_saved_file_reads_with_its_values_shape_and_dtype(name):
    """Transposed, offset, strided, 0-d, empty, half, bool and Parameter tensors all read."""
    state = load_state_dict(FIXTURES / name)
    assert list(state) == list(EXPECTED)
    for key, expected in EXPECTED.items():
        assert state[key].dtype == expected.dtype, key
        assert state[key].shape == expected.shape, key
        np.testing.assert_array_equal(state[key], expected, err_msg=key)


def test_strided_views_come_back_as_contiguous_arrays_of_their_own():
    """A transposed or sliced tensor is copied out, not a view sharing the file's storage."""
    state = load_state_dict(FIXTURES / "state.pth")
    assert all(array.flags.c_contiguous and array.flags.owndata for array in state.values())
    state["t"][0, 0] = -1
    assert state["col"][0] == 2


def test_a_hand_made_archive_reads_and_a_big_endian_one_is_byte_swapped(tmp_path):
    """The byteorder entry decides how storages are read; arrays come back native."""
    values = np.array([1.5, -2.0], np.float32)
    little = _archive(
        tmp_path / "little.pth", _pickled_tensor(b"FloatStorage", 2), {"0": values.tobytes()}
    )
    big = _archive(
        tmp_path / "big.pth",
        _pickled_tensor(b"FloatStorage", 2),
        {"0": values.astype(">f4").tobytes()},
        byteorder="big",
    )
    for path in (little, big):
        x = load_state_dict(path)["x"]
        assert x.dtype == np.float32 and x.dtype.isnative
        np.testing.assert_array_equal(x, values)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_a_pickle_naming_any_other_global_is_refused_before_it_runs(tmp_path, layout):
    """A file that would call os.system raises UnpicklingError and the command never runs."""
    marker = tmp_path / "ran"
    command = f"touch {marker}".encode()
    evil = b"\x80\x02cos\nsystem\nX" + len(command).to_bytes(4, "little") + command + b"\x85R."
    if layout == "zip":
        path = _archive(tmp_path / "evil.pth", evil, {})
    else:
        path = tmp_path / "evil.pth"
        path.write_bytes(evil)
    with pytest.raises(pickle.UnpicklingError, match="forbidden global os.system"):
        load_state_dict(path)
    assert not marker.exists()


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path):
    """A shape larger than its storage would make numpy read foreign memory: an error instead."""
    path = _archive(
        tmp_path / "long.pth",
        _pickled_tensor(b"FloatStorage", 2, size=100),
        {"0": np.zeros(2, np.float32).tobytes()},
    )
    with pytest.raises(pickle.UnpicklingError, match="reaches past storage 0"):
        load_state_dict(path)


def test_a_storage_shorter_than_the_pickle_says_is_refused(tmp_path):
    """A truncated storage entry is an error, not a short array."""
    path = _archive(
        tmp_path / "short.pth",
        _pickled_tensor(b"FloatStorage", 4),
        {"0": np.zeros(2, np.float32).tobytes()},
    )
    with pytest.raises(pickle.UnpicklingError, match="holds 8 bytes"):
        load_state_dict(path)


def test_an_unknown_storage_type_is_refused(tmp_path):
    """Only the dense storage classes are known; anything else under torch is a foreign global."""
    path = _archive(tmp_path / "q.pth", _pickled_tensor(b"QInt8Storage", 1), {"0": b"\x00"})
    with pytest.raises(pickle.UnpicklingError, match="forbidden global torch.QInt8Storage"):
        load_state_dict(path)
