"""GET /api/events: Server-Sent Events of my jobs' changes, read when core/changes.py says they changed.

An event's id is the stream's high-water mark: the newest updated_at (or removal) it sent, ISO with
microseconds. A reconnect passes it back as Last-Event-ID (the browser's own retry) or ?last_id= (the htmx
extension's retry, which cannot set the header); the stream then re-reads from OVERLAP before it,
so a commit that became visible late is not skipped, and drops what it already sent.
"""
import json
import threading
import time
from collections import Counter
from datetime import timedelta

from flask import Blueprint, Response, current_app, render_template, request, stream_with_context
from flask_babel import get_locale

from core import codes
from core.changes import OVERLAP, subscribe
from core.clock import isoformat, parse_iso, utcnow
from core.db import db
from core.errors import ApiError
from .identity import credentials_check, current_owner
from .limits import client_address
from core.jobs.model import Job
from core.jobs.removals import JobRemoval
from .queue_view import queue_view, row_context, totals_context

bp = Blueprint("stream", __name__, url_prefix="/api")

HEARTBEAT_SECONDS = 15
CREDENTIALS_SECONDS = 15  # an open stream asks its credentials again this often: it ends within one heartbeat
RETRY_MS = 3000
# Resuming from further back than this starts from here: removals are not kept longer (core/operations.py REMOVALS_KEPT),
# and a page away that long reloads anyway.
RESUME_MAX = timedelta(days=1)


class OpenStreams:
    """How many event streams each user and each client address holds open in this web process."""

    def __init__(self):
        self._lock = threading.Lock()
        self.count = Counter()

    def open(self, keys_and_caps):
        """Count one more stream for each key, or raise 429 if any key is at its cap (and count nothing)."""
        with self._lock:
            for key, cap in keys_and_caps:
                if self.count[key] >= cap:
                    raise ApiError(codes.RATE_LIMITED, 429, f"Too many open event streams ({cap}) for one "
                                   f"{key[0]}; close a tab or wait for one to end.", headers={"Retry-After": "30"})
            for key, _ in keys_and_caps:
                self.count[key] += 1
        return lambda: self._close([key for key, _ in keys_and_caps])

    def _close(self, keys):
        with self._lock:
            for key in keys:
                self.count[key] -= 1
                if self.count[key] <= 0:
                    del self.count[key]


def sse(event=None, data=None, event_id=None, comment=None):
    """One Server-Sent Events message (data may span lines)."""
    lines = []
    if comment is not None:
        lines.append(f": {comment}")
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event is not None:
        lines.append(f"event: {event}")
    if data is not None:
        lines.extend(f"data: {line}" for line in data.splitlines() or [""])
    return "\n".join(lines) + "\n\n"


def resume_point():
    """Where the client left off: Last-Event-ID, else ?last_id=, else now."""
    now = utcnow()
    for raw in (request.headers.get("Last-Event-ID"), request.args.get("last_id")):
        if raw:
            try:
                return min(max(parse_iso(raw), now - RESUME_MAX), now)
            except ValueError:
                continue
    return now


def read_changes(owner, since, view=None):
    """The owner's (None: everyone's) changes since since, each (key, time, message body), plus the totals body.

    A job's key is its id; a removal's is ("removed", id). With a view (queue_view: the dashboard's) the
    bodies are the markup its polling gets too, all out of band: htmx swaps them as they come; else job JSON."""
    jobs = Job.changed_since(owner, since)
    dashboard = view is not None
    if dashboard:
        rows = row_context(view, jobs)
        changes = [(job.id, job.updated_at,
                    sse("row", render_template("partials/_row_oob.html", job=job, since=since, **rows))) for job in jobs]
    else:
        changes = [(job.id, job.updated_at, sse("job", json.dumps(job.to_dict()))) for job in jobs]
    removals = JobRemoval.since(owner, since)
    changes += [(("removed", job_id), removed_at, render_removal(job_id, dashboard)) for job_id, removed_at in removals]
    changes.sort(key=lambda change: change[1])
    totals = None
    if dashboard and changes:
        totals = sse("totals", render_template("partials/_totals.html", oob=True, view=view,
                                               **totals_context(owner, view["q"])))
    return changes, totals


def render_removal(job_id, dashboard):
    """The message that a job was deleted: its id, or for the dashboard the out-of-band delete of its row."""
    return sse("removed", render_template("partials/_row_oob.html", removed=job_id) if dashboard else job_id)


class Stream:
    """One client's event stream: what it has sent, and how to say the next thing (view: the dashboard's, or None)."""

    def __init__(self, listener, cursor, view):
        self.listener, self.cursor, self.view = listener, cursor, view
        self.sent = {}  # key -> time, kept for the overlap window

    def changes(self):
        """Messages for whatever changed since the cursor (minus what was already sent)."""
        since = self.cursor - OVERLAP
        owner = self.listener.owner
        # Read and render once for all of this owner's streams that are notified together. Their cursors agree
        # once each has sent a change; streams just opened each have their own, so the read starts at the whole
        # second before since, shared by every cursor in that second, and each stream drops what precedes its own.
        shared_since, view = since.replace(microsecond=0), self.view
        # Rows are shared only with streams that read them alike: the same view, in the same language.
        shown = view and (view["status"], view["q"], view["owner_column"], str(get_locale()))
        changes, totals = self.listener.shared((shared_since, shown), lambda: read_changes(owner, shared_since, view))
        messages = []
        for key, at, body in changes:
            if at <= since or self.sent.get(key) == at:
                continue
            self.sent[key] = at
            self.cursor = max(self.cursor, at)
            messages.append(self.with_id(body))
        if messages and totals:
            messages.append(self.with_id(totals))
        floor = self.cursor - OVERLAP
        self.sent = {key: at for key, at in self.sent.items() if at > floor}
        return messages

    def with_id(self, body):
        return f"id: {isoformat(self.cursor)}\n{body}"


@bp.get("/events")
def events_stream():
    """Stream changes to my jobs (an admin's ?owner=: others') as Server-Sent Events (?html=1: dashboard rows)."""
    view = queue_view(request.args)
    cursor, dashboard = resume_point(), request.args.get("html") == "1"
    config = current_app.config
    close = current_app.extensions["pdfqueue.streams"].open(
        [(("user", current_owner()), config["STREAMS_PER_USER"]),
         (("address", client_address()), config["STREAMS_PER_ADDRESS"])])
    # Seeing others' jobs (everyone's, or one other owner's) needs an admin: a demoted one's stream must end.
    still_allowed = credentials_check(needs_admin=view["owner"] != current_owner())
    # The reader's language, settled now (from their account, or Accept-Language) and kept by the request's context
    # for the stream's life: rows it renders later are in it, whatever the database says meanwhile.
    get_locale()
    db.session.remove()  # hold no connection while the stream idles
    # A stream ends after its lifetime (the browser reconnects within RETRY_MS and resumes from its last id), so
    # no one stream is held for ever by a page left open, nor outlives a change of the rules.
    ends = time.monotonic() + config["STREAM_MAX_SECONDS"]

    def generate():
        with subscribe(view["owner"]) as listener:
            stream = Stream(listener, cursor, view if dashboard else None)
            # The credentials are asked again once a heartbeat: a stream ends within one after its session is
            # signed out, its token revoked, its user disabled or (seeing others' jobs) demoted.
            next_check = time.monotonic() + CREDENTIALS_SECONDS
            try:
                yield sse(comment="ping") + f"retry: {RETRY_MS}\n\n"
                while True:
                    messages = stream.changes()
                    db.session.remove()
                    if messages:
                        yield "".join(messages)
                    now = time.monotonic()
                    if now >= next_check:
                        allowed = still_allowed()
                        db.session.remove()
                        if not allowed:
                            return
                        next_check = now + CREDENTIALS_SECONDS
                    left = ends - now
                    if left <= 0:
                        return
                    if not listener.wait(min(HEARTBEAT_SECONDS, left, next_check - now)) and time.monotonic() < ends:
                        yield sse(comment="heartbeat")
            finally:
                db.session.remove()

    response = Response(stream_with_context(generate()), mimetype="text/event-stream")
    response.call_on_close(close)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response


def init_app(app):
    app.extensions["pdfqueue.streams"] = OpenStreams()
    app.register_blueprint(bp)
