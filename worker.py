"""Entry point for the worker: the Huey consumer (thread workers, fast polling) plus the maintenance loop.

SIGINT stops gracefully: running conversions get WORKER_SHUTDOWN_SECONDS to finish, then their jobs are
released back to the queue. SIGTERM releases them at once. Either way no attempt is spent.
"""
import itertools
import time

from huey.consumer import Consumer, Worker

from webapp import create_app, logs
from webapp.queue import huey

import tasks

app = create_app({"MIGRATE": False})


class PhasedWorker(Worker):
    """An idle worker thread polls the queue on a clock shared with its siblings, at its own offset."""

    offset = 0.0

    def sleep(self):
        period = self.max_delay
        self.stop_flag.wait(period - (time.monotonic() - self.offset) % period)


class PhasedConsumer(Consumer):
    """Huey's consumer with its idle threads' polls spread evenly over the polling period.

    Huey's threads back off on their own and, having gone idle together, poll together: n threads
    looking every period find new work no sooner than one would. Spread out, they look every period/n
    between them, so pickup is n times faster for the same number of polls."""

    worker_class = PhasedWorker

    def __init__(self, *args, **kwargs):
        self._phases = itertools.count()  # a restarted thread may share an offset; it still polls
        super().__init__(*args, **kwargs)

    def _create_worker(self):
        worker = super()._create_worker()
        worker.offset = (next(self._phases) % self.workers) * self.max_delay / self.workers
        return worker


def main():
    logs.configure()
    config = app.config
    threads = config["WORKER_CONCURRENCY"]
    consumer = PhasedConsumer(
        huey,
        workers=threads,
        worker_type="thread",
        # Huey's SQLite polling backs off to 10 s by default. Here the threads together look at the queue
        # every WORKER_POLL_SECONDS, so a job waits half that on average before it is picked up.
        initial_delay=config["WORKER_POLL_SECONDS"] * threads,
        max_delay=config["WORKER_POLL_SECONDS"] * threads,
        periodic=False,
        shutdown_timeout=config["WORKER_SHUTDOWN_SECONDS"],
        graceful_signal="INT",
    )
    tasks.stopping = consumer.stop_flag  # a thread draining the backlog stops taking jobs when this is set
    maintenance = tasks.Maintenance(app)
    maintenance.start()
    try:
        consumer.run()
    finally:
        maintenance.stopped.set()
        maintenance.join(timeout=5)


if __name__ == "__main__":
    main()
