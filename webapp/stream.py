"""GET /api/events: Server-Sent Events of my jobs' changes, read when webapp/events.py says they changed.

An event's id is the stream's high-water mark: the newest updated_at (or removal) it sent, ISO with
microseconds. A reconnect passes it back as Last-Event-ID (the browser's own retry) or ?last_id= (the htmx
extension's retry, which cannot set the header); the stream then re-reads from events.OVERLAP before it,
so a commit that became visible late is not skipped, and drops what it already sent.
"""
import json

from flask import Blueprint, Response, render_template, request, stream_with_context

from . import events
from .clock import isoformat, parse_iso, utcnow
from .db import db
from .models import Job, JobRemoval
from .pages import queue_view, row_context, totals_context

bp = Blueprint("stream", __name__, url_prefix="/api")

HEARTBEAT_SECONDS = 15
RETRY_MS = 3000


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
    for raw in (request.headers.get("Last-Event-ID"), request.args.get("last_id")):
        if raw:
            try:
                return parse_iso(raw)
            except ValueError:
                continue
    return utcnow()


def read_changes(owner, since, view=None):
    """The owner's (None: everyone's) changes since since, each (key, time, message body), plus the totals body.

    A job's key is its id; a removal's is ("removed", id). With a view (pages.queue_view: the dashboard's) the
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

    def __init__(self, subscription, cursor, view):
        self.subscription, self.cursor, self.view = subscription, cursor, view
        self.sent = {}  # key -> time, kept for the overlap window

    def changes(self):
        """Messages for whatever changed since the cursor (minus what was already sent)."""
        since = self.cursor - events.OVERLAP
        owner = self.subscription.owner
        # Read and render once for all of this owner's streams that are notified together. Their cursors agree
        # once each has sent a change; streams just opened each have their own, so the read starts at the whole
        # second before since, shared by every cursor in that second, and each stream drops what precedes its own.
        shared_since, view = since.replace(microsecond=0), self.view
        shown = view and (view["status"], view["q"], view["owner_column"])
        changes, totals = self.subscription.shared((shared_since, shown), lambda: read_changes(owner, shared_since, view))
        messages = []
        for key, at, body in changes:
            if at <= since or self.sent.get(key) == at:
                continue
            self.sent[key] = at
            self.cursor = max(self.cursor, at)
            messages.append(self.with_id(body))
        if messages and totals:
            messages.append(self.with_id(totals))
        floor = self.cursor - events.OVERLAP
        self.sent = {key: at for key, at in self.sent.items() if at > floor}
        return messages

    def with_id(self, body):
        return f"id: {isoformat(self.cursor)}\n{body}"


@bp.get("/events")
def events_stream():
    """Stream changes to my jobs (an admin's ?owner=: others') as Server-Sent Events (?html=1: dashboard rows)."""
    view = queue_view(request.args)
    cursor, dashboard = resume_point(), request.args.get("html") == "1"
    db.session.remove()  # hold no connection while the stream idles

    def generate():
        with events.subscribe(view["owner"]) as subscription:
            stream = Stream(subscription, cursor, view if dashboard else None)
            try:
                yield sse(comment="ping") + f"retry: {RETRY_MS}\n\n"
                while True:
                    messages = stream.changes()
                    db.session.remove()
                    if messages:
                        yield "".join(messages)
                    if not subscription.wait(HEARTBEAT_SECONDS):
                        yield sse(comment="heartbeat")
            finally:
                db.session.remove()

    response = Response(stream_with_context(generate()), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response


def init_app(app):
    app.register_blueprint(bp)
