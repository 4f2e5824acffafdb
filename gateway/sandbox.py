"""Run one parse in a forked child with memory, CPU and wall-time caps; whatever the file does, only the child
pays.

Fork per parse rather than a pool: a fresh child per file needs no pool to heal when one dies and sees no other
document's memory. run() forks from the calling process; the gateway's workers fork from their zygote instead
(zygote.py: a small warm process, so each fork copies less and starts warm), whose children run _child below
and are answered through _outcome, the same confinement and the same answers.

The child is a sandbox, not only a limit: it keeps only its answer pipe (every other inherited descriptor,
the gateway's sockets included, is closed), runs with an empty environment, may not open more than a few
files, write to any file, or start a process or thread, and answers as JSON — a parent that unpickled what a
compromised parser wrote would run its code. The answer is read up to Limits.answer_bytes.

What func raises is func's to classify (convert.py makes an exception in one document's parse that document's
422 PARSE_FAILED); whatever it leaves unclassified, and a child that cannot confine itself, is the gateway's
502, answered with its traceback for the parent to log. Limits overrun are 503 OVER_LIMITS, a failed fork is
503 OVERLOADED.
"""

import ctypes
import faulthandler
import json
import os
import resource
import select
import signal
import struct
import threading
import time
import traceback
from dataclasses import dataclass

from .errors import GatewayError

_MiB = 1 << 20
_PR_SET_PDEATHSIG = 1
try:  # looked up once, not in each child: a CDLL is a new ctypes class, and each child would build it afresh
    _prctl = ctypes.CDLL(None).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


_ANSWER_FD = 3
_MAX_FILES = 16  # the answer pipe, stdio, and what a parse may open (nothing: the PDF is in memory)
_TRACEBACK_CHARS = 16 * 1024  # of a traceback sent back for the log: its end, where it was raised
# A framed answer (zygote.py's children): its length first, so the parent knows it is whole without waiting for the
# child's exit (which frees the child's memory: a millisecond or two a parse).
FRAME = struct.Struct("!Q")


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    cpu_s: int
    wall_s: float
    answer_bytes: int = 256 * _MiB


_slots = None


def parse_slot(count):
    """A semaphore of count parses at once for this worker process (made in the worker, after gevent's patching,
    so waiting for a slot lets the worker's other requests — /healthz — run)."""
    global _slots
    if _slots is None or _slots[0] != (os.getpid(), count):
        _slots = ((os.getpid(), count), threading.BoundedSemaphore(count))
    return _slots[1]


def run(func, args, limits):
    """Return func(*args) computed in a child process; raise GatewayError when it fails or overruns."""
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        raise GatewayError(503, "OVERLOADED", f"cannot start a parser process ({exc.strerror})") from None
    if pid == 0:
        os.close(read_fd)
        _child(write_fd, func, args, limits)  # never returns
    os.close(write_fd)
    payload, overrun = _read_until(read_fd, time.monotonic() + limits.wall_s, limits.answer_bytes)
    if overrun:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return _outcome(payload, status, overrun, limits)


def _read_until(fd, deadline, cap, framed=False):
    """Read the child's answer until EOF, the deadline or cap bytes; return (bytes, None) or (b"", why it overran).

    framed: the answer starts with its length (FRAME); reading also stops once that many bytes have come. (What
    comes instead may be no answer at all, the zygote's trailer alone: a length is not trusted to refuse early.)"""
    chunks, size, whole = [], 0, None
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return b"", "time"
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(fd, 1 << 20)
                except ConnectionResetError:  # a socket (zygote.py) whose other end closed with our bytes unread
                    chunk = b""
                if not chunk:
                    return b"".join(chunks), None
                size += len(chunk)
                if size > cap:
                    return b"", "size"
                chunks.append(chunk)
                if framed:
                    if whole is None and size >= FRAME.size:
                        head = b"".join(chunks)
                        chunks = [head]
                        whole = FRAME.size + FRAME.unpack(head[:FRAME.size])[0]
                    if whole is not None and size >= whole:
                        return b"".join(chunks), None
    finally:
        os.close(fd)


def _outcome(payload, status, overrun, limits):
    if overrun == "time":
        raise GatewayError(503, "OVER_LIMITS", f"parsing took longer than {limits.wall_s:g} s")
    if overrun == "size":
        raise GatewayError(503, "OVER_LIMITS", f"the parse's answer is over {limits.answer_bytes >> 20} MiB")
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            raise GatewayError(503, "OVER_LIMITS", f"parsing used more than {limits.cpu_s} s of CPU")
        # pdfium aborts rather than raising when an allocation fails; other signals mean the same thing here.
        raise GatewayError(503, "OVER_LIMITS",
                           f"the parser died with {signal.Signals(sig).name} (memory limit {limits.memory_mb} MiB)")
    try:
        answer = json.loads(payload)
        if "ok" in answer:
            return answer["ok"]
        status, code, message = answer["error"]
        trace = answer.get("traceback")
        error = GatewayError(int(status), str(code), str(message),
                             traceback=str(trace)[-_TRACEBACK_CHARS:] if trace else None)
    except (ValueError, TypeError, KeyError):
        raise GatewayError(502, "GATEWAY_ERROR", "the parser process gave no usable answer") from None
    raise error


def _child(write_fd, func, args, limits, framed=False, signals_reset=False):
    """Confine itself, run, send {"ok": result} or {"error": [status, code, message], "traceback": text} as JSON
    (framed: after its length, FRAME), and exit at once.

    func's result must be JSON: the parent decodes nothing else. signals_reset: _reset_signals() was called already
    (by a spare child of the zygote's, while it waited for its request)."""
    code = 0
    try:
        if not signals_reset:
            _reset_signals()
        write_fd = _keep_only(write_fd)
        os.environ.clear()  # no secret the gateway was started with is the parser's to read
        answer = _answer(func, args, limits)
        data = json.dumps(answer).encode()
        data = memoryview(FRAME.pack(len(data)) + data if framed else data)
        while data:
            data = data[os.write(write_fd, data):]
    except BaseException:
        code = 70
    finally:
        os._exit(code)


def _answer(func, args, limits):
    try:
        _set_limits(limits)
    except Exception as exc:  # cannot confine itself (a hard limit below ours, say): the box's trouble, not the file's
        return _error(502, "GATEWAY_ERROR", f"the parser process could not start: {type(exc).__name__}: {exc}",
                      traceback.format_exc())
    try:
        return {"ok": func(*args)}
    except GatewayError as exc:
        return _error(exc.status, exc.code, exc.message, exc.traceback)
    except MemoryError:
        return _error(503, "OVER_LIMITS", f"parsing needed more than {limits.memory_mb} MiB")
    except Exception as exc:  # func's own bug, not classified by it: the parent logs it and answers 502
        return _error(502, "GATEWAY_ERROR", f"the parser failed: {type(exc).__name__}: {exc}", traceback.format_exc())


def _error(status, code, message, trace=None):
    answer = {"error": [status, code, message]}
    if trace:
        answer["traceback"] = trace[-_TRACEBACK_CHARS:]
    return answer


def _reset_signals():
    faulthandler.disable()  # a crash is the parent's to report, as one log line, not a traceback dump
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP,
                signal.SIGWINCH, signal.SIGABRT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass
    if _prctl is not None:  # die with the gateway worker rather than linger as an orphan
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _keep_only(write_fd):
    """Move the answer pipe to fd 3 and close every other descriptor above stdio; return the pipe's new fd."""
    if write_fd != _ANSWER_FD:
        os.dup2(write_fd, _ANSWER_FD)
        os.close(write_fd)
    os.closerange(_ANSWER_FD + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the parser reads nothing from the gateway's stdin
    os.close(devnull)
    return _ANSWER_FD


def _set_limits(limits):
    statm = os.open("/proc/self/statm", os.O_RDONLY)  # os.open, not open(): no io stack built in each child
    try:
        address_space = int(os.read(statm, 256).split()[0]) * resource.getpagesize()
    finally:
        os.close(statm)
    cap = address_space + limits.memory_mb * _MiB
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 2))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (_MAX_FILES, _MAX_FILES))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # no file written, of any size (the pipe is no file)
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no process or thread started (root is exempt)
