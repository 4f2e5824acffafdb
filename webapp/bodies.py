"""A deadline for reading a request's body, so a client trickling one byte at a time cannot hold a connection
(its socket, its greenlet or thread, its temp file) for as long as it likes.

gunicorn has no body read timeout for its gevent and gthread workers, and a socket timeout would not do: it
bounds each recv, and a trickle feeds every recv in time. So a watchdog (one thread; a greenlet under gevent's
patching) shuts the read side of any connection whose body is not in by its deadline (gunicorn hands the socket
over as environ["gunicorn.socket"]): the read blocked on it returns at once, and the request answers 408. A body
left unread (that one, or one refused before it was read) is never drained after the answer either: the read
side is shut then too, so gunicorn closes the connection rather than read the rest for keep-alive.
"""
import heapq
import itertools
import socket
import threading
import time

from werkzeug.exceptions import RequestTimeout

TIMED_OUT = "The request body took too long to arrive; the connection is closed."


def _stop_reading(sock):
    """Shut the read side: a blocked read returns, and gunicorn finds no next request and closes."""
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass


LINGER_SECONDS = 2


def _close_lingering(sock):
    """After an answer sent before its body was read: end our side (FIN), read and drop what the client still
    sends for at most LINGER_SECONDS, then stop reading. Closing with unread bytes would send a reset, which
    can destroy the answer (a 507, a 413) before the client reads it; the cap keeps a trickler from holding on."""
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(65536):
                break
    except OSError:
        pass
    _stop_reading(sock)


class DeadlineInput:
    """wsgi.input whose reads fail with 408 once the body has taken longer than its deadline."""

    def __init__(self, stream, sock, deadline, length):
        self._stream, self.sock, self.deadline = stream, sock, deadline
        self.remaining = length  # None: chunked, unknown
        self.finished = length == 0
        self.timed_out = False

    def _call(self, method, *args):
        if self.timed_out or time.monotonic() >= self.deadline:
            self.timed_out = True
            raise RequestTimeout(TIMED_OUT)
        try:
            data = getattr(self._stream, method)(*args)
        except OSError:
            if self.timed_out:
                raise RequestTimeout(TIMED_OUT) from None
            raise
        if self.timed_out:  # the watchdog cut the read short
            raise RequestTimeout(TIMED_OUT)
        return data

    def _count(self, data):
        if not data:
            self.finished = True
        elif self.remaining is not None:
            self.remaining -= len(data)
            self.finished = self.remaining <= 0
        return data

    def read(self, size=-1):
        return self._count(self._call("read", size))

    def readline(self, size=-1):
        return self._count(self._call("readline", size))

    def readlines(self, hint=-1):
        return [self._count(line) for line in self._call("readlines", hint)]

    def __iter__(self):
        while line := self.readline():
            yield line


class Watchdog:
    """One thread that shuts the read side of every connection whose body is still arriving past its deadline."""

    def __init__(self):
        self._heap, self._counter = [], itertools.count()
        self._wake = threading.Condition()
        self._thread = None

    def watch(self, body):
        with self._wake:
            heapq.heappush(self._heap, (body.deadline, next(self._counter), body))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="body-deadline", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self):
        while True:
            with self._wake:
                while not self._heap:
                    self._wake.wait()
                deadline, _, body = self._heap[0]
                now = time.monotonic()
                if deadline > now:
                    self._wake.wait(deadline - now)
                    continue
                heapq.heappop(self._heap)
            if not body.finished:
                body.timed_out = True
                _stop_reading(body.sock)


watchdog = Watchdog()


class BodyDeadline:
    """WSGI middleware: give every request body `seconds` to arrive, and never drain one that did not."""

    def __init__(self, app, seconds):
        self.app, self.seconds = app, seconds

    def __call__(self, environ, start_response):
        length = environ.get("CONTENT_LENGTH")
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if not chunked and (not length or not length.isdigit() or int(length) == 0):
            return self.app(environ, start_response)
        sock = environ.get("gunicorn.socket")
        body = DeadlineInput(environ["wsgi.input"], sock, time.monotonic() + self.seconds,
                             None if chunked else int(length))
        environ["wsgi.input"] = body
        if sock is not None:
            watchdog.watch(body)
        result = self.app(environ, start_response)
        return _ClosingIterable(result, lambda: None if body.finished else _close_lingering(sock))


class _ClosingIterable:
    def __init__(self, result, on_close):
        self.result, self.on_close = result, on_close

    def __iter__(self):
        return iter(self.result)

    def close(self):
        try:
            if hasattr(self.result, "close"):
                self.result.close()
        finally:
            self.on_close()
