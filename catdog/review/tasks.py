"""Label Studio tasks: the labeling config for the model's classes, and one task per image.

A task carries the image URL Label Studio displays, catdog's image id (how answers find
their image again) and catdog's label as a pre-annotation, so a reviewer mostly confirms
with one key. Image URLs:

* local stores: Label Studio's local-files form ``/data/local-files/?d=<path>``, the path
  relative to Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT`` (``document_root``; Label
  Studio's own default is ``/``); see docs/review.md for the server settings;
* object stores: a presigned URL (``fs.sign``), valid for ``expires_s`` seconds;
  plain HTTP stores: the object's own URL.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from catdog.db.reviews import Candidate
from catdog.settings import Settings
from catdog.stores import FsspecStore, decode_name, is_url, open_store

#: The names the labeling config gives its image and its choices (answers are read by them).
IMAGE_NAME = "image"
CHOICES_NAME = "label"
#: How long a presigned object-store URL stays valid (a week: reviews take days).
SIGNED_URL_S = 7 * 24 * 3600
#: Label Studio's default local-files document root.
DEFAULT_DOCUMENT_ROOT = "/"


class TaskError(ValueError):
    """An image that cannot be given a URL Label Studio can show (one line)."""


def label_config(classes: Sequence[str]) -> str:
    """Label Studio's labeling config: the image and one single choice per class.

    Hotkeys 1..9 go to the first nine classes, so a reviewer answers with one key.
    """
    if not classes:
        raise ValueError("a labeling config needs at least one class")
    if len(set(classes)) != len(classes):
        raise ValueError(f"duplicate classes in {list(classes)}")
    choices = "\n".join(
        f"    <Choice value={quoteattr(str(c))}" + (f' hotkey="{i + 1}"' if i < 9 else "") + "/>"
        for i, c in enumerate(classes)
    )
    return (
        "<View>\n"
        f'  <Image name="{IMAGE_NAME}" value="$image"/>\n'
        f'  <Choices name="{CHOICES_NAME}" toName="{IMAGE_NAME}" choice="single" '
        'showInLine="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def local_files_url(file: str | Path, document_root: str | Path = DEFAULT_DOCUMENT_ROOT) -> str:
    """``/data/local-files/?d=...`` for a local file under Label Studio's document root."""
    full = posixpath.normpath(str(file))
    root = posixpath.normpath(str(document_root))
    if not posixpath.isabs(full):
        raise TaskError(f"{file}: a local-files URL needs an absolute path")
    rel = posixpath.relpath(full, root)
    if rel == "." or rel.startswith("../") or rel == "..":
        raise TaskError(
            f"{file} is outside Label Studio's document root {root} "
            "(set CATDOG_LABEL_STUDIO_DOCUMENT_ROOT to LOCAL_FILES_DOCUMENT_ROOT)"
        )
    return "/data/local-files/?d=" + quote(rel, safe="/")


def image_url(
    store: str,
    path: str,
    *,
    document_root: str | Path = DEFAULT_DOCUMENT_ROOT,
    expires_s: int = SIGNED_URL_S,
) -> str:
    """The URL Label Studio shows an image by (see the module's notes)."""
    if is_url(store):
        remote = open_store(store)
        assert isinstance(remote, FsspecStore)
        try:
            return remote.signed_url(path, expires_s)
        except NotImplementedError as exc:
            raise TaskError(f"{store}: this store cannot sign URLs for Label Studio") from exc
    return local_files_url(posixpath.join(decode_name(store), decode_name(path)), document_root)


def prediction(candidate: Candidate) -> dict[str, Any]:
    """catdog's label as a Label Studio prediction (pre-annotation)."""
    return {
        "model_version": candidate.model_version,
        "score": round(candidate.confidence, 6),
        "result": [
            {
                "from_name": CHOICES_NAME,
                "to_name": IMAGE_NAME,
                "type": "choices",
                "value": {"choices": [candidate.label]},
            }
        ],
    }


def _document_root(settings: Settings | None) -> str:
    root = settings.label_studio_document_root if settings is not None else None
    return root or DEFAULT_DOCUMENT_ROOT


def task_for(
    candidate: Candidate,
    settings: Settings | None = None,
    *,
    document_root: str | Path | None = None,
    expires_s: int = SIGNED_URL_S,
) -> dict[str, Any]:
    """One Label Studio task: ``data.image``, ``data.catdog_image_id`` and ``predictions``.

    ``document_root`` defaults to ``CATDOG_LABEL_STUDIO_DOCUMENT_ROOT``, else Label Studio's
    default ``/``.
    """
    root = document_root if document_root is not None else _document_root(settings)
    return {
        "data": {
            IMAGE_NAME: image_url(
                candidate.store, candidate.path, document_root=root, expires_s=expires_s
            ),
            "catdog_image_id": candidate.image_id,
            "catdog_store": candidate.store,
            "catdog_path": candidate.path,
            "catdog_reason": candidate.reason,
        },
        "predictions": [prediction(candidate)],
    }


def write_tasks(tasks: Iterable[dict[str, Any]], out: IO[str]) -> int:
    """Write tasks as one JSON list (Label Studio's import format); return how many."""
    n = 0
    out.write("[")
    for task in tasks:
        out.write(("\n" if n == 0 else ",\n") + json.dumps(task, ensure_ascii=False))
        n += 1
    out.write("\n]\n" if n else "]\n")
    return n
