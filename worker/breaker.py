"""The gateway circuit breaker, shared by every worker thread and process through the database (its state is
core/breaker_state.py, which the web reads too).

While it is open, jobs wait in `queued` (hold-queue mode) and no /process call is made; a probe of the
gateway's /healthz, backing off, decides when to close it.

Two ways open it. BREAKER_THRESHOLD consecutive failures while /healthz fails too (record_failure): the
gateway is down. Or a rate (record_job_failure): 5xx or timeouts from BREAKER_DISTINCT_JOBS distinct jobs
within BREAKER_WINDOW_SECONDS, with no conversion succeeding in between, while /healthz answers — a broken
/process behind a shallow health check. One bad file failing all its attempts is one job, so it never opens
the breaker for everyone. Opened by the rate, the first probe waits a whole window; the failing jobs' rows
outlive a close (only a success or a reset forgets them), so a /process still broken reopens it at the next
failure rather than after another BREAKER_DISTINCT_JOBS attempts are spent.
"""
import time
from datetime import timedelta

from flask import current_app
from sqlalchemy import delete, func, select

from core.backoff import backoff
from core.breaker_state import CACHE_SECONDS, gateway_state, is_open  # noqa: F401 (the worker reads them here too)
from core.breaker_state import CLOSED, JOB_FAILURE, NAME, OPEN, _failing_jobs, _remember, _seen, reset, state
from core.clock import utcnow
from core.db import write_transaction
from core.coordination import Coordination

FIRST_PROBE_SECONDS, MAX_PROBE_SECONDS = 5, 60


def probe_delay(failures, threshold):
    """Seconds until the next probe of the gateway after failures in a row: backing off from the failure that
    opened the breaker (the threshold-th)."""
    return backoff(failures - threshold + 1, FIRST_PROBE_SECONDS, MAX_PROBE_SECONDS)


def record_failure():
    """Count one more consecutive gateway failure; open the breaker at the threshold. True if open."""
    threshold = current_app.config["BREAKER_THRESHOLD"]
    Coordination.ensure(NAME, state=CLOSED, count=0)
    with write_transaction() as session:
        row = session.execute(select(Coordination).where(Coordination.name == NAME).with_for_update()).scalar_one()
        row.count = (row.count or 0) + 1
        now = utcnow()
        if row.count >= threshold:
            if row.state != OPEN:
                current_app.logger.warning("gateway breaker opens after %d failures", row.count)
            row.state = OPEN
            row.due_at = now + timedelta(seconds=probe_delay(row.count, threshold))
        row.updated_at = now
        return _remember(row.state, row.count) == OPEN


def record_job_failure(job_id):
    """Count a 5xx or timeout of this job while /healthz answers; open the breaker once BREAKER_DISTINCT_JOBS
    distinct jobs failed within BREAKER_WINDOW_SECONDS (0 jobs: never). True if open."""
    config = current_app.config
    distinct, window = config["BREAKER_DISTINCT_JOBS"], config["BREAKER_WINDOW_SECONDS"]
    if distinct <= 0:
        return False
    Coordination.ensure(NAME, state=CLOSED, count=0)
    with write_transaction() as session:
        row = session.execute(select(Coordination).where(Coordination.name == NAME).with_for_update()).scalar_one()
        now = utcnow()
        failing = Coordination.name.like(JOB_FAILURE + "%")
        session.execute(delete(Coordination).where(failing, Coordination.updated_at < now - timedelta(seconds=window)))
        mine = session.get(Coordination, JOB_FAILURE + job_id)
        if mine is None:
            session.add(Coordination(name=JOB_FAILURE + job_id, updated_at=now))
        else:
            mine.updated_at = now
        session.flush()
        jobs = session.scalar(select(func.count()).select_from(Coordination).where(failing))
        if jobs >= distinct:
            if row.state != OPEN:
                current_app.logger.warning("gateway breaker opens: %d distinct jobs failed within %g s while "
                                           "/healthz answered", jobs, window)
                row.due_at = now + timedelta(seconds=window)
            row.state = OPEN
        row.updated_at = now
        return _remember(row.state, max(row.count or 0, jobs)) == OPEN


def record_success(max_age=0.0):
    """A converted file: the gateway works, so forget past failures and close.

    With max_age, this process's last look, if that recent and clean (closed, no failures), settles it
    without a read; a failure another process counted meanwhile is forgotten at a later success."""
    if time.monotonic() - _seen["at"] < max_age and _seen["state"] == CLOSED and not _seen["failures"]:
        return
    if state() == OPEN or _seen["failures"] or _failing_jobs():
        reset()


def probe_due():
    """True once the open breaker's next probe of the gateway is due."""
    row = Coordination.get(NAME)
    return row is not None and row.state == OPEN and (row.due_at is None or row.due_at <= utcnow())


def close():
    """The gateway answers its probe again: close, forgetting its consecutive failures (not the failing jobs of
    the window: only a conversion that works shows /process works)."""
    current_app.logger.warning("gateway breaker closes: the gateway answers again")
    Coordination.put(NAME, state=CLOSED, count=0, due_at=None)
    _remember(CLOSED, _failing_jobs())  # not clean while failing jobs are remembered: a success forgets them


