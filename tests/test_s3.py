"""Object stores through fsspec, against a real S3-protocol server (moto's, on loopback)."""

from __future__ import annotations

import io
import json
import logging
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from catdog import stores
from catdog.db.models import Image
from catdog.images import ImageError
from catdog.stores import (
    NOT_AN_IMAGE,
    FileEntry,
    FsspecStore,
    forget_remote_stores,
    open_store,
    scan_store,
)

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

#: The secret the tests hand to the S3 client: it must never show up anywhere else.
SECRET = "sekrit-never-stored-4711"
BUCKET = "catdog-photos"


@dataclass
class S3Server:
    """A moto S3 server on a free loopback port, with the requests it answered."""

    url: str
    requests: list[str] = field(default_factory=list)
    server: object = None

    def stop(self) -> None:
        """Take the server away (its objects stay in moto's memory for a restart)."""
        self.server.stop()  # type: ignore[attr-defined]

    def start(self) -> None:
        """Bring it back on the same port."""
        port = int(self.url.rsplit(":", 1)[1])
        self.server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
        self.server.start()  # type: ignore[attr-defined]

    def gets(self, prefix: str) -> list[str]:
        """Object GETs (not listings) under ``/bucket/prefix``."""
        return [r for r in self.requests if f"GET /{prefix}" in r and "list-type" not in r]


class _RequestLog(logging.Handler):
    def __init__(self, server: S3Server) -> None:
        super().__init__()
        self.server = server

    def emit(self, record: logging.LogRecord) -> None:
        self.server.requests.append(record.getMessage())


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """A fresh S3 server with one bucket; clients find it through AWS_ENDPOINT_URL."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    state = S3Server(f"http://{host}:{port}", server=server)
    for key, value in {
        "AWS_ENDPOINT_URL": state.url,
        "AWS_ACCESS_KEY_ID": "catdog-test",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    handler = _RequestLog(state)
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.addHandler(handler)
    werkzeug.setLevel(logging.INFO)
    # moto keeps its state per process: start every test from an empty server.
    urllib.request.urlopen(urllib.request.Request(f"{state.url}/moto-api/reset", method="POST"))
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    import fsspec

    fsspec.filesystem("s3").clear_instance_cache()
    forget_remote_stores()
    yield state
    werkzeug.removeHandler(handler)
    state.stop()


def put(key: str, body: bytes) -> None:
    """Upload one object to the test bucket."""
    boto3.client("s3").put_object(Bucket=BUCKET, Key=key, Body=body)


def _jpeg(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (seed * 40 % 255, 80, 160)).save(buf, "JPEG")
    return buf.getvalue()


def test_a_bucket_prefix_is_walked_with_what_the_listing_gives(s3: S3Server) -> None:
    """Sizes and times come from the listing: walking a bucket reads no object."""
    for i in range(3):
        put(f"photos/a/{i}.jpg", _jpeg(i))
    put("photos/readme.txt", b"hello")
    put("elsewhere/x.jpg", _jpeg(9))
    skipped: list[tuple[str, str]] = []
    entries = list(scan_store(f"s3://{BUCKET}/photos").walk(lambda n, r: skipped.append((n, r))))
    assert [e.path for e in entries] == ["a/0.jpg", "a/1.jpg", "a/2.jpg"]
    assert all(e.size == len(_jpeg(i)) and e.mtime > 0 for i, e in enumerate(entries))
    assert skipped == [("readme.txt", NOT_AN_IMAGE)]
    assert s3.gets(f"{BUCKET}/photos") == []


def test_objects_are_read_bounded_and_each_failure_stays_with_its_object(s3: S3Server) -> None:
    """A missing object, one over the size limit and a '..' name fail alone, with reasons."""
    put("photos/ok.jpg", _jpeg(1))
    put("photos/big.jpg", b"x" * 5000)
    put("secret.jpg", _jpeg(2))
    store = open_store(f"s3://{BUCKET}/photos")
    got = store.read_many(["ok.jpg", "gone.jpg", "big.jpg", "../secret.jpg"], 4000)
    assert got[0] == _jpeg(1)
    reasons = [str(r) for r in got[1:]]
    assert reasons[0].startswith("file not found")
    assert reasons[1] == "file too large (more than 4000 bytes)"
    assert "outside" in reasons[2]
    assert not s3.gets(f"{BUCKET}/secret.jpg")


def test_a_worker_reads_only_under_the_configured_store_roots(s3: S3Server) -> None:
    """CATDOG_STORE_ROOTS takes URLs; another prefix, bucket or a local folder is refused."""
    put("allowed/x.jpg", _jpeg(1))
    put("other/y.jpg", _jpeg(2))
    roots = [f"s3://{BUCKET}/allowed"]
    assert open_store(f"s3://{BUCKET}/allowed", roots).read("x.jpg", 10**6) == _jpeg(1)
    for root, name in ((f"s3://{BUCKET}/other", "y.jpg"), (f"s3://{BUCKET}", "other/y.jpg")):
        with pytest.raises(ImageError, match="outside"):
            open_store(root, roots).read(name, 10**6)
    with pytest.raises(ImageError, match="outside"):
        open_store(os.getcwd(), roots).read("pyproject.toml", 10**6)


def test_a_store_url_with_credentials_in_it_is_refused() -> None:
    """Keys belong to the environment, never to a URL that would be stored and printed."""
    with pytest.raises(ValueError, match="no credentials"):
        FsspecStore(f"s3://key:{SECRET}@{BUCKET}/photos")


def _png(tmp_path: Path, kind: str, seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    from helpers import make_image

    return make_image(tmp_path / f"{kind}-{seed}.png", kind, size, seed).read_bytes()


def _classify(args: list[str]) -> tuple[int, list[dict[str, object]], str]:
    from click.testing import CliRunner

    from catdog.cli import main

    result = CliRunner().invoke(main, ["classify", *args, "--format", "jsonl"])
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result.exit_code, rows, result.stderr


def test_classify_labels_a_bucket_and_a_second_run_reads_no_object(
    s3: S3Server, env, sqlite_url: str, tiny_model: Path, tmp_path: Path
) -> None:
    """Good objects are labeled, broken ones fail with a reason; unchanged objects are not
    read again, and a changed one is labeled again."""
    for i, kind in enumerate(("cat", "dog", "cat")):
        put(
            f"photos/{kind}{i}.png",
            _png(tmp_path, kind, i),
        )
    put("photos/broken.jpg", b"not a jpeg at all")
    env(database_url=sqlite_url, model=str(tiny_model))
    url = f"s3://{BUCKET}/photos"
    code, rows, stderr = _classify([url])
    assert code == 0, stderr
    by_path = {r["path"]: r for r in rows}
    assert {p: r["label"] for p, r in by_path.items() if r.get("label")} == {
        f"{url}/cat0.png": "cat",
        f"{url}/dog1.png": "dog",
        f"{url}/cat2.png": "cat",
    }
    assert "not an image" in str(by_path[f"{url}/broken.jpg"]["error"])
    assert len(s3.gets(f"{BUCKET}/photos/")) == 4

    s3.requests.clear()
    code, rows, _ = _classify([url])
    assert code == 0 and len(rows) == 4
    assert s3.gets(f"{BUCKET}/photos/") == []  # the listing said nothing changed

    put(
        "photos/cat0.png",
        _png(tmp_path, "dog", 7, size=(50, 40)),
    )
    s3.requests.clear()
    code, rows, _ = _classify([url])
    assert code == 0
    assert {r["path"]: r["label"] for r in rows}[f"{url}/cat0.png"] == "dog"
    assert len(s3.gets(f"{BUCKET}/photos/")) == 1


def test_the_secret_key_is_never_stored_or_printed(
    s3: S3Server, env, sqlite_url: str, tiny_model: Path, tmp_path: Path
) -> None:
    """The database file, the rows and the log hold the store URL, never the credentials."""
    put("photos/x.jpg", _jpeg(3))
    env(database_url=sqlite_url, model=str(tiny_model))
    code, rows, stderr = _classify([f"s3://{BUCKET}/photos"])
    assert code == 0, stderr
    database = Path(sqlite_url.removeprefix("sqlite:///")).read_bytes()
    assert f"s3://{BUCKET}/photos".encode() in database
    assert SECRET.encode() not in database
    assert SECRET not in json.dumps(rows) and SECRET not in stderr


def test_a_missing_bucket_is_one_line(s3: S3Server, env, sqlite_url: str, tiny_model: Path) -> None:
    """Listing a bucket that does not exist fails with one line naming the store."""
    env(database_url=sqlite_url, model=str(tiny_model))
    code, _, stderr = _classify(["s3://no-such-bucket-here/photos"])
    assert code == 1
    lines = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "s3://no-such-bucket-here/photos" in lines[0], stderr
    assert "Traceback" not in stderr


@pytest.mark.services
@pytest.mark.slow
def test_a_cluster_scan_of_a_bucket_labels_it_without_the_secret_leaving_the_environment(
    s3: S3Server, cluster_env: dict[str, str], worker_factory, tmp_path: Path, redis_url: str
) -> None:
    """`catdog scan s3://... --wait` with a real worker confined to the prefix: every object
    is labeled once, one outside the roots is refused, and the secret key appears in no log,
    no database row and no message."""
    import subprocess
    import sys

    import redis
    from sqlalchemy import create_engine, text

    for i, kind in enumerate(("cat", "dog", "cat", "dog", "cat")):
        put(f"photos/{kind}{i}.png", _png(tmp_path, kind, i))
    put("private/p.png", _png(tmp_path, "dog", 9))
    aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    env = {**cluster_env, **aws, "CATDOG_STORE_ROOTS": f"s3://{BUCKET}/photos"}
    worker = worker_factory(**aws, CATDOG_STORE_ROOTS=f"s3://{BUCKET}/photos")

    def scan_wait(root: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "catdog", "scan", root, "--wait"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done

    scan = scan_wait(f"s3://{BUCKET}/photos")
    # A scan of the whole bucket registers the private prefix too; the worker refuses it.
    whole = scan_wait(f"s3://{BUCKET}")
    engine = create_engine(cluster_env["CATDOG_DATABASE_URL"])
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT i.store, i.path, p.label, p.error FROM images i "
                "JOIN predictions p ON p.image_id = i.id ORDER BY i.store, i.path"
            )
        ).all()
        dump = " ".join(
            str(v) for row in conn.execute(text("SELECT * FROM scan_runs")) for v in row
        )
    engine.dispose()
    labels = {(store, path): (label, error) for store, path, label, error in rows}
    photos = f"s3://{BUCKET}/photos"
    assert {p: v[0] for (s, p), v in labels.items() if s == photos} == {
        "cat0.png": "cat",
        "dog1.png": "dog",
        "cat2.png": "cat",
        "dog3.png": "dog",
        "cat4.png": "cat",
    }
    private = labels[(f"s3://{BUCKET}", "private/p.png")]
    assert private[0] is None and "outside the configured store roots" in private[1]
    assert not s3.gets(f"{BUCKET}/private/")  # refused before any request
    everything = worker.log.read_text() + scan.stderr + whole.stderr + dump + repr(rows)
    client = redis.Redis.from_url(redis_url)
    everything += " ".join(repr(client.dump(k)) for k in client.keys("*"))
    assert SECRET not in everything


def test_a_store_that_goes_away_mid_run_fails_rows_and_a_retry_labels_them(
    s3: S3Server, sqlite_url: str, tiny_model: Path, tmp_path: Path
) -> None:
    """Objects that cannot be fetched become failed rows with a reason (the batch is stored,
    nothing is lost or doubled); once the server is back, `--retry-failed` labels them."""
    from sqlalchemy import func, select

    from catdog.db.migrate import upgrade
    from catdog.db.models import Prediction
    from catdog.producer.scan import scan
    from catdog.settings import Settings
    from catdog.workers.inference import InferenceContext, classify_batch

    for i, kind in enumerate(("cat", "dog", "cat")):
        put(f"photos/{kind}{i}.png", _png(tmp_path, kind, i))
    settings = Settings(database_url=sqlite_url, model=tiny_model, batch_size=8)  # type: ignore[arg-type]
    ctx = InferenceContext.create(settings)
    upgrade(ctx.engine)
    url = f"s3://{BUCKET}/photos"
    held: list[tuple[int, list[int]]] = []
    scan(ctx.sessions, settings, [scan_store(url)], lambda run, ids: held.append((run, ids)))
    s3.stop()  # the listing is done; the store goes away before the batch reads anything
    run, ids = held[0]
    result = classify_batch(ctx, run, ids)
    assert (result.done, result.failed) == (0, 3)
    with ctx.sessions() as session:
        errors = session.scalars(select(Prediction.error)).all()
    assert len(errors) == 3 and all(e and e.startswith("cannot read object") for e in errors)
    assert all(SECRET not in e for e in errors)

    s3.start()
    forget_remote_stores()
    retried = scan(
        ctx.sessions,
        settings,
        [scan_store(url)],
        lambda r, i: classify_batch(ctx, r, i),
        retry_failed=True,
    )
    assert retried.queued == 3
    with ctx.sessions() as session:
        latest = session.execute(
            select(Prediction.image_id, func.max(Prediction.id)).group_by(Prediction.image_id)
        ).all()
        labels = session.scalars(
            select(Prediction.label).where(Prediction.id.in_([pid for _, pid in latest]))
        ).all()
    assert sorted(labels) == ["cat", "cat", "dog"]
    ctx.close()


def _listed(url: str) -> dict[str, FileEntry]:
    return {e.path: e for e in scan_store(url).walk()}


def test_the_listing_gives_each_object_its_etag_and_pages_through_a_large_prefix(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several pages, odd key names and folder markers: every object once, with its ETag."""
    import hashlib

    monkeypatch.setattr(stores, "LIST_PAGE", 3)
    names = ["a b.jpg", "c+d.jpg", "e%20f.jpg", "ü/ß.jpg", "x/y/z.jpg", "zz.jpg", "zzz.jpg"]
    for i, name in enumerate(names):
        put(f"photos/{name}", _jpeg(i))
    put("photos/x/", b"")  # a folder marker, as consoles create them
    listed = _listed(f"s3://{BUCKET}/photos")
    assert sorted(listed) == sorted(names)
    for i, name in enumerate(names):
        assert listed[name].version == hashlib.md5(_jpeg(i)).hexdigest()
        assert listed[name].size == len(_jpeg(i))
    # The top level (5 objects, folders ü/ and x/: 7 entries) in 3 pages of 3, then each
    # folder: the plain listing, not s3fs's 1,000-key pages.
    assert _listings(s3) == [("photos/", True)] * 3 + [("photos/x/", False), ("photos/ü/", False)]


def _listings(s3: S3Server) -> list[tuple[str, bool]]:
    """(prefix, one level only) of each listing request the server answered, in order of
    prefix (folders are listed at once, in no fixed order)."""
    from urllib.parse import parse_qs, urlsplit

    out = []
    for line in s3.requests:
        if "list-type=2" in line:
            query = parse_qs(urlsplit(line.split('"GET ', 1)[1].split()[0]).query)
            out.append((query["prefix"][0], "delimiter" in query))
    return sorted(out, key=lambda p: p[0])


@pytest.mark.parametrize("folder_listings", [256, 2])
def test_a_prefix_is_listed_folder_by_folder_at_once(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch, folder_listings: int
) -> None:
    """Down a chain of single folders to where the prefix branches, then each folder as its
    own listing; more folders than FOLDER_LISTINGS: that level as one listing."""
    monkeypatch.setattr(stores, "FOLDER_LISTINGS", folder_listings)
    names = ["top.jpg", "2024/x.jpg", "2024/01/a.jpg", "2024/01/b.jpg", "2024/02/c.jpg"]
    names += ["2024/03/d/e.jpg"]
    for i, name in enumerate(names):
        put(f"photos/{name}", _jpeg(i))
    put("other/2024/01/z.jpg", _jpeg(9))
    assert sorted(_listed(f"s3://{BUCKET}/photos")) == sorted(names)
    top = [("photos/", True), ("photos/2024/", True)]
    if folder_listings == 2:
        assert _listings(s3) == top + [("photos/2024/", False)]
    else:
        folders = [(f"photos/2024/0{i}/", False) for i in (1, 2, 3)]
        assert _listings(s3) == top + folders


def test_odd_key_names_are_read_by_the_signed_gets_not_handed_to_s3fs(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spaces, '+', '%', '~' and non-ASCII names: each GET is signed for the name as the
    server sees it, so all are read on the plain path and s3fs is never asked."""
    names = ["a b.jpg", "c+d.jpg", "e%20f.jpg", "ü/ß.jpg", "t~i (1).jpg", "x/y/z.jpg"]
    for i, name in enumerate(names):
        put(f"photos/{name}", _jpeg(i))
    forget_remote_stores()
    store = open_store(f"s3://{BUCKET}/photos")

    def no_s3fs(*args: object, **kwargs: object) -> None:
        raise AssertionError("a read went through s3fs")

    monkeypatch.setattr(store.fs, "cat_ranges", no_s3fs)
    assert store.read_many(names, 10**6) == [_jpeg(i) for i in range(len(names))]


def test_a_root_naming_one_object_is_a_store_of_one(
    s3: S3Server, env, sqlite_url: str, tiny_model: Path, tmp_path: Path
) -> None:
    """A URL of one object (not a prefix) labels that object, as a local file path does."""
    put("photos/one.png", _png(tmp_path, "dog", 1))
    put("photos/one.png.d/two.png", _png(tmp_path, "cat", 2))
    env(database_url=sqlite_url, model=str(tiny_model))
    code, rows, stderr = _classify([f"s3://{BUCKET}/photos/one.png"])
    assert code == 0, stderr
    assert [(r["path"], r["label"]) for r in rows] == [(f"s3://{BUCKET}/photos/one.png", "dog")]


@pytest.fixture(params=["sqlite", "postgresql"])
def tagged(request: pytest.FixtureRequest) -> Iterator[tuple[sessionmaker[Session], int]]:
    """A migrated database of each kind with a model version: (sessions, version id)."""
    from catdog.db.engine import make_engine, session_factory
    from catdog.db.migrate import upgrade
    from catdog.db.models import ModelVersion

    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    engine = make_engine(url)
    upgrade(engine)
    sessions = session_factory(engine)
    with sessions.begin() as s:
        version = ModelVersion(version="v1", file="m", sha256="x", classes=["cat", "dog"])
        s.add(version)
        s.flush()
        version_id = version.id
    yield sessions, version_id
    engine.dispose()


def _register(
    sessions: sessionmaker[Session], version_id: int, entries: list[FileEntry], label: bool = True
) -> list[int]:
    """Register entries of the test store, give what needs labeling a result; the ids queued."""
    from catdog.db.queries import Outcome, register_images, save_outcomes

    with sessions.begin() as s:
        todo, _ = register_images(s, f"s3://{BUCKET}/photos", entries, version_id)
        if label:
            save_outcomes(s, None, version_id, [Outcome(image_id=i, label="cat") for i in todo])
    return todo


def test_a_rewritten_object_is_labeled_again_by_its_etag_when_size_and_time_look_the_same(
    s3: S3Server, tagged: tuple[sessionmaker[Session], int]
) -> None:
    """Content rewritten within the listing's one-second time resolution, same length: only
    the ETag tells, and it is what registration compares."""
    sessions, version_id = tagged
    before = _jpeg(1)
    put("photos/a.jpg", before)
    put("photos/b.jpg", _jpeg(2))
    first = _listed(f"s3://{BUCKET}/photos")
    assert len(_register(sessions, version_id, list(first.values()))) == 2
    after = bytes([before[0] ^ 1]) + before[1:]  # same size, other bytes
    put("photos/a.jpg", after)
    again = _listed(f"s3://{BUCKET}/photos")
    assert again["a.jpg"].version != first["a.jpg"].version
    # The time may have ticked over a second since: pin it, so nothing but the tag differs.
    same_time = [replace(e, mtime=first[e.path].mtime) for e in again.values()]
    assert same_time[0].size == first["a.jpg"].size
    requeued = _register(sessions, version_id, same_time)
    with sessions() as s:
        paths = s.scalars(select(Image.path).where(Image.id.in_(requeued))).all()
        stored = s.scalar(select(Image.version).where(Image.path == "a.jpg"))
    assert paths == ["a.jpg"] and stored == again["a.jpg"].version


def test_an_object_copied_onto_itself_keeps_its_etag_and_is_not_read_again(
    s3: S3Server, tagged: tuple[sessionmaker[Session], int]
) -> None:
    """A new modification time with the same ETag (a copy, a metadata change) is no change."""
    sessions, version_id = tagged
    put("photos/a.jpg", _jpeg(1))
    first = _listed(f"s3://{BUCKET}/photos")
    _register(sessions, version_id, list(first.values()))
    boto3.client("s3").copy_object(
        Bucket=BUCKET,
        Key="photos/a.jpg",
        CopySource={"Bucket": BUCKET, "Key": "photos/a.jpg"},
        MetadataDirective="REPLACE",
        Metadata={"k": "v"},
    )
    again = _listed(f"s3://{BUCKET}/photos")
    newer = replace(again["a.jpg"], mtime=first["a.jpg"].mtime + 60)  # however late the copy
    assert newer.version == first["a.jpg"].version
    assert _register(sessions, version_id, [newer]) == []


def test_rows_registered_before_tags_get_theirs_without_being_labeled_again(
    tagged: tuple[sessionmaker[Session], int],
) -> None:
    """Images registered without a tag (before migration 0006) are compared by size and time
    once more, and keep the tag from then on; local files never have one."""
    sessions, version_id = tagged
    old = FileEntry("a.jpg", 10, 5.0)
    _register(sessions, version_id, [old])
    assert _register(sessions, version_id, [replace(old, version="e1")]) == []
    with sessions() as s:
        assert s.scalar(select(Image.version)) == "e1"
    assert len(_register(sessions, version_id, [replace(old, version="e2")])) == 1
    assert _register(sessions, version_id, [replace(old, version=None, mtime=5.0)]) == []
    assert len(_register(sessions, version_id, [replace(old, version=None, mtime=6.0)])) == 1


def test_signed_reads_never_log_their_signature(
    s3: S3Server, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """urllib3 logs each GET (and retries) with its URL: the query string is cut off."""
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-never-logged")
    put("photos/x.jpg", _jpeg(1))
    caplog.set_level(logging.DEBUG)
    assert open_store(f"s3://{BUCKET}/photos").read("x.jpg", 10**6) == _jpeg(1)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("urllib3")]
    assert any("/photos/x.jpg" in line for line in lines)
    assert not [line for line in lines if "Signature" in line or "session-token" in line]


class _Answers:
    """A stand-in S3 endpoint that answers every request with one status, counting them."""

    def __init__(self, status: int) -> None:
        import http.server
        import threading

        answers = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                agent = self.headers.get("User-Agent", "")
                answers.requests.append(("urllib3 " if "urllib3" in agent else "") + self.path)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_HEAD = do_GET  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.requests: list[str] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("status", "reason", "through_s3fs"),
    [
        (503, "cannot read object: ServerError", False),
        (403, "permission denied", True),
    ],
)
def test_a_read_the_signed_get_cannot_settle_fails_alone_or_goes_through_s3fs(
    monkeypatch: pytest.MonkeyPatch, status: int, reason: str, through_s3fs: bool
) -> None:
    """A server error is retried, then a failed row; a refusal is asked again through s3fs
    (which knows regions and refreshed credentials) and ends with its reason."""
    import fsspec

    answers = _Answers(status)
    for key, value in {
        "AWS_ENDPOINT_URL": answers.url,
        "AWS_ACCESS_KEY_ID": "catdog-test",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "1",
    }.items():
        monkeypatch.setenv(key, value)
    fsspec.filesystem("s3").clear_instance_cache()
    forget_remote_stores()
    try:
        (got,) = FsspecStore(f"s3://{BUCKET}/photos").read_many(["x.jpg"], 1000)
    finally:
        answers.close()
    assert str(got) == reason
    plain = [r for r in answers.requests if r.startswith("urllib3 ")]  # catdog's signed GETs
    assert len(plain) == (1 if through_s3fs else 4)  # 503: the first try and three retries
    assert (len(answers.requests) > len(plain)) == through_s3fs


def test_debug_logging_never_shows_the_session_token_or_signature(
    s3: S3Server, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With -vv every logger is at DEBUG, botocore's too: its request and signing logs carry
    the session token and signature headers, so they stay at INFO."""
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-never-logged")
    forget_remote_stores()
    put("photos/y.jpg", _jpeg(2))
    caplog.set_level(logging.DEBUG)
    store = open_store(f"s3://{BUCKET}/photos")
    assert "y.jpg" in [e.path for e in store.walk()]
    store.fs.info(f"{BUCKET}/photos/y.jpg")  # a plain s3fs/botocore request
    # werkzeug's records are the test server's access log, not catdog's.
    ours = [r for r in caplog.records if not r.name.startswith("werkzeug")]
    logged = "\n".join(r.getMessage() for r in ours)
    assert any(r.levelno == logging.DEBUG for r in ours), "nothing was logged at DEBUG"
    assert "session-token-never-logged" not in logged
    assert "Signature=" not in logged and "X-Amz-Security-Token" not in logged
