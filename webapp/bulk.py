"""Work on many jobs at once: their results as one streamed ZIP (GET /api/jobs/archive), and a retry or a delete
of a selection (POST /api/jobs/bulk).

Both take the jobs either by id (what a person ticked) or by the filters of GET /api/jobs (everything matching).
The ZIP is zipstream-ng's: each result file is read while it is sent, a chunk of jobs at a time, so memory stays
flat whatever the count (only the central directory's few bytes per entry are kept to the end).
"""

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context
from sqlalchemy import func, select, tuple_
from zipstream import ZIP_DEFLATED, ZipStream

from . import htmx
from core import codes
from core.operations import delete_with_files, downloaded, job_filters, retry_failed
from core.clock import utcnow
from core.db import db
from core.errors import ApiError
from .identity import current_owner, is_admin, may_spend, owner_scope
from .limits import archive_limit, bulk_limit
from core.jobs.model import Job
from core.jobs.states import Status
from core.paths import kept_file
from .uploads import display_name

bp = Blueprint("bulk", __name__, url_prefix="/api")

MAX_IDS = 500  # jobs one bulk request may name (or, by filter, match)
ACTIONS = ("retry", "delete")
CHUNK = 200  # jobs read from the database at a time while the ZIP streams


def _scope_for_ids():
    """Whose jobs a list of ids may name: mine; an admin's, anyone's (as for one job)."""
    return None if is_admin() else current_owner()


def _checked_ids(ids):
    """The ids, each once, in order; a 400 unless they are 1 to MAX_IDS strings."""
    if not isinstance(ids, list) or not ids or not all(isinstance(job_id, str) and job_id for job_id in ids):
        raise ApiError(codes.BAD_REQUEST, 400, "'ids' must be a non-empty list of job ids.")
    ids = list(dict.fromkeys(ids))
    if len(ids) > MAX_IDS:
        raise ApiError(codes.BAD_REQUEST, 400,
                       f"{len(ids)} jobs named: at most {MAX_IDS} at a time. Send them in several requests.")
    return ids


# -- the ZIP ------------------------------------------------------------------------------------


def entry_name(filename, taken):
    """The ZIP entry for a job's result: its original file name with .xml, no directories, unique (ignoring case,
    as the file systems it is unpacked on may) among the names taken so far, which it joins."""
    filename = display_name(filename)  # no format characters (bidi overrides…), in names kept before too
    stem = filename[:-4] if filename.lower().endswith(".pdf") else filename
    stem = stem.replace("/", "_").replace("\\", "_").strip() or "result"
    name, n = f"{stem}.xml", 1
    while name.casefold() in taken:
        n += 1
        name = f"{stem} ({n}).xml"
    taken.add(name.casefold())
    return name


@bp.route("/jobs/archive", methods=["GET", "POST"])
@archive_limit
def archive():
    """Download the XML results of my jobs as one streamed ZIP: ?ids=a,b,… or the filters of GET /api/jobs. Only
    a request from our own pages, a token or a POST with CSRF counts as their download (identity.may_spend)."""
    if request.args.get("ids"):
        owner, where = _scope_for_ids(), [Job.id.in_(_checked_ids(request.args["ids"].split(",")))]
    else:
        owner, where = owner_scope(request.args), job_filters(request.args)
    # Only complete jobs whose XML is still kept; anything else asked for is simply not in the archive.
    where = [*Job.of_owner(owner), *where, Job.status == Status.COMPLETE, Job.result_path.is_not(None)]
    if not db.session.scalar(select(func.count()).select_from(Job).where(*where)):
        raise ApiError(codes.NOT_READY, 409, "None of these jobs has a result to download.")
    data_dir = current_app.config["DATA_DIR"]
    spend = may_spend()

    def generate():
        zipped, taken, after = ZipStream(compress_type=ZIP_DEFLATED), set(), None
        while True:
            query = select(Job.id, Job.filename, Job.result_path, Job.created_at).where(*where)
            if after is not None:
                query = query.where(tuple_(Job.created_at, Job.id) < after)
            rows = db.session.execute(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(CHUNK)).all()
            db.session.commit()  # hold no read transaction while the chunk is sent
            added = []
            for row in rows:
                path = kept_file(data_dir, row.result_path)
                if path is not None and path.is_file():  # retention may have removed it since the count
                    zipped.add_path(str(path), entry_name(row.filename, taken))
                    added.append((row.id, path))
            yield from zipped.all_files()
            # Each of these was read whole into the archive: this was its download. A client gone mid-chunk never
            # gets here (the generator is closed at its yield), so what it did not receive stays.
            for job_id, path in added if spend else ():
                downloaded(job_id, path)
            if len(rows) < CHUNK:
                break
            after = tuple_(rows[-1].created_at, rows[-1].id)
        yield from zipped.footer()
        db.session.remove()

    name = f"pdfqueue-results-{utcnow():%Y%m%d-%H%M%S}.zip"
    response = Response(stream_with_context(generate()), mimetype="application/zip")
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"
    return response


# -- retry and delete ---------------------------------------------------------------------------


def _ids_matching(spec):
    """The ids of my jobs (an admin's ?owner=: others') that the filters in spec match; a 400 past MAX_IDS."""
    if not isinstance(spec, dict):
        raise ApiError(codes.BAD_REQUEST, 400, "'filter' must be an object like {\"status\": \"failed\", \"q\": \"…\"}.")
    args = {key: str(value) for key, value in spec.items() if value is not None}
    query = select(Job.id).where(*Job.of_owner(owner_scope(args)), *job_filters(args)).order_by(Job.created_at.desc())
    ids = db.session.execute(query.limit(MAX_IDS + 1)).scalars().all()
    if len(ids) > MAX_IDS:
        raise ApiError(codes.BAD_REQUEST, 400,
                       f"More than {MAX_IDS} jobs match: at most {MAX_IDS} at a time. Narrow the filter.")
    return ids


@bp.post("/jobs/bulk")
@bulk_limit
def bulk():
    """Retry or delete many of my jobs: {"action": "retry"|"delete", "ids": [...]} (or "filter": {status, q})."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(codes.BAD_REQUEST, 400, 'Send JSON: {"action": "retry" or "delete", "ids": [...]}.')
    action = body.get("action")
    if action not in ACTIONS:
        raise ApiError(codes.BAD_REQUEST, 400, f"'action' must be one of: {', '.join(ACTIONS)}.")
    if "ids" in body:
        ids = _checked_ids(body["ids"])
    elif "filter" in body:
        ids = _ids_matching(body["filter"])
    else:
        raise ApiError(codes.BAD_REQUEST, 400, "Name the jobs: 'ids' (a list), or 'filter' (status, q).")
    found = {job.id: job for job in
             db.session.execute(select(Job).where(Job.id.in_(ids), *Job.of_owner(_scope_for_ids()))).scalars()}
    done, skipped = [], []
    for job_id in ids:
        job = found.get(job_id)
        if job is None:  # another owner's job is as good as absent
            skipped.append({"id": job_id, "code": codes.NOT_FOUND})
            continue
        try:
            if action == "delete":
                delete_with_files(job)
            else:
                retry_failed(job)
        except ApiError as error:
            skipped.append({"id": job_id, "code": error.code})
            continue
        done.append(job_id)
    response = jsonify(done=done, skipped=skipped)
    if action == "retry" and done:
        htmx.trigger(response, htmx.QUEUE_ACTIVE)  # jobs are active again: a stopped poller looks again
    return response


def init_app(app):
    app.register_blueprint(bp)
