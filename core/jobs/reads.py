"""What the dashboard, the API and the admins read of the jobs table: one job of an owner, lists and their filters,
changes since a cursor, totals and counts.

JobReads is mixed into Job (core/jobs/model.py): these are Job's queries, `Job.totals(owner)`.
"""
from sqlalchemy import and_, case, func, select, true
from sqlalchemy.ext.hybrid import hybrid_method

from core.db import db
from core.jobs.removals import JobRemoval
from core.jobs.states import ACTIVE, FINISHED, Status


class JobReads:
    """Job's reads; owner None reads everyone's jobs (the admins' view)."""

    # -- the filters of a list: each a check of one job and its SQL twin, side by side ----------

    @classmethod
    def of_owner(cls, owner):
        """SQL conditions for the owner's jobs; none for owner None (everyone's, the admins' view)."""
        return () if owner is None else (cls.owner == owner,)

    @hybrid_method
    def name_contains(self, q):
        """The file name contains q, ignoring case: on a job, True or False; on Job, its SQL."""
        return not q or q.casefold() in self.filename.casefold()

    @name_contains.inplace.expression
    @classmethod
    def _name_contains_sql(cls, q):
        # %, _ and \ in q are literal. SQLite's LIKE folds the case of ASCII letters only (PostgreSQL's ILIKE, all).
        escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return cls.filename.ilike(f"%{escaped}%", escape="\\")

    @hybrid_method
    def matches(self, statuses, q):
        """The job is one of statuses (none: any) and its file name contains q: on a job, True or False (a live row
        that no longer matches its page's view leaves it); on Job, its SQL (the view's neighbours)."""
        return (not statuses or self.status in statuses) and self.name_contains(q)

    @matches.inplace.expression
    @classmethod
    def _matches_sql(cls, statuses, q):
        return and_(true(), *((cls.status.in_(statuses),) if statuses else ()), *((cls.name_contains(q),) if q else ()))

    # -- reads ---------------------------------------------------------------------------------

    @classmethod
    def owned(cls, owner, job_id):
        """The owner's job with this id (owner None: anyone's), or None (another owner's job is as good as absent)."""
        return db.session.execute(select(cls).where(cls.id == job_id, *cls.of_owner(owner))).scalar_one_or_none()

    @classmethod
    def active_count(cls, owner):
        """How many of the owner's jobs are active."""
        return db.session.scalar(select(func.count()).select_from(cls).where(cls.status.in_(ACTIVE),
                                                                              *cls.of_owner(owner)))

    @classmethod
    def changed_since(cls, owner, since, newest=None):
        """The owner's jobs whose updated_at is after since, oldest change first (live rows); with newest, only that
        many of the latest changes (a LIMIT in SQL, whatever since is)."""
        query = select(cls).where(cls.updated_at > since, *cls.of_owner(owner))
        if newest is None:
            return db.session.execute(query.order_by(cls.updated_at, cls.id)).scalars().all()
        latest = db.session.execute(query.order_by(cls.updated_at.desc(), cls.id.desc()).limit(newest)).scalars().all()
        return latest[::-1]

    @classmethod
    def totals(cls, owner):
        """The owner's counts by state and average processing time, for the totals box."""
        total, complete, failed, active, average = db.session.execute(
            select(
                func.count(),
                func.count().filter(cls.status == Status.COMPLETE),
                func.count().filter(cls.status == Status.FAILED),
                func.count().filter(cls.status.in_(ACTIVE)),
                func.avg(case((cls.status == Status.COMPLETE, _seconds_between(cls.started_at, cls.completed_at)))),
            ).where(*cls.of_owner(owner))
        ).one()
        return {"total": total, "complete": complete, "failed": failed, "active": active, "average_seconds": average}

    @classmethod
    def counts(cls, owner, q=None):
        """The owner's jobs counted per filter of the queue (states.FILTERS: keyed by each one's count); with q, of
        those whose file name contains it. Counted from the owner's newest-first index alone."""
        total, active, complete, failed = db.session.execute(
            select(func.count(), func.count().filter(cls.status.in_(ACTIVE)),
                   func.count().filter(cls.status == Status.COMPLETE), func.count().filter(cls.status == Status.FAILED))
            .where(*cls.of_owner(owner), *((cls.name_contains(q),) if q else ()))
        ).one()
        return {"total": total, "active": active, "complete": complete, "failed": failed}

    @classmethod
    def finished_since(cls, owner, since):
        """(status, started_at, completed_at) of the owner's jobs finished after since (the queue's chart). A job's
        updated_at is never before its completed_at, so the owner's index on updated_at narrows the read to the jobs
        changed since then."""
        return db.session.execute(
            select(cls.status, cls.started_at, cls.completed_at)
            .where(*cls.of_owner(owner), cls.updated_at > since, cls.status.in_(FINISHED),
                   cls.completed_at > since)).all()

    @classmethod
    def owners_changed_after(cls, cursor):
        """(owner, time) for every owner whose jobs changed (their newest change) or were removed after cursor."""
        changed = (select(cls.owner, func.max(cls.updated_at).label("at"))
                   .where(cls.updated_at > cursor).group_by(cls.owner))
        # Removals are few: read them by time alone (grouping by owner would scan the owner index whole).
        removed = select(JobRemoval.owner, JobRemoval.removed_at.label("at")).where(JobRemoval.removed_at > cursor)
        return db.session.execute(changed.union_all(removed)).all()


def _seconds_between(start, end):
    """SQL for end − start in seconds, in the dialect at hand."""
    if db.session.get_bind().dialect.name == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return func.extract("epoch", end - start)
