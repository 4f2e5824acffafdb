"""Small shared state of the worker processes (the coordination table): leases, the breaker, heartbeats."""
from datetime import datetime, timedelta

from sqlalchemy import DateTime, Integer, String, bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from core.clock import utcnow
from core.db import db, read_first, write_transaction


class Coordination(db.Model):
    """Small shared state for all worker processes, one named row each.

    Two kinds of time, each its own column: `lease_expires_at` ends a lease that `holder` has (the maintenance
    leader's, a worker's heartbeat); `due_at` is when something is next due (the breaker's probe, retention)."""

    __tablename__ = "coordination"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(128))
    state: Mapped[str | None] = mapped_column(String(32))
    count: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    due_at: Mapped[datetime | None] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    @classmethod
    def get(cls, name):
        return db.session.get(cls, name)

    @classmethod
    def state_and_count(cls, name):
        """(state, count) of the named row, or None: the breaker's look before each claim, read on a Core
        connection with a statement built once (past the ORM session, which the claim does not use)."""
        return read_first(_STATE_AND_COUNT, {"name": name})

    @classmethod
    def ensure(cls, name, **defaults):
        """Create the row if missing (racing creators are fine)."""
        if db.session.get(cls, name) is None:
            try:
                with write_transaction() as session:
                    session.add(cls(name=name, updated_at=utcnow(), **defaults))
            except IntegrityError:
                pass

    @classmethod
    def take_lead(cls, name, holder, seconds):
        """Take the named lease for seconds if it is free, lapsed or already ours; True if it is ours."""
        cls.ensure(name)
        now = utcnow()
        with write_transaction() as session:
            stmt = (update(cls).where(cls.name == name,
                                      cls.holder.is_(None) | (cls.holder == holder) | (cls.lease_expires_at < now))
                    .values(holder=holder, lease_expires_at=now + timedelta(seconds=seconds), updated_at=now))
            return session.execute(stmt).rowcount == 1

    @classmethod
    def give_up(cls, name, holder):
        """Give up the named lease if it is ours."""
        with write_transaction() as session:
            session.execute(update(cls).where(cls.name == name, cls.holder == holder)
                            .values(holder=None, lease_expires_at=None, updated_at=utcnow()))

    @classmethod
    def put(cls, name, **values):
        """Set values on the named row, creating it if needed."""
        cls.ensure(name)
        with write_transaction() as session:
            session.execute(update(cls).where(cls.name == name).values(updated_at=utcnow(), **values))


_STATE_AND_COUNT = select(Coordination.__table__.c.state, Coordination.__table__.c.count).where(
    Coordination.__table__.c.name == bindparam("name"))


def worker_heartbeat():
    """(seconds since the newest worker heartbeat or None if never, number of workers whose beat is current)."""
    now = utcnow()
    newest, alive = db.session.execute(
        select(func.max(Coordination.updated_at),
               func.count().filter(Coordination.lease_expires_at > now))
        .where(Coordination.name.like("worker:%"))).one()
    return (None if newest is None else max(0.0, (now - newest).total_seconds())), alive
