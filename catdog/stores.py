"""Image stores: where the files live, and the one guarded way to list and read them.

Everything that lists or re-reads an archive (the producer's walk, the workers' reads, the
report's thumbnails) goes through a :class:`Store`, so one set of rules holds everywhere:
reads stay inside the store and the configured roots, never block on a pipe or device, and
are bounded in size. Every file under a root is either listed or reported as skipped with a
reason.

File names are stored as text. A name the file system holds as bytes that are not UTF-8 (old
Windows or Samba archives in Latin-1) is kept with its undecodable bytes written ``\\xNN``
and literal backslashes doubled; :func:`decode_name` turns the stored text back into the
exact name on disk. Names that are valid UTF-8 without a backslash are stored unchanged.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from catdog.images import IMAGE_EXTENSIONS, ImageError, read_file

#: Why a file under a root is not registered (the values are what `-v` and summaries show).
NOT_AN_IMAGE = "not an image type"
LINK_OUT = "link out of the store"
LINK_LOOP = "symlink loop"
LINK_DANGLING = "dangling link"
LINK_TO_FOLDER = "link to a folder (not followed)"
NOT_REGULAR = "not a regular file (pipe, device or socket)"
UNREADABLE = "unreadable"

#: One undecodable byte as Python's file system codec hands it over (surrogateescape).
_ESCAPED_BYTE = re.compile(r"[\udc80-\udcff]")
_STORED_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")

#: Called for each file that is not listed: (stored name, reason).
OnSkip = Callable[[str, str], None]


def encode_name(name: str) -> str:
    """The stored (UTF-8, readable) text of a file system name; see :func:`decode_name`."""
    if "\\" not in name and not _ESCAPED_BYTE.search(name):
        return name
    name = name.replace("\\", "\\\\")
    return _ESCAPED_BYTE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", name)


def decode_name(stored: str) -> str:
    """The file system name (``os.fsdecode`` form) of a stored name."""
    if "\\" not in stored:
        return stored

    def unescape(m: re.Match[str]) -> str:
        token = m.group(1)
        return "\\" if token == "\\" else chr(0xDC00 + int(token[1:], 16))

    return _STORED_ESCAPE.sub(unescape, stored)


@dataclass(frozen=True, slots=True)
class FileEntry:
    """A file found in a store: its stored name relative to the root, size and mtime."""

    path: str
    size: int
    mtime: float


class Store(Protocol):
    """A place images are listed from and read back by (root, stored relative name)."""

    root: str

    def walk(self, on_skip: OnSkip | None = None) -> Iterator[FileEntry]:
        """Every image file under the root; every other file goes to ``on_skip``."""
        ...

    def read(self, name: str, max_bytes: int) -> bytes:
        """The bytes of one listed file, or ImageError with a reason."""
        ...


def _skip(on_skip: OnSkip | None, name: str, reason: str) -> None:
    if on_skip is not None:
        on_skip(encode_name(name), reason)


class LocalStore:
    """A folder on a local disk or mounted share, walked recursively."""

    def __init__(self, root: str | Path, allowed_roots: list[Path] | None = None) -> None:
        path = Path(decode_name(str(root))).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {root}")
        self._single: str | None = None
        if path.is_file():
            self._single = path.name
            path = path.parent
        self._path = path.resolve()
        self.root = encode_name(str(self._path))
        self._allowed = [r.resolve() for r in allowed_roots or []]

    def walk(self, on_skip: OnSkip | None = None) -> Iterator[FileEntry]:
        """Files in name order; links are followed only to files inside the root.

        An explicit stack instead of recursion: a very deep tree cannot exhaust Python's.
        """
        if self._single is not None:
            entry = self._entry(self._path / self._single, self._single, on_skip)
            if entry is not None:
                yield entry
            return
        stack: list[tuple[str, str]] = [(str(self._path), "")]
        while stack:
            folder, prefix = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                _skip(on_skip, prefix or ".", f"{UNREADABLE}: {exc.strerror or exc}")
                continue
            folders = []
            for e in entries:
                rel = prefix + e.name
                try:
                    if e.is_dir(follow_symlinks=False):
                        folders.append((e.path, rel + "/"))
                        continue
                except OSError as exc:
                    _skip(on_skip, rel, f"{UNREADABLE}: {exc.strerror or exc}")
                    continue
                entry = self._entry(Path(e.path), rel, on_skip)
                if entry is not None:
                    yield entry
            stack.extend(reversed(folders))  # popped in name order

    def _entry(self, path: Path, rel: str, on_skip: OnSkip | None) -> FileEntry | None:
        """The entry of one file, or None after reporting why it is skipped."""
        if os.path.splitext(path.name)[1].lower() not in IMAGE_EXTENSIONS:
            _skip(on_skip, rel, NOT_AN_IMAGE)
            return None
        try:
            if path.is_symlink():
                reason = self._link_problem(path)
                if reason is not None:
                    _skip(on_skip, rel, reason)
                    return None
            st = path.stat()
        except OSError as exc:
            _skip(on_skip, rel, f"{UNREADABLE}: {exc.strerror or exc}")
            return None
        if not stat.S_ISREG(st.st_mode):
            _skip(on_skip, rel, NOT_REGULAR)
            return None
        return FileEntry(encode_name(rel), st.st_size, st.st_mtime)

    def _link_problem(self, link: Path) -> str | None:
        """Why a link is not followed, or None for a link to a file inside the root."""
        try:
            target = link.resolve(strict=True)
        except RuntimeError:  # Python 3.11 reports a loop this way, not as OSError
            return LINK_LOOP
        except FileNotFoundError:
            return LINK_DANGLING
        except OSError as exc:
            return LINK_LOOP if exc.errno == 40 else f"{UNREADABLE}: {exc.strerror or exc}"
        if not target.is_relative_to(self._path):
            return LINK_OUT
        if target.is_dir():
            return LINK_TO_FOLDER
        return None

    def path_of(self, name: str) -> Path:
        """The file a stored name stands for, refused if it leads outside the allowed roots.

        Links and ``..`` are resolved first, so neither can lead a reader out of the store.
        """
        candidate = (self._path / decode_name(name)).resolve()
        allowed = self._allowed or [self._path]
        if not any(candidate.is_relative_to(root) for root in allowed):
            raise ImageError("refused: path is outside the configured store roots")
        if self._allowed and not any(self._path.is_relative_to(r) for r in self._allowed):
            raise ImageError("refused: store is outside the configured store roots")
        return candidate

    def read(self, name: str, max_bytes: int) -> bytes:
        """The file's bytes: confined, never blocking on a pipe or device, bounded in size."""
        return read_file(self.path_of(name), max_bytes)


def open_store(root: str, allowed_roots: list[Path] | None = None) -> Store:
    """The store of a registered root, for reading (workers, reports).

    A root that no longer exists still gives a store: each read then fails with a reason.
    """
    return _ReadOnlyLocal(root, allowed_roots or [])


class _ReadOnlyLocal(LocalStore):
    """A local store opened by its stored root, without checking the root exists."""

    def __init__(self, root: str, allowed_roots: list[Path]) -> None:
        self._single = None
        self._path = Path(decode_name(root)).resolve()
        self.root = root
        self._allowed = [r.resolve() for r in allowed_roots]
