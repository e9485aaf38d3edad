"""A Label Studio server of the tests' own, started from its own virtual environment.

Label Studio is a large Django application with its own pinned dependencies, so it lives in
a virtual environment apart from catdog's (``CATDOG_LABEL_STUDIO_VENV``, default
``~/.cache/catdog/labelstudio-venv``; ``.ci/run`` builds it from
``tests/labelstudio-requirements.txt``). The session fixture starts it on a free port with
SQLite in a temporary data folder (a copy of a migrated one cached in ``~/.cache/catdog``
per Label Studio version: migrating takes over a minute), its user and legacy API token made
by ``label-studio start --username --password --user-token --enable-legacy-api-token`` (as
its docs say), local files served from a temporary document root, and stops it at the end.
Without the virtual environment the tests skip on a laptop and fail in CI.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from services import _die_with_parent, free_port

#: Where the virtual environment and the migrated data folder are kept between runs.
CACHE = Path.home() / ".cache" / "catdog"
#: Label Studio's virtual environment when CATDOG_LABEL_STUDIO_VENV is not set.
DEFAULT_VENV = CACHE / "labelstudio-venv"
#: Seconds Label Studio may take to start, or to migrate a fresh data folder (its 300-odd
#: migrations take 80-90 s on two busy cores; a copy of a migrated folder starts in 12-15 s).
START_TIMEOUT_S = float(os.environ.get("CATDOG_LABEL_STUDIO_START_TIMEOUT", "300"))
#: The browser the headless check drives (Debian's package).
CHROMIUM = Path("/usr/bin/chromium")


def label_studio_venv() -> Path:
    """Where Label Studio's virtual environment is expected."""
    return Path(os.environ.get("CATDOG_LABEL_STUDIO_VENV") or DEFAULT_VENV)


def missing(what: str) -> None:
    """A missing Label Studio (or browser) skips on a laptop and fails in CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI but missing")
    pytest.skip(f"{what} missing")


@dataclass
class LabelStudioServer:
    """A running Label Studio: its URL, its user, and the folders it uses."""

    url: str
    email: str
    password: str
    #: The user's legacy API token ("Authorization: Token ...").
    token: str
    #: LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT: images under it can be shown.
    document_root: Path
    data_dir: Path
    log: Path
    venv: Path
    proc: subprocess.Popen[bytes]
    pat: str | None = None

    @property
    def python(self) -> Path:
        """The Python of Label Studio's virtual environment (Playwright is there too)."""
        return self.venv / "bin" / "python"

    def api(self) -> requests.Session:
        """An HTTP session authenticated as the user, for what a reviewer would do."""
        session = requests.Session()
        session.headers["Authorization"] = f"Token {self.token}"
        return session

    def personal_access_token(self) -> str:
        """The user's personal access token (a JWT), made on first use (a user has one)."""
        if self.pat is None:
            response = self.api().post(f"{self.url}/api/token/", timeout=30)
            response.raise_for_status()
            self.pat = str(response.json()["token"])
        return self.pat

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 20 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _environment(venv: Path, home: Path, data_dir: Path) -> dict[str, str]:
    """A clean environment: Label Studio also reads bare names (HOST, PORT, DEBUG, ...)."""
    return {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        # Offline: no analytics, no version check against PyPI.
        "COLLECT_ANALYTICS": "false",
        "LATEST_VERSION_CHECK": "false",
    }


def migrated_data(venv: Path) -> Path | None:
    """A data folder with Label Studio's migrations applied and no user, cached per version
    (``label_studio/manage.py migrate`` on first use); None when it cannot be made."""
    found = sorted(venv.glob("lib/python*/site-packages/label_studio-*.dist-info"))
    manage = sorted(venv.glob("lib/python*/site-packages/label_studio/manage.py"))
    if not found or not manage:
        return None
    template = CACHE / f"labelstudio-data-{found[-1].name.removesuffix('.dist-info')}"
    if (template / "label_studio.sqlite3").is_file():
        return template
    try:
        CACHE.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(prefix=".labelstudio-data-", dir=CACHE))
    except OSError:
        return None
    done = subprocess.run(
        [str(venv / "bin" / "python"), str(manage[-1]), "migrate", "--no-input"],
        env=_environment(venv, build, build),
        cwd=build,
        capture_output=True,
        timeout=START_TIMEOUT_S,
    )
    if done.returncode != 0:
        shutil.rmtree(build, ignore_errors=True)
        return None  # the server's own start migrates, and says what is wrong
    try:
        build.rename(template)
    except OSError:  # another session made it meanwhile
        shutil.rmtree(build, ignore_errors=True)
    return template


def start_label_studio(workdir: Path, venv: Path) -> LabelStudioServer:
    """Start Label Studio on a free port with its data under ``workdir``; wait until ready.

    The data folder starts as a copy of the cached migrated one, when there is one.
    """
    exe = venv / "bin" / "label-studio"
    data_dir, document_root = workdir / "data", workdir / "files"
    template = migrated_data(venv)
    if template is not None:
        shutil.copytree(template, data_dir)
    else:
        data_dir.mkdir(parents=True)
    document_root.mkdir()
    port = free_port()
    email, password = "reviewer@example.com", secrets.token_urlsafe(12)
    token = secrets.token_hex(20)
    env = {
        **_environment(venv, workdir, data_dir),
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
    }
    log = workdir / "label-studio.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(exe),
                "start",
                "--no-browser",
                "--internal-host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                "--username",
                email,
                "--password",
                password,
                "--user-token",
                token,
                "--enable-legacy-api-token",
            ],
            env=env,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    server = LabelStudioServer(
        url=f"http://127.0.0.1:{port}",
        email=email,
        password=password,
        token=token,
        document_root=document_root,
        data_dir=data_dir,
        log=log,
        venv=venv,
        proc=proc,
    )
    _wait_ready(server)
    return server


def _wait_ready(server: LabelStudioServer) -> None:
    """Until the API answers the user's token; a clear failure with the log's tail if not."""
    started = time.monotonic()
    last = "no answer yet"
    while time.monotonic() - started < START_TIMEOUT_S:
        if server.proc.poll() is not None:
            break
        try:
            response = server.api().get(f"{server.url}/api/current-user/whoami", timeout=5)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(1)
    server.stop()
    tail = server.log.read_text(errors="replace").splitlines()[-15:]
    state = (
        f"exited with {server.proc.returncode}"
        if server.proc.returncode is not None
        else f"not ready after {START_TIMEOUT_S:.0f} s ({last})"
    )
    raise RuntimeError(f"Label Studio {state}; last lines of {server.log}:\n" + "\n".join(tail))


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """The session's Label Studio (started once, stopped at the end)."""
    venv = label_studio_venv()
    if not (venv / "bin" / "label-studio").exists():
        missing(f"Label Studio (a virtual environment at {venv}; see .ci/run)")
    server = start_label_studio(tmp_path_factory.mktemp("label-studio"), venv)
    try:
        yield server
    finally:
        server.stop()
