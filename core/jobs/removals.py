"""Deleted jobs (job_removals), remembered a while so that every open page drops their rows."""
from datetime import datetime

from sqlalchemy import DateTime, Index, String, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from core.db import db, write_transaction


class JobRemoval(db.Model):
    """A deleted job, remembered a while so that every open page drops its row (even a page that was away).

    Written by Job.remove, in the transaction that deletes the job."""

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
