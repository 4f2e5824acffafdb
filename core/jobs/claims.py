"""Which queued job a worker runs next, and the claim that takes it: fair share between owners, in one statement.

Each job has a place in its owner's queue, queue_key: its upload time; its retry time once it waits out a back-off
(so a job is due exactly when its queue_key has passed); the time a person re-queued it; a time before
RUN_NEXT_BEFORE once an admin moved it to the front (run_next). Released jobs keep their place. Among the owners
with a queued job, each one's head (its lowest queue_key, then id: FIFO within an owner) competes, and the first of
the due heads wins:

    1. moved to the front by an admin (the latest such move first);
    2. its owner has the fewest jobs processing;
    3. its owner was served least recently (never served first): the latest started_at of their jobs;
    4. the lowest queue_key, then id.

So claims go round-robin across the owners with active jobs, and one owner's 500-file drop makes another's single
invoice wait for one free slot, not for the 500. The choice is a subquery of the claim's one conditional UPDATE,
made under the claims' write lock, so it is exact across workers; it costs a few index seeks per owner with queued
jobs (ix_jobs_status_owner_queue, ix_jobs_owner_status, ix_jobs_owner_started), however many jobs are queued.

Beside the claim, what the worker reads around it: the look a wake-up takes (status_of), the due jobs to wake
(due_ids), and the jobs whose lease lapsed (lapsed), which come back as a claim does (CLAIMED).

JobClaims is mixed into Job (core/jobs/model.py); its changes are written as every transition is (engine.py).
"""
import functools
from datetime import datetime, timedelta

from sqlalchemy import DateTime, Integer, String, bindparam, case, func, select

from core.clock import utcnow
from core.db import db, read_first
from core.jobs import engine
from core.jobs.history import EventKind
from core.jobs.states import Status

# Queue keys before this mark jobs an admin moved to the front (run_next); real times are all after it.
RUN_NEXT_BEFORE = datetime(2000, 1, 1)
# What a worker needs of a job it claimed, returned by the claim itself (no second read).
CLAIMED = ("correlation_id", "mapping", "bytes", "upload_path", "attempts", "created_at")


class JobClaims:
    """Job's claim, the fair choice it makes, and the worker's reads around it."""

    @classmethod
    def claim_next(cls, worker, lease_seconds, capacity):
        """queued → processing for this worker: the queued, due job that fair share puts first, if any and if fewer
        than capacity are processing. One attempt spent, a lease taken; one statement.

        Returns the job's id, owner and what the worker needs of it (CLAIMED), or None if none was claimable."""
        return engine.apply(cls._claiming(), worker=worker, capacity=capacity, lease_until=engine.after(lease_seconds))

    @classmethod
    @functools.cache
    def _claiming(cls):
        """claim_next's UPDATE; parameters now, worker, lease_until, capacity."""
        jobs = cls.__table__
        now = engine.NOW
        processing = select(func.count()).select_from(jobs).where(jobs.c.status == Status.PROCESSING).scalar_subquery()
        return engine.transition(
            cls, jobs.c.status == Status.QUEUED, processing < bindparam("capacity", type_=Integer), cls.is_due(now),
            job=cls.next_choice(now), event=EventKind.ATTEMPT, serialize=True,
            returning=[jobs.c[name] for name in CLAIMED],
            status=Status.PROCESSING, leased_by=bindparam("worker", type_=String),
            lease_expires_at=bindparam("lease_until", type_=DateTime),
            started_at=now, next_attempt_at=None, attempts=jobs.c.attempts + 1, progress=10)

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
    def is_due(cls, now):
        """SQL: the job's back-off (if any) has passed at now."""
        jobs = cls.__table__
        return jobs.c.next_attempt_at.is_(None) | (jobs.c.next_attempt_at <= now)

    @classmethod
    def run_next(cls, job_id):
        """Move a queued job to the front of the whole queue (an admin asked): it is the next one claimed, whoever
        owns it and whatever its back-off; a later move goes before it. False if it is not queued."""
        return engine.apply(cls._moving_to_front(), job_id=job_id, queue_key=cls._front_key) is not None

    @classmethod
    @functools.cache
    def _moving_to_front(cls):
        """run_next's UPDATE; parameters now, job_id, queue_key."""
        jobs = cls.__table__
        return engine.transition(cls, jobs.c.status == Status.QUEUED, event=EventKind.RUN_NEXT, serialize=True,
                                 queue_key=bindparam("queue_key", type_=DateTime), next_attempt_at=None)

    @classmethod
    def _front_key(cls, connection, now):
        """run_next's queue key, read under the claims' lock: before every queued job's, and before RUN_NEXT_BEFORE."""
        jobs = cls.__table__
        first = connection.scalar(select(func.min(jobs.c.queue_key)).where(jobs.c.status == Status.QUEUED))
        return min(first or RUN_NEXT_BEFORE, RUN_NEXT_BEFORE) - timedelta(seconds=1)

    # -- what the worker reads around a claim -------------------------------------------------------

    @classmethod
    def status_of(cls, job_id):
        """(status, next_attempt_at) of the job, or (None, None) if there is none: a worker's look at the job a
        wake-up names, read on a Core connection with a statement built once (every wake-up costs one)."""
        return read_first(cls._looking(), {"job_id": job_id}) or (None, None)

    @classmethod
    @functools.cache
    def _looking(cls):
        """status_of's SELECT; parameter job_id."""
        jobs = cls.__table__
        return select(jobs.c.status, jobs.c.next_attempt_at).where(jobs.c.id == bindparam("job_id", type_=String))

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
    def lapsed(cls):
        """Processing jobs whose lease lapsed (their worker died): each its id and what a claim returns (CLAIMED)."""
        rows = db.session.execute(select(cls.id, *(getattr(cls, name) for name in CLAIMED)).where(
            cls._leased_by(None, utcnow()))).all()
        db.session.commit()
        return rows

