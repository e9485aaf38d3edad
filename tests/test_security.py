"""Nothing let in: JSON-only messages, reads confined to the store roots, safe model loading,
TLS to Redis, and secrets that stay out of logs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from kombu import Connection

from catdog.broker import make_celery
from catdog.settings import SecretFileError, Settings
from helpers import make_image
from runs import label_cats_through, scan_held, wait_for_run
from services import RedisServer


class _Exploit:
    """A pickle that runs a shell command when it is loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _publish(url: str, body: object, task: str = "catdog.classify_batch", **kw: object) -> None:
    """Put a message on the inference queue by hand, as anyone with Redis access could."""
    headers = {"lang": "py", "task": task, "id": f"raw-{os.urandom(4).hex()}"}
    with Connection(url) as conn:
        conn.Producer().publish(body, exchange="", routing_key="inference", headers=headers, **kw)


@pytest.mark.services
@pytest.mark.slow
def test_pickled_and_malformed_messages_are_rejected_and_the_worker_keeps_working(
    fault_workers, fault_env, own_redis: RedisServer, tmp_path: Path
):
    """A pickle (that would run a command), broken JSON, an unknown task and bad arguments
    are each refused and dropped; the next real batch is labeled as usual."""
    worker = fault_workers()
    url = own_redis.url()
    marker = tmp_path / "pwned"
    _publish(url, _Exploit(marker), serializer="pickle")
    _publish(url, b"{not json", content_type="application/json", content_encoding="utf-8")
    _publish(url, [["touch", str(marker)], {}, {}], task="os.system", serializer="json")
    _publish(url, [[1, ["1; DROP TABLE images"]], {}, {}], serializer="json")
    _publish(url, [["only one argument"], {}, {}], serializer="json")

    count = label_cats_through(fault_env, tmp_path / "photos", 4)

    assert count.exactly_once and count.labeled == 4, count
    assert worker.proc.poll() is None
    assert not marker.exists()
    broker = own_redis.client()
    assert broker.llen("inference") == 0 and broker.hlen("unacked") == 0
    log = worker.log.read_text()
    assert "is not application/json" in log and "expected two arguments" in log


@pytest.mark.services
@pytest.mark.slow
def test_a_worker_configured_from_secret_files_never_logs_its_passwords(
    fault_workers, fault_env, postgres_url: str, tmp_path: Path
):
    """Broker and database URLs come from files (Docker secrets); the worker's whole log,
    banner included, holds neither password."""
    redis_pw, pg_pw = "redis-s3cret-pw", "pg-s3cret-pw"
    server = RedisServer(tmp_path / "redis-pw", password=redis_pw)
    server.start()
    try:
        secrets = tmp_path / "secrets"
        secrets.mkdir()
        (secrets / "broker").write_text(server.url() + "\n")
        # PostgreSQL here trusts local users, so the password is carried but not checked.
        (secrets / "db").write_text(postgres_url.replace("postgres@", f"postgres:{pg_pw}@"))
        env = {k: v for k, v in fault_env.items() if k not in ("CATDOG_BROKER_URL",)}
        env.pop("CATDOG_DATABASE_URL")
        env["CATDOG_BROKER_URL_FILE"] = str(secrets / "broker")
        env["CATDOG_DATABASE_URL_FILE"] = str(secrets / "db")
        worker = fault_workers(**env)
        root = tmp_path / "photos"
        make_image(root / "a.png", "dog")
        (root / "broken.jpg").write_bytes(b"nope")
        sent: list[tuple[int, list[int]]] = []
        summary = scan_held(fault_env, root, sent)
        app = make_celery(Settings(broker_url=server.url()))  # type: ignore[arg-type]
        app.send_task("catdog.classify_batch", args=list(sent[0]))
        app.close()
        count = wait_for_run(fault_env["CATDOG_DATABASE_URL"], summary.run_id, timeout=60)
        worker.stop()
    finally:
        server.kill()
    assert count.exactly_once and (count.labeled, count.failed) == (1, 1), count
    log = worker.log.read_text()
    assert "ready." in log and "redis://:**@" in log
    assert redis_pw not in log and pg_pw not in log


def test_a_batch_naming_images_outside_the_store_roots_reads_none_of_them(
    env, sqlite_url: str, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Whatever ids a message carries, the task refuses files outside CATDOG_STORE_ROOTS,
    by store or by ``..``, and labels the rest."""
    from catdog.db.engine import engine_for, session_factory
    from catdog.db.migrate import upgrade
    from catdog.db.queries import register_images
    from catdog.db.registry import current_version
    from catdog.stores import FileEntry
    from catdog.workers import tasks

    allowed, secret = tmp_path / "allowed", tmp_path / "private"
    make_image(allowed / "ok.png", "cat")
    make_image(secret / "diary.png", "dog")
    env(database_url=sqlite_url, model=str(tiny_model), store_roots=str(allowed))
    monkeypatch.setattr(tasks, "_context", None)
    monkeypatch.setattr(tasks, "_starts", None)
    settings = Settings(database_url=sqlite_url, model=tiny_model)  # type: ignore[arg-type]
    engine = engine_for(sqlite_url)
    upgrade(engine)
    with session_factory(engine).begin() as session:
        version = current_version(session, settings).id
        ok, _ = register_images(session, str(allowed), [FileEntry("ok.png", 1, 1)], version)
        out, _ = register_images(session, str(secret), [FileEntry("diary.png", 1, 1)], version)
        up, _ = register_images(
            session, str(allowed), [FileEntry("../private/diary.png", 1, 1)], version
        )
    try:
        result = tasks.classify_batch_task.apply(args=[None, ok + out + up]).get()
    finally:
        tasks._close_context()
    assert (result["done"], result["failed"]) == (1, 2)
    from sqlalchemy import text

    with engine.connect() as conn:
        errors = dict(conn.execute(text("SELECT image_id, error FROM predictions")).all())
    assert errors[ok[0]] is None
    assert "outside the configured store roots" in errors[out[0]]
    assert "outside the configured store roots" in errors[up[0]]


def test_a_model_with_code_in_it_is_refused_by_the_worker_loader(tmp_path: Path):
    """A ``.keras`` file with a Lambda layer would run its code; safe mode refuses to load it."""
    import keras

    from catdog.workers.model import load_model

    marker = tmp_path / "ran"
    touch = f"touch {marker}"
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda x: x + 0 * os.system(touch))(inputs)
    keras.Model(inputs, outputs).save(tmp_path / "evil.keras")
    marker.unlink(missing_ok=True)  # saving traced the lambda once

    with pytest.raises(ValueError, match="(?i)lambda|unsafe|safe_mode"):
        load_model(tmp_path / "evil.keras", 1, "evil", ["a", "b", "c", "d"], (4, 4))
    assert not marker.exists()


def test_urls_can_come_from_secret_files_and_a_bad_file_never_echoes_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """``*_URL_FILE`` wins over the plain variable; an unreadable file is a clear error that
    does not repeat the other settings (which would print their passwords)."""
    (tmp_path / "db").write_text("postgresql://u:from-file@db/catdog\n")
    monkeypatch.setenv("CATDOG_DATABASE_URL", "postgresql://u:from-env@db/catdog")
    monkeypatch.setenv("CATDOG_DATABASE_URL_FILE", str(tmp_path / "db"))
    assert Settings().database() == "postgresql://u:from-file@db/catdog"
    assert "from-file" not in repr(Settings())

    monkeypatch.setenv("CATDOG_DATABASE_URL_FILE", str(tmp_path / "missing"))
    with pytest.raises(SecretFileError) as err:
        Settings()
    assert "from-env" not in str(err.value) and "missing" in str(err.value)


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    folder.mkdir()

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem")  # fmt: skip
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


@pytest.mark.services
def test_batches_reach_redis_over_tls_with_a_private_ca(tmp_path: Path):
    """A ``rediss://`` broker with CATDOG_REDIS_CA_FILE: the producer's batch arrives over
    TLS; without the CA the server certificate is refused."""
    import redis

    ca, cert, key = _certificates(tmp_path / "tls")
    server = RedisServer(tmp_path / "redis-tls", password="tls-pw", tls=(ca, cert, key))
    server.start()
    try:
        url = server.url()
        assert url.startswith("rediss://")
        good = Settings(broker_url=url, redis_ca_file=ca)  # type: ignore[arg-type]
        app = make_celery(good)
        app.send_task("catdog.classify_batch", args=[None, [1]])
        app.close()
        client = redis.Redis.from_url(url, ssl_ca_certs=str(ca))
        assert client.llen("inference") == 1

        no_ca = redis.Redis.from_url(url, ssl_cert_reqs="required", socket_timeout=5)
        with pytest.raises(redis.ConnectionError, match="(?i)certificate"):
            no_ca.ping()
    finally:
        server.kill()
