"""The retry policy alone: next_step() of a failure, the attempts spent and the configuration, without a database."""
import pytest

from core import codes
from worker.retry import (Fail, FinalError, Hold, LeaseLapsed, Retry, StorageError, TransientError, next_step)

CONFIG = {"MAX_ATTEMPTS": 3, "RETRY_BASE_SECONDS": 5, "RETRY_JITTER_SECONDS": 2}


def no_jitter(low, high):
    return low


def full_jitter(low, high):
    return high


def test_a_final_failure_fails_at_once_even_with_attempts_left_and_the_breaker_open():
    error = FinalError(codes.GW_4XX, "not an invoice")
    assert next_step(error, 1, CONFIG) == Fail(dead_letter=False)
    assert next_step(error, 1, CONFIG, breaker_open=True) == Fail(dead_letter=False)


@pytest.mark.parametrize("attempts, base_delay", [(1, 5), (2, 10)])
def test_a_transient_failure_retries_after_base_times_two_to_the_attempt_plus_jitter(attempts, base_delay):
    error = TransientError(codes.GW_5XX, "the gateway answered 502")
    assert next_step(error, attempts, CONFIG, uniform=no_jitter) == Retry(delay=base_delay)
    assert next_step(error, attempts, CONFIG, uniform=full_jitter) == Retry(delay=base_delay + 2)
    assert base_delay <= next_step(error, attempts, CONFIG).delay <= base_delay + 2


def test_the_last_attempt_fails_and_dead_letters():
    error = TransientError(codes.GW_TIMEOUT, "no answer in 180 s")
    assert next_step(error, 3, CONFIG) == Fail(dead_letter=True)
    assert next_step(error, 4, CONFIG) == Fail(dead_letter=True)


def test_an_open_breaker_holds_a_gateway_failure_whatever_the_attempts():
    error = TransientError(codes.GW_5XX, "the gateway cannot be reached")
    assert next_step(error, 1, CONFIG, breaker_open=True) == Hold()
    assert next_step(error, 3, CONFIG, breaker_open=True) == Hold()  # held, not spent: it is not the file's fault


def test_our_own_storage_failing_is_never_held_for_the_breaker():
    error = StorageError("storage error: No space left on device")
    assert error.code == codes.IO_ERROR and not error.blames_gateway
    assert next_step(error, 1, CONFIG, breaker_open=True, uniform=no_jitter) == Retry(delay=5)


def test_a_lapsed_lease_is_an_attempt_queued_again_at_once_until_the_attempts_run_out():
    error = LeaseLapsed()
    assert error.code == codes.LEASE_EXPIRED
    assert next_step(error, 1, CONFIG) == Retry(delay=0.0)
    assert next_step(error, 2, CONFIG, breaker_open=True) == Retry(delay=0.0)
    # A PDF that kills its worker every time is failed for good, not re-queued forever.
    assert next_step(error, 3, CONFIG) == Fail(dead_letter=True)


def test_the_policy_follows_its_configuration():
    config = {**CONFIG, "MAX_ATTEMPTS": 1, "RETRY_BASE_SECONDS": 1}
    assert next_step(TransientError(codes.GW_5XX, "x"), 1, config) == Fail(dead_letter=True)
    config = {**CONFIG, "MAX_ATTEMPTS": 5, "RETRY_BASE_SECONDS": 1}
    assert next_step(TransientError(codes.GW_5XX, "x"), 4, config, uniform=no_jitter) == Retry(delay=8)
