"""Read a PyTorch ``state_dict`` file (``.pth``) into numpy arrays, without torch.

A ``.pth`` file is pickles plus raw tensor storages, in one of two layouts ``torch.save``
writes: a zip archive (torch >= 1.6: ``<folder>/data.pkl`` and ``<folder>/data/<key>``) or
the legacy stream (magic number, protocol, system info, the pickle, the storage keys, then
each storage as an int64 element count and its bytes). The pickles are read by an
unpickler that resolves only the globals a ``state_dict`` of dense tensors names, so a file
cannot run code on load the way a plain ``pickle.load`` (or old ``torch.load``) lets it.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

#: First bytes of a zip archive, which is how torch itself tells the two layouts apart.
ZIP_MAGIC = b"PK\x03\x04"
#: The first pickle of a legacy file, torch's constant for "this is a torch file".
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
#: The second pickle of a legacy file: the only legacy format version torch ever wrote.
LEGACY_PROTOCOL_VERSION = 1001
#: The element type of each storage class torch pickles (by name: torch is never imported).
#: Little-endian, as torch writes legacy files on every host; a zip archive's ``byteorder``
#: entry, where present, overrides it.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass
class _Storage:
    """One flat storage a pickle refers to; its data is read after the pickle."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass(frozen=True)
class _StorageType:
    """Stands in for ``torch.FloatStorage`` and its kin: only its element type matters."""

    name: str
    dtype: np.dtype


@dataclass(frozen=True)
class _Tensor:
    """A tensor as the pickle describes it: a strided view into a storage."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: _Storage, offset: int, shape: tuple[int, ...], stride: tuple[int, ...], *_: Any
) -> _Tensor:
    # The rest (requires_grad, backward hooks, metadata) means nothing to a numpy array.
    numbers = [offset, *shape, *stride]
    if not isinstance(storage, _Storage) or len(shape) != len(stride):
        raise pickle.UnpicklingError("a tensor in the pickle has no storage or a bad layout")
    if not all(isinstance(n, int) and n >= 0 for n in numbers):
        raise pickle.UnpicklingError(f"a tensor in the pickle has a bad layout: {numbers}")
    return _Tensor(storage, offset, tuple(shape), tuple(stride))


def _rebuild_parameter(data: _Tensor, *_: Any) -> _Tensor:
    return data


#: Every global a state_dict pickle may name, and what it resolves to here.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickle a state_dict, refusing every global but tensors, storages and OrderedDict."""

    def __init__(self, file: IO[bytes], byteorder: Literal["<", ">"] = "<") -> None:
        super().__init__(file)
        self.byteorder = byteorder
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(
                f"forbidden global {module}.{name}: a state_dict file names only tensors, "
                "their storages and OrderedDict"
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        # zip: ('storage', type, key, location, numel); legacy adds view metadata.
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"persistent id names no storage type: {pid!r}")
        if len(pid) == 6 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views (written by torch < 0.4) are unsupported")
        storage = self.storages.get(key)
        if storage is None:
            dtype = storage_type.dtype.newbyteorder(self.byteorder)
            storage = self.storages[key] = _Storage(str(key), dtype, int(numel))
        return storage


def _to_array(tensor: _Tensor) -> np.ndarray:
    """Copy the strided view a tensor describes into a contiguous native-order array."""
    storage = tensor.storage
    assert storage.data is not None, f"storage {storage.key} was never read"
    if any(size == 0 for size in tensor.shape):
        return np.empty(tensor.shape, storage.dtype.newbyteorder("="))
    last = tensor.offset + sum(
        (size - 1) * step for size, step in zip(tensor.shape, tensor.stride, strict=True)
    )
    # as_strided reads wherever it is told: the bound keeps a crafted file inside the storage.
    if last >= storage.data.size:
        raise pickle.UnpicklingError(
            f"tensor of shape {tensor.shape} reaches past storage {storage.key} "
            f"({storage.data.size} elements)"
        )
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage.data[tensor.offset :],
        shape=tensor.shape,
        strides=[step * itemsize for step in tensor.stride],
        writeable=False,
    )
    # np.array, not np.ascontiguousarray, which would turn a 0-d tensor into shape (1,).
    return np.array(view, dtype=storage.dtype.newbyteorder("="), order="C", copy=True)


def _read_storage(storage: _Storage, raw: bytes) -> None:
    size = storage.numel * storage.dtype.itemsize
    if len(raw) < size:
        raise pickle.UnpicklingError(
            f"storage {storage.key} holds {len(raw)} bytes, its tensors need {size}"
        )
    storage.data = np.frombuffer(raw, storage.dtype, storage.numel)


def _load_zip(file: IO[bytes]) -> object:
    with zipfile.ZipFile(file) as archive:
        pickles = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise pickle.UnpicklingError(f"expected one <folder>/data.pkl, found {pickles}")
        folder = pickles[0].removesuffix("data.pkl")
        names = set(archive.namelist())
        byteorder = "little"
        if f"{folder}byteorder" in names:
            byteorder = archive.read(f"{folder}byteorder").decode("ascii").strip()
        if byteorder not in ("little", "big"):
            raise pickle.UnpicklingError(f"unknown byteorder {byteorder!r}")
        unpickler = _StateDictUnpickler(
            io.BytesIO(archive.read(pickles[0])), "<" if byteorder == "little" else ">"
        )
        result = unpickler.load()
        for storage in unpickler.storages.values():
            entry = f"{folder}data/{storage.key}"
            if entry not in names:
                raise pickle.UnpicklingError(f"the archive has no {entry}")
            _read_storage(storage, archive.read(entry))
    return result


def _load_legacy(file: IO[bytes]) -> object:
    # Even the header pickles go through the restricted unpickler: any of them could carry code.
    if _StateDictUnpickler(file).load() != LEGACY_MAGIC_NUMBER:
        raise pickle.UnpicklingError("not a PyTorch file: neither a zip nor the legacy magic")
    if (version := _StateDictUnpickler(file).load()) != LEGACY_PROTOCOL_VERSION:
        raise pickle.UnpicklingError(f"unknown legacy protocol version {version}")
    _StateDictUnpickler(file).load()  # system info: sizes of C types, unused for storages
    unpickler = _StateDictUnpickler(file)
    result = unpickler.load()
    keys = _StateDictUnpickler(file).load()
    if not isinstance(keys, list) or set(keys) != set(unpickler.storages):
        raise pickle.UnpicklingError("the storage key list does not match the pickle")
    for key in keys:
        storage = unpickler.storages[key]
        numel = int.from_bytes(file.read(8), "little", signed=True)
        if numel != storage.numel:
            raise pickle.UnpicklingError(
                f"storage {key} has {numel} elements in the data, {storage.numel} in the pickle"
            )
        _read_storage(storage, file.read(numel * storage.dtype.itemsize))
    return result


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Read a ``state_dict`` saved by ``torch.save`` into contiguous numpy arrays, by name."""
    with path.open("rb") as file:
        zipped = file.read(len(ZIP_MAGIC)) == ZIP_MAGIC
        file.seek(0)
        result = _load_zip(file) if zipped else _load_legacy(file)
    if not isinstance(result, Mapping):
        raise pickle.UnpicklingError(f"{path.name} holds a {type(result).__name__}, not a dict")
    arrays = {}
    for name, value in result.items():
        if not isinstance(value, _Tensor):
            raise pickle.UnpicklingError(f"{path.name}: {name!r} is not a tensor")
        arrays[str(name)] = _to_array(value)
    return arrays
