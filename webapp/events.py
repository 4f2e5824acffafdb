"""GET /api/events (Server-Sent Events) and the change feed that wakes the streams.

One feed per web process learns which owners' jobs changed and wakes only those owners' streams; each
woken stream then reads its owner's changes since its own cursor. The feed learns of changes from this
process's transitions at once (models.on_change), from other processes through Redis pub/sub when
REDIS_URL is set, and otherwise by polling the jobs table's newest updated_at every FEED_POLL_SECONDS
(the worker is another process; the poll is one indexed query per process, not one per stream).

An event's id is the stream's high-water updated_at (ISO, microseconds). A reconnect passes it back as
Last-Event-ID (the browser's own retry) or ?last_id= (the htmx extension's retry, which cannot set the
header); the stream then re-reads from a little before it, so a commit that became visible late is not
skipped, and drops what it already sent.
"""
import json
import logging
import threading
import time
from collections import defaultdict
from datetime import timedelta

from flask import Blueprint, Response, current_app, render_template, request, stream_with_context
from sqlalchemy import func, select

from .db import db
from .identity import current_owner
from .models import Job, isoformat, on_change, parse_iso, utcnow

logger = logging.getLogger(__name__)

bp = Blueprint("events", __name__, url_prefix="/api")

CHANNEL = "pdfqueue:changes"
OVERLAP = timedelta(seconds=2)  # re-read window on every query: commits land slightly out of order
HEARTBEAT_SECONDS = 15
FEED_POLL_SECONDS = 0.25
FEED_POLL_WITH_REDIS_SECONDS = 5  # with pub/sub the poll is only a safety net
RETRY_MS = 3000


class Waiter:
    """One open stream's doorbell, plus the deletions the feed has told it about."""

    def __init__(self, owner):
        self.owner = owner
        self.bell = threading.Event()
        self.removed = []

    def wait(self, timeout):
        rang = self.bell.wait(timeout)
        self.bell.clear()
        return rang


class ChangeFeed:
    """This process's single watcher of the jobs table (or of Redis), fanning changes out by owner."""

    def __init__(self, app):
        self.app = app
        self._waiters = defaultdict(set)
        self._lock = threading.Lock()
        self._trigger = threading.Event()
        self._started = False
        self._stopped = threading.Event()
        self._redis = None
        self.threads = []
        self._generation = defaultdict(int)  # owner -> wake count, so shared results know when they are stale
        self._shared = {}  # owner -> (generation, {key: value})

    # -- streams -----------------------------------------------------------------------------

    def subscribe(self, owner):
        self._ensure_started()
        waiter = Waiter(owner)
        with self._lock:
            self._waiters[owner].add(waiter)
        return waiter

    def unsubscribe(self, waiter):
        with self._lock:
            waiters = self._waiters.get(waiter.owner)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[waiter.owner]
                    self._shared.pop(waiter.owner, None)
                    self._generation.pop(waiter.owner, None)

    def shared(self, owner, key, compute):
        """compute() once per owner, key and wake-up, shared by that owner's streams."""
        generation = self._generation[owner]
        cached_generation, values = self._shared.get(owner, (None, {}))
        if cached_generation != generation:
            values = {}
            self._shared[owner] = (generation, values)
        if key not in values:
            values[key] = compute()
        return values[key]

    def stream_count(self):
        with self._lock:
            return sum(len(waiters) for waiters in self._waiters.values())

    def wake(self, owners, removed=()):
        """Ring the streams of these owners (telling them of removed job ids)."""
        with self._lock:
            for owner in owners:
                self._generation[owner] += 1
            waiters = [w for owner in owners for w in self._waiters.get(owner, ())]
        for waiter in waiters:
            waiter.removed.extend(removed)
            waiter.bell.set()

    # -- sources of change -------------------------------------------------------------------

    def poke(self):
        """Something changed in this process: look now rather than at the next tick."""
        self._trigger.set()

    def redis(self):
        if self._redis is None and self.app.config.get("REDIS_URL"):
            import redis
            self._redis = redis.Redis.from_url(self.app.config["REDIS_URL"])
        return self._redis

    def publish(self, message):
        """Tell every web process (through Redis) or just this one."""
        client = self.redis()
        if client is None:
            self.deliver(message)
            return
        try:
            client.publish(CHANNEL, json.dumps(message))
        except Exception:  # an event lost to a Redis outage is recovered by the feed's poll; the job is safe
            logger.warning("could not publish a change to Redis", exc_info=True)
            self.deliver(message)

    def deliver(self, message):
        if message.get("removed"):
            self.wake([message["owner"]], removed=message["removed"])
        else:
            self.poke()

    # -- the feed thread ---------------------------------------------------------------------

    def _ensure_started(self):
        if self._started:
            return
        with self._lock:
            if self._started:
                return
            self._started = True
        self.threads.append(threading.Thread(target=self._poll_loop, name="pdfqueue-feed", daemon=True))
        if self.redis() is not None:
            self.threads.append(threading.Thread(target=self._redis_loop, name="pdfqueue-feed-redis", daemon=True))
        for thread in self.threads:
            thread.start()

    def stop(self):
        """End the feed's threads (tests; a web process simply exits)."""
        self._stopped.set()
        self._trigger.set()
        if self._redis is not None:
            self._redis.close()
        for thread in self.threads:
            thread.join(timeout=2)

    def _poll_loop(self):
        interval = FEED_POLL_WITH_REDIS_SECONDS if self.redis() is not None else FEED_POLL_SECONDS
        seen = {}  # owner -> newest updated_at already announced (only owners changed within OVERLAP)
        cursor = None
        with self.app.app_context():
            while not self._stopped.is_set():
                try:
                    cursor = self._poll_once(cursor, seen)
                except Exception:  # a database hiccup must not end the feed; streams still heartbeat
                    logger.exception("change feed poll failed")
                    time.sleep(1)
                finally:
                    db.session.remove()
                self._trigger.wait(interval)
                self._trigger.clear()

    def _poll_once(self, cursor, seen):
        """Wake the owners whose newest change is newer than what was last announced; return the new cursor."""
        if cursor is None:
            return db.session.scalar(select(func.max(Job.updated_at))) or utcnow()
        rows = db.session.execute(
            select(Job.owner, func.max(Job.updated_at)).where(Job.updated_at > cursor - OVERLAP).group_by(Job.owner)
        ).all()
        changed = [owner for owner, newest in rows if seen.get(owner) != newest]
        for owner, newest in rows:
            seen[owner] = newest
            cursor = max(cursor, newest)
        for owner in [owner for owner, newest in seen.items() if newest <= cursor - OVERLAP]:
            del seen[owner]
        if changed:
            self.wake(changed)
        return cursor

    def _redis_loop(self):
        while not self._stopped.is_set():
            pubsub = self.redis().pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(CHANNEL)
                for item in pubsub.listen():
                    self.deliver(json.loads(item["data"]))
            except Exception:  # reconnect after a Redis restart; meanwhile the slow poll carries on
                logger.warning("change feed lost Redis; resubscribing", exc_info=True)
                time.sleep(1)
            finally:
                pubsub.close()


def feed(app=None):
    """This app's change feed (started on the first stream, so never in a process that has none)."""
    app = app or current_app._get_current_object()
    return app.extensions["pdfqueue_feed"]


@on_change
def _job_changed(job_ids):
    """Tell the feeds a job changed: at once in this process, through Redis to the others."""
    app = current_app._get_current_object()
    if "pdfqueue_feed" in app.extensions:
        feed(app).publish({"ids": list(job_ids)})


# -- the stream -------------------------------------------------------------------------------


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


def changed_since(owner, since):
    """The owner's jobs whose updated_at is after since, oldest change first."""
    query = select(Job).where(Job.owner == owner, Job.updated_at > since).order_by(Job.updated_at, Job.id)
    return db.session.execute(query).scalars().all()


def resume_point():
    """Where the client left off: Last-Event-ID, else ?last_id=, else now."""
    for raw in (request.headers.get("Last-Event-ID"), request.args.get("last_id")):
        if raw:
            try:
                return parse_iso(raw)
            except ValueError:
                continue
    return utcnow()


def render_changes(owner, since, dashboard):
    """The owner's changes since since as (job id, updated_at, message body), plus the totals body (or None).

    The dashboard's bodies are the markup its polling gets too, all out of band: htmx swaps them as they come.
    """
    jobs = changed_since(owner, since)
    if dashboard:
        bodies = [sse("row", render_template("partials/_row_oob.html", job=job, since=since)) for job in jobs]
    else:
        bodies = [sse("job", json.dumps(job.to_dict())) for job in jobs]
    totals = None
    if jobs and dashboard:
        from .pages import totals_context
        totals = sse("totals", render_template("partials/_totals.html", oob=True, **totals_context(owner)))
    return [(job.id, job.updated_at, body) for job, body in zip(jobs, bodies)], totals


def render_removal(job_id, dashboard):
    """The message that a job was deleted: its id, or for the dashboard the out-of-band delete of its row."""
    return sse("removed", render_template("partials/_row_oob.html", removed=job_id) if dashboard else job_id)


class Stream:
    """One client's event stream: what it has sent, and how to say the next thing."""

    def __init__(self, owner, cursor, dashboard, changes_feed):
        self.owner, self.cursor, self.dashboard, self.feed = owner, cursor, dashboard, changes_feed
        self.sent = {}  # job id -> updated_at, kept for the overlap window

    def changes(self):
        """Messages for whatever changed since the cursor (minus what was already sent)."""
        since = self.cursor - OVERLAP
        # Streams of one owner woken together mostly share a cursor: read and render once for all of them.
        rendered, metrics = self.feed.shared(self.owner, (since, self.dashboard),
                                             lambda: render_changes(self.owner, since, self.dashboard))
        messages = []
        for job_id, updated_at, body in rendered:
            if self.sent.get(job_id) == updated_at:
                continue
            self.sent[job_id] = updated_at
            self.cursor = max(self.cursor, updated_at)
            messages.append(self.with_id(body))
        if messages and metrics:
            messages.append(self.with_id(metrics))
        floor = self.cursor - OVERLAP
        self.sent = {job_id: at for job_id, at in self.sent.items() if at > floor}
        return messages

    def removals(self, job_ids):
        return [self.with_id(render_removal(job_id, self.dashboard)) for job_id in job_ids]

    def with_id(self, body):
        return f"id: {isoformat(self.cursor)}\n{body}"


@bp.get("/events")
def events():
    """Stream changes to my jobs as Server-Sent Events (?html=1: dashboard rows and totals)."""
    owner = current_owner()
    changes_feed = feed()
    stream = Stream(owner, resume_point(), request.args.get("html") == "1", changes_feed)
    db.session.remove()  # hold no connection while the stream idles

    def generate():
        waiter = changes_feed.subscribe(owner)
        try:
            yield sse(comment="ping") + f"retry: {RETRY_MS}\n\n"
            while True:
                messages = stream.changes()
                db.session.remove()
                removed, waiter.removed = waiter.removed, []
                messages += stream.removals(removed)
                if messages:
                    yield "".join(messages)
                if not waiter.wait(HEARTBEAT_SECONDS):
                    yield sse(comment="heartbeat")
        finally:
            changes_feed.unsubscribe(waiter)
            db.session.remove()

    response = Response(stream_with_context(generate()), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response


def _tell_other_tabs_of_deletion(response):
    """After a job is deleted, let the owner's other open dashboards drop its row."""
    if request.endpoint == "api.job_delete" and response.status_code == 204:
        feed().publish({"removed": [request.view_args["job_id"]], "owner": current_owner()})
    return response


def init_app(app):
    """Give the app its change feed and the deletion hook."""
    app.extensions["pdfqueue_feed"] = ChangeFeed(app)
    app.after_request(_tell_other_tabs_of_deletion)
    app.register_blueprint(bp)
