"""What happens after a failed attempt: the failure classes and the retry policy, next_step().

The worker raises one of the failures below (gateway_client and tasks do), asks next_step() what to do, and
applies the answer with one of Job's transitions. next_step() is a pure function of the failure, the
attempts spent and the configuration, so the policy is read — and tested — here alone.
"""
import random
from dataclasses import dataclass

from core import codes
from core.backoff import backoff


class ConversionError(Exception):
    """An attempt to convert a job failed; code is the job's error_code, message one line a person reads."""

    #: True if the gateway may be the trouble, so the worker asks /healthz and may count it toward the breaker.
    blames_gateway = True
    #: True if a retry waits out a back-off; False to queue it again at once.
    backs_off = True

    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


class TransientError(ConversionError):
    """A failure that another attempt may not meet: a 5xx, a timeout, a full disk."""


class FinalError(ConversionError):
    """A failure that another attempt would meet again: the gateway refused the file, or the PDF is gone."""


class StorageError(TransientError):
    """Our own disk failed while keeping the result; the gateway is not to blame."""

    blames_gateway = False

    def __init__(self, message):
        super().__init__(codes.IO_ERROR, message)


class LeaseLapsed(TransientError):
    """The worker converting the job stopped renewing its lease (killed, or its box died).

    Counted as an attempt, so a PDF that kills its worker every time is failed after MAX_ATTEMPTS rather
    than re-queued forever; queued again at once, since the worker died, not the gateway."""

    blames_gateway = False
    backs_off = False

    def __init__(self):
        super().__init__(codes.LEASE_EXPIRED, "the worker stopped answering; the job was queued again")


@dataclass(frozen=True)
class Fail:
    """Fail the job for good (dead-lettered when it ran out of attempts)."""

    dead_letter: bool = False


@dataclass(frozen=True)
class Retry:
    """Queue the job again, due after delay seconds; the attempt stays spent."""

    delay: float


@dataclass(frozen=True)
class Hold:
    """Give the job back to the queue without spending the attempt, held until the breaker closes."""


def next_step(error, attempts, config, *, breaker_open=False, uniform=random.uniform):
    """What to do with a job whose attempt number attempts failed with error.

    breaker_open: the breaker is open now (the worker counted this failure toward it). A retry waits
    RETRY_BASE_SECONDS × 2^(attempts − 1) plus up to RETRY_JITTER_SECONDS, so failing jobs spread out
    (core/backoff.py; uniform(low, high) draws the jitter)."""
    if isinstance(error, FinalError):
        return Fail()
    if breaker_open and error.blames_gateway:
        return Hold()
    if attempts >= config["MAX_ATTEMPTS"]:
        return Fail(dead_letter=True)
    if not error.backs_off:
        return Retry(delay=0.0)
    return Retry(delay=backoff(attempts, config["RETRY_BASE_SECONDS"], jitter=config["RETRY_JITTER_SECONDS"],
                               rand=lambda: uniform(0.0, 1.0)))
