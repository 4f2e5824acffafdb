"""Each job's history (job_events): one row per transition, written by the transition itself, in its transaction."""
from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, String, Text, insert, select
from sqlalchemy.orm import Mapped, mapped_column

from core.clock import isoformat
from core.db import db


class EventKind(StrEnum):
    """What a JobEvent records: the transition that wrote it."""

    CREATED = "created"                # (upload) → queued
    ATTEMPT = "attempt"                # queued → processing: an attempt starts
    COMPLETE = "complete"              # processing → complete
    FAILED = "failed"                  # processing → failed, for good
    RETRY = "retry_scheduled"          # processing → queued after a transient error, due at due_at
    HELD = "held"                      # held by the open breaker (mid-attempt: the attempt given back)
    RELEASED = "released"              # processing → queued, the attempt given back (the worker stopped)
    REQUEUED = "requeued"              # failed → queued: a person asked
    RUN_NEXT = "run_next"              # queued, moved to the front of the queue by an admin (Job.run_next)
    RESULT_EXPIRED = "result_expired"  # retention removed the XML
    UPLOAD_EXPIRED = "upload_expired"  # retention removed the PDF


class JobEvent(db.Model):
    """One step of a job's history, written by the transition that made it, in its transaction (jobs/engine.py).

    Rows go with their job (ON DELETE CASCADE), whoever deletes it, and follow its id should it ever change."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job", "job_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id", ondelete="CASCADE", onupdate="CASCADE"))
    at: Mapped[datetime] = mapped_column(DateTime)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # the job's status after it
    attempt: Mapped[int] = mapped_column(Integer)  # the attempt it concerns (outside one: the attempts spent)
    error_code: Mapped[str | None] = mapped_column(String(32))
    message: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int | None] = mapped_column(Integer)  # an ended attempt's, from its claim
    due_at: Mapped[datetime | None] = mapped_column(DateTime)  # a scheduled retry's

    # The job's columns a transition's UPDATE returns for its event (no read of its own).
    READS = ("status", "attempts", "error_code", "error", "started_at", "next_attempt_at")

    @classmethod
    def values(cls, kind, row, now, ends_attempt=False):
        """The event's columns, from the changed job's row (its id and READS) at time now.

        ends_attempt: the change settled an attempt, whose duration runs from its claim (started_at) to now;
        one given back (held, released) no longer counts in the job's attempts, but the event still names it."""
        duration = None
        if ends_attempt and row.started_at is not None:
            duration = round((now - row.started_at).total_seconds() * 1000)
        given_back = ends_attempt and kind in (EventKind.HELD, EventKind.RELEASED)
        says_why = kind in (EventKind.FAILED, EventKind.RETRY, EventKind.HELD, EventKind.RELEASED)
        return {"job_id": row.id, "at": now, "kind": kind, "status": row.status,
                "attempt": row.attempts + (1 if given_back else 0),
                "error_code": row.error_code if says_why else None, "message": row.error if says_why else None,
                "duration_ms": duration, "due_at": row.next_attempt_at if kind == EventKind.RETRY else None}

    @classmethod
    def write(cls, connection, values):
        """Write an event (its values) on the connection of the transition that made it, in its transaction."""
        connection.execute(_INSERT, values)

    @classmethod
    def of(cls, job_id):
        """The job's history, oldest first."""
        return db.session.execute(select(cls).where(cls.job_id == job_id).order_by(cls.id)).scalars().all()

    def to_dict(self):
        """The event as GET /api/jobs/<id>/events shows it."""
        return {"at": isoformat(self.at), "kind": self.kind, "status": self.status, "attempt": self.attempt,
                "error_code": self.error_code, "message": self.message, "duration_ms": self.duration_ms,
                "due_at": isoformat(self.due_at)}


_INSERT = insert(JobEvent.__table__)  # built once: every transition writes one
