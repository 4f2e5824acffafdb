"""The public JSON API under /api: uploads, jobs, downloads, retries, health."""
import base64
import binascii
import json
import hmac
import logging
import time
from datetime import timedelta, timezone
from pathlib import Path

from flask import Blueprint, current_app, jsonify, request, send_file
from flask_login import current_user
from flask_wtf.csrf import generate_csrf
from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import select, text, tuple_

import tasks

from . import breaker, codes, events, htmx, limits, queue, security, uploads
from .clock import isoformat, parse_iso, utcnow
from .db import db
from .errors import ApiError, not_found
from .accounts import User
from .identity import current_owner, is_admin, owner_scope
from .limits import upload_limits
from . import metrics
from .metrics import worker_heartbeat
from .models import STATUS_GROUPS, Job, JobEvent, Status

bp = Blueprint("api", __name__, url_prefix="/api")
logger = logging.getLogger("pdfqueue.web")

DEFAULT_PAGE, MAX_PAGE = 50, 200
MAX_QUERY = 200  # longest file-name search (?q=)


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


@bp.get("/session")
def session_info():
    """Say who is signed in, and hand scripts the CSRF token that cookie sessions need."""
    user = current_user.to_dict() if current_user.is_authenticated else None
    return jsonify(user=user, owner=current_owner(), csrf_token=generate_csrf())


@bp.post("/upload")
@upload_limits
def upload():
    """Accept one or more PDFs, each becoming a queued job (or the existing one, for a repeat)."""
    files = request.files.getlist("file")
    if not files:
        raise ApiError(codes.NO_FILE, 400, "Send at least one PDF in a multipart part named 'file'.")
    mapping = uploads.normalize_mapping(request.form.get("mapping") or current_app.config["DEFAULT_MAPPING"],
                                        current_app.config["MAPPINGS"])
    owner = current_owner()
    accepted, rejected = [], []
    for storage in files:
        try:
            job, created = uploads.accept(storage, owner, mapping)
        except ApiError as error:
            rejected.append({"filename": uploads.display_name(storage.filename), **error.to_dict()})
            last_error = error
            continue
        if created:
            tasks.wake(job.id)
        accepted.append({**job.to_dict(), "duplicate": not created})
    if not accepted:
        if len(rejected) == 1:
            raise last_error
        return jsonify(jobs=[], rejected=rejected), last_error.status
    return jsonify(jobs=accepted, rejected=rejected), 202


def _decode_cursor(raw):
    try:
        created, job_id = json.loads(base64.urlsafe_b64decode(raw.encode()))
        return parse_iso(created), job_id
    except (ValueError, TypeError, binascii.Error):
        raise ApiError(codes.BAD_REQUEST, 400, "The cursor is not one this server gave out.")


def _encode_cursor(job):
    return base64.urlsafe_b64encode(json.dumps([isoformat(job.created_at), job.id]).encode()).decode()


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


def list_jobs(owner, args):
    """The owner's jobs (owner None: everyone's), newest first, filtered and paginated as asked; pages use it too."""
    query = select(Job).where(*Job._of(owner), *job_filters(args))
    try:
        limit = min(max(int(args.get("limit", DEFAULT_PAGE)), 1), MAX_PAGE)
    except ValueError:
        raise ApiError(codes.BAD_REQUEST, 400, "'limit' must be a whole number.")
    if args.get("cursor"):
        created, job_id = _decode_cursor(args["cursor"])
        query = query.where(tuple_(Job.created_at, Job.id) < tuple_(created, job_id))
    # Lag server_time behind now, so a change committed while we read is not skipped by the next ?since=.
    server_time = utcnow() - events.OVERLAP
    jobs = db.session.execute(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)).scalars().all()
    next_cursor = _encode_cursor(jobs[limit - 1]) if len(jobs) > limit else None
    return jobs[:limit], next_cursor, server_time


@bp.get("/jobs")
def jobs_index():
    """List my jobs (an admin with ?owner=all: everyone's), newest first."""
    owner = owner_scope(request.args)
    jobs, next_cursor, server_time = list_jobs(owner, request.args)
    return jsonify(jobs=with_owners(jobs, owner), active_count=Job.active_count(owner),
                   server_time=isoformat(server_time), next_cursor=next_cursor)


@bp.get("/jobs/<job_id>")
def job_show(job_id):
    """Show one of my jobs."""
    return jsonify(owned_or_404(job_id).to_dict())


def delete_with_files(job):
    """Delete the job, then its files (the API's delete and the admin CLI's)."""
    data_dir = Path(current_app.config["DATA_DIR"])
    for path in Job.remove(job.id) or ():
        if path:
            (data_dir / path).unlink(missing_ok=True)


def retry_failed(job):
    """Queue a failed job again from its kept PDF and wake it; raise NOT_RETRYABLE if it cannot be."""
    kept = job.retryable and (Path(current_app.config["DATA_DIR"]) / job.upload_path).exists()
    if not kept or not Job.requeue(job.id):
        why = "its PDF is gone" if job.status == Status.FAILED else f"it is {job.status}, not failed"
        raise ApiError(codes.NOT_RETRYABLE, 409, f"This job cannot be retried: {why}.")
    tasks.wake(job.id)


@bp.delete("/jobs/<job_id>")
def job_delete(job_id):
    """Delete one of my jobs and its files."""
    delete_with_files(owned_or_404(job_id))
    return "", 204


@bp.post("/jobs/<job_id>/retry")
@limits.action_limit("retry")
def job_retry(job_id):
    """Queue a failed job again from its kept PDF."""
    job = owned_or_404(job_id)
    retry_failed(job)
    db.session.refresh(job)
    # A job is active again: the dashboard's poller, stopped once nothing was active, looks again.
    return htmx.trigger(jsonify(job.to_dict()), htmx.QUEUE_ACTIVE), 202


@bp.post("/jobs/<job_id>/priority")
def job_priority(job_id):
    """Run next: move a queued job to the front of everyone's queue (admins only; see Job.run_next)."""
    if not is_admin():
        if Job.owned(current_owner(), job_id) is None:
            raise not_found()  # another's job is as good as absent
        raise ApiError(codes.FORBIDDEN, 403, "Only an admin can move a job to the front of the queue.")
    job = owned_or_404(job_id)
    if not Job.run_next(job.id):
        raise ApiError(codes.NOT_QUEUED, 409, f"Only a queued job can be moved to the front: it is {job.status}.")
    tasks.wake(job.id)
    db.session.refresh(job)
    return jsonify(job.to_dict())


def download_response(job):
    """Stream a job's XML as an attachment, or say why it cannot be had."""
    if job.status != Status.COMPLETE:
        raise ApiError(codes.NOT_READY, 409, f"The result is not ready: the job is {job.status}.")
    path = Path(current_app.config["DATA_DIR"]) / job.result_path if job.has_result else None
    if path is None or not path.exists():
        raise ApiError(codes.EXPIRED, 410, "The result was removed by retention; upload the PDF again.")
    shown = uploads.display_name(job.filename)  # a name kept before format characters were stripped, too
    name = (shown.rsplit(".", 1)[0] if "." in shown else shown) + ".xml"
    # send_file writes Content-Disposition with an ASCII fallback and the RFC 5987 filename*.
    response = send_file(path, mimetype="application/xml", as_attachment=True, download_name=name,
                         conditional=False, etag=False, max_age=0)
    # send_file holds the file open, so the answer streams whole though its name is gone already.
    downloaded(job.id, path)
    return response


def downloaded(job_id, path):
    """The job's result at path was downloaded (alone, or in an archive): with RETENTION_XML_AFTER_DOWNLOAD it
    expires now."""
    if current_app.config["RETENTION_XML_AFTER_DOWNLOAD"] and Job.expire_result(job_id):
        path.unlink(missing_ok=True)


@bp.get("/jobs/<job_id>/download")
def job_download(job_id):
    """Download my job's XML result."""
    return download_response(owned_or_404(job_id))


@bp.get("/jobs/<job_id>/pdf")
def job_pdf(job_id):
    """Show my job's source PDF inline (the review page draws it); 410 once retention removed it."""
    job = owned_or_404(job_id)
    path = Path(current_app.config["DATA_DIR"]) / job.upload_path if job.upload_path else None
    if path is None or not path.exists():
        raise ApiError(codes.EXPIRED, 410, "The PDF was removed by retention; upload it again to see it.")
    # Inline, so the browser shows it rather than saving it; Range requests let a reader fetch what it draws.
    response = send_file(path, mimetype="application/pdf", as_attachment=False, download_name=job.filename,
                         conditional=True, etag=True, max_age=0)
    response.headers["Cache-Control"] = "private, no-cache"
    response.headers["Content-Security-Policy"] = security.PDF_DOCUMENT_POLICY
    return response


@bp.get("/jobs/<job_id>/events")
def job_events(job_id):
    """List my job's history, oldest first: each attempt, error, hold, retry and transition with its time."""
    job = owned_or_404(job_id)
    return jsonify(events=[event.to_dict() for event in JobEvent.of(job.id)])


def share_serializer():
    """Signs share links with SECRET_KEY; links signed with a key in SECRET_KEY_FALLBACKS still check."""
    config = current_app.config
    return URLSafeSerializer([*config.get("SECRET_KEY_FALLBACKS", ()), config["SECRET_KEY"]], salt="pdfqueue.share.v2")


@bp.post("/jobs/<job_id>/share")
@limits.action_limit("share")
def job_share(job_id):
    """Make a short-lived signed link to my job's result that needs no session."""
    job = owned_or_404(job_id)
    if job.status != Status.COMPLETE:
        raise ApiError(codes.NOT_READY, 409, f"Only a complete job can be shared: it is {job.status}.")
    expires = utcnow() + timedelta(seconds=current_app.config["SHARE_TTL_SECONDS"])
    # The job and its share nonce, not the owner; the expiry is the one fixed now, not the TTL set at download.
    claims = {"j": job.id, "n": Job.share_nonce_of(job.id), "e": int(expires.replace(tzinfo=timezone.utc).timestamp())}
    return jsonify(url=f"/d/{share_serializer().dumps(claims)}", expires_at=isoformat(expires)), 201


@bp.delete("/jobs/<job_id>/share")
@limits.action_limit("share")
def job_unshare(job_id):
    """Revoke every share link of my job."""
    Job.revoke_shares(owned_or_404(job_id).id)
    return "", 204


shared = Blueprint("shared", __name__)


@shared.get("/d/<token>")
def shared_download(token):
    """Download a result through a signed link."""
    try:
        claims = share_serializer().loads(token)
        job_id, nonce, expires = claims["j"], claims["n"], float(claims["e"])
    except (BadSignature, KeyError, TypeError, ValueError):
        raise not_found()
    job = db.session.get(Job, job_id) if isinstance(job_id, str) else None
    if job is None or job.share_nonce is None or not hmac.compare_digest(str(nonce), job.share_nonce):
        raise not_found()  # deleted, or its links were revoked
    if time.time() >= expires:
        raise ApiError(codes.EXPIRED, 410, "This share link has expired; ask for a new one.")
    return download_response(job)


@bp.get("/healthz")
def healthz():
    """Report liveness; to a signed-in user or METRICS_TOKEN also the state of the database, the queue, the
    gateway, its breaker and the workers."""
    report = {"status": "ok", "db": "ok", "queue": "ok", "gateway": "unknown", "breaker": "unknown", "worker": "unknown"}
    try:
        db.session.execute(text("SELECT 1"))
        report["gateway"] = breaker.gateway_state()  # the breaker's state lives in the database
        report["breaker"] = breaker.state()
        age, alive = worker_heartbeat()  # the worker is another process: say so, but the web stays up
        report["worker"] = "ok" if alive else "down"
        report["worker_heartbeat_age_s"] = None if age is None else round(age, 1)
        db.session.rollback()
    except Exception:  # any failure here means "down"; the details go to the log
        db.session.rollback()
        current_app.logger.exception("healthz: database check failed")
        report["db"] = "down"
    if not queue.reachable():
        report["queue"] = "down"
    healthy = report["db"] == "ok" and report["queue"] == "ok"
    if not healthy:
        report["status"] = "degraded"
    public = current_app.config["AUTH"] != "none" and not current_user.is_authenticated
    if public and not (metrics.has_metrics_token() or metrics.on_metrics_port()):
        report = {"status": report["status"]}  # the world learns whether we are up, not what we run on
    return jsonify(report), 200 if healthy else 503
