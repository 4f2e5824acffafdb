"""Run one parse in a forked child with memory, CPU and wall-time caps; whatever the file does, only the child
pays.

Fork per parse rather than a pool: a fresh child per file needs no pool to heal when one dies, inherits the
upload and the loaded mappings without copying, and costs a few milliseconds. Gunicorn's sync workers are
single-threaded, so forking from them is safe. The child answers through a pipe with a pickled tuple.
"""

import ctypes
import faulthandler
import os
import pickle
import resource
import select
import signal
import time
from dataclasses import dataclass

from .errors import GatewayError

_MiB = 1 << 20
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    cpu_s: int
    wall_s: float


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
    payload, timed_out = _read_until(read_fd, time.monotonic() + limits.wall_s)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return _outcome(payload, status, timed_out, limits)


def _read_until(fd, deadline):
    """Read the child's answer until EOF or the deadline; return (bytes, timed_out)."""
    chunks = []
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return b"".join(chunks), True
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    return b"".join(chunks), False
                chunks.append(chunk)
    finally:
        os.close(fd)


def _outcome(payload, status, timed_out, limits):
    if timed_out:
        raise GatewayError(503, "OVER_LIMITS", f"parsing took longer than {limits.wall_s:g} s")
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            raise GatewayError(503, "OVER_LIMITS", f"parsing used more than {limits.cpu_s} s of CPU")
        # pdfium aborts rather than raising when an allocation fails; other signals mean the same thing here.
        raise GatewayError(503, "OVER_LIMITS",
                           f"the parser died with {signal.Signals(sig).name} (memory limit {limits.memory_mb} MiB)")
    try:
        kind, value = pickle.loads(payload)
    except Exception:
        raise GatewayError(502, "GATEWAY_ERROR", "the parser process gave no usable answer") from None
    if kind == "ok":
        return value
    raise GatewayError(*value)


def _child(write_fd, func, args, limits):
    """Set limits, run, send ("ok", result) or ("error", (status, code, message)), and exit at once."""
    code = 0
    try:
        _reset_signals()
        _set_limits(limits)
        try:
            answer = ("ok", func(*args))
        except GatewayError as exc:
            answer = ("error", (exc.status, exc.code, exc.message))
        except MemoryError:
            answer = ("error", (503, "OVER_LIMITS", f"parsing needed more than {limits.memory_mb} MiB"))
        except Exception as exc:  # reported to the parent, which logs and answers 502
            answer = ("error", (502, "GATEWAY_ERROR", f"the parser failed: {type(exc).__name__}: {exc}"))
        data = memoryview(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
        while data:
            data = data[os.write(write_fd, data):]
    except BaseException:
        code = 70
    finally:
        os._exit(code)


def _reset_signals():
    faulthandler.disable()  # a crash is the parent's to report, as one log line, not a traceback dump
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP,
                signal.SIGWINCH, signal.SIGABRT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass
    try:  # die with the gateway worker rather than linger as an orphan
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _set_limits(limits):
    with open("/proc/self/statm") as statm:
        address_space = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    cap = address_space + limits.memory_mb * _MiB
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 2))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
