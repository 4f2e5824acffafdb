"""The one back-off rule (core/backoff.py), and the three waits made of it: a job's retry, a webhook delivery's
retry, the breaker's next probe. Each is checked against the formula it had of its own before."""
import pytest

from core.backoff import backoff
from core.outbox import next_delay
from worker import breaker
from worker.retry import Retry, TransientError, next_step

DRAWS = (0.0, 0.3, 0.999)


def test_the_wait_doubles_from_its_base_up_to_its_cap():
    assert [backoff(n, 5) for n in range(1, 6)] == [5, 10, 20, 40, 80]
    assert [backoff(n, 5, 30) for n in range(1, 6)] == [5, 10, 20, 30, 30]
    assert backoff(0, 5) == 5  # no failure yet counts as the first


def test_jitter_adds_seconds_and_spread_a_share_of_the_wait():
    assert backoff(3, 5, jitter=2, rand=lambda: 0.5) == 20 + 1
    assert backoff(3, 5, spread=0.5, rand=lambda: 1.0) == 20 + 10
    assert backoff(3, 5, jitter=2, spread=0.5, rand=lambda: 1.0) == 20 + 2 + 10
    assert backoff(3, 5, rand=lambda: pytest.fail("no jitter asked, no draw")) == 20


@pytest.mark.parametrize("attempts", range(1, 8))
@pytest.mark.parametrize("draw", DRAWS)
def test_a_jobs_retry_waits_as_it_did(attempts, draw):
    config = {"MAX_ATTEMPTS": 10, "RETRY_BASE_SECONDS": 5, "RETRY_JITTER_SECONDS": 2}
    step = next_step(TransientError("GW_5XX", "502"), attempts, config, uniform=lambda low, high: low + (high - low) * draw)
    assert step == Retry(delay=5 * 2 ** (attempts - 1) + 2 * draw)


@pytest.mark.parametrize("attempts", range(0, 14))
@pytest.mark.parametrize("draw", DRAWS)
def test_a_webhook_retry_waits_as_it_did(attempts, draw):
    config = {"WEBHOOK_RETRY_BASE_SECONDS": 10, "WEBHOOK_RETRY_MAX_SECONDS": 3600}
    delay = min(10 * 2 ** max(attempts - 1, 0), 3600)
    assert next_delay(attempts, config, rand=lambda: draw) == delay + draw * min(delay, 3600) * 0.5


@pytest.mark.parametrize("threshold", (1, 3, 5))
def test_the_breakers_probe_waits_as_it_did(threshold):
    for failures in range(threshold, threshold + 8):
        expected = min(breaker.MAX_PROBE_SECONDS, breaker.FIRST_PROBE_SECONDS * 2 ** max(0, failures - threshold))
        assert breaker.probe_delay(failures, threshold) == expected
