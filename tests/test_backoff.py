"""resumable.backoff: the one exponential backoff of Retry, persisted retries and the worker."""

from __future__ import annotations

import pytest

from resumable.backoff import backoff_delay
from resumable.record import RetrySpec
from resumable.workflow import Retry


def test_the_formula_is_initial_times_factor_to_the_attempt_before_capped() -> None:
    assert [backoff_delay(n, 0.5, 3.0, 10.0) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10, 10]
    assert backoff_delay(0, 0.5, 3.0, 10.0) == 0.5  # below the first attempt: the first
    assert backoff_delay(3, 0.0, 2.0, 10.0) == 0.0
    assert backoff_delay(4, 1.0, 1.0, 10.0) == 1.0


@pytest.mark.parametrize("attempt", [1_100, 10_000, 10**9])
def test_an_attempt_too_large_for_a_float_power_is_the_cap(attempt: int) -> None:
    assert backoff_delay(attempt, 1.0, 2.0, 60.0) == 60.0
    assert Retry(attempts=attempt, initial=1.0, factor=2.0).delay(attempt) == 60.0


def test_retry_and_its_persisted_spec_wait_alike() -> None:
    retry = Retry(attempts=9, initial=0.25, factor=2.5, max_interval=40.0)
    spec = RetrySpec(attempts=9, initial=0.25, factor=2.5, max_interval=40.0)
    expected = [backoff_delay(n, 0.25, 2.5, 40.0) for n in range(1, 10)]
    assert [retry.delay(n) for n in range(1, 10)] == expected
    assert [spec.delay(n) for n in range(1, 10)] == expected


def test_the_worker_waits_by_the_same_formula() -> None:
    from resumable.brokers import LocalBroker
    from resumable.demo import make_handlers
    from resumable.worker import Worker

    worker = Worker(make_handlers(), broker=LocalBroker(), backoff=(0.25, 2.5, 40.0))
    assert [worker.delay(n) for n in range(0, 12)] == [
        backoff_delay(n, 0.25, 2.5, 40.0) for n in range(0, 12)
    ]
