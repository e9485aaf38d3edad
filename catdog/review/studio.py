"""A small client for Label Studio's REST API: what ``catdog review push`` and ``pull`` need.

Projects are found by title (created with the labeling config when missing), a local-files
storage is connected for each local store root so Label Studio may serve those images, tasks
are imported with their pre-annotations in batches, and answered tasks are read back a page
at a time, in the shape of Label Studio's JSON export.

Tokens: a legacy token is sent as ``Authorization: Token ...``; a personal access token (a
JWT refresh token, the default kind since Label Studio 1.17) is exchanged at
``/api/token/refresh/`` for a short-lived access token, sent as ``Bearer`` and renewed when
it expires. The token is never part of a message, a log line or a ``repr``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import requests

from catdog.review.tasks import CHOICES_NAME, IMAGE_NAME
from catdog.settings import redact_url

#: Seconds Label Studio may take to answer one request (an import of a batch included).
TIMEOUT_S = 60.0
#: Tasks per import request: one request per batch, and the batch is what a failure repeats.
IMPORT_BATCH = 100
#: Task ids per export request: each is ~15 bytes of the query string, and servers in front
#: of Label Studio cap a request line at 4-8 KiB.
EXPORT_IDS = 100
#: Tasks per page when only their ids and data are read (a few hundred bytes each).
ID_PAGE_SIZE = 1000
#: A JWT: three base64url parts, the header starting ``{"`` (``eyJ``).
JWT = re.compile(r"^eyJ[\w-]*\.[\w-]+\.[\w-]+$")


class StudioError(RuntimeError):
    """Label Studio cannot be used: unreachable, a token it refuses, or an error it reports.

    The message is one line that names the server without credentials and never the token.
    """


@dataclass(frozen=True, slots=True)
class Project:
    """A Label Studio project catdog sends tasks to."""

    id: int
    title: str
    #: Whether this call created it.
    created: bool


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words (requests' own message is a paragraph)."""
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, OSError) and current.errno is not None:
            return os.strerror(current.errno).lower()
        current = current.__cause__ or current.__context__
    text = str(exc)
    for words in ("Connection refused", "Name or service not known", "No route to host"):
        if words in text:
            return words.lower()
    return type(exc).__name__


def _detail(response: requests.Response) -> str:
    """Label Studio's error message, on one line and short."""
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if isinstance(body, dict):
        parts = [str(body.get("detail") or "")]
        details = body.get("validation_errors") or {
            k: v for k, v in body.items() if k not in ("id", "status_code", "version", "detail")
        }
        if details and isinstance(details, dict):
            parts.append("; ".join(f"{k}: {v}" for k, v in details.items() if v))
        body = " ".join(p for p in parts if p)
    return re.sub(r"\s+", " ", str(body)).strip()[:300] or response.reason


class LabelStudio:
    """A session with one Label Studio server, authenticated by one token."""

    def __init__(self, url: str, token: str, *, timeout: float = TIMEOUT_S) -> None:
        if not url or not re.match(r"^https?://", url):
            raise StudioError(
                "CATDOG_LABEL_STUDIO_URL must be the server's http(s):// address "
                f"(got {redact_url(url) if url else 'nothing'})"
            )
        if not token:
            raise StudioError("no Label Studio token: set CATDOG_LABEL_STUDIO_TOKEN(_FILE)")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._token = token
        self._personal = bool(JWT.match(token))
        self._access: str | None = None
        self._http = requests.Session()

    def __repr__(self) -> str:
        return f"LabelStudio({self.where!r})"

    @property
    def where(self) -> str:
        """The server's address fit for a message (no login, no query)."""
        return redact_url(self.url)

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> LabelStudio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -------------------------------------------------------------------------

    def _authorization(self, renew: bool = False) -> str:
        if not self._personal:
            return f"Token {self._token}"
        if self._access is None or renew:
            answer = self._send("POST", "/api/token/refresh/", None, json={"refresh": self._token})
            self._check(answer, "POST", "/api/token/refresh/")
            access = answer.json().get("access") if answer.content else None
            if not isinstance(access, str):
                raise StudioError(f"Label Studio at {self.where} gave no access token")
            self._access = access
        return f"Bearer {self._access}"

    def _send(
        self, method: str, path: str, authorization: str | None, **kwargs: Any
    ) -> requests.Response:
        headers = {"Authorization": authorization} if authorization else {}
        try:
            return self._http.request(
                method, self.url + path, headers=headers, timeout=self.timeout, **kwargs
            )
        except requests.Timeout as exc:
            raise StudioError(
                f"Label Studio at {self.where} did not answer within {self.timeout:g} s"
            ) from exc
        except requests.RequestException as exc:
            # from None: requests' chained messages repeat the URL and say nothing more.
            raise StudioError(
                f"cannot reach Label Studio at {self.where}: {_reason(exc)}"
            ) from None

    def _check(self, response: requests.Response, method: str, path: str) -> None:
        if response.status_code == 401:
            raise StudioError(
                f"Label Studio at {self.where} refused the token ({_detail(response)}); check "
                "CATDOG_LABEL_STUDIO_TOKEN (a personal access token, or a legacy token with "
                "legacy tokens enabled in the organisation's settings)"
            )
        if response.status_code >= 400:
            raise StudioError(
                f"Label Studio at {self.where}: {method} {path} failed "
                f"({response.status_code}: {_detail(response)})"
            )

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = self._send(method, path, self._authorization(), **kwargs)
        if response.status_code == 401 and self._personal:
            # The access token expired (they live minutes): get a new one, once.
            response = self._send(method, path, self._authorization(renew=True), **kwargs)
        return response

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the API; the decoded JSON answer (None when empty), or a one-line error."""
        response = self._call(method, path, **kwargs)
        self._check(response, method, path)
        return _json(response, self.where, path)

    # -- the calls catdog makes ------------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        """The token's user (a cheap check that the server and the token work)."""
        user = self.request("GET", "/api/current-user/whoami")
        if not isinstance(user, dict):
            raise StudioError(f"{self.where} is not a Label Studio server")
        return user

    def emails(self) -> dict[int, str]:
        """The organisation's users: id to email."""
        users = self.request("GET", "/api/users/")
        if isinstance(users, dict):  # paginated in some versions
            users = users.get("results", [])
        return {u["id"]: u.get("email") or u.get("username") or str(u["id"]) for u in users}

    def find_project(self, title: str) -> dict[str, Any] | None:
        """The project titled exactly ``title`` (the oldest, if several), or None."""
        page = 1
        found: list[dict[str, Any]] = []
        while True:
            answer = self.request(
                "GET", "/api/projects/", params={"title": title, "page": page, "page_size": 100}
            )
            results = answer.get("results", []) if isinstance(answer, dict) else answer
            found += [p for p in results if p.get("title") == title]
            if not isinstance(answer, dict) or not answer.get("next"):
                break
            page += 1
        return min(found, key=lambda p: p["id"]) if found else None

    def ensure_project(self, title: str, label_config: str) -> Project:
        """The project titled ``title``, created with ``label_config`` when there is none.

        An existing project keeps its config unless it lacks a class the model has now; then
        the config is replaced (Label Studio refuses it if answers use a label it drops). A
        project whose config is not catdog's (other control names) is refused: catdog's
        pre-annotations and answers would not fit it.
        """
        project = self.find_project(title)
        if project is None:
            created = self.request(
                "POST", "/api/projects/", json={"title": title, "label_config": label_config}
            )
            return Project(int(created["id"]), title, created=True)
        existing = str(project.get("label_config") or "")
        if not _is_catdogs(existing):
            raise StudioError(
                f"project {title!r} at {self.where} has a labeling config that is not catdog's "
                f'(it needs <Choices name="{CHOICES_NAME}" toName="{IMAGE_NAME}">): '
                "choose another --project"
            )
        if set(_choices(label_config)) - set(_choices(existing)):
            self.request(
                "PATCH", f"/api/projects/{project['id']}/", json={"label_config": label_config}
            )
        return Project(int(project["id"]), title, created=False)

    def connect_local_files(self, project_id: int, folder: str) -> int:
        """A local-files storage of the project for ``folder`` (reused when there is one).

        Label Studio serves ``/data/local-files/`` only for files under such a storage's
        path, and only to users of that project. Nothing is synced: tasks are imported.
        """
        storages = self.request("GET", "/api/storages/localfiles/", params={"project": project_id})
        for storage in storages or []:
            if storage.get("path") == folder:
                return int(storage["id"])
        created = self.request(
            "POST",
            "/api/storages/localfiles/",
            json={
                "project": project_id,
                "path": folder,
                "title": f"catdog {folder}"[:2048],
                "use_blob_urls": False,
            },
        )
        return int(created["id"])

    def check_local_image(self, url: str) -> None:
        """Fetch one ``/data/local-files/`` URL as the reviewers' browsers will; one line
        saying which server setting is off when Label Studio does not serve it."""
        response = self._call("GET", url, stream=True)
        response.close()
        if response.status_code == 200:
            return
        if response.status_code == 403:
            why = "set LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true for the server"
        elif response.status_code == 404:
            why = (
                "CATDOG_LABEL_STUDIO_DOCUMENT_ROOT must be the server's "
                "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, and the files must be at the same "
                "paths on the server"
            )
        else:
            why = _detail(response)
        raise StudioError(
            f"Label Studio at {self.where} does not serve the images "
            f"({response.status_code} for {url}): {why}"
        )

    def update_task_data(self, task_id: int, data: dict[str, Any]) -> None:
        """Replace a task's data (its image URL, say); annotations are untouched."""
        self.request("PATCH", f"/api/tasks/{task_id}/", json={"data": data})

    def import_tasks(self, project_id: int, tasks: Sequence[dict[str, Any]]) -> list[int | None]:
        """Import tasks (with their predictions); their new ids, in order (None if not told)."""
        if not tasks:
            return []
        answer = self.request(
            "POST",
            f"/api/projects/{project_id}/import",
            params={"return_task_ids": "true"},
            json=list(tasks),
        )
        ids = answer.get("task_ids") if isinstance(answer, dict) else None
        if isinstance(ids, list) and len(ids) == len(tasks):
            return [int(i) for i in ids]
        return [None] * len(tasks)

    def _pages(
        self, project_id: int, page_size: int, **params: str
    ) -> Iterator[tuple[list[dict[str, Any]], int]]:
        """The project's tasks a page at a time, each with the project's task count."""
        page = 1
        while True:
            query = {"project": project_id, "page": page, "page_size": page_size, **params}
            response = self._call("GET", "/api/tasks/", params=query)
            if response.status_code == 404 and page > 1:
                return  # tasks deleted meanwhile: past the last page
            self._check(response, "GET", "/api/tasks/")
            answer = _json(response, self.where, "/api/tasks/")
            tasks = answer.get("tasks", []) if isinstance(answer, dict) else answer
            total = int(answer.get("total", 0)) if isinstance(answer, dict) else len(tasks)
            yield tasks, total
            if len(tasks) < page_size or page * page_size >= total:
                return
            page += 1

    def task_ids(self, project_id: int) -> list[int]:
        """The ids of every task of the project."""
        pages = self._pages(project_id, ID_PAGE_SIZE, fields="task_only", include="id")
        return [int(t["id"]) for tasks, _ in pages for t in tasks]

    def answered(self, project_id: int) -> Iterator[tuple[list[dict[str, Any]], int, int]]:
        """The project's answered tasks (skipped ones included) in the shape of Label
        Studio's JSON export, a batch at a time, with how many tasks the batch looked at and
        how many the project has; annotators are named by email.

        The export serialises only tasks with annotations, at a third of the cost per task
        of the task list's full form, so a project still mostly unanswered reads quickly.
        """
        emails: dict[int, str] | None = None
        ids = self.task_ids(project_id)
        for start in range(0, len(ids), EXPORT_IDS):
            chunk = ids[start : start + EXPORT_IDS]
            tasks = self.request(
                "GET",
                f"/api/projects/{project_id}/export",
                params={"exportType": "JSON", "ids[]": chunk},
            )
            if not isinstance(tasks, list):
                raise StudioError(
                    f"Label Studio at {self.where} exported something else than tasks"
                )
            if tasks and emails is None:
                emails = self.emails()
            for task in tasks:
                for annotation in task.get("annotations") or []:
                    who = annotation.get("completed_by")
                    if isinstance(who, int) and emails is not None and who in emails:
                        annotation["completed_by"] = {"id": who, "email": emails[who]}
            yield tasks, len(chunk), len(ids)

    def image_tasks(self, project_id: int) -> dict[int, tuple[int, dict[str, Any]]]:
        """catdog image id to (task id, task data), for every task of the project that has
        one (the first task, if several)."""
        found: dict[int, tuple[int, dict[str, Any]]] = {}
        pages = self._pages(project_id, ID_PAGE_SIZE, fields="task_only", include="id,data")
        for tasks, _ in pages:
            for task in tasks:
                data = task.get("data") or {}
                image_id = data.get("catdog_image_id")
                if isinstance(image_id, int) and not isinstance(image_id, bool):
                    found.setdefault(image_id, (int(task["id"]), data))
        return found


def _json(response: requests.Response, where: str, path: str) -> Any:
    """A response's JSON (None when empty), or a one-line error."""
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        raise StudioError(
            f"{where} answered {path} with something that is not JSON: is it Label Studio?"
        ) from None


def _is_catdogs(label_config: str) -> bool:
    """Whether a labeling config has catdog's image and choices (by their names)."""
    image = re.search(rf'<Image\s[^>]*name="{IMAGE_NAME}"', label_config)
    choices = re.search(
        rf'<Choices\s(?=[^>]*name="{CHOICES_NAME}")(?=[^>]*toName="{IMAGE_NAME}")', label_config
    )
    return image is not None and choices is not None


def _choices(label_config: str) -> list[str]:
    """The choice values a labeling config offers, in order."""
    return re.findall(r"<Choice\s[^>]*value=\"([^\"]*)\"", label_config or "")
