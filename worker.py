"""Entry point for the worker: the Huey consumer (thread workers, fast polling) plus the maintenance loop.

SIGINT stops gracefully: running conversions get WORKER_SHUTDOWN_SECONDS to finish, then their jobs are
released back to the queue. SIGTERM releases them at once. Either way no attempt is spent.
"""
from webapp import create_app, logs
from webapp.queue import WatchingConsumer, huey

import tasks

app = create_app({"MIGRATE": False})


def main():
    logs.configure()
    config = app.config
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
