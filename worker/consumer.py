"""Entry point for the worker: Huey's consumer (thread workers, one watching the queue), the maintenance loop and
the deliverer of webhooks and emails. Run it as `python -m worker`.

SIGINT stops gracefully: running conversions get WORKER_SHUTDOWN_SECONDS to finish, then their jobs are
released back to the queue. SIGTERM releases them at once. Either way no attempt is spent.
"""
import logging
import threading

from huey.consumer import Consumer, Worker
from huey.signals import SIGNAL_EXECUTING

import core
import tasks  # noqa: F401 (registers the tasks this consumer runs)
from core import logs
from core.queue import huey
from worker import delivery, doorbell, intake, run, upkeep


class Watch:
    """Which idle thread of a consumer watches the queue, and how often it looks; the other idle threads
    wait to be handed the watch.

    The watcher looks every `fastest` seconds while work flows, backing off by `backoff` per empty look
    to `slowest` when the queue stays empty (each look costs ~0.3 ms of CPU on a small VM). With a doorbell
    (worker/doorbell.py: every enqueue on this host rings it), the watcher looks at once when it rings, and
    otherwise only every DOORBELL_SLOWEST_SECONDS (a safety net, and Huey's scheduler's delayed retries)."""

    PARKED_SECONDS = 1.0  # a parked thread looks anyway this often (the queue's own safety net)
    DOORBELL_SLOWEST_SECONDS = 1.0

    def __init__(self, fastest, slowest, backoff, bell=None):
        self.idle = threading.Condition()
        self.watcher = None
        self.bell = bell
        if bell is not None:
            slowest = max(slowest, self.DOORBELL_SLOWEST_SECONDS)
        self.fastest, self.slowest, self.backoff = fastest, max(fastest, slowest), backoff
        self.interval = fastest

    def wait(self, worker):
        with self.idle:
            if self.watcher is None:
                self.watcher = worker
            if self.watcher is not worker:
                self.idle.wait(self.PARKED_SECONDS)
                return
            interval = self.interval
            self.interval = min(self.interval * self.backoff, self.slowest)
            if self.bell is None:
                self.idle.wait(interval)
                return
        if self.bell.wait(interval):  # outside the lock: the others may take or hand over meanwhile
            with self.idle:
                self.interval = self.fastest

    def took_task(self, worker):
        with self.idle:
            self.interval = self.fastest
            if self.watcher in (worker, None):  # the watch is free now: an idle thread takes it, looking at once
                self.watcher = None
                self.idle.notify()

    def end(self):
        """Let every waiting thread go (the consumer is stopping)."""
        with self.idle:
            self.idle.notify_all()
        if self.bell is not None:
            self.bell.ring()


_running = threading.local()  # .worker: the WatchingWorker whose loop runs in this thread


class WatchingWorker(Worker):
    """A consumer thread that, idle, either watches the queue (one thread does, every poll interval) or
    waits to be handed the watch.

    Huey's idle threads each poll and back off on their own; n of them polling every period pick up work
    no sooner than one would, and cost n times the polls. Here one thread polls often, and the moment it
    starts a task another takes over the watch, so a burst of wake-ups is picked up as fast as it arrives.

    Huey's own Worker.loop runs: it calls sleep() when the queue is empty, and Huey's SIGNAL_EXECUTING, sent in
    this thread as a task starts, hands the watch over (WatchingConsumer connects it). A task Huey does not run
    (revoked, expired, or due later) hands nothing over: its thread goes on watching and looks again at once."""

    watch = None

    def initialize(self):  # in the worker's own thread, before its first loop
        _running.worker = self
        super().initialize()

    def sleep(self):
        self.watch.wait(self)


class WatchingConsumer(Consumer):
    """Huey's consumer with WatchingWorker threads sharing one Watch."""

    worker_class = WatchingWorker

    _watch = None
    bell = None  # set before Consumer.__init__ creates the threads

    def _create_worker(self):  # called from Consumer.__init__, once the polling settings are set
        if self._watch is None:
            self._watch = Watch(self.default_delay, self.max_delay, self.backoff, self.bell)
        worker = super()._create_worker()
        worker.watch = self._watch
        return worker

    def start(self):
        self.huey.signal(SIGNAL_EXECUTING)(self._executing)
        super().start()

    def _executing(self, signal, task):
        """A task starts (Huey's SIGNAL_EXECUTING, in the thread that runs it): if that is one of this consumer's
        threads, an idle one takes over the watch."""
        worker = getattr(_running, "worker", None)
        if worker is not None and worker.watch is self._watch:
            self._watch.took_task(worker)

    def stop(self, graceful=False):
        self.stop_flag.set()
        run.stopping.set()  # a thread draining the backlog takes no further job
        self._watch.end()  # parked threads see the stop flag now, not at their next look
        try:
            super().stop(graceful)
        finally:
            self.huey.disconnect_signal(self._executing, SIGNAL_EXECUTING)


def _doorbell(config):
    """This process's doorbell when the queue is Huey's SQLite (Redis blocks by itself), or None."""
    if config.get("REDIS_URL") or config.get("HUEY_MEMORY"):
        return None
    try:
        return doorbell.Doorbell(config["INSTANCE_DIR"])
    except OSError:  # a socket path over the system's limit, say: the watcher polls as without one
        logging.getLogger("pdfqueue.worker").warning("no doorbell; the worker polls the queue", exc_info=True)
        return None


def main():
    app = core.create_app({"MIGRATE": False})
    logs.configure(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])
    config = app.config
    WatchingConsumer.bell = _doorbell(config)
    consumer = WatchingConsumer(
        huey,
        workers=config["WORKER_CONCURRENCY"],
        worker_type="thread",
        # Huey's SQLite polling backs off to 10 s by default. Here one idle thread looks at the queue (see
        # WatchingWorker): every WORKER_POLL_SECONDS while work flows, at most WORKER_IDLE_POLL_SECONDS apart.
        initial_delay=config["WORKER_POLL_SECONDS"],
        backoff=1.1,
        max_delay=config["WORKER_IDLE_POLL_SECONDS"],
        periodic=False,
        shutdown_timeout=config["WORKER_SHUTDOWN_SECONDS"],
        graceful_signal="INT",
    )
    maintenance = upkeep.Maintenance(app)
    maintenance.start()
    deliverer = delivery.Deliverer(app)  # the outbox: webhooks and emails (worker/delivery.py)
    deliverer.start()
    intake_thread = intake.Intake(app)  # mailbox and folder sources, in the upkeep leader (worker/intake.py)
    intake_thread.start()
    try:
        consumer.run()
    finally:
        maintenance.stopped.set()
        intake_thread.stop()
        deliverer.stop()
        maintenance.join(timeout=5)
        intake_thread.join(timeout=5)
        deliverer.join(timeout=5)  # one still sending is left: its rows' leases lapse and they are sent again
        if WatchingConsumer.bell is not None:
            WatchingConsumer.bell.close()


if __name__ == "__main__":
    main()
