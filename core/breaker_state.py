"""The gateway circuit breaker's state as every process reads it: open or closed, kept in the database.

The worker opens and closes it (worker/breaker.py says when); the dashboard's banner, /api/healthz and the
admin CLI read it here, and an admin resets it here.
"""
import time

from sqlalchemy import delete

from core.db import write_transaction
from core.coordination import Coordination

NAME = "breaker"
JOB_FAILURE = "breaker:job:"  # + job id: a Coordination row per job whose /process failed while /healthz was ok
CLOSED, OPEN = "closed", "open"

CACHE_SECONDS = 1.0
_seen = {"state": CLOSED, "failures": 0, "at": float("-inf")}  # this process's last look at the shared state


def _remember(value, failures):
    _seen.update(state=value, failures=failures, at=time.monotonic())
    return value


def state():
    """'open' or 'closed', as the database says now."""
    row = Coordination.state_and_count(NAME)
    if row is None:
        return _remember(CLOSED, 0)
    return _remember(OPEN if row.state == OPEN else CLOSED, row.count or 0)


def is_open(max_age=0.0):
    """True while the breaker holds jobs; with max_age, this process's last look may be that old."""
    if time.monotonic() - _seen["at"] < max_age:
        return _seen["state"] == OPEN
    return state() == OPEN


def _failing_jobs():
    return Coordination.query.filter(Coordination.name.like(JOB_FAILURE + "%")).count()


def gateway_state():
    """'down' while the breaker holds jobs, else 'ok' (the dashboard's banner, /api/healthz)."""
    return "down" if is_open() else "ok"


def reset():
    """Close the breaker and forget every failure (a success; by hand, from the admin CLI)."""
    with write_transaction() as session:
        session.execute(delete(Coordination).where(Coordination.name.like(JOB_FAILURE + "%")))
    Coordination.put(NAME, state=CLOSED, count=0, due_at=None)
    _remember(CLOSED, 0)
