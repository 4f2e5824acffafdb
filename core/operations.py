"""What API, pages, bulk actions, the admin CLI and the worker's upkeep do to jobs, written once: each entry point
parses its own input, checks who may act, and calls one of these.

Each operation is a transition of Job (core/jobs/model.py) plus what goes with it outside the table: files on disk
and the wake-up in the queue. They raise ApiError, which the web answers with and the CLI prints.
"""
import logging
import time
from flask_babel import lazy_gettext as _l
from datetime import timedelta
from pathlib import Path

from flask import current_app
from sqlalchemy import select

from core import codes, queue
from core.accounts import OneTimeLink, UserSession
from core.clock import parse_iso, utcnow
from core.db import db
from core.errors import ApiError
from core.jobs.model import Job
from core.jobs.removals import JobRemoval
from core.jobs.states import FINISHED, STATUS_GROUPS, Status
from core.outbox import OutboxEvent
from core.paths import kept_file

logger = logging.getLogger("pdfqueue.worker")

MAX_QUERY = 200  # longest file-name search (?q=)
REMOVALS_KEPT = timedelta(days=1)  # a page away longer than this reloads anyway
NOTIFICATIONS_KEPT = timedelta(days=30)  # settled deliveries shown on the settings page this long


def job_filters(args):
    """SQL conditions for the filters of GET /api/jobs (since, status, q), shared by the list, the archive and
    bulk actions; raise a 400 for one that cannot be read."""
    where = []
    if args.get("since"):
        try:
            where.append(Job.updated_at > parse_iso(args["since"]))
        except ValueError:
            raise ApiError(codes.BAD_REQUEST, 400, "'since' must be an ISO-8601 timestamp.")
    status = args.get("status")
    if status:
        wanted = status.split(",")
        if not set(wanted) <= set(STATUS_GROUPS):
            raise ApiError(codes.BAD_REQUEST, 400, f"'status' must be among: {', '.join(STATUS_GROUPS)}.")
        statuses = {member for name in wanted for member in STATUS_GROUPS[name]}
        if "all" not in wanted:
            where.append(Job.status.in_(sorted(statuses)))
    q = (args.get("q") or "").strip()
    if len(q) > MAX_QUERY:
        raise ApiError(codes.BAD_REQUEST, 400, f"'q' is at most {MAX_QUERY} characters.")
    if q:
        where.append(Job.name_contains(q))
    return where


def delete_with_files(job):
    """Delete the job, then its files (the API's delete and the admin CLI's)."""
    for path in Job.remove(job.id) or ():
        _unlink(current_app.config["DATA_DIR"], path)


def _unlink(data_dir, path):
    """Delete a job's stored file, if it has one and it lies where stored files may (core/paths.py)."""
    if kept := kept_file(data_dir, path):
        kept.unlink(missing_ok=True)


def retry_failed(job):
    """Queue a failed job again from its kept PDF and wake it; raise NOT_RETRYABLE if it cannot be."""
    pdf = kept_file(current_app.config["DATA_DIR"], job.upload_path) if job.retryable else None
    if pdf is None or not pdf.exists() or not Job.requeue(job.id):
        if job.status == Status.FAILED:
            raise ApiError(codes.NOT_RETRYABLE, 409, _l("This job cannot be retried: its PDF is gone."))
        raise ApiError(codes.NOT_RETRYABLE, 409, _l("This job cannot be retried: it is %(status)s, not failed.",
                                                    status=job.status))
    queue.wake(job.id)


def downloaded(job_id, path):
    """The job's result at path was downloaded (alone, or in an archive): with RETENTION_XML_AFTER_DOWNLOAD it
    expires now."""
    if current_app.config["RETENTION_XML_AFTER_DOWNLOAD"] and Job.expire_result(job_id):
        path.unlink(missing_ok=True)


def wake_due():
    """Wake every queued job that is due (after the breaker closed); how many."""
    ids = Job.due_ids(limit=10000)
    for job_id in ids:
        queue.wake(job_id)
    return len(ids)


def apply_retention(now=None):
    """Delete PDFs and XML past their retention (never an active job's), stray partial files, old removals,
    sign-in sessions and one-time links that can no longer be used, and settled notifications past 30 days."""
    config = current_app.config
    now = now or utcnow()
    data_dir = config["DATA_DIR"]
    removed = {"pdf": 0, "xml": 0, "partial": 0}
    old_pdfs = db.session.execute(select(Job.id, Job.upload_path).where(
        Job.status.in_(FINISHED), Job.upload_path.is_not(None),
        Job.created_at < now - timedelta(days=config["RETENTION_PDF_DAYS"]))).all()
    old_results = db.session.execute(select(Job.id, Job.result_path).where(
        Job.status == Status.COMPLETE, Job.result_path.is_not(None),
        Job.completed_at < now - timedelta(days=config["RETENTION_XML_DAYS"]))).all()
    db.session.commit()
    for job_id, path in old_pdfs:
        if Job.forget_upload(job_id):  # conditional: skipped if the job became active meanwhile
            _unlink(data_dir, path)
            removed["pdf"] += 1
    for job_id, path in old_results:
        if Job.expire_result(job_id):
            _unlink(data_dir, path)
            removed["xml"] += 1
    cutoff = time.time() - 3600
    for folder in (config["UPLOAD_DIR"], config["RESULT_DIR"]):
        for partial in Path(folder).glob(".incoming-*"):
            if partial.stat().st_mtime < cutoff:  # left by a process that died mid-write
                partial.unlink(missing_ok=True)
                removed["partial"] += 1
    JobRemoval.forget_before(now - REMOVALS_KEPT)
    removed["sessions"] = UserSession.forget_before(now - timedelta(days=config["SESSION_DAYS"]))
    removed["links"] = OneTimeLink.forget_expired(now)
    removed["notifications"] = OutboxEvent.forget_before(now - NOTIFICATIONS_KEPT)
    logger.info("retention applied", extra={"removed": removed})
    return removed
