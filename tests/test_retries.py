"""Retry delays of a batch task: doubling, capped, and jittered so workers do not retry together."""

from __future__ import annotations

from collections.abc import Callable

from catdog.workers.tasks import DB_RETRY_BASE_S, DB_RETRY_CAP_S, _backoff

#: Delays drawn per case: enough that equal draws would mean no jitter at all.
DRAWS = 200


def test_retry_delays_differ_between_calls_and_stay_between_half_the_base_and_the_ceiling(
    env: Callable[..., None],
) -> None:
    """Workers retrying after the same failure wait different times, within the doubling bound."""
    env(visibility_timeout="600")
    for retries in range(8):
        ceiling = min(DB_RETRY_BASE_S * 2**retries, DB_RETRY_CAP_S)
        delays = [_backoff(DB_RETRY_BASE_S, retries) for _ in range(DRAWS)]
        assert all(DB_RETRY_BASE_S / 2 <= d <= ceiling for d in delays), (retries, delays)
        assert len(set(delays)) > DRAWS // 2, retries
    # The spread covers most of the range, not a sliver of it.
    late = [_backoff(DB_RETRY_BASE_S, 10) for _ in range(DRAWS)]
    assert max(late) - min(late) > DB_RETRY_CAP_S / 2


def test_retry_delays_stay_under_half_the_visibility_timeout(env: Callable[..., None]) -> None:
    """A retry held by a worker never outlasts the broker's visibility timeout."""
    env(visibility_timeout="30")
    delays = [_backoff(DB_RETRY_BASE_S, retries) for retries in range(20) for _ in range(20)]
    assert max(delays) <= 15 and min(delays) >= DB_RETRY_BASE_S / 2
    env(visibility_timeout="1")  # the cap never falls below one second
    assert all(0.5 <= _backoff(DB_RETRY_BASE_S, 5) <= 1 for _ in range(DRAWS))
