"""Human review without a server: the tables, choosing, task files, answers, the estimate."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from catdog.db.engine import make_engine, session_factory
from catdog.db.migrate import downgrade, upgrade
from catdog.db.models import HumanLabel, Image, ModelVersion, Prediction, ReviewItem
from catdog.db.reviews import Answer, mark_pushed, save_answers, summary, wilson
from catdog.review.labels import LabelsError, answer_of, read_export, record
from catdog.review.select import audit_default, choose
from catdog.review.tasks import TaskError, label_config, local_files_url, task_for


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_0005_adds_the_review_tables_and_goes_back(request: pytest.FixtureRequest, kind: str):
    url = request.getfixturevalue("sqlite_url" if kind == "sqlite" else "postgres_url")
    engine = make_engine(url)
    upgrade(engine, "0005")
    with engine.connect() as c:
        tables = set(inspect(c).get_table_names())
    assert {"review_items", "human_labels"} <= tables
    downgrade(engine, "0004")
    with engine.connect() as c:
        tables = set(inspect(c).get_table_names())
    assert not {"review_items", "human_labels"} & tables
    engine.dispose()


def seed(
    session: Session,
    confidences: dict[str, list[float]],
    version: str = "v1",
    classes: tuple[str, ...] = ("cat", "dog"),
    production: bool = True,
    store: str = "/photos",
) -> dict[int, tuple[str, float]]:
    """Images with predictions of one version; returns image id -> (label, confidence)."""
    mv = ModelVersion(
        version=version,
        file="m.keras",
        sha256="0" * 64,
        arch="tiny",
        classes=list(classes),
        is_production=production,
    )
    session.add(mv)
    session.flush()
    out: dict[int, tuple[str, float]] = {}
    for label, values in confidences.items():
        for i, conf in enumerate(values):
            image = Image(store=store, path=f"{label}/{i}.jpg", size=1, mtime=0.0)
            session.add(image)
            session.flush()
            others = [c for c in classes if c != label]
            probs = {label: conf, **{c: (1 - conf) / len(others) for c in others}}
            session.add(
                Prediction(
                    image_id=image.id,
                    model_version_id=mv.id,
                    label=label,
                    confidence=conf,
                    probabilities=probs,
                )
            )
            out[image.id] = (label, conf)
    session.commit()
    return out


@pytest.fixture
def db(sqlite_url: str) -> Iterator[Session]:
    engine = make_engine(sqlite_url)
    upgrade(engine)
    with session_factory(engine)() as session:
        yield session
    engine.dispose()


def test_choose_takes_the_least_confident_per_label_and_an_audit_sample(db: Session):
    seed(db, {"cat": [0.51, 0.55, 0.6, 0.99, 0.98], "dog": [0.52, 0.97, 0.95, 0.96]})
    broken = Image(store="/photos", path="broken.jpg", size=1, mtime=0.0)
    db.add(broken)
    db.flush()
    v1 = db.scalars(select(ModelVersion.id)).one()
    db.add(Prediction(image_id=broken.id, model_version_id=v1, error="cannot decode"))
    db.commit()
    chosen = choose(db, limit=4, audit=3, seed=1)
    doubtful = [c for c in chosen if c.reason == "doubtful"]
    audit = [c for c in chosen if c.reason == "audit"]
    # Two per label, each label's least confident first (dog has only one below 0.95).
    assert sorted((c.label, c.confidence) for c in doubtful) == [
        ("cat", 0.51),
        ("cat", 0.55),
        ("dog", 0.52),
        ("dog", 0.95),
    ]
    assert [c.confidence for c in doubtful] == sorted(c.confidence for c in doubtful)
    assert len(audit) == 3
    assert not {c.image_id for c in audit} & {c.image_id for c in doubtful}
    # Seeded: the same sample again; nothing was written.
    again = choose(db, limit=4, audit=3, seed=1)
    assert [c.image_id for c in again] == [c.image_id for c in chosen]
    assert db.scalar(select(ReviewItem.id)) is None


def test_choose_gives_a_short_labels_share_to_the_others(db: Session):
    seed(db, {"cat": [0.6, 0.7, 0.8, 0.9], "dog": [0.55]})
    chosen = choose(db, limit=4, audit=0)
    assert sorted(c.label for c in chosen) == ["cat", "cat", "cat", "dog"]


def test_choose_never_sends_an_image_twice_and_reads_only_the_given_version(db: Session):
    ids = seed(db, {"cat": [0.5, 0.6], "dog": [0.55, 0.65]})
    seed(db, {"cat": [0.51]}, version="old", production=False, store="/other")
    first = choose(db, limit=2, audit=0)
    assert {c.model_version for c in first} == {"v1"}
    mark_pushed(db, first, "file")
    answered = [i for i in ids if i not in {c.image_id for c in first}][0]
    save_answers(db, [Answer(answered, "dog", "labeled")], "file")
    db.commit()
    second = choose(db, limit=10, audit=5)
    assert not {c.image_id for c in second} & ({c.image_id for c in first} | {answered})
    assert len(second) == 1
    assert [c.image_id for c in choose(db, limit=10, audit=0, version="old")] == [max(ids) + 1]


def test_choose_by_margin_with_three_classes(db: Session):
    seed(db, {"cat": [0.5, 0.9], "dog": [0.6], "fox": [0.4]}, classes=("cat", "dog", "fox"))
    pred = db.scalars(select(Prediction).where(Prediction.confidence == 0.6)).one()
    pred.probabilities = {"dog": 0.6, "cat": 0.39, "fox": 0.01}  # margin 0.21
    db.commit()
    chosen = choose(db, limit=3, audit=0)
    # cat 0.5: margin 0.25; fox 0.4: 0.1; dog 0.6 with cat at 0.39: 0.21.
    assert [round(c.margin, 2) for c in chosen] == [0.1, 0.21, 0.25]


def test_audit_default_is_five_percent_of_the_limit_at_least_five():
    assert (audit_default(0), audit_default(100), audit_default(1000)) == (5, 5, 50)


def test_label_config_lists_the_classes_with_hotkeys_and_escapes_them():
    xml = label_config(["cat", 'dog "x" & <y>'])
    assert '<Choice value="cat" hotkey="1"/>' in xml
    assert "&amp; &lt;y&gt;" in xml and 'hotkey="2"' in xml
    assert '<Choices name="label" toName="image" choice="single"' in xml
    with pytest.raises(ValueError):
        label_config([])


def test_task_has_the_image_url_id_and_prediction(db: Session):
    seed(db, {"cat": [0.6]}, store="/data/photos")
    (cand,) = choose(db, limit=1, audit=0)
    task = task_for(cand, document_root="/data")
    assert task["data"]["image"] == "/data/local-files/?d=photos/cat/0.jpg"
    assert task["data"]["catdog_image_id"] == cand.image_id
    (pred,) = task["predictions"]
    assert pred["model_version"] == "v1" and pred["score"] == 0.6
    assert pred["result"][0]["value"] == {"choices": ["cat"]}
    assert (
        local_files_url("/data/a b/ü#.jpg", "/data") == "/data/local-files/?d=a%20b/%C3%BC%23.jpg"
    )
    with pytest.raises(TaskError, match="outside"):
        task_for(cand, document_root="/elsewhere")


def ls_task(image_id: int, *annotations: dict[str, Any], task_id: int = 1) -> dict[str, Any]:
    return {"id": task_id, "data": {"catdog_image_id": image_id}, "annotations": list(annotations)}


def ann(
    *choices: str,
    ann_id: int = 10,
    cancelled: bool = False,
    when: str = "2026-01-01T10:00:00Z",
    who: Any = 1,
) -> dict[str, Any]:
    result = (
        [
            {
                "from_name": "label",
                "to_name": "image",
                "type": "choices",
                "value": {"choices": list(choices)},
            }
        ]
        if choices
        else []
    )
    return {
        "id": ann_id,
        "completed_by": who,
        "result": result,
        "was_cancelled": cancelled,
        "created_at": when,
        "updated_at": when,
    }


def test_answers_labeled_skipped_ambiguous_and_unanswered():
    assert answer_of(ls_task(5, ann("dog"))) == Answer(
        5, "dog", "labeled", "1", answer_of(ls_task(5, ann("dog"))).annotated, 1, 10
    )
    assert answer_of(ls_task(5, ann(cancelled=True))).outcome == "skipped"
    assert answer_of(ls_task(5, ann("cat", "dog"))).outcome == "ambiguous"
    two = ls_task(5, ann("cat", who={"email": "a@x"}), ann("dog", ann_id=11))
    assert answer_of(two).outcome == "ambiguous"
    agree = ls_task(5, ann("cat"), ann("cat", ann_id=11, when="2026-01-02T00:00:00Z"))
    assert answer_of(agree).annotation_id == 11
    later_skip = ls_task(5, ann("cat"), ann(ann_id=12, cancelled=True, when="2026-01-05T00:00:00Z"))
    labeled = answer_of(later_skip)
    assert labeled.outcome == "labeled" and labeled.annotation_id == 10
    assert answer_of(ls_task(5)) is None
    assert answer_of({"id": 3, "data": {"image": "x"}, "annotations": [ann("cat")]}) is None


def test_record_is_idempotent_and_a_changed_annotation_updates(db: Session):
    ids = list(seed(db, {"cat": [0.6, 0.7, 0.8]}))
    tasks = [
        ls_task(ids[0], ann("dog"), task_id=1),
        ls_task(ids[1], ann(cancelled=True), task_id=2),
        ls_task(ids[2], task_id=3),
        ls_task(999, ann("cat"), task_id=4),
        {"id": 5, "data": {}, "annotations": [ann("cat")]},
    ]
    first = record(db, tasks, "file", classes=["cat", "dog"])
    db.commit()
    assert (first.created, first.labeled, first.skipped, first.unanswered) == (2, 2, 1, 1)
    assert (first.unknown, first.foreign) == (1, 1)
    again = record(db, tasks, "file")
    assert (again.created, again.updated, again.unchanged) == (0, 0, 2)
    tasks[0] = ls_task(ids[0], ann("cat", when="2026-01-03T00:00:00Z"), task_id=1)
    changed = record(db, tasks, "file")
    db.commit()
    assert (changed.created, changed.updated, changed.unchanged) == (0, 1, 1)
    rows = {h.image_id: (h.label, h.outcome) for h in db.scalars(select(HumanLabel))}
    assert rows == {ids[0]: ("cat", "labeled"), ids[1]: (None, "skipped")}
    with pytest.raises(LabelsError):
        record(db, [1, 2], "file")  # type: ignore[list-item]


def test_read_export_says_what_is_wrong(tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LabelsError, match="not JSON"):
        read_export(bad)
    bad.write_text('{"a": 1}')
    with pytest.raises(LabelsError, match="list of tasks"):
        read_export(bad)


def test_wilson_interval_matches_the_formula_and_stays_in_range():
    low, high = wilson(95, 100)
    assert (round(low, 4), round(high, 4)) == (0.8882, 0.9785)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    assert wilson(0, 0) == (0.0, 1.0)


def test_summary_counts_changes_and_estimates_from_the_audit_only(db: Session):
    seed(db, {"cat": [0.5, 0.6, 0.9, 0.95, 0.97], "dog": [0.55, 0.99]})
    chosen = choose(db, limit=2, audit=5, seed=3)
    mark_pushed(db, chosen, "file")
    answers = []
    for i, c in enumerate(chosen):
        wrong = c.reason == "doubtful" or i == len(chosen) - 1  # doubtful wrong, one audit wrong
        other = "dog" if c.label == "cat" else "cat"
        answers.append(Answer(c.image_id, other if wrong else c.label, "labeled"))
    save_answers(db, answers, "file")
    db.commit()
    s = summary(db, "v1")
    assert (s.human, s.changed, s.confirmed, s.pending) == (7, 3, 4, 0)
    assert (s.audit_n, s.audit_correct) == (5, 4)
    assert s.too_small and s.interval == wilson(4, 5)
    assert summary(db, "other").audit_n == 0


def test_export_then_import_round_trip_through_files(
    tmp_path: Path, sqlite_url: str, env: Callable[..., None]
):
    from catdog.cli import main

    env(database_url=sqlite_url)
    engine = make_engine(sqlite_url)
    upgrade(engine)
    with session_factory(engine)() as session:
        seed(session, {"cat": [0.5, 0.6, 0.9], "dog": [0.55, 0.95]}, store=str(tmp_path))
    runner = CliRunner()
    out = tmp_path / "tasks.json"
    config = tmp_path / "config.xml"
    r = runner.invoke(
        main,
        [
            "review",
            "export",
            "--limit",
            "2",
            "--audit",
            "1",
            "--seed",
            "0",
            "-o",
            str(out),
            "--config-out",
            str(config),
            "--document-root",
            str(tmp_path),
        ],
    )
    assert r.exit_code == 0, r.output
    tasks = json.loads(out.read_text())
    assert len(tasks) == 3 and "hotkey" in config.read_text()
    r2 = runner.invoke(main, ["review", "export", "--limit", "2", "--audit", "0", "-o", str(out)])
    assert r2.exit_code == 0 and len(json.loads(out.read_text())) == 2  # never the same ones
    empty, config2 = tmp_path / "empty.json", tmp_path / "config2.xml"
    r2b = runner.invoke(main, ["review", "export", "-o", str(empty), "--config-out", str(config2)])
    assert r2b.exit_code == 0 and "wrote 0 tasks" in r2b.output  # every image was sent
    assert json.loads(empty.read_text()) == [] and config2.read_text() == config.read_text()
    # The reviewer flips the first, confirms the second, skips the third.
    for i, task in enumerate(tasks):
        label = task["predictions"][0]["result"][0]["value"]["choices"][0]
        flipped = {"cat": "dog", "dog": "cat"}[label]
        task["id"] = 100 + i
        task["annotations"] = [
            ann(flipped) if i == 0 else ann(label) if i == 1 else ann(cancelled=True)
        ]
    answers = tmp_path / "export.json"
    answers.write_text(json.dumps(tasks))
    r3 = runner.invoke(main, ["review", "import", str(answers)])
    assert r3.exit_code == 0, r3.output
    assert "3 tasks: 2 labeled, 1 skipped" in r3.output and "3 new" in r3.output
    r4 = runner.invoke(main, ["review", "import", str(answers)])
    assert "0 new, 0 changed, 3 unchanged" in r4.output
    status = runner.invoke(main, ["review", "status"])
    assert "human labels: 2; 1 skipped and 0 ambiguous" in status.output
    assert "changed by reviewers: 1 of 2" in status.output
    assert "2 images awaiting review" in status.output
    broken = tmp_path / "broken.json"
    broken.write_text("[{]")
    r5 = runner.invoke(main, ["review", "import", str(broken)])
    assert r5.exit_code == 1 and "not JSON" in r5.output
    engine.dispose()


def test_status_lines_give_the_interval_and_say_when_the_sample_is_too_small():
    from catdog.db.reviews import MIN_AUDIT, Summary
    from catdog.ops.status import review_lines

    def lines(n: int, correct: int) -> list[str]:
        return review_lines(
            Summary(
                pending=3,
                outcomes={"labeled": 40, "skipped": 1, "ambiguous": 2},
                changed=5,
                confirmed=35,
                version="v1",
                audit_n=n,
                audit_correct=correct,
            )
        )

    small = lines(10, 9)
    assert small[0].startswith("human labels: 40; 1 skipped and 2 ambiguous (never trained on)")
    assert small[1] == "model labels changed by reviewers: 5 of 40 reviewed"
    low, high = wilson(9, 10)
    assert f"90.0% (95% Wilson interval {low:.1%}-{high:.1%}, 9/10" in small[2]
    assert "too small" in small[2]
    assert "too small" not in lines(MIN_AUDIT, MIN_AUDIT - 1)[2]
    assert "no audit answers yet" in lines(0, 0)[2]


def test_answers_across_lookup_chunks_are_all_stored_once(db: Session):
    from catdog.db.queries import IN_CHUNK

    ids = list(seed(db, {"cat": [0.9] * (IN_CHUNK + 10)}))
    saved = save_answers(db, [Answer(i, "cat", "labeled") for i in ids], "file")
    db.commit()
    assert saved.created == len(ids)
    assert save_answers(db, [Answer(i, "cat", "labeled") for i in ids], "file").unchanged == len(
        ids
    )


def test_an_answer_for_another_databases_image_with_the_same_id_is_not_stored(db: Session):
    """Two catdog databases sharing a Label Studio project number their images alike: a task
    names its store and path, and an answer whose image here is another file is left out."""
    ids = list(seed(db, {"cat": [0.6, 0.7]}))
    here = {i.id: i for i in db.scalars(select(Image))}
    ours = ls_task(ids[0], ann("dog"), task_id=1)
    ours["data"] |= {"catdog_store": here[ids[0]].store, "catdog_path": here[ids[0]].path}
    theirs = ls_task(ids[1], ann("dog"), task_id=2)
    theirs["data"] |= {"catdog_store": "/other/archive", "catdog_path": here[ids[1]].path}
    counts = record(db, [ours, theirs], "file", classes=["cat", "dog"])
    db.commit()
    assert (counts.created, counts.unknown) == (1, 1)
    assert "does not have" in counts.line()
    assert {h.image_id for h in db.scalars(select(HumanLabel))} == {ids[0]}
