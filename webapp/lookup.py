"""The jobs a request may see: one by id (another owner's is a 404), a page of them with their cursor, and whose
each is in the everyone view. The API, the pages and bulk actions read through here."""
import base64
import binascii
import json
import logging

from flask import request
from sqlalchemy import select, tuple_

from core import changes, codes
from core.accounts import User
from core.clock import isoformat, parse_iso, utcnow
from core.db import db
from core.errors import ApiError, not_found
from core.jobs.model import Job
from core.operations import job_filters
from .identity import current_owner, is_admin

logger = logging.getLogger("pdfqueue.web")

DEFAULT_PAGE, MAX_PAGE = 50, 200


def owned_or_404(job_id):
    """My job with this id (an admin: anyone's), or a 404 (another owner's job is as good as absent)."""
    owner = None if is_admin() else current_owner()
    job = Job.owned(owner, job_id)
    if job is None:
        refused("owner", job_id, owner)
    return job


def refused(why, job_id, owner):
    """Answer 404 for a job this caller may not have, logging who asked (ids only: never a file name)."""
    exists = owner is not None and db.session.get(Job, job_id) is not None
    # Another owner's job is worth a look (a guessed or leaked id); an unknown one is usually a stale page.
    logger.log(logging.WARNING if exists else logging.INFO, "job %s refused: %s", job_id,
               "another owner's" if exists else "no such job",
               extra={"job_id": job_id, "owner": owner, "refused": why, "exists": exists, "path": request.path})
    raise not_found()


def with_owners(jobs, owner):
    """The jobs as JSON; in the everyone view each also says whose it is (owner_email null: no account)."""
    if owner is not None:
        return [job.to_dict() for job in jobs]
    emails = User.emails(job.owner for job in jobs)
    return [{**job.to_dict(), "owner": job.owner, "owner_email": emails.get(job.owner)} for job in jobs]


def _decode_cursor(raw):
    try:
        created, job_id = json.loads(base64.urlsafe_b64decode(raw.encode()))
        return parse_iso(created), job_id
    except (ValueError, TypeError, binascii.Error):
        raise ApiError(codes.BAD_REQUEST, 400, "The cursor is not one this server gave out.")


def _encode_cursor(job):
    return base64.urlsafe_b64encode(json.dumps([isoformat(job.created_at), job.id]).encode()).decode()


def list_jobs(owner, args):
    """The owner's jobs (owner None: everyone's), newest first, filtered and paginated as asked; pages use it too."""
    query = select(Job).where(*Job.of_owner(owner), *job_filters(args))
    try:
        limit = min(max(int(args.get("limit", DEFAULT_PAGE)), 1), MAX_PAGE)
    except ValueError:
        raise ApiError(codes.BAD_REQUEST, 400, "'limit' must be a whole number.")
    if args.get("cursor"):
        created, job_id = _decode_cursor(args["cursor"])
        query = query.where(tuple_(Job.created_at, Job.id) < tuple_(created, job_id))
    # Lag server_time behind now, so a change committed while we read is not skipped by the next ?since=.
    server_time = utcnow() - changes.OVERLAP
    jobs = db.session.execute(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)).scalars().all()
    next_cursor = _encode_cursor(jobs[limit - 1]) if len(jobs) > limit else None
    return jobs[:limit], next_cursor, server_time
