"""The jobs table: a job's columns, what follows from its state, and every change it can go through, each one
conditional UPDATE that writes its history and outbox rows in its transaction and publishes itself once committed."""
import functools
import secrets
from datetime import datetime

from sqlalchemy import (BigInteger, Boolean, DateTime, Index, Integer, String, Text, UniqueConstraint,
                        bindparam, case, delete, insert, select, text, update)
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import Mapped, mapped_column

from core import changes, codes, outbox
from core.clock import isoformat, utcnow
from core.db import db, write_connection, write_transaction
from core.jobs import engine
from core.jobs.claims import JobClaims
from core.jobs.engine import NOW
from core.jobs.history import EventKind, JobEvent
from core.jobs.reads import JobReads
from core.jobs.removals import JobRemoval
from core.jobs.states import ACTIVE, FINISHED, SLOW_AFTER, Status


def new_id():
    """A random URL-safe job id (96 bits) that never begins with "-", which a shell or CLI would read as an option."""
    while (job_id := secrets.token_urlsafe(12)).startswith("-"):
        pass
    return job_id


class Job(JobReads, JobClaims, db.Model):
    """One uploaded PDF and its way to an XML result.

    The four statuses (the API's `status`; their names and the groups lists filter by: core/jobs/states.py)::

        (upload) ──▶ queued ◀─────▶ processing ──▶ complete
                       ▲                 │
                       │                 ▼
                       └── requeue ── failed

    Each move is one of the classmethods below, a conditional UPDATE (it happens only if the job is still in
    the state it leaves) that bumps updated_at and publishes the owner's change (changes.publish)::

        create         (upload)        → queued
        claim_next     queued          → processing   one attempt spent, a lease taken (capacity allowing; claims.py)
        renew_lease    processing      → processing   the lease extended, progress moved forward
        complete       processing      → complete
        fail           processing      → failed       for good; dead_letter when it ran out of attempts
        retry_later    processing      → queued       due after a back-off; the attempt stays spent
        release        processing      → queued       the attempt given back (the worker stops, the breaker opened)
        hold           queued          → queued       held by the open breaker
        run_next       queued          → queued       moved to the front of the queue by an admin (claims.py)
        requeue        failed          → queued       a person asked; attempts reset
        expire_result  complete        → complete     retention removed the XML
        forget_upload  complete/failed → (same)       retention removed the PDF
        reconvert      expired/failed  → queued       the same file uploaded again once its result or PDF is gone
        remove         any             → (deleted)    a JobRemoval tells open pages; its events go with it

    Each of them but renew_lease also writes the job's history (JobEvent), one row in the same transaction. All
    but create and remove are written one way, core/jobs/engine.py: built once (transition), run by apply.

    Sub-states are flags on a status, never statuses of their own (the properties below say them):
    - held: queued with error_code CIRCUIT_OPEN; the breaker keeps it waiting and nothing is spent.
    - retrying (will_retry): queued after a transient failure (error_code set), due at next_attempt_at.
      A lapsed lease (its worker died) is such a failure too, LEASE_EXPIRED, and counts as an attempt.
    - dead-lettered (dead_letter): failed after MAX_ATTEMPTS transient failures rather than at once.
    - expired (result_expired): complete, but retention removed the XML (result_path is null).
    What to do after a failure is the retry policy's to say (worker/retry.py), not the model's.

    A processing job is leased to the worker converting it: its lease holder (leased_by) until lease_expires_at.
    Only the lease holder renews, completes, fails, retries or releases it; once its lease lapses, the reaper does.
    ("Held" and "hold" are the breaker's words: a queued job it keeps waiting.)

    Dedupe: an owner has one job per file (sha256, bytes) and mapping (uq_jobs_owner_file); uploading it again
    returns that job while it is live (active, complete with its XML, or failed with its PDF kept, which a
    retry can run again). Once it is spent (expired, or failed with its PDF gone: `spent`), the upload
    re-converts it in the same row (`reconvert`): same id, the new PDF, queued as if just uploaded.

    Which queued job a worker claims next is fair share between owners (core/jobs/claims.py); what the pages and
    the API read, Job's queries, is core/jobs/reads.py.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner", "sha256", "mapping", "bytes", name="uq_jobs_owner_file"),
        Index("ix_jobs_owner_updated", "owner", "updated_at"),
        # An owner's jobs newest first; filename and status let a search or a status filter skip rows in the index.
        Index("ix_jobs_owner_created", "owner", "created_at", "id", "filename", "status"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        Index("ix_jobs_status_owner_queue", "status", "owner", "queue_key", "id"),  # the fair claim (claim_next)
        Index("ix_jobs_owner_started", "owner", "started_at"),  # when an owner was last served (claim_next)
        Index("ix_jobs_owner_status", "owner", "status", "started_at", "completed_at"),  # the dashboard's totals
        Index("ix_jobs_updated", "updated_at"),  # the change poll (core/changes.py)
        Index("ix_jobs_created", "created_at", "id"),  # the admins' view of everyone's jobs, newest first
        # An owner's kept PDFs, summed against their quota at each upload (core/accounts.py storage_used).
        Index("ix_jobs_owner_kept", "owner", "bytes", sqlite_where=text("upload_path IS NOT NULL"),
              postgresql_where=text("upload_path IS NOT NULL")),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(1024))
    mapping: Mapped[str] = mapped_column(String(128))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=Status.QUEUED)
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
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime)
    leased_by: Mapped[str | None] = mapped_column(String(128))  # the lease holder
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    dead_letter: Mapped[bool] = mapped_column(Boolean, default=False)
    queue_key: Mapped[datetime] = mapped_column(DateTime, default=utcnow)  # its place in its owner's queue (claims.py)
    # Signed into each share link of the job; a new one revokes them all (webapp/api.py). Null until first shared.
    share_nonce: Mapped[str | None] = mapped_column(String(32))
    # Where a job came from when a source brought it (core/intake/): the source, and for mail its message.
    source_id: Mapped[int | None] = mapped_column(Integer)
    source_kind: Mapped[str | None] = mapped_column(String(16))
    source_from: Mapped[str | None] = mapped_column(String(320))
    source_subject: Mapped[str | None] = mapped_column(String(1024))
    source_message_id: Mapped[str | None] = mapped_column(String(1024))

    # -- what follows from the state -----------------------------------------------------------

    @property
    def active(self):
        """Queued or processing: the worker still owes it an outcome."""
        return self.status in ACTIVE

    @property
    def finished(self):
        """Complete or failed: nothing more happens unless a person retries it."""
        return self.status in FINISHED

    @property
    def has_result(self):
        """Complete with its XML still kept: it can be downloaded, shared and reviewed."""
        return self.status == Status.COMPLETE and self.result_path is not None

    @property
    def result_expired(self):
        """Complete, but retention removed the XML."""
        return self.status == Status.COMPLETE and self.result_path is None

    @property
    def held(self):
        """Queued and kept waiting by the open breaker."""
        return self.status == Status.QUEUED and self.error_code == codes.CIRCUIT_OPEN

    @property
    def will_retry(self):
        """Queued again after a transient failure, waiting out its back-off."""
        return self.status == Status.QUEUED and self.error_code is not None and not self.held

    @property
    def retryable(self):
        """Failed with its PDF still kept, so a person may queue it again (Job.requeue)."""
        return self.status == Status.FAILED and self.upload_path is not None

    @hybrid_property
    def spent(self):
        """Finished with nothing left to give: expired, or failed with its PDF gone (so it cannot be retried); on
        Job, its SQL (reconvert's condition).

        Uploading the same file again converts it again (Job.reconvert) instead of returning this job."""
        return self.result_expired or (self.status == Status.FAILED and self.upload_path is None)

    @spent.inplace.expression
    @classmethod
    def _spent_sql(cls):
        jobs = cls.__table__.c
        return (((jobs.status == Status.COMPLETE) & jobs.result_path.is_(None))
                | ((jobs.status == Status.FAILED) & jobs.upload_path.is_(None)))

    @property
    def active_since(self):
        """When it last became active: its attempt's start, else (queued, never started since a create or a
        person's retry) its last change; None once finished."""
        if not self.active:
            return None
        return self.started_at or self.updated_at

    def slow(self, now=None):
        """Active for longer than SLOW_AFTER: its row says it is taking longer than usual."""
        return self.active and (now or utcnow()) - self.active_since > SLOW_AFTER

    @property
    def duration_seconds(self):
        """How long its last processing took, once finished; None before."""
        if self.started_at is None or self.completed_at is None or not self.finished:
            return None
        return (self.completed_at - self.started_at).total_seconds()

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
            "download_url": f"/api/jobs/{self.id}/download" if self.has_result else None,
            "correlation_id": self.correlation_id,
            "dead_letter": self.dead_letter,
            "result_expired": self.result_expired,
            "source": self.source,
        }

    @property
    def source(self):
        """Where the job came from if a source brought it (the API's `source`), else None (an upload)."""
        if self.source_kind is None:
            return None
        return {"id": self.source_id, "kind": self.source_kind, "from": self.source_from,
                "subject": self.source_subject, "message_id": self.source_message_id}

    # -- leases ------------------------------------------------------------------------------

    @classmethod
    def _leased_by(cls, worker, now):
        """SQL: processing under the lease of worker (a lease holder, or the bound parameter of a statement built
        once); worker None: under a lease that lapsed by now (its worker died)."""
        jobs = cls.__table__
        if worker is None:
            return (jobs.c.status == Status.PROCESSING) & (jobs.c.lease_expires_at < now)
        return (jobs.c.status == Status.PROCESSING) & (jobs.c.leased_by == worker)

    @classmethod
    def _under_lease(cls, lapsed):
        """SQL of a statement built once: under the lease of the parameter worker, or (lapsed) a lease that lapsed."""
        return cls._leased_by(None if lapsed else bindparam("worker", type_=String), NOW)

    # -- transitions ---------------------------------------------------------------------------

    @classmethod
    def create(cls, **fields):
        """(upload) → queued; raise IntegrityError if this owner already has the same file and mapping.

        One Core INSERT, and one of its 'created' event: the job returned is not in the session (nothing to
        flush, nothing to reload)."""
        values = {"id": new_id(), "status": Status.QUEUED, "progress": 0, "attempts": 0, "dead_letter": False,
                  "correlation_id": secrets.token_hex(8), **fields}
        with write_connection() as connection:
            now = utcnow()
            values["created_at"] = values["updated_at"] = values["queue_key"] = now
            connection.execute(_INSERT_JOB, values)  # the job's row before its first event's
            JobEvent.write(connection, {"job_id": values["id"], "at": now, "kind": EventKind.CREATED,
                                        "status": Status.QUEUED, "attempt": 0})
        changes.publish(values["owner"])
        return cls(**values)

    @classmethod
    def renew_lease(cls, job_id, worker, lease_seconds, progress=None):
        """Extend this worker's lease (and move progress); False if the job is no longer its own."""
        return engine.apply(cls._renewing(), job_id=job_id, worker=worker, progress=progress,
                            lease_until=engine.after(lease_seconds)) is not None

    @classmethod
    @functools.cache
    def _renewing(cls):
        jobs = cls.__table__
        progress = bindparam("progress", type_=Integer)
        # Progress only ever moves forward: "sent", written beside the call, may land after "received".
        return engine.transition(
            cls, cls._under_lease(lapsed=False),
            lease_expires_at=bindparam("lease_until", type_=DateTime),
            progress=case((progress.is_not(None) & (jobs.c.progress < progress), progress), else_=jobs.c.progress))

    @classmethod
    def complete(cls, job_id, worker, result_path):
        """processing → complete with the stored result."""
        return engine.apply(cls._completing(), job_id=job_id, worker=worker, result_path=result_path) is not None

    @classmethod
    @functools.cache
    def _completing(cls):
        return engine.transition(
            cls, cls._under_lease(lapsed=False),
            event=EventKind.COMPLETE, ends_attempt=True, outbox_event=outbox.JOB_COMPLETE,
            status=Status.COMPLETE, result_path=bindparam("result_path", type_=String), progress=100,
            completed_at=NOW, leased_by=None, lease_expires_at=None, error_code=None, error=None)

    @classmethod
    def fail(cls, job_id, worker, code, message, dead_letter=False):
        """processing → failed, for good (until a person retries it); worker None: its lease lapsed."""
        return engine.apply(cls._failing(lapsed=worker is None), job_id=job_id, worker=worker, code=code,
                            message=message[:1000], dead_letter=dead_letter) is not None

    @classmethod
    @functools.cache
    def _failing(cls, lapsed):
        return engine.transition(
            cls, cls._under_lease(lapsed),
            event=EventKind.FAILED, ends_attempt=True, outbox_event=outbox.JOB_FAILED,
            status=Status.FAILED, error_code=bindparam("code", type_=String), error=bindparam("message", type_=Text),
            dead_letter=bindparam("dead_letter", type_=Boolean), completed_at=NOW, leased_by=None,
            lease_expires_at=None)

    @classmethod
    def retry_later(cls, job_id, worker, code, message, delay_seconds):
        """processing → queued, due after delay_seconds; the attempt stays spent. worker None: its lease lapsed."""
        return engine.apply(cls._retrying(lapsed=worker is None), job_id=job_id, worker=worker, code=code,
                            message=message[:1000], due=engine.after(delay_seconds)) is not None

    @classmethod
    @functools.cache
    def _retrying(cls, lapsed):
        due = bindparam("due", type_=DateTime)
        return engine.transition(
            cls, cls._under_lease(lapsed),
            event=EventKind.RETRY, ends_attempt=True,
            status=Status.QUEUED, error_code=bindparam("code", type_=String), error=bindparam("message", type_=Text),
            progress=0, next_attempt_at=due, queue_key=due,  # it queues by its retry time
            leased_by=None, lease_expires_at=None)

    @classmethod
    def release(cls, job_id, worker, code=None, message=None):
        """processing → queued without spending the attempt (the worker stops, or the breaker opened: code
        CIRCUIT_OPEN); worker None: its lease lapsed. The released job's row (its id, correlation_id…), or None.

        job_id may be None: whichever job this worker has."""
        transition = cls._releasing(lapsed=worker is None, any_job=job_id is None, held=code == codes.CIRCUIT_OPEN)
        return engine.apply(transition, job_id=job_id, worker=worker, code=code, message=message)

    @classmethod
    @functools.cache
    def _releasing(cls, lapsed, any_job, held):
        jobs = cls.__table__
        leased = cls._under_lease(lapsed)
        return engine.transition(
            cls, leased, job=select(jobs.c.id).where(leased).limit(1).scalar_subquery() if any_job else None,
            event=EventKind.HELD if held else EventKind.RELEASED, ends_attempt=True,
            returning=(jobs.c.correlation_id,),
            status=Status.QUEUED, attempts=jobs.c.attempts - 1, progress=0, error_code=bindparam("code", type_=String),
            error=bindparam("message", type_=Text), leased_by=None, lease_expires_at=None)

    @classmethod
    def hold(cls, job_id, message):
        """Mark a queued job as held by the open breaker (once; it stays queued, nothing is spent)."""
        return engine.apply(cls._holding(), job_id=job_id, message=message) is not None

    @classmethod
    @functools.cache
    def _holding(cls):
        jobs = cls.__table__
        return engine.transition(
            cls, jobs.c.status == Status.QUEUED, jobs.c.error_code.is_distinct_from(codes.CIRCUIT_OPEN),
            event=EventKind.HELD,
            error_code=codes.CIRCUIT_OPEN, error=bindparam("message", type_=Text))

    @classmethod
    def requeue(cls, job_id):
        """failed → queued from the kept PDF, attempts reset (a person asked for it)."""
        return engine.apply(cls._requeueing(), job_id=job_id) is not None

    @classmethod
    @functools.cache
    def _requeueing(cls):
        jobs = cls.__table__
        return engine.transition(
            cls, jobs.c.status == Status.FAILED, jobs.c.upload_path.is_not(None),
            event=EventKind.REQUEUED,
            status=Status.QUEUED, attempts=0, progress=0, error_code=None, error=None, dead_letter=False,
            completed_at=None, started_at=None, next_attempt_at=None, queue_key=NOW)

    @classmethod
    def reconvert(cls, job_id, upload_path, filename):
        """expired/failed without its PDF (spent) → queued from a new upload of the same file, as if just uploaded."""
        return engine.apply(cls._reconverting(), job_id=job_id, upload_path=upload_path,
                            filename=filename) is not None

    @classmethod
    @functools.cache
    def _reconverting(cls):
        return engine.transition(
            cls, cls.spent,
            event=EventKind.CREATED,  # uploaded again: its history goes on from a new upload
            status=Status.QUEUED, upload_path=bindparam("upload_path", type_=String),
            filename=bindparam("filename", type_=String), result_path=None, attempts=0, progress=0, error_code=None,
            error=None, dead_letter=False, created_at=NOW, completed_at=None, started_at=None, next_attempt_at=None,
            queue_key=NOW)  # its place in its owner's queue: the new upload's time

    @classmethod
    def expire_result(cls, job_id):
        """complete → expired: retention removed the XML (the caller deletes the file)."""
        return engine.apply(cls._expiring_result(), job_id=job_id) is not None

    @classmethod
    @functools.cache
    def _expiring_result(cls):
        jobs = cls.__table__
        return engine.transition(cls, jobs.c.status == Status.COMPLETE, event=EventKind.RESULT_EXPIRED,
                                 result_path=None)

    @classmethod
    def forget_upload(cls, job_id):
        """Retention removed the PDF of a finished job (the caller deletes the file); it can no longer be retried."""
        return engine.apply(cls._forgetting_upload(), job_id=job_id) is not None

    @classmethod
    @functools.cache
    def _forgetting_upload(cls):
        jobs = cls.__table__
        return engine.transition(cls, jobs.c.status.in_(FINISHED), event=EventKind.UPLOAD_EXPIRED, upload_path=None)

    @classmethod
    def remove(cls, job_id):
        """Delete the job, leaving a removal behind for live pages; its (upload_path, result_path), or None.

        The files are the caller's to delete, once the row is gone."""
        with write_transaction() as session:
            row = session.execute(delete(cls.__table__).where(cls.id == job_id)
                                  .returning(cls.owner, cls.upload_path, cls.result_path)).first()
            if row is not None:
                session.execute(insert(JobRemoval).values(job_id=job_id, owner=row.owner, removed_at=utcnow()))
        if row is None:
            return None
        changes.publish(row.owner)
        return row.upload_path, row.result_path

    # -- sharing -------------------------------------------------------------------------------

    @classmethod
    def share_nonce_of(cls, job_id):
        """The nonce the job's share links carry, made on first use (racing sharers agree on one)."""
        with write_transaction() as session:
            session.execute(update(cls.__table__).where(cls.id == job_id, cls.share_nonce.is_(None))
                            .values(share_nonce=secrets.token_urlsafe(12)))
            return session.execute(select(cls.share_nonce).where(cls.id == job_id)).scalar_one()

    @classmethod
    def revoke_shares(cls, job_id):
        """Give the job a new share nonce, so that every link handed out so far stops working."""
        with write_transaction() as session:
            session.execute(update(cls.__table__).where(cls.id == job_id).values(share_nonce=secrets.token_urlsafe(12)))


_INSERT_JOB = insert(Job.__table__)  # built once: every upload makes one
