"""The one Huey instance; its storage follows the app's config. Its tasks are in tasks.py, its consumer in worker.py.

Huey's tasks are only wake-ups: the jobs table decides what runs (see tasks.py).
"""
import logging
from pathlib import Path

from huey import Huey
from huey.storage import MemoryStorage, RedisStorage, SqliteStorage

from . import doorbell



class RingingSqliteStorage(SqliteStorage):
    """Huey's SQLite storage that rings this host's workers' doorbell (webapp/doorbell.py) after each enqueue."""

    def __init__(self, *args, instance_dir, **kwargs):
        super().__init__(*args, **kwargs)
        self.instance_dir = instance_dir

    def enqueue(self, data, priority=None):
        super().enqueue(data, priority)
        doorbell.ring(self.instance_dir)


huey = Huey("pdfqueue", storage_class=MemoryStorage, results=False, utc=True)
_bound = {}
logger = logging.getLogger(__name__)


def init_app(app):
    """Point the Huey instance at this app's queue storage (SQLite in instance/, or Redis); tasks run under app."""
    if app.config.get("HUEY_MEMORY"):
        huey.storage = MemoryStorage("pdfqueue")
    elif app.config.get("REDIS_URL"):
        huey.storage = RedisStorage("pdfqueue", url=app.config["REDIS_URL"], blocking=True, read_timeout=1)
    else:
        path = Path(app.config["INSTANCE_DIR"]) / "huey.db"
        # fsync=False: a wake-up lost to a power cut costs nothing (the jobs table keeps the job, and the
        # maintenance loop re-wakes it), and an fsync at every enqueue and dequeue is the queue's largest cost.
        huey.storage = RingingSqliteStorage("pdfqueue", filename=str(path), timeout=15, fsync=False,
                                            instance_dir=app.config["INSTANCE_DIR"])
    _bound["app"] = app


def bound_app():
    """The app the tasks run under (the last one bound)."""
    return _bound["app"]


def reachable():
    """True if the queue's storage answers."""
    try:
        huey.pending_count()
        return True
    except Exception:  # whatever the storage raises, the answer is "down"
        logger.exception("queue storage check failed")
        return False
