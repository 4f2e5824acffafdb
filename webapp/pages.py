"""The pages: / (upload), /queue (the live dashboard), /review/<id>, and the partials htmx and SSE reuse."""
from urllib.parse import urlencode

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException
from flask import Blueprint, current_app, flash, g, redirect, render_template, request, url_for
from flask_babel import gettext, lazy_gettext as _l
from flask_login import current_user
from markupsafe import Markup, escape
from sqlalchemy import select, tuple_
from xml.etree.ElementTree import ParseError, indent, tostring

from . import htmx, review, uploads
from .lookup import MAX_PAGE, list_jobs, owned_or_404
from .queue_view import FILTER_STATUSES, STATUS_FILTERS, in_view, queue_view, row_context, totals_context
from core import changes, codes
from core.clock import isoformat, parse_iso, utcnow
from core.errors import ApiError
from core.accounts import User
from core.db import db
from .identity import current_owner, is_admin
from .i18n import when
from .limits import upload_limits
from core.jobs.history import EventKind, JobEvent
from core.jobs.model import Job
from core.jobs.removals import JobRemoval
from core.jobs.states import SLOW_AFTER, Status
from core.paths import kept_file

bp = Blueprint("pages", __name__)

PAGE_SIZE = 50
POLL_LIMIT = MAX_PAGE
PREVIEW_MAX_BYTES = 2 * 1024 * 1024  # larger results are offered as a download only


def _mapping_choices():
    config = current_app.config
    return config["MAPPINGS"], config["DEFAULT_MAPPING"]


@bp.get("/")
def upload_page():
    """Show the drop zone (and the plain form it enhances)."""
    mappings, default = _mapping_choices()
    return render_template("upload.html", mappings=mappings, default_mapping=default,
                           max_upload_mb=current_app.config["MAX_UPLOAD_MB"],
                           uploads_per_minute=current_app.config["UPLOADS_PER_MINUTE"])


@bp.post("/upload")
@upload_limits
def upload_form():
    """Take the plain form's files as the API's upload does, then show the queue (works without JavaScript)."""
    refusals = []
    accepted, rejected, last_error = uploads.accept_request(current_owner(), refusals)
    if not accepted and len(rejected) == 1:
        raise last_error  # one file, refused: its error page says why
    for job in accepted:
        if job["duplicate"]:
            flash(gettext("%(name)s: already uploaded", name=job["filename"]), "ok")
        else:
            flash(gettext("%(name)s: queued", name=job["filename"]), "ok")
    for refused in refusals:
        flash(str(refused.message), "error")
    return redirect(url_for("pages.queue_page"), code=303)


@bp.get("/queue")
def queue_page():
    """Show my jobs (an admin: everyone's, or one person's), newest first, a page at a time, with the totals."""
    view = queue_view(request.args)
    args = {"limit": PAGE_SIZE, "cursor": request.args.get("cursor", ""), "status": ",".join(view["statuses"]),
            "q": view["q"]}
    jobs, next_cursor, server_time = list_jobs(view["owner"], args)
    people = db.session.execute(select(User.id, User.email).order_by(User.email)).all() if is_admin() else []
    heading = gettext("Queue")
    if view["owner"] is None:
        heading = gettext("Everyone's queue")
    elif view["owner_column"]:
        heading = gettext("Queue of %(email)s", email=User.emails([view["owner"]]).get(view["owner"], view["owner"]))
    context = {"jobs": jobs, "first_page": not args["cursor"], "server_time": isoformat(server_time), "heading": heading,
               "next_url": next_cursor and url_for("pages.queue_page", cursor=next_cursor, **view["query"]),
               "filter_statuses": FILTER_STATUSES, "people": people, **row_context(view, jobs),
               **totals_context(view["owner"], view["q"])}
    if htmx.is_htmx():
        return render_template("partials/_jobs.html", **context)
    return render_template("queue.html", **context)


@bp.get("/queue/rows")
def rows_partial():
    """Answer the dashboard's poll: rows changed since ?since=, totals, the next poller; 286 once nothing is active."""
    view = queue_view(request.args)
    try:
        since = parse_iso(request.args.get("since", ""))
    except ValueError:
        raise ApiError(codes.BAD_REQUEST, 400, "'since' must be an ISO-8601 timestamp.")
    server_time = utcnow() - changes.OVERLAP
    # By updated_at (its own index), not list_jobs' created_at order, which scans all my jobs to filter. Oldest
    # first: rows put on top of the table one after the other then end newest first.
    # At most POLL_LIMIT of each, chosen in SQL: a ?since= far in the past reads no more than a recent one.
    jobs = sorted(Job.changed_since(view["owner"], since, newest=POLL_LIMIT), key=lambda job: (job.created_at, job.id))
    removed = [job_id for job_id, _ in JobRemoval.since(view["owner"], since, newest=POLL_LIMIT)]
    context = totals_context(view["owner"], view["q"])
    active = context["totals"]["active"]
    html = render_template("partials/_poll.html", jobs=jobs, removed_ids=removed, since=since,
                           cursor=isoformat(server_time), state="polling" if active else "idle",
                           **row_context(view, jobs), **context)
    return html, 200 if active else htmx.STOP_POLLING


@bp.get("/queue/totals")
def totals_partial():
    """The totals box alone."""
    view = queue_view(request.args)
    return render_template("partials/_totals.html", view=view, **totals_context(view["owner"], view["q"]))


@bp.get("/review/<job_id>")
def review_page(job_id):
    """Show one job: its result as a person reads it (an invoice and its checks), the source PDF, its history."""
    job = owned_or_404(job_id)
    view = queue_view(request.args)
    root, note = None, None
    if job.has_result:
        root, note = _stored_xml(current_app.config["DATA_DIR"], job.result_path)
    elif job.result_expired:
        note = gettext("The result was removed by retention.")
    reading = review.read(job.mapping, root) if root is not None else None
    xml = None
    if root is not None:
        indent(root)
        xml = tostring(root, encoding="unicode")
    previous, following = neighbours(job, view)
    return render_template("review.html", job=job, xml=xml, note=note, reading=reading,
                           reading_kind=type(reading).__name__.lower() if reading else None, view=view,
                           history=JobEvent.of(job.id), describe_event=describe_event, previous=previous,
                           following=following, pdf_kept=job.upload_path is not None)


def describe_event(event):
    """One line of the review page's timeline for a JobEvent."""
    n = event.attempt
    if event.kind == EventKind.CREATED:
        return gettext("Uploaded and queued")
    if event.kind == EventKind.ATTEMPT:
        return gettext("Attempt %(n)s started", n=n)
    if event.kind == EventKind.COMPLETE:
        return gettext("Attempt %(n)s converted it", n=n)
    if event.kind == EventKind.FAILED:
        return gettext("Attempt %(n)s failed for good", n=n)
    if event.kind == EventKind.RETRY:
        if event.due_at:
            return gettext("Attempt %(n)s failed; retry due %(time)s", n=n, time=when(event.due_at))
        return gettext("Attempt %(n)s failed; retrying", n=n)
    if event.kind == EventKind.HELD:
        if event.duration_ms is not None:
            return gettext("Attempt %(n)s held by the breaker: the gateway is down (the attempt is not counted)", n=n)
        return gettext("Held by the breaker: the gateway is down")
    if event.kind == EventKind.RELEASED:
        return gettext("Attempt %(n)s given back: the worker stopped (the attempt is not counted)", n=n)
    if event.kind == EventKind.REQUEUED:
        return gettext("Queued again by a person")
    if event.kind == EventKind.RUN_NEXT:
        return gettext("Moved to the front of the queue by an admin")
    if event.kind == EventKind.RESULT_EXPIRED:
        return gettext("Retention removed the XML")
    if event.kind == EventKind.UPLOAD_EXPIRED:
        return gettext("Retention removed the PDF")
    return event.kind


def _stored_xml(data_dir, result_path):
    """The stored XML's root element, or a note saying why it is not shown."""
    path = kept_file(data_dir, result_path)
    if path is None:
        return None, gettext("The result file is missing.")
    try:
        if path.stat().st_size > PREVIEW_MAX_BYTES:
            return None, gettext("The result is too large to preview here; download it instead.")
        return SafeET.fromstring(path.read_bytes()), None
    except FileNotFoundError:
        return None, gettext("The result file is missing.")
    except (ParseError, DefusedXmlException):
        return None, gettext("The result is not well-formed XML; download it to inspect it.")


def neighbours(job, view):
    """The jobs just above and below this one in the queue's view (newest first): (previous, next), None at an end."""
    conditions = (*Job.of_owner(view["owner"]), Job.matches(view["statuses"], view["q"]))
    key, here = tuple_(Job.created_at, Job.id), tuple_(job.created_at, job.id)
    newer = select(Job.id, Job.filename).where(key > here, *conditions).order_by(Job.created_at, Job.id).limit(1)
    older = (select(Job.id, Job.filename).where(key < here, *conditions)
             .order_by(Job.created_at.desc(), Job.id.desc()).limit(1))
    return db.session.execute(newer).first(), db.session.execute(older).first()


# -- template helpers ---------------------------------------------------------------------------


MISSING = '<span class="missing">{}</span>'
MARKS = {True: '<span class="mark mark-ok" aria-hidden="true">✓</span><span class="visually-hidden">{}</span>',
         False: '<span class="mark mark-bad" aria-hidden="true">✗</span><span class="visually-hidden">{}</span>',
         None: '<span class="mark mark-unknown" aria-hidden="true">?</span><span class="visually-hidden">{}</span>'}
MARK_WORDS = {True: _l("Passes:"), False: _l("Fails:"), None: _l("Cannot check:")}


@bp.app_template_filter("or_missing")
def or_missing(value):
    """A field's text, or "missing" marked as such where the gateway found nothing (never a blank)."""
    return _marks()["missing"] if value is None else escape(value)


@bp.app_template_filter("check_mark")
def check_mark(ok):
    """✓, ✗ or ? for a check's outcome (True, False, None), with words for screen readers."""
    return _marks()[ok]


def _marks():
    """The marks in the request's language, made once a request (a 500-line table asks thousands of times)."""
    if "pdfqueue_marks" not in g:
        g.pdfqueue_marks = {**{ok: Markup(MARKS[ok]).format(MARK_WORDS[ok]) for ok in MARKS},
                            "missing": Markup(MISSING).format(gettext("missing"))}
    return g.pdfqueue_marks


@bp.app_template_filter("one_line")
def one_line(text, limit=140):
    """The first line of text, cut to limit characters."""
    if not text:
        return ""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


@bp.app_context_processor
def _page_globals():
    return {"isoformat": isoformat, "urlencode": urlencode, "Status": Status, "signed_in": _signed_in,
            "in_view": in_view, "status_filters": STATUS_FILTERS, "slow_after_seconds": int(SLOW_AFTER.total_seconds())}


def _signed_in():
    """True if the pages may show the app's navigation (someone is signed in, or AUTH=none)."""
    return current_app.config["AUTH"] == "none" or current_user.is_authenticated


def init_app(app):
    app.register_blueprint(bp)

