"""The gateway circuit breaker, shared by every worker thread and process through the database.

While it is open, jobs wait in `queued` (hold-queue mode) and no /process call is made; a probe of the
gateway's /healthz, backing off, decides when to close it.
"""
import time
from datetime import timedelta

from flask import current_app
from sqlalchemy import select

from .db import write_transaction
from .clock import utcnow
from .models import Coordination

NAME = "breaker"
CLOSED, OPEN = "closed", "open"
FIRST_PROBE_SECONDS, MAX_PROBE_SECONDS = 5, 60


CACHE_SECONDS = 1.0
_seen = {"state": CLOSED, "failures": 0, "at": float("-inf")}  # this process's last look at the shared state


def _remember(value, failures):
    _seen.update(state=value, failures=failures, at=time.monotonic())
    return value


def state():
    """'open' or 'closed', as the database says now."""
    row = Coordination.get(NAME)
    if row is None:
        return _remember(CLOSED, 0)
    return _remember(OPEN if row.state == OPEN else CLOSED, row.count or 0)


def is_open(max_age=0.0):
    """True while the breaker holds jobs; with max_age, this process's last look may be that old."""
    if time.monotonic() - _seen["at"] < max_age:
        return _seen["state"] == OPEN
    return state() == OPEN


def _probe_delay(failures, threshold):
    return min(MAX_PROBE_SECONDS, FIRST_PROBE_SECONDS * 2 ** max(0, failures - threshold))


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
            row.due_at = now + timedelta(seconds=_probe_delay(row.count, threshold))
        row.updated_at = now
        return _remember(row.state, row.count) == OPEN


def record_success(max_age=0.0):
    """A converted file: the gateway works, so forget past failures and close.

    With max_age, this process's last look, if that recent and clean (closed, no failures), settles it
    without a read; a failure another process counted meanwhile is forgotten at a later success."""
    if time.monotonic() - _seen["at"] < max_age and _seen["state"] == CLOSED and not _seen["failures"]:
        return
    if state() == OPEN or _seen["failures"]:
        reset()


def gateway_state():
    """'down' while the breaker holds jobs, else 'ok' (the dashboard's banner, /api/healthz)."""
    return "down" if is_open() else "ok"


def probe_due():
    """True once the open breaker's next probe of the gateway is due."""
    row = Coordination.get(NAME)
    return row is not None and row.state == OPEN and (row.due_at is None or row.due_at <= utcnow())


def close():
    """The gateway answers again: close, forgetting past failures."""
    current_app.logger.warning("gateway breaker closes: the gateway answers again")
    reset()


def reset():
    """Close the breaker (also by hand, from the admin CLI)."""
    Coordination.put(NAME, state=CLOSED, count=0, due_at=None)
    _remember(CLOSED, 0)
