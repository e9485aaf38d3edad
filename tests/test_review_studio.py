"""The review loop against a real Label Studio server: push, a reviewer's answers, pull.

The server is the session's own (tests/labelstudio.py); each test works in a project of its
own and a SQLite database of its own, with images under the server's local-files document
root, labeled by ``catdog classify`` with the tiny model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner, Result
from labelstudio import CHROMIUM, LabelStudioServer, label_studio, missing
from sqlalchemy import select
from test_s3 import BUCKET, SECRET, S3Server, put, s3

from catdog.cli import main
from catdog.db.engine import make_engine, session_factory
from catdog.db.models import HumanLabel, ModelVersion, Prediction, ReviewItem
from catdog.review.studio import LabelStudio, StudioError
from catdog.review.tasks import label_config
from helpers import make_image
from services import free_port

__all__ = ["label_studio", "s3"]  # fixtures, used by name

#: A day, for signing times.
DAY = timedelta(days=1)
#: Synthetic photos per class (red blobs are cats, blue blobs dogs for the tiny model).
PER_CLASS = 4


@dataclass
class Loop:
    """One test's archive, database and Label Studio project."""

    server: LabelStudioServer
    photos: Path
    database: str
    project: str
    env: Callable[..., None]

    def catdog(self, *args: str) -> Result:
        """Run ``catdog`` in-process with this loop's settings."""
        return CliRunner().invoke(main, list(args))

    def rows(self, model: type) -> list[Any]:
        """Every row of a table."""
        engine = make_engine(self.database)
        try:
            with session_factory(engine)() as session:
                return list(session.scalars(select(model)))
        finally:
            engine.dispose()

    def export(self) -> dict[str, dict[str, Any]]:
        """``catdog export`` rows by path relative to the photos folder."""
        result = self.catdog("export", "--format", "jsonl")
        assert result.exit_code == 0, result.output
        rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        return {str(Path(r["path"]).relative_to(self.photos)): r for r in rows}

    def project_id(self) -> int:
        """The Label Studio id of this loop's project."""
        answer = self.api("GET", "/api/projects/", params={"title": self.project})
        (found,) = [p for p in answer["results"] if p["title"] == self.project]
        return int(found["id"])

    def tasks(self) -> list[dict[str, Any]]:
        """The project's tasks with predictions and annotations, as the API gives them."""
        answer = self.api(
            "GET",
            "/api/tasks/",
            params={"project": self.project_id(), "fields": "all", "page_size": 1000},
        )
        return list(answer["tasks"])

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """A call to Label Studio as the reviewer; the JSON answer."""
        response = self.server.api().request(method, self.server.url + path, timeout=60, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    def browse(self, task: dict[str, Any], screenshot: Path) -> tuple[int, dict[str, Any]]:
        """Open the task in headless Chromium as the reviewer (tests/browser_check.py, run by
        Label Studio's Python, where Playwright is); its exit status and what it saw."""
        run = subprocess.run(
            [
                str(self.server.python),
                str(Path(__file__).with_name("browser_check.py")),
                self.server.url,
                self.server.email,
                self.server.password,
                str(task["project"]),
                str(task["id"]),
                str(task["data"]["image"]),
                str(screenshot),
            ],
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert run.stdout.strip(), run.stderr[-3000:]
        assert screenshot.stat().st_size > 10_000  # the picture was taken
        return run.returncode, dict(json.loads(run.stdout.splitlines()[-1]))

    def annotate(self, task: dict[str, Any], label: str | None) -> dict[str, Any]:
        """Answer a task as a reviewer would: pick ``label``, or skip it (None)."""
        body: dict[str, Any] = {"result": [], "was_cancelled": label is None, "lead_time": 2.5}
        if label is not None:
            body["result"] = [choice(label)]
        return dict(self.api("POST", f"/api/tasks/{task['id']}/annotations/", json=body))


def choice(label: str) -> dict[str, Any]:
    """A choices result on catdog's labeling config."""
    return {
        "from_name": "label",
        "to_name": "image",
        "type": "choices",
        "value": {"choices": [label]},
    }


def flip(label: str) -> str:
    return {"cat": "dog", "dog": "cat"}[label]


@pytest.fixture
def loop(
    label_studio: LabelStudioServer,
    tiny_model: Path,
    sqlite_url: str,
    env: Callable[..., None],
) -> Loop:
    """Photos labeled by catdog, and settings that point at the session's Label Studio."""
    photos = label_studio.document_root / f"photos-{uuid.uuid4().hex[:8]}"
    for i in range(PER_CLASS):
        make_image(photos / "cats" / f"c{i}.jpg", "cat", size=(64, 48), seed=i)
        make_image(photos / "dogs" / f"d{i}.jpg", "dog", size=(64, 48), seed=100 + i)
    env(
        database_url=sqlite_url,
        model=str(tiny_model),
        label_studio_url=label_studio.url,
        label_studio_token=label_studio.token,
        label_studio_document_root=str(label_studio.document_root),
    )
    loop = Loop(label_studio, photos, sqlite_url, f"catdog test {uuid.uuid4().hex[:8]}", env)
    labeled = loop.catdog("classify", str(photos), "--format", "jsonl")
    assert labeled.exit_code == 0, labeled.output
    return loop


def test_push_sends_tasks_with_pre_annotations_and_never_the_same_image_twice(loop: Loop):
    """Tasks appear in a new project with catdog's label, score and model version as a
    prediction; the review items record Label Studio's task ids; a second push reuses the
    project and sends only images not sent before."""
    first = loop.catdog("review", "push", "--limit", "3", "--audit", "1", "--seed", "0",
                        "--project", loop.project)  # fmt: skip
    assert first.exit_code == 0, first.output
    assert "pushed 4 tasks (3 doubtful, 1 audit) to new project" in first.output

    (version,) = loop.rows(ModelVersion)
    predictions = {p.image_id: p for p in loop.rows(Prediction)}
    items = {i.image_id: i for i in loop.rows(ReviewItem)}
    tasks = loop.tasks()
    assert len(tasks) == 4 and len(items) == 4
    for task in tasks:
        image_id = task["data"]["catdog_image_id"]
        (pred,) = task["predictions"]
        assert pred["model_version"] == version.version
        assert pred["score"] == pytest.approx(predictions[image_id].confidence, abs=1e-6)
        assert pred["result"] == [choice(predictions[image_id].label)]
        assert items[image_id].task_id == task["id"]
        assert items[image_id].destination == "label-studio"
        assert items[image_id].project.endswith(f"/projects/{loop.project_id()}")
        # Label Studio serves the image itself (local files under its document root).
        image = loop.server.api().get(loop.server.url + task["data"]["image"], timeout=30)
        assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"
    config = loop.api("GET", f"/api/projects/{loop.project_id()}/")["label_config"]
    assert 'value="cat"' in config and 'value="dog"' in config

    second = loop.catdog("review", "push", "--limit", "3", "--no-audit", "--project", loop.project)
    assert second.exit_code == 0, second.output
    assert "pushed 3 tasks (3 doubtful, 0 audit) to project" in second.output
    ids = [t["data"]["catdog_image_id"] for t in loop.tasks()]
    assert len(ids) == 7 and len(set(ids)) == 7


def test_tasks_label_studio_took_before_catdog_recorded_them_are_not_sent_again(loop: Loop):
    """A push cut short between Label Studio's answer and catdog's commit: the next push
    finds those images' tasks in the project and records them instead of sending them again;
    a task of another database's image with the same id does not count."""
    from catdog.review.select import choose
    from catdog.review.tasks import task_for
    from catdog.settings import get_settings

    first = loop.catdog("review", "push", "--limit", "2", "--no-audit", "--project", loop.project)
    assert first.exit_code == 0, first.output
    engine = make_engine(loop.database)
    with session_factory(engine)() as session:
        next_four = [task_for(c, get_settings()) for c in choose(session, limit=4, audit=0)]
    engine.dispose()
    unrecorded, same_id = next_four[:3], next_four[3]
    same_id["data"]["catdog_path"] = "another/database.jpg"
    loop.api("POST", f"/api/projects/{loop.project_id()}/import", json=[*unrecorded, same_id])
    foreign = max(t["id"] for t in loop.tasks())

    again = loop.catdog("review", "push", "--limit", "4", "--no-audit", "--project", loop.project)
    assert again.exit_code == 0, again.output
    assert "pushed 1 tasks" in again.output and "3 were there already" in again.output
    tasks = {
        t["data"]["catdog_image_id"]: t["id"]
        for t in sorted(loop.tasks(), key=lambda t: t["id"])
        if t["id"] != foreign
    }
    assert len(tasks) == 6
    assert {i.image_id: i.task_id for i in loop.rows(ReviewItem)} == tasks


def test_pull_stores_answers_once_and_a_changed_answer_updates(loop: Loop):
    """A reviewer flips one label, confirms one and skips one: pull stores two human labels
    and one skip, with who and when; pulling again changes nothing; an edited annotation
    replaces the stored label."""
    pushed = loop.catdog("review", "push", "--limit", "8", "--no-audit", "--project", loop.project)
    assert pushed.exit_code == 0, pushed.output
    tasks = sorted(loop.tasks(), key=lambda t: t["id"])
    predicted = {t["id"]: t["predictions"][0]["result"][0]["value"]["choices"][0] for t in tasks}
    flipped = loop.annotate(tasks[0], flip(predicted[tasks[0]["id"]]))
    loop.annotate(tasks[1], predicted[tasks[1]["id"]])
    loop.annotate(tasks[2], None)

    pulled = loop.catdog("review", "pull", "--project", loop.project)
    assert pulled.exit_code == 0, pulled.output
    assert "8 tasks: 2 labeled, 1 skipped, 0 ambiguous, 5 not answered yet" in pulled.output
    assert "stored 3 new, 0 changed, 0 unchanged" in pulled.output
    humans = {h.task_id: h for h in loop.rows(HumanLabel)}
    assert set(humans) == {tasks[0]["id"], tasks[1]["id"], tasks[2]["id"]}
    first = humans[tasks[0]["id"]]
    assert first.label == flip(predicted[tasks[0]["id"]]) and first.source == "label-studio"
    assert first.annotator == loop.server.email and first.annotated is not None
    assert humans[tasks[1]["id"]].label == predicted[tasks[1]["id"]]
    assert humans[tasks[2]["id"]].label is None and humans[tasks[2]["id"]].outcome == "skipped"

    (version,) = loop.rows(ModelVersion)
    exported = loop.export()
    flipped_row = exported[tasks[0]["data"]["catdog_path"]]
    assert (flipped_row["label"], flipped_row["source"]) == (first.label, "human")
    assert exported[tasks[1]["data"]["catdog_path"]]["source"] == "human"
    skipped_row = exported[tasks[2]["data"]["catdog_path"]]
    assert (skipped_row["label"], skipped_row["source"]) == (
        predicted[tasks[2]["id"]],
        version.version,
    )
    assert sum(r["source"] == "human" for r in exported.values()) == 2

    again = loop.catdog("review", "pull", "--project", loop.project)
    assert "stored 0 new, 0 changed, 3 unchanged" in again.output
    assert len(loop.rows(HumanLabel)) == 3

    # The reviewer changes their mind about the first image.
    loop.api(
        "PATCH",
        f"/api/annotations/{flipped['id']}/",
        json={"result": [choice(predicted[tasks[0]["id"]])]},
    )
    changed = loop.catdog("review", "pull", "--project", loop.project)
    assert "stored 0 new, 1 changed, 2 unchanged" in changed.output
    humans = {h.task_id: h for h in loop.rows(HumanLabel)}
    assert humans[tasks[0]["id"]].label == predicted[tasks[0]["id"]]
    assert len(humans) == 3
    assert loop.export()[tasks[0]["data"]["catdog_path"]]["label"] == predicted[tasks[0]["id"]]


def test_a_personal_access_token_from_a_secret_file_works_as_well_as_a_legacy_one(
    loop: Loop, tmp_path: Path
):
    """A personal access token (a JWT), read from CATDOG_LABEL_STUDIO_TOKEN_FILE (which wins
    over the variable), is exchanged for access tokens: push and pull work."""
    secret = tmp_path / "label-studio-token"
    secret.write_text(loop.server.personal_access_token() + "\n")
    loop.env(label_studio_token="not-used", label_studio_token_file=str(secret))
    pushed = loop.catdog("review", "push", "--limit", "2", "--no-audit", "--project", loop.project)
    assert pushed.exit_code == 0, pushed.output
    (task, _) = loop.tasks()
    loop.annotate(task, "dog")
    pulled = loop.catdog("review", "pull", "--project", loop.project)
    assert pulled.exit_code == 0, pulled.output
    assert [h.label for h in loop.rows(HumanLabel)] == ["dog"]


def test_an_expired_access_token_is_renewed_from_the_personal_access_token(
    label_studio: LabelStudioServer,
):
    """Access tokens live minutes: a refused one is replaced once, from the refresh token."""
    with LabelStudio(label_studio.url, label_studio.personal_access_token()) as studio:
        assert studio.whoami()["email"] == label_studio.email
        studio._access = "eyJexpired.access.token"  # what an expired one amounts to
        assert studio.whoami()["email"] == label_studio.email
        assert studio._access != "eyJexpired.access.token"
        assert label_studio.personal_access_token() not in repr(studio)


def test_a_reused_project_gains_the_models_new_classes_and_keeps_its_own(
    label_studio: LabelStudioServer,
):
    """push reuses the project by title; a config lacking one of the model's classes is
    replaced, one that has them all is left as the project's owners made it."""
    title = f"catdog classes {uuid.uuid4().hex[:8]}"
    with LabelStudio(label_studio.url, label_studio.token) as studio:
        made = studio.ensure_project(title, label_config(["cat", "dog"]))
        assert made.created
        same = studio.ensure_project(title, label_config(["cat"]))
        assert (same.id, same.created) == (made.id, False)
        config = studio.request("GET", f"/api/projects/{made.id}/")["label_config"]
        assert 'value="dog"' in config and 'value="fox"' not in config
        studio.ensure_project(title, label_config(["cat", "dog", "fox"]))
        config = studio.request("GET", f"/api/projects/{made.id}/")["label_config"]
        assert 'value="fox"' in config

        theirs = f"someone else's {uuid.uuid4().hex[:8]}"
        other = label_config(["cat", "dog"]).replace('name="label"', 'name="animal"')
        studio.request("POST", "/api/projects/", json={"title": theirs, "label_config": other})
        with pytest.raises(StudioError, match="not catdog's"):
            studio.ensure_project(theirs, label_config(["cat", "dog"]))
        config = studio.request("GET", f"/api/projects/{studio.find_project(theirs)['id']}/")
        assert 'name="animal"' in config["label_config"]  # left as its owners made it


def test_a_wrong_token_or_an_absent_server_is_one_line_and_sends_nothing(loop: Loop):
    """Exit 1 with one line that names the server (never the token); nothing is recorded."""
    loop.env(label_studio_token="not-the-token-0123456789")
    wrong = loop.catdog("review", "push", "--limit", "2", "--project", loop.project)
    assert wrong.exit_code == 1
    assert wrong.output.count("\n") == 1 and "refused the token" in wrong.output
    assert "not-the-token" not in wrong.output and loop.server.url in wrong.output

    loop.env(
        label_studio_token=loop.server.personal_access_token()[:-4] + "AAAA",  # bad signature
    )
    bad_jwt = loop.catdog("review", "pull", "--project", loop.project)
    assert bad_jwt.exit_code == 1 and "refused the token" in bad_jwt.output

    port = free_port()
    loop.env(label_studio_url=f"http://127.0.0.1:{port}", label_studio_token=loop.server.token)
    away = loop.catdog("review", "pull", "--project", loop.project)
    assert away.exit_code == 1 and away.output.count("\n") == 1
    assert (
        f"cannot reach Label Studio at http://127.0.0.1:{port}: connection refused" in away.output
    )

    # Label Studio's document root is a folder below the one catdog is told: every URL
    # would point at a file that is not there.
    loop.env(
        label_studio_url=loop.server.url,
        label_studio_document_root=str(loop.server.document_root.parent),
    )
    wrong_root = loop.catdog("review", "push", "--limit", "2", "--project", loop.project)
    assert wrong_root.exit_code == 1 and wrong_root.output.count("\n") == 1
    assert "does not serve the images (404" in wrong_root.output
    assert "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT" in wrong_root.output
    assert loop.rows(ReviewItem) == [] and loop.tasks() == []

    loop.env(label_studio_document_root="/somewhere/else")
    outside = loop.catdog("review", "push", "--limit", "2", "--project", loop.project)
    assert outside.exit_code == 1 and "outside Label Studio's document root" in outside.output
    assert loop.rows(ReviewItem) == []
    absent = loop.catdog("review", "pull", "--project", "no such project")
    assert absent.exit_code == 1 and "has no project" in absent.output


def test_the_token_is_never_stored_logged_or_printed(loop: Loop):
    """``catdog -vv`` (debug logs, every HTTP request) with a legacy and a personal access
    token: neither appears in the output or the logs, nor in the database file."""
    pat = loop.server.personal_access_token()
    outputs = []
    for token in (loop.server.token, pat):
        loop.env(label_studio_token=token)
        for args in (["review", "push", "--limit", "1", "--no-audit"], ["review", "pull"]):
            run = subprocess.run(
                [sys.executable, "-m", "catdog", "-vv", *args, "--project", loop.project],
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert run.returncode == 0, run.stderr[-2000:]
            outputs += [run.stdout, run.stderr]
        outputs.append(loop.catdog("settings", "--format", "json").output)
    text = "\n".join(outputs)
    assert "/api/tasks/" in text  # the requests were logged
    database = Path(loop.database.removeprefix("sqlite:///")).read_bytes()
    for token in (loop.server.token, pat):
        assert token not in text
        assert token.encode() not in database
    assert len(loop.rows(ReviewItem)) == 2


def test_a_pushed_image_loads_in_headless_chromium(loop: Loop, tmp_path: Path):
    """A reviewer's browser shows the task's image (decoded, not a broken image); a task
    whose file has gone shows none, so the check can tell."""
    if not CHROMIUM.exists():
        missing(f"chromium ({CHROMIUM}; apt-get install chromium)")
    pushed = loop.catdog("review", "push", "--limit", "2", "--no-audit", "--project", loop.project)
    assert pushed.exit_code == 0, pushed.output
    shown, gone = sorted(loop.tasks(), key=lambda t: t["id"])
    (loop.server.document_root / gone["data"]["image"].split("?d=", 1)[1]).unlink()
    shown_rc, seen = loop.browse(shown, tmp_path / "task-shown.png")
    assert shown_rc == 0, seen
    assert (seen["naturalWidth"], seen["naturalHeight"]) == (64, 48)
    gone_rc, missed = loop.browse(gone, tmp_path / "task-gone.png")
    assert gone_rc == 1 and missed["naturalWidth"] == 0


def test_an_object_store_image_is_shown_by_a_presigned_url(
    label_studio: LabelStudioServer,
    s3: S3Server,
    tiny_model: Path,
    sqlite_url: str,
    env: Callable[..., None],
    tmp_path: Path,
):
    """Images in a bucket: the task carries a presigned URL (no credentials, no storage
    connected in Label Studio) that anyone can fetch, and the reviewer's browser shows it."""
    for kind, i in (("cat", 0), ("dog", 1)):
        image = make_image(tmp_path / f"{kind}{i}.jpg", kind, size=(64, 48), seed=i)
        put(f"photos/{kind}s/{image.name}", image.read_bytes())
    env(
        database_url=sqlite_url,
        model=str(tiny_model),
        label_studio_url=label_studio.url,
        label_studio_token=label_studio.token,
    )
    loop = Loop(label_studio, tmp_path, sqlite_url, f"catdog s3 {uuid.uuid4().hex[:8]}", env)
    labeled = loop.catdog("classify", f"s3://{BUCKET}/photos", "--format", "jsonl")
    assert labeled.exit_code == 0, labeled.output
    pushed = loop.catdog("review", "push", "--limit", "2", "--no-audit", "--project", loop.project)
    assert pushed.exit_code == 0, pushed.output

    storages = loop.api("GET", "/api/storages/localfiles/", params={"project": loop.project_id()})
    assert storages == []
    tasks = loop.tasks()
    assert len(tasks) == 2
    for task in tasks:
        url = task["data"]["image"]
        assert url.startswith(f"{s3.url}/{BUCKET}/photos/") and "Signature=" in url
        assert SECRET not in url
        fetched = requests.get(url, timeout=30)  # no credentials: the signature is the key
        assert fetched.status_code == 200 and fetched.content[:2] == b"\xff\xd8"
        assert datetime.fromisoformat(task["data"]["catdog_signed"]) > datetime.now(UTC) - DAY

    # A week later the signature has expired: the next pull (or push) signs it again; a
    # task signed recently is left alone.
    old, recent = sorted(tasks, key=lambda t: t["id"])
    stale = {**old["data"], "image": f"{s3.url}/expired", "catdog_signed": "2020-01-01T00:00:00"}
    loop.api("PATCH", f"/api/tasks/{old['id']}/", json={"data": stale})
    pulled = loop.catdog("review", "pull", "--project", loop.project)
    assert pulled.exit_code == 0 and "1 image URLs signed again" in pulled.output
    now = {t["id"]: t["data"] for t in loop.tasks()}
    assert now[recent["id"]] == recent["data"]
    assert now[old["id"]]["image"].startswith(f"{s3.url}/{BUCKET}/photos/")
    assert datetime.fromisoformat(now[old["id"]]["catdog_signed"]) > datetime.now(UTC) - DAY
    assert requests.get(now[old["id"]]["image"], timeout=30).status_code == 200
    tasks = [{**old, "data": now[old["id"]]}, recent]

    if not CHROMIUM.exists():
        missing(f"chromium ({CHROMIUM}; apt-get install chromium)")
    rc, seen = loop.browse(tasks[0], tmp_path / "task-s3.png")
    assert rc == 0, seen
    assert (seen["naturalWidth"], seen["naturalHeight"]) == (64, 48)


def test_push_without_a_server_configured_says_what_to_set(
    sqlite_url: str, env: Callable[..., None]
):
    """No URL, or no token: one line naming the variable."""
    env(database_url=sqlite_url)
    runner = CliRunner()
    no_url = runner.invoke(main, ["review", "push"])
    assert no_url.exit_code == 1 and "CATDOG_LABEL_STUDIO_URL" in no_url.output
    env(label_studio_url="http://127.0.0.1:1")
    no_token = runner.invoke(main, ["review", "pull"])
    assert no_token.exit_code == 1 and "CATDOG_LABEL_STUDIO_TOKEN" in no_token.output


def test_an_install_without_the_http_client_says_what_to_install(
    sqlite_url: str, env: Callable[..., None], monkeypatch: pytest.MonkeyPatch
):
    """The base install may lack requests: push and pull say which package is missing."""
    env(database_url=sqlite_url, label_studio_url="http://127.0.0.1:1", label_studio_token="t0k3n")
    monkeypatch.setitem(sys.modules, "requests", None)  # what an absent package looks like
    for module in ("catdog.review.studio", "catdog.review.sync"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    for command in ("push", "pull"):
        result = CliRunner().invoke(main, ["review", command])
        assert result.exit_code == 1
        assert "need the 'requests' package: pip install requests" in result.output
