"""Job changes, within a process and across processes: publish(owner) and subscribe(owner).

Every transition of a job publishes its owner once committed (core/jobs/engine.py). A listener — an open
event stream (webapp/stream.py) — is notified by owner and then reads what changed from the database itself,
so a message carries no state and a lost one costs only latency. Within a process, publish notifies that
owner's listeners at once. Other processes (the worker, the admin CLI, other web processes) reach this
one through Redis pub/sub when REDIS_URL is set; and always, as the only way without Redis or as its safety
net, through one thread per process that asks the database every POLL_SECONDS which owners have newer
changes or removals (one indexed query per process, not one per stream).
"""
import json
import logging
import secrets
import threading
import time
from collections import defaultdict
from datetime import timedelta

from flask import current_app

from core.clock import utcnow
from core.db import db

logger = logging.getLogger(__name__)

CHANNEL = "pdfqueue:changes"
# Commits land slightly out of order (updated_at is taken before commit), so every reader of changes re-reads
# this far behind its cursor and drops what it already has: the hub's poll, streams, and ?since= answers.
OVERLAP = timedelta(seconds=2)
POLL_SECONDS = 0.25
POLL_WITH_REDIS_SECONDS = 5  # with pub/sub the poll is only a safety net
EVERYONE = None  # the owner of a listener to every owner's changes (the admins' view)


def publish(owner):
    """Tell every subscriber, in this process and the others, that the owner's jobs changed."""
    _hub(current_app).publish(owner)


def subscribe(owner):
    """A listener to the owner's changes (EVERYONE: all owners'; use with `with`, or call close())."""
    return _hub(current_app).subscribe(owner)


class Listener:
    """One subscriber's doorbell for one owner's changes (an open event stream holds one while it is open).

    Not to be confused with a user's Subscription to webhooks or emails (core/outbox.py): a listener lives in one
    process for as long as a page is open."""

    def __init__(self, hub, owner):
        self.hub, self.owner = hub, owner
        self._bell = threading.Event()

    def wait(self, timeout):
        """Wait until the owner's jobs change or timeout passes; True if they changed."""
        rang = self._bell.wait(timeout)
        self._bell.clear()
        return rang

    def shared(self, key, compute):
        """compute() once per key and change of this owner, shared by all of its listeners in this process."""
        return self.hub.shared(self.owner, key, compute)

    def close(self):
        self.hub.unsubscribe(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Hub:
    """This process's listeners by owner, and the threads that hear of other processes' changes."""

    def __init__(self, app, changes_after):
        self.app = app
        self.changes_after = changes_after  # cursor -> [(owner, newest change)]: the poll's query
        self._listeners = defaultdict(set)
        self._lock = threading.Lock()
        self._started = False
        self._stopped = threading.Event()
        self._redis = None
        self._token = secrets.token_hex(8)  # marks this process's own Redis messages, already delivered
        self.threads = []
        self._generation = defaultdict(int)  # owner -> changes seen, so shared results know when they are stale
        self._shared = {}  # owner -> (generation, {key: value})

    def publish(self, owner):
        self.notify([owner])
        client = self.redis()
        if client is None:
            return
        try:
            client.publish(CHANNEL, json.dumps({"owner": owner, "from": self._token}))
        except Exception:  # lost to a Redis outage: the other processes' poll still finds the change
            logger.warning("could not publish a change to Redis", exc_info=True)

    def subscribe(self, owner):
        self._ensure_started()
        listener = Listener(self, owner)
        with self._lock:
            self._listeners[owner].add(listener)
        return listener

    def unsubscribe(self, listener):
        with self._lock:
            listeners = self._listeners.get(listener.owner)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._listeners[listener.owner]
                    self._shared.pop(listener.owner, None)
                    self._generation.pop(listener.owner, None)

    def notify(self, owners):
        """Ring the listeners of these owners, and those to everyone's changes (owner None)."""
        with self._lock:
            rung = [owner for owner in (*owners, EVERYONE) if owner in self._listeners]
            listeners = [s for owner in rung for s in self._listeners[owner]]
            for owner in rung:
                self._generation[owner] += 1
        for listener in listeners:
            listener._bell.set()

    def shared(self, owner, key, compute):
        generation = self._generation[owner]
        cached_generation, values = self._shared.get(owner, (None, {}))
        if cached_generation != generation:
            values = {}
            self._shared[owner] = (generation, values)
        if key not in values:
            values[key] = compute()
        return values[key]

    def listener_count(self):
        with self._lock:
            return sum(len(listeners) for listeners in self._listeners.values())

    def redis(self):
        if self._redis is None and self.app.config.get("REDIS_URL"):
            import redis
            self._redis = redis.Redis.from_url(self.app.config["REDIS_URL"])
        return self._redis

    # -- listening to other processes (started with the first listener) ---------------------------

    def _ensure_started(self):
        with self._lock:
            if self._started:
                return
            self._started = True
        self.threads.append(threading.Thread(target=self._poll_loop, name="pdfqueue-events-poll", daemon=True))
        if self.redis() is not None:
            self.threads.append(threading.Thread(target=self._redis_loop, name="pdfqueue-events-redis", daemon=True))
        for thread in self.threads:
            thread.start()

    def stop(self):
        """End the threads that hear other processes (tests; a web process simply exits)."""
        self._stopped.set()
        if self._redis is not None:
            self._redis.close()
        for thread in self.threads:
            thread.join(timeout=2)

    def _poll_loop(self):
        interval = POLL_WITH_REDIS_SECONDS if self.redis() is not None else POLL_SECONDS
        seen = {}  # owner -> newest change already announced (only owners changed within OVERLAP)
        cursor = None
        with self.app.app_context():
            while not self._stopped.is_set():
                try:
                    cursor = self._poll_once(cursor, seen)
                except Exception:  # a database hiccup must not end the listener; streams still heartbeat
                    logger.exception("change poll failed")
                    time.sleep(1)
                finally:
                    db.session.remove()
                self._stopped.wait(interval)

    def _poll_once(self, cursor, seen):
        """Notify the owners whose newest change is newer than what was last announced; return the new cursor."""
        if cursor is None:
            return utcnow()  # the first look reads OVERLAP back from here: streams read their own past
        rows = self.changes_after(cursor - OVERLAP)
        newest = {}
        for owner, at in rows:  # an owner may come twice: changed jobs, and removed ones
            newest[owner] = max(at, newest.get(owner, at))
        changed = [owner for owner, at in newest.items() if seen.get(owner) != at]
        for owner, at in newest.items():
            seen[owner] = at
            cursor = max(cursor, at)
        for owner in [owner for owner, at in seen.items() if at <= cursor - OVERLAP]:
            del seen[owner]
        if changed:
            self.notify(changed)
        return cursor

    def _redis_loop(self):
        while not self._stopped.is_set():
            pubsub = self.redis().pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(CHANNEL)
                for item in pubsub.listen():
                    message = json.loads(item["data"])
                    if message.get("from") != self._token:
                        self.notify([message["owner"]])
            except Exception:  # reconnect after a Redis restart; meanwhile the slow poll carries on
                if not self._stopped.is_set():
                    logger.warning("lost Redis; resubscribing", exc_info=True)
                    time.sleep(1)
            finally:
                pubsub.close()


def _hub(app):
    return app.extensions["pdfqueue_events"]


def hub(app=None):
    """This app's hub (tests and benchmarks look at its listeners)."""
    return _hub(app or current_app._get_current_object())


def init_app(app, changes_after):
    """Give the app its hub; changes_after(cursor) lists (owner, newest change) after cursor."""
    app.extensions["pdfqueue_events"] = Hub(app, changes_after)
