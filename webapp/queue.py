"""The one Huey instance. Tasks (tasks.py) are registered on it; its storage follows the app's config.

Huey tasks are only wake-ups: the jobs table decides what runs (see tasks.py).
"""
import logging
from pathlib import Path

from huey import Huey
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
