"""A doorbell for the workers of this host: a wake-up put in Huey's SQLite queue rings it, so an idle worker
picks the job up at once instead of at its next look at the queue, and can look rarely while nothing comes.

Each worker process binds a Unix datagram socket in INSTANCE_DIR/doorbell/ (its pid is the name); the queue's
ring() (core/queue.py) sends one byte to every socket there, never blocking, and removes those nobody listens
on any more (a worker that died). SQLite's queue only works for processes sharing one disk, so every enqueuer reaches
every worker this way; with Redis, Huey's consumer blocks on the queue itself and no doorbell is used.
"""
import os
import select
import socket

from core.queue import doorbell_folder


class Doorbell:
    """The bell of this worker process; wait() returns early once it rings."""

    def __init__(self, instance_dir):
        path = doorbell_folder(instance_dir)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / f"{os.getpid()}.sock"
        self.path.unlink(missing_ok=True)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(self.path))
        self._socket.setblocking(False)

    def wait(self, timeout):
        """Wait up to timeout seconds for a ring; True if it rang (every ring waiting is taken at once)."""
        readable, _, _ = select.select([self._socket], [], [], timeout)
        rang = False
        while readable:
            try:
                self._socket.recv(64)
                rang = True
            except BlockingIOError:
                break
        return rang

    def ring(self):
        """Ring this bell (the worker stopping wakes its own watcher)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
                sender.setblocking(False)
                sender.sendto(b"!", str(self.path))
        except OSError:
            pass

    def close(self):
        self._socket.close()
        self.path.unlink(missing_ok=True)
