"""TensorFlow's import-time chatter, kept off the user's terminal.

Importing TensorFlow 2.20 writes "All log messages before absl::InitializeLog() ..." and
"oneDNN custom operations are on ..." straight to file descriptor 2, whatever
``TF_CPP_MIN_LOG_LEVEL`` says (tensorflow/tensorflow#100442). ``catdog`` commands install
:func:`quiet_tensorflow_import`: the first import of ``tensorflow``, wherever it happens,
runs with descriptor 2 captured, and every captured line except those known notices is
written back, so real errors and warnings still show.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any

#: Substrings of the informational lines TensorFlow prints on import.
NOTICES = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
    "Created TensorFlow Lite XNNPACK delegate for CPU",
)


@contextmanager
def filtered_stderr(notices: Sequence[str] = NOTICES) -> Iterator[None]:
    """Capture descriptor 2 for the block; write back every line that is not a notice."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not any(n in line for n in notices):
                    sys.stderr.write(line)
            sys.stderr.flush()


class _FilteringLoader(importlib.abc.Loader):
    """Runs the wrapped loader's module code inside :func:`filtered_stderr`."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with filtered_stderr():
            self._inner.exec_module(module)

    def __getattr__(self, name: str) -> Any:  # resource readers and the like
        return getattr(self._inner, name)


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` through the other finders and wraps its loader, once."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once; and our own look-up below must not find us
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteringLoader(spec.loader)
        return spec


def quiet_tensorflow_import() -> None:
    """Filter TensorFlow's import notices in this process (no-op once it is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietTensorFlow())
