"""How a job's transition is written, the one way every transition of Job is: an UPDATE built once (transition), run
with its parameters in one write transaction together with the job's history row and its outbox rows (apply), and
published once committed.

Built once, because building an UPDATE and its cache key costs more CPU than SQLite takes to run it; of the table's
columns, and run on a Core connection (write_connection), past the ORM session's bookkeeping.
"""
from datetime import timedelta
from typing import NamedTuple

from sqlalchemy import DateTime, String, Update, bindparam, select, update

from core import changes, outbox
from core.clock import utcnow
from core.coordination import Coordination
from core.db import write_connection
from core.jobs.history import EventKind, JobEvent

# Bound in every transition's UPDATE: the time of the change, taken under the write lock (apply).
NOW = bindparam("now", type_=DateTime)
# Claims count processing jobs; where the database does not serialize writers (SQLite does), this row lock does.
_SERIALIZE_CLAIMS = (select(Coordination.__table__.c.name).where(Coordination.__table__.c.name == "claims")
                     .with_for_update())


class Transition(NamedTuple):
    """One of Job's transitions, built once: its UPDATE (its values bound parameters) and what it writes beside it."""

    model: type  # Job, which says what the outbox sends of the changed job (to_dict)
    statement: Update
    event: EventKind | None  # the event it writes into the job's history
    ends_attempt: bool  # it settles an attempt, so its event has the attempt's duration
    outbox_event: str | None  # the event type (core/outbox.py) it writes into the outbox, for whoever wants it
    serialize: bool  # it counts or orders the queue (a claim, a move to the front): under the claims' lock


def transition(model, *where, job=None, event=None, ends_attempt=False, outbox_event=None, serialize=False,
               returning=(), **values):
    """Build a transition of model's table (Job's): an UPDATE of the job (the parameter job_id, or job: SQL choosing
    it) only if it still matches where, setting values and updated_at (the parameter now). It returns what apply
    needs (the id, the owner; for an event, JobEvent.READS; for an outbox event, whether the owner has any
    subscription) and returning."""
    jobs = model.__table__
    chosen = jobs.c.id == (bindparam("job_id", type_=String) if job is None else job)
    columns = [jobs.c.id, jobs.c.owner, *(jobs.c[name] for name in JobEvent.READS if event)]
    if outbox_event is not None:  # whether the owner has any subscription comes back with the change: no extra query
        columns.append(outbox.subscribed(jobs.c.owner).label("owner_subscribed"))
    statement = (update(jobs).where(chosen, *where).values(updated_at=NOW, **values)
                 .returning(*_distinct((*columns, *returning))))
    return Transition(model, statement, event, ends_attempt, outbox_event, serialize)


def apply(transition, **params):
    """Run a transition with its parameters in one write transaction: the changed job's row (what its UPDATE
    returned), or None if the job was not in a state the transition leaves.

    The parameter now is taken under the write lock, so commit order follows updated_at; a parameter that is a
    function is called with the connection and now (a lease's end: after). With the transition's event, the change
    goes into the job's history: one INSERT of what the UPDATE returned. With its outbox event, the event goes into
    the outbox in this same transaction, for each subscription of the owner that wants it (an owner without any costs
    an indexed EXISTS in the UPDATE's RETURNING, nothing more). Once committed, the owner's change is published."""
    with write_connection() as connection:
        if transition.serialize and connection.dialect.name != "sqlite":
            connection.execute(_SERIALIZE_CLAIMS)
        now = utcnow()
        row = connection.execute(transition.statement, {"now": now, **{
            key: (value(connection, now) if callable(value) else value) for key, value in params.items()}}).first()
        wrote_outbox = _record(connection, row, now, transition)
    if row is not None:
        changes.publish(row.owner)
    if wrote_outbox:
        outbox.wrote_events()
    return row


def after(seconds):
    """A transition's parameter: seconds after its now."""
    return lambda _connection, now: now + timedelta(seconds=seconds)


def _record(connection, row, now, transition):
    """What a change writes beside its UPDATE, on its transaction's connection: its event in the job's history, and
    its outbox rows if the owner has any subscription. How many outbox rows it wrote."""
    if row is None:
        return 0
    if transition.event:
        JobEvent.write(connection, JobEvent.values(transition.event, row, now, transition.ends_attempt))
    if transition.outbox_event is None or not row.owner_subscribed:
        return 0
    jobs = transition.model.__table__
    job = transition.model(**connection.execute(select(*jobs.c).where(jobs.c.id == row.id)).one()._mapping)  # to send
    return outbox.enqueue_for_job(connection, row.owner, transition.outbox_event, now, job.to_dict())


def _distinct(columns):
    """The columns without repeats (by identity: a column's == builds SQL), in order."""
    kept = []
    for column in columns:
        if not any(column is seen for seen in kept):
            kept.append(column)
    return kept
