"""The jobs table: a job's vocabulary (its states and what follows from them) and every change it can go
through, each one conditional UPDATE that publishes itself (changes.publish) once committed."""
import functools
import secrets
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import (BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint,
                        bindparam, case, delete, func, insert, select, text, update)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from core import codes
from core import changes
from core import outbox
from core.clock import isoformat, utcnow
from core.db import db, read_first, write_connection, write_transaction


class Status(StrEnum):
    """A job's stored status; the API's `status` field (a StrEnum, so it compares equal to its text)."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETE = "complete"
    FAILED = "failed"


ACTIVE = (Status.QUEUED, Status.PROCESSING)
FINISHED = (Status.COMPLETE, Status.FAILED)
# The filters of lists (the API's ?status=, the queue page's): a name for each group of statuses; "all" is none.
STATUS_GROUPS = {"all": (), "active": ACTIVE, "complete": (Status.COMPLETE,), "failed": (Status.FAILED,),
                 "queued": (Status.QUEUED,), "processing": (Status.PROCESSING,)}
# An active job past this is "taking longer than usual" in its row (a conversion takes seconds).
SLOW_AFTER = timedelta(minutes=5)


def new_id():
    """A random URL-safe job id (96 bits) that never begins with "-", which a shell or CLI would read as an option."""
    while (job_id := secrets.token_urlsafe(12)).startswith("-"):
        pass
    return job_id


class Job(db.Model):
    """One uploaded PDF and its way to an XML result.

    The four statuses (the API's `status`)::

        (upload) ──▶ queued ◀─────▶ processing ──▶ complete
                       ▲                 │
                       │                 ▼
                       └── requeue ── failed

    Each move is one of the classmethods below, a conditional UPDATE (it happens only if the job is still in
    the state it leaves) that bumps updated_at and publishes the owner's change (changes.publish)::

        create         (upload)        → queued
        claim          queued          → processing   one attempt spent, a lease taken (capacity allowing)
        renew_lease    processing      → processing   the lease extended, progress moved forward
        complete       processing      → complete
        fail           processing      → failed       for good; dead_letter when it ran out of attempts
        retry_later    processing      → queued       due after a back-off; the attempt stays spent
        release        processing      → queued       the attempt given back (the worker stops, the breaker opened)
        hold           queued          → queued       held by the open breaker
        requeue        failed          → queued       a person asked; attempts reset
        expire_result  complete        → complete     retention removed the XML
        forget_upload  complete/failed → (same)       retention removed the PDF
        reconvert      expired/failed  → queued       the same file uploaded again once its result or PDF is gone
        remove         any             → (deleted)    a JobRemoval tells open pages; its events go with it

    Each of them but renew_lease also writes the job's history (JobEvent), one row in the same transaction.

    Sub-states are flags on a status, never statuses of their own (the properties below say them):
    - held: queued with error_code CIRCUIT_OPEN; the breaker keeps it waiting and nothing is spent.
    - retrying (will_retry): queued after a transient failure (error_code set), due at next_attempt_at.
      A lapsed lease (its worker died) is such a failure too, LEASE_EXPIRED, and counts as an attempt.
    - dead-lettered (dead_letter): failed after MAX_ATTEMPTS transient failures rather than at once.
    - expired (result_expired): complete, but retention removed the XML (result_path is null).
    What to do after a failure is the retry policy's to say (worker/retry.py), not the model's.

    Dedupe: an owner has one job per file (sha256, bytes) and mapping (uq_jobs_owner_file); uploading it again
    returns that job while it is live (active, complete with its XML, or failed with its PDF kept, which a
    retry can run again). Once it is spent (expired, or failed with its PDF gone: `spent`), the upload
    re-converts it in the same row (`reconvert`): same id, the new PDF, queued as if just uploaded.

    Fair share: which queued job a worker claims next (claim_next). Each job has a place in its owner's queue,
    queue_key: its upload time; its retry time once it waits out a back-off (so a job is due exactly when its
    queue_key has passed); the time a person re-queued it; a time before RUN_NEXT_BEFORE once an admin moved it
    to the front (run_next). Released jobs keep their place. Among the owners with a queued job, each one's
    head (its lowest queue_key, then id: FIFO within an owner) competes, and the first of the due heads wins:

        1. moved to the front by an admin (the latest such move first);
        2. its owner has the fewest jobs processing;
        3. its owner was served least recently (never served first): the latest started_at of their jobs;
        4. the lowest queue_key, then id.

    So claims go round-robin across the owners with active jobs, and one owner's 500-file drop makes another's
    single invoice wait for one free slot, not for the 500. The choice is a subquery of the claim's one
    conditional UPDATE, made under the claims' write lock, so it is exact across workers; it costs a few index
    seeks per owner with queued jobs (ix_jobs_status_owner_queue, ix_jobs_owner_status, ix_jobs_owner_started),
    however many jobs are queued.
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
    leased_by: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    dead_letter: Mapped[bool] = mapped_column(Boolean, default=False)
    queue_key: Mapped[datetime] = mapped_column(DateTime, default=utcnow)  # its place in its owner's queue
    # Signed into each share link of the job; a new one revokes them all (webapp/api.py). Null until first shared.
    share_nonce: Mapped[str | None] = mapped_column(String(32))

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

    @property
    def spent(self):
        """Finished with nothing left to give: expired, or failed with its PDF gone (so it cannot be retried).

        Uploading the same file again converts it again (Job.reconvert) instead of returning this job."""
        return self.result_expired or (self.status == Status.FAILED and self.upload_path is None)

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

    def matches(self, q):
        """True if the file name contains q, ignoring case (the Python twin of Job.name_contains)."""
        return not q or q.casefold() in self.filename.casefold()

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
        }

    # -- reads ---------------------------------------------------------------------------------

    @classmethod
    def owned(cls, owner, job_id):
        """The owner's job with this id (owner None: anyone's), or None (another owner's job is as good as absent)."""
        return db.session.execute(select(cls).where(cls.id == job_id, *cls._of(owner))).scalar_one_or_none()

    @classmethod
    def _of(cls, owner):
        """SQL conditions for the owner's jobs; none for owner None (everyone's, the admins' view)."""
        return () if owner is None else (cls.owner == owner,)

    @classmethod
    def name_contains(cls, q):
        """SQL: the file name contains q, ignoring case (%, _ and \\ in q are literal)."""
        escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return cls.filename.ilike(f"%{escaped}%", escape="\\")

    @classmethod
    def active_count(cls, owner):
        """How many of the owner's (owner None: everyone's) jobs are active."""
        return db.session.scalar(select(func.count()).select_from(cls).where(cls.status.in_(ACTIVE), *cls._of(owner)))

    @classmethod
    def changed_since(cls, owner, since, newest=None):
        """The owner's (None: everyone's) jobs whose updated_at is after since, oldest change first (live rows);
        with newest, only that many of the latest changes (a LIMIT in SQL, whatever since is)."""
        query = select(cls).where(cls.updated_at > since, *cls._of(owner))
        if newest is None:
            return db.session.execute(query.order_by(cls.updated_at, cls.id)).scalars().all()
        latest = db.session.execute(query.order_by(cls.updated_at.desc(), cls.id.desc()).limit(newest)).scalars().all()
        return latest[::-1]

    @classmethod
    def totals(cls, owner):
        """The owner's (None: everyone's) counts by state and average processing time, for the totals box."""
        total, complete, failed, active, average = db.session.execute(
            select(
                func.count(),
                func.count().filter(cls.status == Status.COMPLETE),
                func.count().filter(cls.status == Status.FAILED),
                func.count().filter(cls.status.in_(ACTIVE)),
                func.avg(case((cls.status == Status.COMPLETE, _seconds_between(cls.started_at, cls.completed_at)))),
            ).where(*cls._of(owner))
        ).one()
        return {"total": total, "complete": complete, "failed": failed, "active": active, "average_seconds": average}

    @classmethod
    def counts(cls, owner, q=None):
        """The owner's (None: everyone's) jobs counted per filter of the queue (all, active, complete, failed); with
        q, of those whose file name contains it. Counted from the owner's newest-first index alone."""
        total, active, complete, failed = db.session.execute(
            select(func.count(), func.count().filter(cls.status.in_(ACTIVE)),
                   func.count().filter(cls.status == Status.COMPLETE), func.count().filter(cls.status == Status.FAILED))
            .where(*cls._of(owner), *((cls.name_contains(q),) if q else ()))
        ).one()
        return {"total": total, "active": active, "complete": complete, "failed": failed}

    @classmethod
    def finished_since(cls, owner, since):
        """(status, started_at, completed_at) of the owner's (None: everyone's) jobs finished after since (the
        queue's chart). A job's updated_at is never before its completed_at, so the owner's index on updated_at
        narrows the read to the jobs changed since then."""
        return db.session.execute(
            select(cls.status, cls.started_at, cls.completed_at)
            .where(*cls._of(owner), cls.updated_at > since, cls.status.in_(FINISHED), cls.completed_at > since)).all()

    @classmethod
    def owners_changed_after(cls, cursor):
        """(owner, time) for every owner whose jobs changed (their newest change) or were removed after cursor."""
        changed = (select(cls.owner, func.max(cls.updated_at).label("at"))
                   .where(cls.updated_at > cursor).group_by(cls.owner))
        # Removals are few: read them by time alone (grouping by owner would scan the owner index whole).
        removed = select(JobRemoval.owner, JobRemoval.removed_at.label("at")).where(JobRemoval.removed_at > cursor)
        return db.session.execute(changed.union_all(removed)).all()

    @classmethod
    def is_due(cls, now):
        """SQL: the job's back-off (if any) has passed."""
        return cls.next_attempt_at.is_(None) | (cls.next_attempt_at <= now)

    @classmethod
    def due_ids(cls, limit, idle_for=None):
        """Ids of queued jobs that are due, oldest first; with idle_for (seconds), only those untouched that long."""
        now = utcnow()
        query = select(cls.id).where(cls.status == Status.QUEUED, cls.is_due(now))
        if idle_for is not None:
            query = query.where(cls.updated_at < now - timedelta(seconds=idle_for))
        ids = db.session.execute(query.order_by(cls.queue_key, cls.id).limit(limit)).scalars().all()
        db.session.commit()
        return ids

    @classmethod
    def status_of(cls, job_id):
        """(status, next_attempt_at) of the job, or (None, None) if there is none: a worker's look at the job a
        wake-up names, read on a Core connection with a statement built once (every wake-up costs one)."""
        return read_first(_STATUS_OF, {"job_id": job_id}) or (None, None)

    @classmethod
    def lapsed(cls):
        """Processing jobs whose lease lapsed (their worker died): each its id and what a claim returns."""
        rows = db.session.execute(select(cls.id, *CLAIMED).where(
            cls.status == Status.PROCESSING, cls.lease_expires_at < utcnow())).all()
        db.session.commit()
        return rows

    # -- transitions ---------------------------------------------------------------------------

    @classmethod
    def _transition(cls, job_id, *where, event=None, ends_attempt=False, serialize=False, returning=(), notify=None,
                    **values):
        """Apply values to the job only if it still matches where; True if it did.

        job_id may be a subquery choosing the job; with returning (columns), the changed job's values
        come back as a row (None if nothing changed). With event (an EventKind), the change also goes into the
        job's history: one INSERT of what the UPDATE returned, in its transaction; ends_attempt says the change
        settles an attempt (processing → …), so the event has the attempt's duration. With notify (an event type,
        core/outbox.py), the event goes into the outbox in this same transaction, for each subscription of the
        owner that wants it (an owner without any costs an indexed EXISTS in the UPDATE's RETURNING, nothing more)."""
        asked = bool(returning)
        if notify is not None:  # whether the owner has any subscription comes back with the change: no extra query
            returning = (*returning, NOTIFY_WANTED)
        with write_transaction() as session:
            if serialize and session.get_bind().dialect.name != "sqlite":
                session.execute(_SERIALIZE_CLAIMS)
            now = utcnow()  # taken under the write lock, so commit order follows updated_at
            values = {key: (value(now) if callable(value) else value) for key, value in values.items()}
            values["updated_at"] = now
            # A Core UPDATE of the table: callers re-read what they need, and the ORM's bookkeeping for an
            # ORM-enabled UPDATE (syncing loaded objects) costs more than the statement itself.
            stmt = update(cls.__table__).where(cls.id == job_id, *where).values(**values)
            columns = _distinct((cls.id, cls.owner, *(JobEvent.READS if event else ()), *returning))
            row = session.execute(stmt.returning(*columns)).first()
            wrote_events = cls._record(session.connection(), row, now, event, ends_attempt, notify)
        if row is not None:
            changes.publish(row.owner)
        if wrote_events:
            outbox.wrote_events()
        return row if asked else row is not None

    @classmethod
    def _record(cls, connection, row, now, event, ends_attempt, notify):
        """What a change writes beside its UPDATE, on its transaction's connection: its event in the job's history
        (one INSERT of what the UPDATE returned: JobEvent.READS), and with notify, its outbox rows if the owner
        wants them (the UPDATE returned NOTIFY_WANTED). How many outbox rows it wrote."""
        if row is None:
            return 0
        if event:
            connection.execute(_INSERT_EVENT, JobEvent.values(event, row, now, ends_attempt))
        if notify is None or not row.notify_wanted:
            return 0
        job = cls(**connection.execute(select(*cls.__table__.c).where(cls.id == row.id)).one()._mapping)  # to send
        return outbox.enqueue_for_job(connection, row.owner, notify, now, job.to_dict())

    @classmethod
    def _prepared(cls, statement, serialize=False, event=None, ends_attempt=False, notify=None, **params):
        """Run one of the prebuilt transitions below (_claim_next_statement…), as _transition would: under the
        write lock, with `now` taken there (callable params get it too), writing its event and outbox rows in
        its transaction (_record: the statement returns JobEvent.READS, and NOTIFY_WANTED for a notify); the
        changed row, or None.

        The transitions on every job's path (claim, renew, complete) are built once with their values as
        parameters: building an UPDATE and its cache key costs more CPU than SQLite takes to run it; and they run
        on a Core connection (write_connection), past the ORM session's bookkeeping."""
        with write_connection() as connection:
            if serialize and connection.dialect.name != "sqlite":
                connection.execute(_SERIALIZE_CLAIMS)
            now = utcnow()
            row = connection.execute(statement, {"now": now, **{
                key: (value(now) if callable(value) else value) for key, value in params.items()}}).first()
            wrote_events = cls._record(connection, row, now, event, ends_attempt, notify)
        if row is not None:
            changes.publish(row.owner)
        if wrote_events:
            outbox.wrote_events()
        return row

    @classmethod
    def _leased_by(cls, worker):
        """SQL: processing under this worker's lease; worker None: under a lease that lapsed (its worker died)."""
        if worker is None:
            return (cls.status == Status.PROCESSING) & (cls.lease_expires_at < utcnow())
        return (cls.status == Status.PROCESSING) & (cls.leased_by == worker)

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
            connection.execute(_INSERT_EVENT, {"job_id": values["id"], "at": now, "kind": EventKind.CREATED,
                                               "status": Status.QUEUED, "attempt": 0})
        changes.publish(values["owner"])
        return cls(**values)

    @classmethod
    def claim(cls, job_id, worker, lease_seconds, capacity):
        """queued → processing for this worker, if due and fewer than capacity are processing: one attempt spent.

        Returns what the worker needs of the claimed job (see CLAIMED), or None if it was not claimable."""
        processing = select(func.count()).select_from(cls).where(cls.status == Status.PROCESSING).scalar_subquery()
        return cls._transition(
            job_id,
            cls.status == Status.QUEUED,
            processing < capacity,
            cls.is_due(utcnow()),
            event=EventKind.ATTEMPT,
            serialize=True,
            returning=CLAIMED,
            status=Status.PROCESSING,
            leased_by=worker,
            lease_expires_at=lambda now: now + timedelta(seconds=lease_seconds),
            started_at=lambda now: now,
            next_attempt_at=None,
            attempts=cls.attempts + 1,
            progress=10,
        )

    @classmethod
    def claim_next(cls, worker, lease_seconds, capacity):
        """Claim the queued, due job that fair share puts first (see the class docstring), if any and if capacity
        allows (as claim); one statement."""
        return cls._prepared(_claim_next_statement(), serialize=True, event=EventKind.ATTEMPT, worker=worker,
                             capacity=capacity, lease_until=lambda now: now + timedelta(seconds=lease_seconds))

    @classmethod
    def next_choice(cls, now):
        """SQL (a scalar subquery): the id of the queued job that is due at now and that fair share puts first."""
        jobs = cls.__table__.alias("owners_of")
        queued = jobs.c.status == Status.QUEUED
        # The owners with queued jobs, each found by one index seek past the previous one (a skip-scan), so
        # 100k queued jobs of a few owners cost a few seeks, not a scan.
        owners = select(func.min(jobs.c.owner).label("owner")).where(queued).cte("queued_owners", recursive=True)
        previous = owners.alias("previous")
        following = select(func.min(jobs.c.owner)).where(queued, jobs.c.owner > previous.c.owner).scalar_subquery()
        owners = owners.union_all(select(following).where(previous.c.owner.is_not(None)))
        owner = owners.c.owner
        head, busy, served = (cls.__table__.alias(name) for name in ("head", "busy", "served"))
        of_owner_queued = (head.c.status == Status.QUEUED, head.c.owner == owner)
        heads = select(
            select(head.c.id).where(*of_owner_queued).order_by(head.c.queue_key, head.c.id).limit(1)
            .scalar_subquery().label("id"),
            select(func.min(head.c.queue_key)).where(*of_owner_queued).scalar_subquery().label("key"),
            select(func.count()).select_from(busy).where(busy.c.owner == owner, busy.c.status == Status.PROCESSING)
            .scalar_subquery().label("busy"),
            select(func.max(served.c.started_at)).where(served.c.owner == owner).scalar_subquery().label("served"),
        ).where(owner.is_not(None)).subquery("heads")
        return (select(heads.c.id).where(heads.c.key <= now)
                .order_by(case((heads.c.key < RUN_NEXT_BEFORE, heads.c.key), else_=RUN_NEXT_BEFORE),
                          heads.c.busy, heads.c.served.is_not(None), heads.c.served, heads.c.key, heads.c.id)
                .limit(1).scalar_subquery())

    @classmethod
    def run_next(cls, job_id):
        """Move a queued job to the front of the whole queue (an admin asked): it is the next one claimed,
        whoever owns it and whatever its back-off; a later move goes before it. False if it is not queued."""
        def front(_now):
            first = db.session.scalar(select(func.min(cls.queue_key)).where(cls.status == Status.QUEUED))
            return min(first or RUN_NEXT_BEFORE, RUN_NEXT_BEFORE) - timedelta(seconds=1)
        return cls._transition(job_id, cls.status == Status.QUEUED, event=EventKind.RUN_NEXT, serialize=True,
                               queue_key=front, next_attempt_at=None)

    @classmethod
    def renew_lease(cls, job_id, worker, lease_seconds, progress=None):
        """Extend this worker's lease (and move progress); False if the job is no longer its own."""
        # Progress only ever moves forward: "sent", written beside the call, may land after "received".
        return cls._prepared(_renew_statement(), job_id=job_id, worker=worker, progress=progress,
                             lease_until=lambda now: now + timedelta(seconds=lease_seconds)) is not None

    @classmethod
    def complete(cls, job_id, worker, result_path):
        """processing → complete with the stored result."""
        return cls._prepared(_complete_statement(), event=EventKind.COMPLETE, ends_attempt=True,
                             notify=outbox.JOB_COMPLETE, job_id=job_id, worker=worker,
                             result_path=result_path) is not None

    @classmethod
    def fail(cls, job_id, worker, code, message, dead_letter=False):
        """processing → failed, for good (until a person retries it); worker None: its lease lapsed."""
        return cls._transition(
            job_id, cls._leased_by(worker), event=EventKind.FAILED, ends_attempt=True,
            status=Status.FAILED, error_code=code, error=message[:1000], dead_letter=dead_letter,
            completed_at=lambda now: now, leased_by=None, lease_expires_at=None, notify=outbox.JOB_FAILED,
        )

    @classmethod
    def retry_later(cls, job_id, worker, code, message, delay_seconds):
        """processing → queued, due after delay_seconds; the attempt stays spent. worker None: its lease lapsed."""
        return cls._transition(
            job_id, cls._leased_by(worker), event=EventKind.RETRY, ends_attempt=True,
            status=Status.QUEUED, error_code=code, error=message[:1000], progress=0,
            next_attempt_at=lambda now: now + timedelta(seconds=delay_seconds),
            queue_key=lambda now: now + timedelta(seconds=delay_seconds),  # it queues by its retry time
            leased_by=None, lease_expires_at=None,
        )

    @classmethod
    def release(cls, job_id, worker, code=None, message=None, returning=()):
        """processing → queued without spending the attempt (the worker stops, or the breaker opened).

        job_id may be None: whichever job this worker has (its id and returning come back, or None)."""
        if job_id is None:
            job_id = select(Job.id).where(cls._leased_by(worker)).limit(1).scalar_subquery()
        return cls._transition(
            job_id, cls._leased_by(worker), returning=returning,
            event=EventKind.HELD if code == codes.CIRCUIT_OPEN else EventKind.RELEASED, ends_attempt=True,
            status=Status.QUEUED, attempts=cls.attempts - 1, progress=0, error_code=code, error=message,
            leased_by=None, lease_expires_at=None,
        )

    @classmethod
    def hold(cls, job_id, message):
        """Mark a queued job as held by the open breaker (once; it stays queued, nothing is spent)."""
        return cls._transition(job_id, cls.status == Status.QUEUED, cls.error_code.is_distinct_from(codes.CIRCUIT_OPEN),
                               event=EventKind.HELD, error_code=codes.CIRCUIT_OPEN, error=message)

    @classmethod
    def requeue(cls, job_id):
        """failed → queued from the kept PDF, attempts reset (a person asked for it)."""
        return cls._transition(
            job_id, cls.status == Status.FAILED, cls.upload_path.is_not(None), event=EventKind.REQUEUED,
            status=Status.QUEUED, attempts=0, progress=0, error_code=None, error=None, dead_letter=False,
            completed_at=None, started_at=None, next_attempt_at=None, queue_key=lambda now: now,
        )

    @classmethod
    def reconvert(cls, job_id, upload_path, filename):
        """expired/failed without its PDF → queued from a new upload of the same file, as if just uploaded."""
        spent = (((cls.status == Status.COMPLETE) & cls.result_path.is_(None))
                 | ((cls.status == Status.FAILED) & cls.upload_path.is_(None)))
        return cls._transition(
            job_id, spent, event=EventKind.CREATED,  # uploaded again: its history goes on from a new upload
            status=Status.QUEUED, upload_path=upload_path, filename=filename, result_path=None,
            attempts=0, progress=0, error_code=None, error=None, dead_letter=False,
            created_at=lambda now: now, completed_at=None, started_at=None, next_attempt_at=None,
            queue_key=lambda now: now,  # its place in its owner's queue: the new upload's time
        )

    @classmethod
    def expire_result(cls, job_id):
        """complete → expired: retention removed the XML (the caller deletes the file)."""
        return cls._transition(job_id, cls.status == Status.COMPLETE, event=EventKind.RESULT_EXPIRED, result_path=None)

    @classmethod
    def forget_upload(cls, job_id):
        """Retention removed the PDF of a finished job (the caller deletes the file); it can no longer be retried."""
        return cls._transition(job_id, cls.status.in_(FINISHED), event=EventKind.UPLOAD_EXPIRED, upload_path=None)

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


_INSERT_JOB = insert(Job.__table__)
_STATUS_OF = select(Job.__table__.c.status, Job.__table__.c.next_attempt_at).where(Job.__table__.c.id == bindparam("job_id"))

# Queue keys before this mark jobs an admin moved to the front (Job.run_next); real times are all after it.
RUN_NEXT_BEFORE = datetime(2000, 1, 1)

# What a worker needs of a job it claimed, returned by the claim itself (no second read).
CLAIMED = (Job.correlation_id, Job.mapping, Job.bytes, Job.upload_path, Job.attempts, Job.created_at)
# Whether a changed job's owner has any webhook or email choice, returned by the change itself (built once).
NOTIFY_WANTED = outbox.subscribed(Job.owner).label("notify_wanted")


def _distinct(columns):
    """The columns without repeats (by identity: a column's == builds SQL), in order."""
    kept = []
    for column in columns:
        if not any(column is seen for seen in kept):
            kept.append(column)
    return kept


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
    """One step of a job's history, written by the transition that made it, in its transaction (Job._transition,
    Job._prepared).

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

    # What a transition's UPDATE returns for its event (no read of its own).
    READS = (Job.status, Job.attempts, Job.error_code, Job.error, Job.started_at, Job.next_attempt_at)

    @classmethod
    def values(cls, kind, row, now, ends_attempt=False):
        """The event's columns, from the changed job's row (READS) at time now.

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
    def of(cls, job_id):
        """The job's history, oldest first."""
        return db.session.execute(select(cls).where(cls.job_id == job_id).order_by(cls.id)).scalars().all()

    def to_dict(self):
        """The event as GET /api/jobs/<id>/events shows it."""
        return {"at": isoformat(self.at), "kind": self.kind, "status": self.status, "attempt": self.attempt,
                "error_code": self.error_code, "message": self.message, "duration_ms": self.duration_ms,
                "due_at": isoformat(self.due_at)}


_INSERT_EVENT = insert(JobEvent.__table__)


@functools.cache
def _claim_next_statement():
    """Job.claim_next's UPDATE (Job.claim's, on the fair choice), with its values as parameters: now,
    lease_until, worker, capacity."""
    jobs = Job.__table__
    now = bindparam("now", type_=DateTime)
    processing = select(func.count()).select_from(jobs).where(jobs.c.status == Status.PROCESSING).scalar_subquery()
    return (update(jobs)
            .where(jobs.c.id == Job.next_choice(now), jobs.c.status == Status.QUEUED,
                   processing < bindparam("capacity", type_=Integer), Job.is_due(now))
            .values(status=Status.PROCESSING, leased_by=bindparam("worker", type_=String),
                    lease_expires_at=bindparam("lease_until", type_=DateTime), started_at=now, updated_at=now,
                    next_attempt_at=None, attempts=jobs.c.attempts + 1, progress=10)
            .returning(*_distinct((Job.id, Job.owner, *JobEvent.READS, *CLAIMED))))


def _held_by_worker(jobs):
    """SQL: the job (parameter job_id) is processing under the lease of the worker (parameter worker)."""
    return (jobs.c.id == bindparam("job_id", type_=String), jobs.c.status == Status.PROCESSING,
            jobs.c.leased_by == bindparam("worker", type_=String))


@functools.cache
def _renew_statement():
    """Job.renew_lease's UPDATE; parameters now, job_id, worker, lease_until, progress (None: unchanged)."""
    jobs = Job.__table__
    progress = bindparam("progress", type_=Integer)
    return (update(jobs).where(*_held_by_worker(jobs))
            .values(lease_expires_at=bindparam("lease_until", type_=DateTime), updated_at=bindparam("now", type_=DateTime),
                    progress=case((progress.is_not(None) & (jobs.c.progress < progress), progress),
                                  else_=jobs.c.progress))
            .returning(jobs.c.id, jobs.c.owner))


@functools.cache
def _complete_statement():
    """Job.complete's UPDATE; parameters now, job_id, worker, result_path."""
    jobs = Job.__table__
    now = bindparam("now", type_=DateTime)
    return (update(jobs).where(*_held_by_worker(jobs))
            .values(status=Status.COMPLETE, result_path=bindparam("result_path", type_=String), progress=100,
                    completed_at=now, updated_at=now, leased_by=None, lease_expires_at=None, error_code=None,
                    error=None)
            .returning(jobs.c.id, jobs.c.owner, *JobEvent.READS, NOTIFY_WANTED))


def _seconds_between(start, end):
    """SQL for end − start in seconds, in the dialect at hand."""
    if db.session.get_bind().dialect.name == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return func.extract("epoch", end - start)


class JobRemoval(db.Model):
    """A deleted job, remembered a while so that every open page drops its row (even a page that was away)."""

    __tablename__ = "job_removals"
    __table_args__ = (Index("ix_job_removals_owner_removed", "owner", "removed_at"),
                      Index("ix_job_removals_removed", "removed_at"))

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    removed_at: Mapped[datetime] = mapped_column(DateTime)

    @classmethod
    def since(cls, owner, since, newest=None):
        """(job id, removed_at) of the owner's (None: everyone's) jobs removed after since, oldest first; with
        newest, only that many of the latest."""
        owned = () if owner is None else (cls.owner == owner,)
        query = select(cls.job_id, cls.removed_at).where(cls.removed_at > since, *owned)
        if newest is None:
            return db.session.execute(query.order_by(cls.removed_at)).all()
        return db.session.execute(query.order_by(cls.removed_at.desc()).limit(newest)).all()[::-1]

    @classmethod
    def forget_before(cls, before):
        """Drop removals older than before (a page away that long reloads anyway); how many."""
        with write_transaction() as session:
            return session.execute(delete(cls).where(cls.removed_at < before)).rowcount


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

# Claims count processing jobs; where the database does not serialize writers (SQLite does), this row lock does.
_SERIALIZE_CLAIMS = select(Coordination.__table__.c.name).where(Coordination.__table__.c.name == "claims").with_for_update()
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


