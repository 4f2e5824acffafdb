"""The one Huey instance. Tasks (tasks.py) are registered on it; its storage follows the app's config.

Huey tasks are only wake-ups: the jobs table decides what runs (see tasks.py). WatchingConsumer, which
worker.py runs, is Huey's consumer with one idle thread watching the queue rather than each polling alone.
"""
import logging
import threading
from pathlib import Path

from huey import Huey
from huey.consumer import Consumer, Worker
from huey.storage import MemoryStorage, RedisStorage, SqliteStorage

huey = Huey("pdfqueue", storage_class=MemoryStorage, results=False, utc=True)
_bound = {}
logger = logging.getLogger(__name__)


def init_app(app):
    """Point the Huey instance at this app's queue storage: SQLite in instance/, or Redis."""
    if app.config.get("HUEY_MEMORY"):
        huey.storage = MemoryStorage("pdfqueue")
    elif app.config.get("REDIS_URL"):
        huey.storage = RedisStorage("pdfqueue", url=app.config["REDIS_URL"], blocking=True, read_timeout=1)
    else:
        path = Path(app.config["INSTANCE_DIR"]) / "huey.db"
        huey.storage = SqliteStorage("pdfqueue", filename=str(path), timeout=15)
    _bound["app"] = app
    import tasks  # noqa: F401  (registers the tasks on huey)


def bound_app():
    """The app the tasks run under (the last one bound)."""
    return _bound["app"]


def wake(job_id):
    """Enqueue a wake-up for this job; the worker decides whether it still needs doing.

    The job is already committed, so a queue that cannot take the wake-up must not fail the request:
    the worker's maintenance loop re-wakes queued jobs whose wake-up was lost."""
    import tasks
    try:
        tasks.process_job(job_id)
    except Exception:  # swallowed on purpose: the job is safe in the table and will be re-woken
        logger.exception("could not enqueue a wake-up for job %s; maintenance will re-wake it", job_id)


def reachable():
    """True if the queue's storage answers."""
    try:
        huey.pending_count()
        return True
    except Exception:  # whatever the storage raises, the answer is "down"
        bound_app().logger.exception("queue storage check failed")
        return False


def gateway_state():
    """'down' while the breaker holds jobs, else 'ok'."""
    from . import breaker
    return "down" if breaker.is_open() else "ok"


# -- the consumer (worker.py runs it) ---------------------------------------------------------------


class Watch:
    """Which idle thread of a consumer watches the queue, and how often it looks; the other idle threads
    wait to be handed the watch.

    The watcher looks every `fastest` seconds while work flows, backing off by `backoff` per empty look
    to `slowest` when the queue stays empty (each look costs ~0.3 ms of CPU on a small VM)."""

    PARKED_SECONDS = 1.0  # a parked thread looks anyway this often (the queue's own safety net)

    def __init__(self, fastest, slowest, backoff):
        self.idle = threading.Condition()
        self.watcher = None
        self.fastest, self.slowest, self.backoff = fastest, max(fastest, slowest), backoff
        self.interval = fastest

    def wait(self, worker):
        with self.idle:
            if self.watcher is None:
                self.watcher = worker
            if self.watcher is worker:
                self.idle.wait(self.interval)
                self.interval = min(self.interval * self.backoff, self.slowest)
            else:
                self.idle.wait(self.PARKED_SECONDS)

    def took_task(self, worker):
        with self.idle:
            self.interval = self.fastest
            if self.watcher in (worker, None):  # the watch is free now: an idle thread takes it, looking at once
                self.watcher = None
                self.idle.notify()

    def wake_all(self):
        with self.idle:
            self.idle.notify_all()


class WatchingWorker(Worker):
    """A consumer thread that, idle, either watches the queue (one thread does, every poll interval) or
    waits to be handed the watch.

    Huey's idle threads each poll and back off on their own; n of them polling every period pick up work
    no sooner than one would, and cost n times the polls. Here one thread polls often, and the moment it
    takes a task another takes over the watch, so a burst of wake-ups is picked up as fast as it arrives."""

    watch = None

    def loop(self, now=None):
        # Huey's Worker.loop (huey 2.x/3.x), less max_tasks (never set here), handing over the watch.
        try:
            task = self.huey.dequeue()
        except Exception:
            self._logger.exception("Error reading from queue")
            self.sleep()
            return
        if task is None:
            if not self.huey.storage.blocking:
                self.sleep()
            return
        self.watch.took_task(self)
        try:
            self.huey.execute(task, now)
        except Exception:
            self._logger.exception("Unhandled error during execution of task %s.", task.id)

    def sleep(self):
        self.watch.wait(self)


class WatchingConsumer(Consumer):
    """Huey's consumer with WatchingWorker threads sharing one Watch."""

    worker_class = WatchingWorker

    _watch = None

    def _create_worker(self):  # called from Consumer.__init__, once the polling settings are set
        if self._watch is None:
            self._watch = Watch(self.default_delay, self.max_delay, self.backoff)
        worker = super()._create_worker()
        worker.watch = self._watch
        return worker

    def stop(self, graceful=False):
        self.stop_flag.set()
        self._watch.wake_all()  # parked threads see the stop flag now, not at their next look
        super().stop(graceful)
