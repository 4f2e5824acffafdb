"""The jobs table and every state change a job can go through, each a conditional UPDATE."""
import secrets
from datetime import datetime, timedelta, timezone

from sqlalchemy.exc import IntegrityError
from sqlalchemy import BigInteger, Boolean, DateTime, Index, Integer, String, Text, UniqueConstraint, case, delete, func, select, update
from sqlalchemy.orm import Mapped, mapped_column

from .db import db, write_transaction

QUEUED, PROCESSING, COMPLETE, FAILED = "queued", "processing", "complete", "failed"
STATUSES = (QUEUED, PROCESSING, COMPLETE, FAILED)
ACTIVE = (QUEUED, PROCESSING)

_listeners = []


def utcnow():
    """Naive UTC now, the form every timestamp is stored in."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def isoformat(value):
    """ISO-8601 UTC with a Z, or None."""
    return None if value is None else value.isoformat(timespec="microseconds") + "Z"


def parse_iso(text):
    """Parse an ISO-8601 timestamp into naive UTC; raise ValueError if it is not one."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace(" ", "+"))
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def on_change(listener):
    """Register listener(job_ids) to be called after a transition commits (event fan-out)."""
    _listeners.append(listener)
    return listener


def new_id():
    """A random URL-safe job id (96 bits) that never begins with "-", which a shell or CLI would read as an option."""
    while (job_id := secrets.token_urlsafe(12)).startswith("-"):
        pass
    return job_id


class Job(db.Model):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner", "sha256", "mapping", "bytes", name="uq_jobs_owner_file"),
        Index("ix_jobs_owner_updated", "owner", "updated_at"),
        Index("ix_jobs_owner_created", "owner", "created_at", "id"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        Index("ix_jobs_owner_status", "owner", "status", "started_at", "completed_at"),  # dashboard metrics
        Index("ix_jobs_updated", "updated_at"),  # the change feed (webapp/events.py)
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(1024))
    mapping: Mapped[str] = mapped_column(String(128))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    correlation_id: Mapped[str] = mapped_column(String(64), default=lambda: secrets.token_hex(8))
    upload_path: Mapped[str | None] = mapped_column(String(512))
    result_path: Mapped[str | None] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime)
    leased_by: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    dead_letter: Mapped[bool] = mapped_column(Boolean, default=False)
    result_expired: Mapped[bool] = mapped_column(Boolean, default=False)

    @property
    def is_active(self):
        return self.status in ACTIVE

    def to_dict(self):
        """The job as the public API shows it."""
        return {
            "id": self.id,
            "filename": self.filename,
            "status": self.status,
            "mapping": self.mapping,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "created_at": isoformat(self.created_at),
            "updated_at": isoformat(self.updated_at),
            "started_at": isoformat(self.started_at),
            "completed_at": isoformat(self.completed_at),
            "attempts": self.attempts,
            "error_code": self.error_code,
            "error": self.error,
            "progress": self.progress,
            "download_url": f"/api/jobs/{self.id}/download" if self.status == COMPLETE and not self.result_expired else None,
            "correlation_id": self.correlation_id,
            "dead_letter": self.dead_letter,
            "result_expired": self.result_expired,
        }

    # -- reads ---------------------------------------------------------------------------------

    @classmethod
    def owned(cls, owner, job_id):
        """The owner's job with this id, or None (another owner's job is as good as absent)."""
        return db.session.execute(select(cls).where(cls.id == job_id, cls.owner == owner)).scalar_one_or_none()

    @classmethod
    def active_count(cls, owner):
        return db.session.scalar(select(func.count()).select_from(cls).where(cls.owner == owner, cls.status.in_(ACTIVE)))

    # -- transitions ---------------------------------------------------------------------------

    @classmethod
    def _transition(cls, job_id, *where, serialize=False, returning=(), **values):
        """Apply values to the job only if it still matches where; True if it did.

        job_id may be a subquery choosing the job; with returning (columns), the changed job's values
        come back as a row (None if nothing changed)."""
        with write_transaction() as session:
            if serialize and session.get_bind().dialect.name != "sqlite":
                # Claims count processing jobs; serialize them where the database does not (SQLite does).
                session.execute(select(Coordination.name).where(Coordination.name == "claims").with_for_update())
            now = utcnow()  # taken under the write lock, so commit order follows updated_at
            values = {key: (value(now) if callable(value) else value) for key, value in values.items()}
            values["updated_at"] = now
            # A Core UPDATE of the table: callers re-read what they need, and the ORM's bookkeeping for an
            # ORM-enabled UPDATE (syncing loaded objects) costs more than the statement itself.
            stmt = update(cls.__table__).where(cls.id == job_id, *where).values(**values)
            row = session.execute(stmt.returning(cls.id, *returning)).first()
        if row is not None:
            for listener in _listeners:
                listener([row.id])
        return row if returning else row is not None

    @classmethod
    def create(cls, **fields):
        """Insert a queued job; raise IntegrityError if this owner already has the same file and mapping."""
        job = cls(**fields)
        with write_transaction() as session:
            now = utcnow()
            job.created_at = job.updated_at = now
            session.add(job)
        for listener in _listeners:
            listener([job.id])
        return job

    @classmethod
    def claim(cls, job_id, worker, lease_seconds, capacity):
        """Take a queued, due job for this worker while fewer than capacity are processing: one attempt spent.

        Returns what the worker needs of the claimed job (see CLAIMED), or None if it was not claimable."""
        processing = select(func.count()).select_from(cls).where(cls.status == PROCESSING).scalar_subquery()
        return cls._transition(
            job_id,
            cls.status == QUEUED,
            processing < capacity,
            cls.is_due(utcnow()),
            serialize=True,
            returning=CLAIMED,
            status=PROCESSING,
            leased_by=worker,
            lease_expires_at=lambda now: now + timedelta(seconds=lease_seconds),
            started_at=lambda now: now,
            last_attempt_at=lambda now: now,
            next_attempt_at=None,
            attempts=cls.attempts + 1,
            progress=10,
        )

    @classmethod
    def claim_next(cls, worker, lease_seconds, capacity):
        """Claim the oldest queued, due job, if any and if capacity allows (as claim); one statement."""
        oldest = select(Job.id).where(cls.status == QUEUED, cls.is_due(utcnow())).order_by(cls.created_at).limit(1)
        return cls.claim(oldest.scalar_subquery(), worker, lease_seconds, capacity)

    @classmethod
    def is_due(cls, now):
        """SQL: the job's back-off (if any) has passed."""
        return cls.next_attempt_at.is_(None) | (cls.next_attempt_at <= now)

    @classmethod
    def heartbeat(cls, job_id, worker, lease_seconds, progress=None):
        """Extend this worker's lease (and move progress); False if the job is no longer its own."""
        values = {"lease_expires_at": lambda now: now + timedelta(seconds=lease_seconds)}
        if progress is not None:  # only ever forward: "sent", written beside the call, may land after "received"
            values["progress"] = case((cls.progress < progress, progress), else_=cls.progress)
        return cls._transition(job_id, cls.status == PROCESSING, cls.leased_by == worker, **values)

    @classmethod
    def complete(cls, job_id, worker, result_path):
        """processing → complete with the stored result."""
        return cls._transition(
            job_id, cls.status == PROCESSING, cls.leased_by == worker,
            status=COMPLETE, result_path=result_path, progress=100, completed_at=lambda now: now,
            leased_by=None, lease_expires_at=None, error_code=None, error=None,
        )

    @classmethod
    def fail(cls, job_id, worker, code, message, dead_letter=False):
        """processing → failed, for good (until a person retries it)."""
        return cls._transition(
            job_id, cls.status == PROCESSING, cls.leased_by == worker,
            status=FAILED, error_code=code, error=message[:1000], dead_letter=dead_letter,
            completed_at=lambda now: now, leased_by=None, lease_expires_at=None,
        )

    @classmethod
    def retry_later(cls, job_id, worker, code, message, delay_seconds):
        """processing → queued after a transient failure; the attempt stays spent."""
        return cls._transition(
            job_id, cls.status == PROCESSING, cls.leased_by == worker,
            status=QUEUED, error_code=code, error=message[:1000], progress=0,
            next_attempt_at=lambda now: now + timedelta(seconds=delay_seconds),
            leased_by=None, lease_expires_at=None,
        )

    @classmethod
    def release(cls, job_id, worker, code=None, message=None, returning=()):
        """processing → queued without spending the attempt (shutdown, or the circuit is open)."""
        return cls._transition(
            job_id, cls.status == PROCESSING, cls.leased_by == worker, returning=returning,
            status=QUEUED, attempts=cls.attempts - 1, progress=0, error_code=code, error=message,
            leased_by=None, lease_expires_at=None,
        )

    @classmethod
    def release_held(cls, worker):
        """Release whichever job this worker holds (as release); its id and correlation id, or None."""
        held = select(Job.id).where(cls.status == PROCESSING, cls.leased_by == worker).limit(1).scalar_subquery()
        return cls.release(held, worker, returning=(cls.correlation_id,))

    @classmethod
    def hold(cls, job_id, message):
        """Mark a queued job as held by the open breaker (once; it stays queued, nothing is spent)."""
        return cls._transition(job_id, cls.status == QUEUED, cls.error_code.is_distinct_from("CIRCUIT_OPEN"),
                               error_code="CIRCUIT_OPEN", error=message)

    @classmethod
    def remove(cls, job_id):
        """Delete the job row (its files are the caller's to remove)."""
        with write_transaction() as session:
            session.execute(delete(cls).where(cls.id == job_id))
        for listener in _listeners:
            listener([job_id])

    @classmethod
    def requeue(cls, job_id):
        """failed → queued from the kept PDF, attempts reset (a person asked for it)."""
        return cls._transition(
            job_id, cls.status == FAILED, cls.upload_path.is_not(None),
            status=QUEUED, attempts=0, progress=0, error_code=None, error=None, dead_letter=False,
            completed_at=None, started_at=None, next_attempt_at=None,
        )

    @classmethod
    def expire_lease(cls, job_id):
        """processing with a lapsed lease → queued (its worker died); the attempt stays spent."""
        return cls._transition(
            job_id, cls.status == PROCESSING, cls.lease_expires_at < utcnow(),
            status=QUEUED, progress=0, leased_by=None, lease_expires_at=None,
            error_code="LEASE_EXPIRED", error="the worker stopped answering; the job was queued again",
        )

    @classmethod
    def mark_result_expired(cls, job_id):
        return cls._transition(job_id, cls.status == COMPLETE, result_expired=True, result_path=None)

    @classmethod
    def forget_upload(cls, job_id):
        return cls._transition(job_id, cls.status.not_in(ACTIVE), upload_path=None)


# What a worker needs of a job it claimed, returned by the claim itself (no second read).
CLAIMED = (Job.correlation_id, Job.mapping, Job.bytes, Job.upload_path, Job.attempts)


class Coordination(db.Model):
    """Small shared state for all worker processes: who leads maintenance, the breaker, heartbeats."""

    __tablename__ = "coordination"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(128))
    state: Mapped[str | None] = mapped_column(String(32))
    count: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    @classmethod
    def get(cls, name):
        return db.session.get(cls, name)

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
        """Hold the named lease for seconds if it is free, lapsed or already ours; True if we hold it."""
        cls.ensure(name)
        now = utcnow()
        with write_transaction() as session:
            stmt = (update(cls).where(cls.name == name, (cls.holder.is_(None)) | (cls.holder == holder) | (cls.expires_at < now))
                    .values(holder=holder, expires_at=now + timedelta(seconds=seconds), updated_at=now))
            return session.execute(stmt).rowcount == 1

    @classmethod
    def give_up(cls, name, holder):
        """Release the named lease if we hold it."""
        with write_transaction() as session:
            session.execute(update(cls).where(cls.name == name, cls.holder == holder)
                            .values(holder=None, expires_at=None, updated_at=utcnow()))

    @classmethod
    def put(cls, name, **values):
        """Set values on the named row, creating it if needed."""
        cls.ensure(name)
        with write_transaction() as session:
            session.execute(update(cls).where(cls.name == name).values(updated_at=utcnow(), **values))
