"""Fork each parse's sandboxed child from a small, warm process (a zygote, like multiprocessing's forkserver)
instead of from the gunicorn worker.

A fork costs in proportion to the memory the parent has written (its page tables are copied, and the child
copies each page it writes to), and a child forked from a parent that never parsed pays for pdfium's and
Python's first use every time. A gunicorn worker is large (Flask, gevent, pydantic) and cold (it never parses:
its children do). The zygote is a separate Python process that imports only what a parse needs (no Flask,
gevent or pydantic: `tests/gateway/test_gw_zygote.py` holds it to that), loads the app's mappings, parses a
sample document through each of them (`warmup.pdf`), freezes its objects out of the garbage collector's reach
and from then on only forks: each child starts from a warm, small copy.

Nothing else changes: every document still gets a fresh child, confined by the same code as before
(`sandbox._child`: only its socket, no environment, memory/CPU/file/process limits) and answered the same way
(`sandbox._outcome`). The zygote never holds a document: the child reads its request itself, so no document's
bytes are ever in the memory the next child is forked from.

One zygote per gunicorn worker (a fresh Python started by the worker with subprocess, never a fork of it), so a
zygote serves one worker's requests only and dies with it. Per request:

    worker                                      zygote                       child (a spare, forked ahead)
    socketpair(); send one end  ─ control ─►    pass it to the spare  ─►    read the request (pickled
    and the wall-time cap                       fork the next spare          func, args, limits) from it,
                                                kill at the wall-time cap    confine itself, run,
    write the request  ─────────────── request socket ─────────────────►    write the JSON answer (its
    read the whole answer      ◄────────────────────────────────────────    length first), exit
    (or, cut short, until EOF) ◄─ the exit status (after the answer) ─    reap it

The worker decodes the answer as sandbox.run's parent does, once it has all of it (the child's exit is not waited
for). If the zygote dies, the next request starts another; if none can be started, the request answers 503
OVERLOADED.
"""

import ctypes
import gc
import logging
import os
import pickle
import resource
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import sandbox
from .convert import convert_pdf
from .errors import GatewayError
from .pdftext import read_pdf

logger = logging.getLogger(__name__)

WARMUP_PDF = Path(__file__).with_name("warmup.pdf")  # tests/support/invoicegen.py: make_invoice(n_lines=50, seed=24)
START_TIMEOUT_S = 60  # from starting the zygote to its "ready": a loaded box with coverage on can take long
ANSWER_GRACE_S = 5  # past a request's wall-time cap the zygote has killed its child and answered, or is stuck

_READY = b"ready"
_CAP = struct.Struct("!d")  # control message: the request's wall-time cap, with the request socket as SCM_RIGHTS
_LENGTH = struct.Struct("!Q")  # request: its length, then the pickle of (func, args, limits)
# After the child's answer, the zygote appends: a magic (a short read means the zygote died), what happened, and
# the child's wait status (or fork's errno). A child may write these bytes too, but the zygote's come last.
_TRAILER = struct.Struct("!4sBi")
_MAGIC = b"zyg1"
_EXITED, _KILLED_AT_CAP, _NO_FORK = 0, 1, 2
_TAKEN = b"!"  # a spare's word that it has its request socket
SPARE_ACK_TIMEOUT_S = 2  # a spare wakes and answers in well under a millisecond; one that cannot is replaced
# A spare that waited this long for its request is on an idle gateway: it parses the sample once while it waits.
SPARE_WARM_AFTER_S = 0.25

_mappings = {}  # in the zygote: the app's mappings, as the worker sent them at the start
_sample = b""  # in the zygote: WARMUP_PDF's bytes


def convert(data, mapping_name, fmt, pretty, max_pages):
    """convert_pdf with the zygote's warm copy of the named mapping: what the gateway's children run."""
    return convert_pdf(data, _mappings[mapping_name], fmt, pretty, max_pages)


# --- the worker's side ---------------------------------------------------------------------------------------

_zygotes = {}


def for_mappings(mappings):
    """The Zygote for this set of mappings (one per set in a process: every app of a test run shares one)."""
    key = pickle.dumps(mappings, protocol=pickle.HIGHEST_PROTOCOL)
    if key not in _zygotes:
        _zygotes[key] = Zygote(mappings)
    return _zygotes[key]


class Zygote:
    """A process's handle on its zygote: started on first use (gunicorn's workers start theirs as they boot, see
    gateway/gunicorn.conf.py), started again after it died. A forked process gets a zygote of its own."""

    def __init__(self, mappings=None):
        self._mappings_state = pickle.dumps(mappings or {}, protocol=pickle.HIGHEST_PROTOCOL)
        self._pid = None  # the process these belong to: a gunicorn master's handle is copied into every worker
        self._lock = self._process = self._control = None
        self._ready = False

    def start(self):
        """Start the zygote now rather than on the first request (it then warms up while the worker waits)."""
        with self._own_lock():
            if self._process is None:
                self._spawn()

    def run(self, func, args, limits):
        """Return func(*args) computed in a child forked from the zygote; raise GatewayError when it fails or
        overruns. func must be importable by name and args picklable (they reach the child pickled); the
        child's answer is JSON, as sandbox.run's."""
        request = pickle.dumps((func, args, limits), protocol=pickle.HIGHEST_PROTOCOL)
        mine, theirs = socket.socketpair()
        with mine:
            with theirs:
                process = self._hand_over(theirs, limits.wall_s)
            mine.settimeout(limits.wall_s + ANSWER_GRACE_S)
            try:
                mine.sendall(_LENGTH.pack(len(request)))
                mine.sendall(request)
            except OSError:
                pass  # the child is gone already (the zygote could not fork, or killed it): the trailer says why
            deadline = time.monotonic() + limits.wall_s + ANSWER_GRACE_S
            cap = sandbox.FRAME.size + limits.answer_bytes + _TRAILER.size
            answer, overrun = sandbox._read_until(mine.detach(), deadline, cap, framed=True)
        if overrun == "size":
            return sandbox._outcome(b"", 0, "size", limits)
        whole = _whole_answer(answer) if overrun is None else None
        if whole is not None:  # the child's whole answer: its exit, and the zygote's trailer, need not be waited for
            return sandbox._outcome(whole, 0, "size" if len(whole) > limits.answer_bytes else None, limits)
        magic, what, value = _TRAILER.unpack(answer[-_TRAILER.size:]) if len(answer) >= _TRAILER.size else (b"",) * 3
        if overrun == "time" or magic != _MAGIC:
            self._lost(process, "did not answer in time" if overrun else "stopped")
            raise GatewayError(503, "OVERLOADED", "the parser process stopped; retry later")
        if what == _NO_FORK:
            raise GatewayError(503, "OVERLOADED", f"cannot start a parser process ({os.strerror(value)})")
        # A child that died or was killed mid-answer: what it wrote (after its length, if it got that far).
        payload = answer[:-_TRAILER.size][sandbox.FRAME.size:]
        return sandbox._outcome(payload, value, "time" if what == _KILLED_AT_CAP else None, limits)

    def close(self):
        """Stop the zygote (it exits when its control socket closes, killing any child it still has)."""
        with self._own_lock():
            self._stop()

    def _own_lock(self):
        if self._pid != os.getpid():  # made in the process that uses it: after gevent's patching, in a worker
            self._pid, self._lock = os.getpid(), threading.Lock()
            self._process = self._control = None
        return self._lock

    def _hand_over(self, request_socket, wall_s):
        """Give the zygote a request's socket (starting the zygote first if need be); return its Popen."""
        with self._own_lock():
            for attempt in (1, 2):
                if self._process is not None and self._process.poll() is not None:
                    # Dead since the last request: start another rather than write to its control socket, which
                    # a spare it had just forked may still hold open for a moment (a request sent there is lost).
                    self._stop()
                if self._process is None:
                    self._spawn()
                try:
                    if not self._ready:
                        self._wait_ready()
                    socket.send_fds(self._control, [_CAP.pack(wall_s)], [request_socket.fileno()])
                    return self._process
                except OSError as exc:
                    self._stop()
                    if attempt == 2:
                        raise GatewayError(503, "OVERLOADED", f"the parser process cannot start ({exc})") from None
                    logger.warning("the parse zygote is gone (%s); starting another", exc)

    def _spawn(self):
        ours, zygotes = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with zygotes:
            try:
                # A fresh interpreter, not a fork of this (large) one; its own session, so a terminal's ^C goes to
                # the worker, which the zygote then follows. -c, not -m: requests name gateway.zygote's functions,
                # not __main__'s. Of the environment only the interpreter's own variables (and this process's
                # path, so the zygote imports the same code): the gateway's secrets are never in its memory, nor
                # in any child's (clearing os.environ would leave the block a process starts with).
                self._process = subprocess.Popen(
                    [sys.executable, "-c", "from gateway.zygote import main; main()", str(zygotes.fileno())],
                    stdin=subprocess.PIPE, pass_fds=[zygotes.fileno()], start_new_session=True, env=_environment())
            except OSError as exc:
                ours.close()
                raise GatewayError(503, "OVERLOADED", f"cannot start the parser process ({exc.strerror})") from None
        self._control, self._ready = ours, False
        try:
            self._process.stdin.write(self._mappings_state)
            self._process.stdin.close()
        except OSError:
            pass  # it died at once: _wait_ready says so

    def _wait_ready(self):
        self._control.settimeout(START_TIMEOUT_S)
        try:
            if self._control.recv(16) != _READY:
                raise ConnectionError("it stopped while starting")
        except socket.timeout:
            raise ConnectionError(f"no answer in {START_TIMEOUT_S} s") from None
        self._control.settimeout(None)
        self._ready = True

    def _lost(self, process, what):
        with self._own_lock():
            if process is self._process:
                logger.warning("the parse zygote (pid %s) %s; the next request starts another", process.pid, what)
                self._stop()

    def _stop(self):
        if self._control is not None:
            self._control.close()
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = self._control = None
        self._ready = False


def _whole_answer(answer):
    """The child's answer if answer holds all of it (its length, then that many bytes), else None."""
    if len(answer) < sandbox.FRAME.size:
        return None
    end = sandbox.FRAME.size + sandbox.FRAME.unpack(answer[:sandbox.FRAME.size])[0]
    return answer[sandbox.FRAME.size:end] if len(answer) >= end else None


def _environment():
    """Python's own variables (and coverage's, when a test run measures the zygote too), with this path."""
    kept = {name: value for name, value in os.environ.items() if name.startswith(("PYTHON", "COVERAGE_"))}
    return {**kept, "PYTHONPATH": os.pathsep.join(sys.path)}


# --- the zygote's side ---------------------------------------------------------------------------------------

def main():
    """The zygote: read the app's mappings from stdin, warm up, say ready, then fork a child per request. A worker
    that stops while its zygote still starts (a gateway stopped at once) ends it quietly, as one stopping later."""
    try:
        _start_and_serve(socket.socket(fileno=int(sys.argv[1])))
    except (ConnectionError, EOFError):
        pass


def _start_and_serve(control):
    os.environ.clear()  # the interpreter has started: nothing here needs the gateway's environment, no child gets it
    _mappings.update(pickle.load(sys.stdin.buffer))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    _warm_up()
    gc.collect()
    gc.freeze()  # the children's collections then never walk (and so never copy) the zygote's own objects
    ctypes.CDLL(None).malloc_trim(0)  # what the warm-up freed goes back to the system: less to copy per fork
    control.sendall(_READY)
    _serve(control)


def _warm_up():
    """Parse the sample through every mapping, to both formats: pdfium's fonts and caches, the mappings'
    expressions and Python's specialised code are then ready in every child."""
    global _sample
    _sample = WARMUP_PDF.read_bytes()
    read_pdf(_sample)
    for name in _mappings:
        for fmt in ("xml", "json"):
            _parse_sample(name, fmt)


def _parse_sample(name, fmt):
    try:
        convert(_sample, name, fmt, False, None)
    except GatewayError:
        pass  # a mapping for another layout finds nothing in the sample: it has warmed up all the same


class _Child:
    __slots__ = ("pid", "pidfd", "socket", "deadline", "killed")

    def __init__(self, pid, pidfd, request_socket, deadline):
        self.pid, self.pidfd, self.socket, self.deadline, self.killed = pid, pidfd, request_socket, deadline, False


class _Spare:
    """A child forked before its request came, waiting for it on its own socket (handoff)."""
    __slots__ = ("pid", "pidfd", "handoff")

    def __init__(self, pid, pidfd, handoff):
        self.pid, self.pidfd, self.handoff = pid, pidfd, handoff


def _serve(control):
    """Give each request socket the worker sends to a fresh child; kill those past their cap; reap each and append
    its exit status to its socket. Return (killing the children left) when the worker closes the control socket.

    The next request's child is forked ahead, while the zygote waits (a spare): the fork, and the child's start
    up to reading its request, are then off the request's path. It is still one fresh child per request, forked
    from the zygote, which never holds a document; if the spare is gone (or cannot be forked), the request's child
    is forked then, as before."""
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    children = []
    spare, want_spare = None, True
    while True:
        if spare is None and want_spare:
            spare = _fork_spare(selector)
        now = time.monotonic()
        for child in children:
            if not child.killed and child.deadline <= now:
                signal.pidfd_send_signal(child.pidfd, signal.SIGKILL)  # a pidfd: never another process by mistake
                child.killed = True
        caps = [child.deadline - now for child in children if not child.killed]
        for key, _ in selector.select(min(caps) if caps else None):
            if key.fileobj is control:
                try:
                    message, fds, _, _ = socket.recv_fds(control, _CAP.size, 1)
                except ConnectionError:  # the worker is gone (a reset rather than a close, at its exit)
                    message, fds = b"", []
                if not message:
                    for child in [*children, *([spare] if spare else [])]:
                        signal.pidfd_send_signal(child.pidfd, signal.SIGKILL)
                    return
                request_socket = socket.socket(fileno=fds[0])
                request_socket.setblocking(True)  # a gevent worker made it non-blocking; the child reads and writes
                (wall_s,) = _CAP.unpack(message)
                child = _hand_to_spare(spare, request_socket, wall_s, selector) if spare else None
                spare, want_spare = None, True
                if child is None:
                    child = _fork(request_socket, wall_s)
                    if child is not None:
                        selector.register(child.pidfd, selectors.EVENT_READ, child)
                if child is not None:
                    children.append(child)
            elif isinstance(key.data, _Spare):  # a spare exited before its request (killed, say): fork the next
                if key.data is spare:            # one for the next request, not in a loop
                    spare, want_spare = None, False
                selector.unregister(key.data.pidfd)
                os.waitpid(key.data.pid, 0)
                os.close(key.data.pidfd)
                key.data.handoff.close()
            else:  # a child's pidfd is readable: it exited
                child = key.data
                selector.unregister(child.pidfd)
                children.remove(child)
                _, status = os.waitpid(child.pid, 0)
                os.close(child.pidfd)
                _reply(child.socket, _KILLED_AT_CAP if child.killed else _EXITED, status)


def _fork(request_socket, wall_s):
    try:
        pid = os.fork()
    except OSError as exc:
        _reply(request_socket, _NO_FORK, exc.errno)
        return None
    if pid == 0:
        _child(request_socket.fileno())  # never returns
    return _Child(pid, os.pidfd_open(pid), request_socket, time.monotonic() + wall_s)


def _fork_spare(selector):
    """A spare child, waiting for its request; None if it cannot be forked (the request's fork then says why)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = os.fork()
    except OSError:
        ours.close()
        theirs.close()
        return None
    if pid == 0:
        _spare_child(theirs.fileno())  # never returns
    theirs.close()
    spare = _Spare(pid, os.pidfd_open(pid), ours)
    selector.register(spare.pidfd, selectors.EVENT_READ, spare)
    return spare


def _hand_to_spare(spare, request_socket, wall_s, selector):
    """Give the request socket to the spare: its _Child, or None if the spare is gone (it is reaped as it exits).

    The spare says it has the socket before it counts as the request's child: one killed as it was handed the
    request (a socket in flight dies with it) leaves the request to a child forked for it, not to a death that
    would be blamed on the document."""
    try:
        socket.send_fds(spare.handoff, [b"go"], [request_socket.fileno()])
        spare.handoff.settimeout(SPARE_ACK_TIMEOUT_S)
        taken = spare.handoff.recv(1) == _TAKEN
    except OSError:  # a timeout too: a spare that cannot answer is stopped, and reaped as it exits
        taken = False
    if not taken:
        signal.pidfd_send_signal(spare.pidfd, signal.SIGKILL)
        return None
    spare.handoff.close()
    child = _Child(spare.pid, spare.pidfd, request_socket, time.monotonic() + wall_s)
    selector.modify(spare.pidfd, selectors.EVENT_READ, child)
    return child


def _spare_child(handoff_fd):
    """A spare: hold no descriptor but its handoff socket (not the other children's request sockets, which would
    keep their answers open), be ready to run, then take a request socket and be _child on it. The zygote
    closing the handoff, or dying, ends it."""
    try:
        os.closerange(3, handoff_fd)
        os.closerange(handoff_fd + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        sandbox._reset_signals()
        handoff = socket.socket(fileno=handoff_fd)
        if not select.select([handoff], [], [], SPARE_WARM_AFTER_S)[0]:
            _warm_spare()
        message, fds, _, _ = socket.recv_fds(handoff, len(b"go"), 1)
        if message != b"go" or len(fds) != 1:
            os._exit(0)
        handoff.sendall(_TAKEN)
        handoff.close()
    except BaseException:
        os._exit(70)
    _child(fds[0], signals_reset=True)


def _warm_spare():
    """Parse the sample once, in a spare that waits on an idle gateway.

    A child's parse writes to the zygote's pages as it goes (Python writes a reference count on every object it
    touches), and each page written is copied then: on a quiet box, after an idle spell, those copies and cold
    caches made a child's parse some 6 ms slower than the same parse in a warm process. A spare that parses our own
    sample first has taken the copies, and warmed the caches, before its request comes. Under load no spare waits
    that long, so this costs CPU only when the box has it to spare. The sample is ours: still no document is ever
    in memory another document's child is forked from."""
    name = "pt_simon_invoice_v1" if "pt_simon_invoice_v1" in _mappings else next(iter(_mappings), None)
    if name is not None:
        _parse_sample(name, "xml")


def _reply(request_socket, what, value):
    """Append the trailer after the child's answer; the worker reads to EOF (a few bytes: they fit)."""
    with request_socket:
        request_socket.settimeout(1)  # never held up by a worker that stopped reading
        try:
            request_socket.sendall(_TRAILER.pack(_MAGIC, what, value))
        except OSError:
            pass  # the worker gave up on this request (its answer was over the cap, or it is gone)


def _child(fd, signals_reset=False):
    """Read the request from the worker, then be sandbox.run's child: confine, run, answer (framed), exit."""
    try:
        func, args, limits = pickle.loads(_read_request(fd))
    except BaseException:
        os._exit(70)
    sandbox._child(fd, func, args, limits, framed=True, signals_reset=signals_reset)


def _read_request(fd):
    (size,) = _LENGTH.unpack(_read_exactly(fd, _LENGTH.size))
    return _read_exactly(fd, size)


def _read_exactly(fd, size):
    buffer = bytearray(size)
    view, done = memoryview(buffer), 0
    while done < size:
        count = os.readv(fd, [view[done:]])
        if not count:
            raise EOFError("the worker closed the request")
        done += count
    return buffer
