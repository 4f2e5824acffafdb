"""The one Huey instance, its storage following the app's config, and the wake-up every process may enqueue.

Huey's tasks are only wake-ups: the jobs table decides what runs. The task is declared in tasks.py and run by the
worker (worker/consumer.py); the web and the CLI enqueue it here by its name, so that they never import the worker.

With Huey's SQLite queue, an enqueue also rings the doorbell of this host's workers (worker/doorbell.py listens):
one byte to every socket in INSTANCE_DIR/doorbell/, so an idle worker picks the job up at once.
"""
import errno
import logging
import os
import socket
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from huey import Huey
from huey.registry import Message
from huey.serializer import SignedSerializer
from huey.storage import MemoryStorage, RedisStorage, SqliteStorage

# tasks.process_job, as Huey's registry names it (tests/test_house.py checks the two agree).
PROCESS_JOB = "tasks.process_job"
_sender = None


def doorbell_folder(instance_dir):
    """Where this host's workers bind their doorbells."""
    return Path(instance_dir) / "doorbell"


def ring(instance_dir):
    """Ring every worker of this host (those listening in instance_dir's doorbell folder)."""
    global _sender
    try:
        entries = list(os.scandir(doorbell_folder(instance_dir)))
    except OSError:
        return
    if _sender is None:
        _sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        _sender.setblocking(False)
    for entry in entries:
        if not entry.name.endswith(".sock"):
            continue
        try:
            _sender.sendto(b"!", entry.path)
        except BlockingIOError:
            pass  # its buffer is full of rings it has not read yet: it is awake already
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):  # nobody listens: a worker that is gone
                Path(entry.path).unlink(missing_ok=True)



class RingingSqliteStorage(SqliteStorage):
    """Huey's SQLite storage that rings this host's workers' doorbell after each enqueue."""

    def __init__(self, *args, instance_dir, **kwargs):
        super().__init__(*args, **kwargs)
        self.instance_dir = instance_dir

    def enqueue(self, data, priority=None):
        super().enqueue(data, priority)
        ring(self.instance_dir)


class RefusingSignedSerializer(SignedSerializer):
    """Huey's signed serializer (an HMAC of each pickled message under a key from SECRET_KEY): a message that is not
    signed with it is refused before it is unpickled, and logged. Any process that can write to Redis could
    otherwise run code as the worker through a pickle."""

    def _deserialize(self, data):
        try:
            message = self._unsign(data)
        except ValueError:
            logger.error("refused a queue message not signed with this SECRET_KEY (%d bytes, not unpickled): "
                         "something other than pdfqueue writes to the queue, or a box has another key", len(data))
            raise
        return super(SignedSerializer, self)._deserialize(message)


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
    # Signed, whatever the storage: the key is the app's own secret, under a salt of its own.
    huey.serializer = RefusingSignedSerializer(secret=app.secret_key, salt="pdfqueue.queue")
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


def enqueue_wake_up(job_id, delay=0):
    """Put one wake-up for the job in the queue, due after delay seconds (raising what the storage raises).

    Built as Huey's own task message (what process_job.schedule would make), by the task's name."""
    eta = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(seconds=delay) if delay > 0 else None
    message = Message(str(uuid.uuid4()), PROCESS_JOB, eta, 0, 0, None, (job_id,), {}, None, None, None, None,
                      None, None, None)
    huey.storage.enqueue(huey.serializer.serialize(message), None)


def wake(job_id, delay=0):
    """Enqueue a wake-up for this job; the worker decides whether it still needs doing.

    The job is already committed, so a queue that cannot take the wake-up must not fail the request:
    the worker's upkeep re-wakes queued jobs whose wake-up was lost."""
    try:
        enqueue_wake_up(job_id, delay)
    except Exception:  # swallowed on purpose: the job is safe in the table and will be re-woken
        logger.exception("could not enqueue a wake-up for job %s; upkeep will re-wake it", job_id)
