"""The public JSON API under /api: uploads, jobs, downloads, retries, health."""
import hmac
import logging
import time
from datetime import timedelta, timezone

from flask import Blueprint, current_app, jsonify, request, send_file
from flask_login import current_user
from flask_wtf.csrf import generate_csrf
from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import text
from werkzeug.routing import BaseConverter

from . import htmx, limits, security, uploads
from core import breaker_state as breaker
from core import codes
from core import queue
from core.clock import isoformat, utcnow
from core.db import db
from core.errors import ApiError, not_found
from .identity import current_owner, is_admin, may_spend, owner_scope
from .lookup import list_jobs, owned_or_404, with_owners
from .limits import upload_limits
from . import metrics
from core.accounts import User
from core.coordination import worker_heartbeat
from core.jobs.history import JobEvent
from core.jobs.model import Job
from core.jobs.states import Status
from core.operations import delete_with_files, downloaded, retry_failed
from core.paths import kept_file

bp = Blueprint("api", __name__, url_prefix="/api")
logger = logging.getLogger("pdfqueue.web")


class JobId(BaseConverter):
    """A job id in a path: one segment, never the name of a route beside /api/jobs/<job_id> (archive, bulk), so that
    `DELETE /api/jobs/archive` is a 405 whose Allow is archive's methods, not a look for a job called "archive"."""

    regex = r"(?!(?:archive|bulk)(?:/|$))[^/]+"


bp.record_once(lambda state: state.app.url_map.converters.setdefault("job", JobId))  # before the rules below


@bp.get("/session")
def session_info():
    """Say who is signed in, and hand scripts the CSRF token that cookie sessions need."""
    user = current_user.to_dict() if current_user.is_authenticated else None
    return jsonify(user=user, owner=current_owner(), csrf_token=generate_csrf())


@bp.post("/upload")
@upload_limits
def upload():
    """Accept one or more PDFs, each becoming a queued job (or the existing one, for a repeat)."""
    accepted, rejected, last_error = uploads.accept_request(current_owner())
    if not accepted:
        if len(rejected) == 1:
            raise last_error
        return jsonify(jobs=[], rejected=rejected), last_error.status
    return jsonify(jobs=accepted, rejected=rejected), 202


@bp.get("/jobs")
def jobs_index():
    """List my jobs (an admin with ?owner=all: everyone's), newest first."""
    owner = owner_scope(request.args)
    jobs, next_cursor, server_time = list_jobs(owner, request.args)
    return jsonify(jobs=with_owners(jobs, owner), active_count=Job.active_count(owner),
                   server_time=isoformat(server_time), next_cursor=next_cursor)


@bp.get("/jobs/<job:job_id>")
def job_show(job_id):
    """Show one of my jobs."""
    return jsonify(owned_or_404(job_id).to_dict())


@bp.delete("/jobs/<job:job_id>")
def job_delete(job_id):
    """Delete one of my jobs and its files."""
    delete_with_files(owned_or_404(job_id))
    return "", 204


@bp.post("/jobs/<job:job_id>/retry")
@limits.action_limit("retry")
def job_retry(job_id):
    """Queue a failed job again from its kept PDF."""
    job = owned_or_404(job_id)
    retry_failed(job)
    db.session.refresh(job)
    # A job is active again: the dashboard's poller, stopped once nothing was active, looks again.
    return htmx.trigger(jsonify(job.to_dict()), htmx.QUEUE_ACTIVE), 202


@bp.post("/jobs/<job:job_id>/priority")
def job_priority(job_id):
    """Run next: move a queued job to the front of everyone's queue (admins only; see Job.run_next)."""
    if not is_admin():
        if Job.owned(current_owner(), job_id) is None:
            raise not_found()  # another's job is as good as absent
        raise ApiError(codes.FORBIDDEN, 403, "Only an admin can move a job to the front of the queue.")
    job = owned_or_404(job_id)
    if not Job.run_next(job.id):
        raise ApiError(codes.NOT_QUEUED, 409, f"Only a queued job can be moved to the front: it is {job.status}.")
    queue.wake(job.id)
    db.session.refresh(job)
    return jsonify(job.to_dict())


def download_response(job, spend=True):
    """Stream a job's XML as an attachment, or say why it cannot be had; with spend, this is its download (with
    RETENTION_XML_AFTER_DOWNLOAD the result then expires)."""
    if job.status != Status.COMPLETE:
        raise ApiError(codes.NOT_READY, 409, f"The result is not ready: the job is {job.status}.")
    path = kept_file(current_app.config["DATA_DIR"], job.result_path) if job.has_result else None
    if path is None or not path.exists():
        raise ApiError(codes.EXPIRED, 410, "The result was removed by retention; upload the PDF again.")
    shown = uploads.display_name(job.filename)  # a name kept before format characters were stripped, too
    name = (shown.rsplit(".", 1)[0] if "." in shown else shown) + ".xml"
    # send_file writes Content-Disposition with an ASCII fallback and the RFC 5987 filename*.
    response = send_file(path, mimetype="application/xml", as_attachment=True, download_name=name,
                         conditional=False, etag=False, max_age=0)
    # send_file holds the file open, so the answer streams whole though its name is gone already.
    if spend:
        downloaded(job.id, path)
    return response


@bp.route("/jobs/<job:job_id>/download", methods=["GET", "POST"])
def job_download(job_id):
    """Download my job's XML result. Only a request from our own pages, a token or a POST with CSRF counts as
    its download for RETENTION_XML_AFTER_DOWNLOAD (identity.may_spend)."""
    return download_response(owned_or_404(job_id), spend=may_spend())


@bp.get("/jobs/<job:job_id>/pdf")
def job_pdf(job_id):
    """Show my job's source PDF inline (the review page draws it); 410 once retention removed it."""
    job = owned_or_404(job_id)
    path = kept_file(current_app.config["DATA_DIR"], job.upload_path)
    if path is None or not path.exists():
        raise ApiError(codes.EXPIRED, 410, "The PDF was removed by retention; upload it again to see it.")
    _whole_file_for_a_long_suffix(path.stat().st_size)
    # Inline, so the browser shows it rather than saving it; Range requests let a reader fetch what it draws.
    response = send_file(path, mimetype="application/pdf", as_attachment=False, download_name=job.filename,
                         conditional=True, etag=True, max_age=0)
    response.headers["Cache-Control"] = "private, no-cache"
    response.headers["Content-Security-Policy"] = security.PDF_DOCUMENT_POLICY
    return response


def _whole_file_for_a_long_suffix(size):
    """A suffix range longer than the file (`bytes=-N`, N > size) asks for all of it (RFC 9110 14.1.2); werkzeug
    (3.1) answers 416 instead, so ask it for the whole file from the first byte."""
    wanted = request.range
    if wanted is not None and wanted.units == "bytes" and len(wanted.ranges) == 1:
        start, end = wanted.ranges[0]
        if start < 0 and end is None and -start > size:
            request.environ["HTTP_RANGE"] = "bytes=0-"


@bp.get("/jobs/<job:job_id>/events")
def job_events(job_id):
    """List my job's history, oldest first: each attempt, error, hold, retry and transition with its time."""
    job = owned_or_404(job_id)
    return jsonify(events=[event.to_dict() for event in JobEvent.of(job.id)])


def share_serializer():
    """Signs share links with SECRET_KEY; links signed with a key in SECRET_KEY_FALLBACKS still check."""
    config = current_app.config
    return URLSafeSerializer([*config.get("SECRET_KEY_FALLBACKS", ()), config["SECRET_KEY"]], salt="pdfqueue.share.v2")


@bp.post("/jobs/<job:job_id>/share")
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


@bp.delete("/jobs/<job:job_id>/share")
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
    owner = db.session.get(User, job.owner)
    if owner is not None and owner.disabled:
        raise not_found()  # a disabled user's links share nothing (enabled again, they work again)
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
