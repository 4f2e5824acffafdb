"""Entry point for the worker: the Huey consumer (thread workers, fast polling) plus the maintenance loop.

SIGINT stops gracefully: running conversions get WORKER_SHUTDOWN_SECONDS to finish, then their jobs are
released back to the queue. SIGTERM releases them at once. Either way no attempt is spent.
"""

from webapp import create_app, logs
from webapp.queue import huey

import tasks

app = create_app({"MIGRATE": False})


def main():
    logs.configure()
    config = app.config
    consumer = huey.create_consumer(
        workers=config["WORKER_CONCURRENCY"],
        worker_type="thread",
        # Huey's SQLite polling backs off to 10 s by default; stay near the floor so pickup stays fast.
        initial_delay=config["WORKER_POLL_SECONDS"],
        backoff=1.1,
        max_delay=max(config["WORKER_POLL_SECONDS"], 0.1),
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
