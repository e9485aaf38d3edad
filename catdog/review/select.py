"""Choose what people should look at: the model's most doubtful labels, plus an audit sample.

Only successful predictions of one model version count (the version labeling images now,
unless another is named), and never an image already under review or with a human label.

* **Doubtful**: the smallest margin (top probability minus the runner-up) first, up to
  ``limit``, split evenly across predicted labels (stratified), a label with too few
  candidates leaving its share to the others. With two classes the margin is ``2p - 1``, so
  this is also "least confident first", and the database sorts; with more classes the
  margins are computed while streaming the rows.
* **Audit**: ``audit`` more images drawn uniformly at random (seeded reservoir sample) from
  the remaining labels, confident ones included. Nobody chose them for looking wrong, so
  their reviewed accuracy estimates the accuracy of the labels nobody reviews.

Nothing is written: :func:`catdog.db.reviews.mark_pushed` records what was sent.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from catdog.db.models import HumanLabel, Image, ModelVersion, Prediction, ReviewItem
from catdog.db.reviews import Candidate

__all__ = ["Candidate", "audit_default", "choose"]

#: Default audit sample: this share of ``limit`` ...
AUDIT_SHARE = 0.05
#: ... but never fewer than this many (a handful says little, but something).
AUDIT_MIN = 5
#: Rows fetched per round trip while streaming.
STREAM_ROWS = 5000


def audit_default(limit: int) -> int:
    """The audit sample size when none is given: 5% of ``limit``, at least 5."""
    return max(AUDIT_MIN, math.ceil(limit * AUDIT_SHARE))


def margin(probabilities: dict[str, Any] | None, confidence: float) -> float:
    """Top probability minus the runner-up; ``2p - 1`` when only the top one is known."""
    values = sorted((float(v) for v in (probabilities or {}).values()), reverse=True)
    if len(values) >= 2:
        return values[0] - values[1]
    return 2 * confidence - 1


def _version(session: Session, version: str | None) -> ModelVersion:
    if version is not None:
        found = session.scalars(select(ModelVersion).where(ModelVersion.version == version)).first()
        if found is None:
            raise ValueError(f"no model version {version!r}")
        return found
    from catdog.db.registry import current_version
    from catdog.settings import get_settings

    return current_version(session, get_settings())


def _eligible(model_version_id: int) -> Any:
    """Successful predictions of the version, on images nobody reviews or reviewed."""
    return (
        select(
            Prediction.image_id,
            Image.store,
            Image.path,
            Prediction.label,
            Prediction.confidence,
            Prediction.probabilities,
            Prediction.sha256,
        )
        .join(Image, Image.id == Prediction.image_id)
        .where(
            Prediction.model_version_id == model_version_id,
            Prediction.error.is_(None),
            Prediction.label.is_not(None),
            Prediction.confidence.is_not(None),
            ~exists().where(ReviewItem.image_id == Prediction.image_id),
            ~exists().where(HumanLabel.image_id == Prediction.image_id),
        )
    )


def _candidate(row: Any, reason: str, version: str) -> Candidate:
    image_id, store, path, label, confidence, probabilities, sha256 = row
    return Candidate(
        image_id=image_id,
        store=store,
        path=path,
        reason=reason,
        label=label,
        confidence=float(confidence),
        margin=margin(probabilities, float(confidence)),
        model_version=version,
        probabilities=probabilities,
        sha256=sha256,
    )


def _stream(session: Session, query: Any) -> Iterator[Any]:
    yield from session.execute(query.execution_options(yield_per=STREAM_ROWS))


def _doubtful_of(
    session: Session, mv: ModelVersion, label: str, count: int, binary: bool
) -> list[Candidate]:
    """The ``count`` smallest-margin candidates predicted as ``label``."""
    query = _eligible(mv.id).where(Prediction.label == label)
    if binary:
        rows = session.execute(
            query.order_by(Prediction.confidence, Prediction.image_id).limit(count)
        )
        return [_candidate(r, "doubtful", mv.version) for r in rows]
    found = (_candidate(r, "doubtful", mv.version) for r in _stream(session, query))
    return heapq.nsmallest(count, found, key=lambda c: (c.margin, c.image_id))


def _labels(session: Session, mv: ModelVersion) -> list[str]:
    """The version's classes, plus any other label its predictions carry."""
    seen = set(
        session.scalars(
            select(Prediction.label)
            .where(Prediction.model_version_id == mv.id, Prediction.label.is_not(None))
            .distinct()
        )
    )
    classes = [str(c) for c in mv.classes or []]
    return classes + sorted(str(s) for s in seen - set(classes))


def _doubtful(session: Session, mv: ModelVersion, limit: int) -> list[Candidate]:
    """Stratified by predicted label: an even share each, leftovers to labels with more."""
    labels = _labels(session, mv)
    if not labels or limit <= 0:
        return []
    binary = len(mv.classes or []) == 2
    # Fetch up to the whole budget per label, so a short label's share can go to the others.
    pools = {lbl: _doubtful_of(session, mv, lbl, limit, binary) for lbl in labels}
    taken: dict[str, int] = dict.fromkeys(labels, 0)
    left = limit
    while left > 0:
        open_labels = [lbl for lbl in labels if taken[lbl] < len(pools[lbl])]
        if not open_labels:
            break
        share, extra = divmod(left, len(open_labels))
        for i, lbl in enumerate(open_labels):
            room = len(pools[lbl]) - taken[lbl]
            give = min(room, share + (1 if i < extra else 0))
            taken[lbl] += give
            left -= give
    chosen = [c for lbl in labels for c in pools[lbl][: taken[lbl]]]
    return sorted(chosen, key=lambda c: (c.margin, c.image_id))


def _audit(
    session: Session, mv: ModelVersion, count: int, exclude: set[int], seed: int | None
) -> list[Candidate]:
    """A uniform random sample of ``count`` eligible labels not in ``exclude`` (reservoir)."""
    if count <= 0:
        return []
    rng = random.Random(seed)
    sample: list[Any] = []
    seen = 0
    query = _eligible(mv.id).order_by(Prediction.image_id)
    for row in _stream(session, query):
        if row[0] in exclude:
            continue
        seen += 1
        if len(sample) < count:
            sample.append(row)
        else:
            j = rng.randrange(seen)
            if j < count:
                sample[j] = row
    picked = [_candidate(r, "audit", mv.version) for r in sample]
    return sorted(picked, key=lambda c: c.image_id)


def choose(
    session: Session,
    *,
    limit: int,
    audit: int | None = None,
    seed: int | None = None,
    version: str | None = None,
) -> list[Candidate]:
    """The images to review: doubtful ones (smallest margin first), then the audit sample.

    ``audit`` None means :func:`audit_default`; 0 turns the audit off. ``version`` names the
    model version whose labels are reviewed (default: the one labeling images now).
    """
    if limit < 0 or (audit is not None and audit < 0):
        raise ValueError("--limit and --audit must not be negative")
    mv = _version(session, version)
    doubtful = _doubtful(session, mv, limit)
    n_audit = audit_default(limit) if audit is None else audit
    return doubtful + _audit(session, mv, n_audit, {c.image_id for c in doubtful}, seed)


def by_reason(candidates: Sequence[Candidate]) -> dict[str, int]:
    """How many candidates per reason (for summaries)."""
    out: dict[str, int] = {}
    for c in candidates:
        out[c.reason] = out.get(c.reason, 0) + 1
    return out
