"""Leases: a batch in progress stays with its worker however long it takes."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from catdog.broker import UNACKED_INDEX_KEY
from catdog.workers.lease import Lease
from helpers import make_image
from runs import scan_with_broker, wait_for_run
from services import RedisServer

pytestmark = pytest.mark.services


def test_a_lease_keeps_refreshing_its_delivery_until_the_block_ends(own_redis: RedisServer):
    """The delivery's timestamp moves forward while held and stops moving after."""
    client = own_redis.client()
    client.zadd(UNACKED_INDEX_KEY, {"tag-1": 1000.0})
    with Lease(client, "tag-1", every=0.05):
        time.sleep(0.3)
        held = client.zscore(UNACKED_INDEX_KEY, "tag-1")
    assert held is not None and held > time.time() - 5
    time.sleep(0.2)
    assert client.zscore(UNACKED_INDEX_KEY, "tag-1") == pytest.approx(held, abs=0.2)


def test_a_lease_never_brings_back_a_delivery_that_was_acknowledged(own_redis: RedisServer):
    """Renewing a delivery that is no longer pending does not re-create it."""
    client = own_redis.client()
    with Lease(client, "gone", every=0.05):
        time.sleep(0.2)
    assert client.zscore(UNACKED_INDEX_KEY, "gone") is None


@pytest.mark.slow
def test_a_batch_longer_than_the_visibility_timeout_runs_once(
    fault_workers, fault_env, tmp_path: Path
):
    """One batch of 6+ seconds, a 2-second visibility timeout and an idle second worker
    sweeping for abandoned batches: the lease keeps the batch with its worker."""
    root = tmp_path / "photos"
    for i in range(4):
        make_image(root / f"{i}.png", "cat", seed=i)
    slow = {"CATDOG_BATCH_DELAY_S": "3", "CATDOG_VISIBILITY_TIMEOUT": "2"}
    first = fault_workers(wait=False, **slow)
    second = fault_workers(**slow)
    first.wait_ready()
    summary = scan_with_broker(fault_env, root)
    count = wait_for_run(fault_env["CATDOG_DATABASE_URL"], summary.run_id, timeout=60)
    assert count.exactly_once, count
    received = re.compile(r"classify_batch\[([0-9a-f-]+)\] received")
    ids = received.findall(first.log.read_text()) + received.findall(second.log.read_text())
    assert len(ids) == 1
