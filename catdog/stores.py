"""Image stores: where the files live. Local folders now; the interface admits others."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from catdog.images import IMAGE_EXTENSIONS


@dataclass(frozen=True, slots=True)
class FileEntry:
    """A file found in a store, relative to its root."""

    path: str
    size: int
    mtime: float


class Store(Protocol):
    """A place images are listed from; workers read them by (root, relative path)."""

    root: str

    def walk(self) -> Iterator[FileEntry]:
        """Every image file under the root, as paths relative to it."""
        ...


class LocalStore:
    """A folder on a local disk or mounted share, walked recursively."""

    def __init__(self, root: str | Path) -> None:
        path = Path(root).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {root}")
        self._single: str | None = None
        if path.is_file():
            self._single = path.name
            path = path.parent
        self.root = str(path.resolve())

    def walk(self) -> Iterator[FileEntry]:
        """Recursive scandir; symlinks are followed only when they stay inside the root."""
        if self._single is not None:
            entry = self._entry(Path(self.root) / self._single, self._single)
            if entry is not None:
                yield entry
            return
        yield from self._walk_dir(self.root, "")

    def _walk_dir(self, folder: str, prefix: str) -> Iterator[FileEntry]:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return  # unreadable folder: nothing to register
        for e in entries:
            rel = prefix + e.name
            try:
                if e.is_symlink():
                    target = Path(e.path).resolve()
                    if not target.is_relative_to(self.root) or target.is_dir():
                        continue  # links out of the store (or link loops) are not followed
                if e.is_dir(follow_symlinks=False):
                    yield from self._walk_dir(e.path, rel + "/")
                elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
                    try:
                        st = e.stat()
                    except FileNotFoundError:  # a dangling link: the worker records why
                        st = e.stat(follow_symlinks=False)
                    yield FileEntry(rel, st.st_size, st.st_mtime)
            except OSError:
                continue  # vanished or unreadable entry: skip, the walk goes on

    def _entry(self, path: Path, rel: str) -> FileEntry | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return FileEntry(rel, st.st_size, st.st_mtime)
