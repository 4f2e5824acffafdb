"""The parse sandbox on its own: limits turn into 503s, failures into the right GatewayError, results come back."""

import errno
import os
import signal
import time

import pytest

from gateway.errors import GatewayError
from gateway.sandbox import Limits, run

LIMITS = Limits(memory_mb=128, cpu_s=2, wall_s=5)


def hog_memory():
    blocks = []
    while True:
        blocks.append(bytearray(32 << 20))


def spin():
    while True:
        pass


def refuse():
    raise GatewayError(422, "UNREADABLE", "nope")


def crash():
    os.kill(os.getpid(), signal.SIGSEGV)


def test_result_comes_back():
    assert run(divmod, (17, 5), LIMITS) == [3, 2]  # as JSON
    assert run(str.__mul__, ("x", 3 << 20), LIMITS) == "x" * (3 << 20)  # bigger than a pipe buffer


def test_wall_time_limit_kills_the_child():
    started = time.monotonic()
    with pytest.raises(GatewayError) as caught:
        run(time.sleep, (30,), Limits(memory_mb=128, cpu_s=2, wall_s=0.5))
    assert (caught.value.status, caught.value.code) == (503, "OVER_LIMITS")
    assert time.monotonic() - started < 3


def test_cpu_limit():
    with pytest.raises(GatewayError) as caught:
        run(spin, (), Limits(memory_mb=128, cpu_s=1, wall_s=10))
    assert (caught.value.status, caught.value.code) == (503, "OVER_LIMITS")
    assert "CPU" in caught.value.message


def test_memory_limit():
    with pytest.raises(GatewayError) as caught:
        run(hog_memory, (), LIMITS)
    assert (caught.value.status, caught.value.code) == (503, "OVER_LIMITS")
    assert "128 MiB" in caught.value.message


def test_gateway_errors_cross_the_pipe():
    with pytest.raises(GatewayError) as caught:
        run(refuse, (), LIMITS)
    assert (caught.value.status, caught.value.code, caught.value.message) == (422, "UNREADABLE", "nope")


def test_unexpected_exception_is_a_502():
    with pytest.raises(GatewayError) as caught:
        run(int, ("not a number",), LIMITS)
    assert (caught.value.status, caught.value.code) == (502, "GATEWAY_ERROR")


def test_no_room_for_a_child_is_503_overloaded(monkeypatch):
    def no_fork():
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
    monkeypatch.setattr(os, "fork", no_fork)
    with pytest.raises(GatewayError) as caught:
        run(divmod, (1, 1), LIMITS)
    assert (caught.value.status, caught.value.code) == (503, "OVERLOADED")


def test_crashing_child_costs_only_the_child():
    with pytest.raises(GatewayError) as caught:
        run(crash, (), LIMITS)
    assert caught.value.status == 503 and "SIGSEGV" in caught.value.message
    assert run(divmod, (7, 2), LIMITS) == [3, 1]


# -- the child is a sandbox (issue 15, item 6) ----------------------------------------------------


def environment():
    return dict(os.environ)


def open_descriptors():
    return sorted(int(fd) for fd in os.listdir("/proc/self/fd"))


def write_a_file(path):
    with open(path, "wb") as handle:
        handle.write(b"x" * 10)
    return "written"


def start_a_thread():
    import threading
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    return "started"


def open_many_files():
    return [os.open(os.devnull, os.O_RDONLY) for _ in range(64)]


def answer_pickle_bytes():
    import pickle
    return pickle.dumps(object)  # bytes: not JSON, so never sent


def test_the_child_sees_no_environment(monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "the-web-apps-secret")
    assert run(environment, (), LIMITS) == {}


def test_the_child_keeps_only_its_answer_pipe_and_stdio():
    with open(os.devnull) as inherited:  # a descriptor the worker holds (its sockets, say)
        fds = run(open_descriptors, (), LIMITS)
        assert inherited.fileno() not in fds or inherited.fileno() <= 3
    assert fds[:4] == [0, 1, 2, 3] and len(fds) <= 5  # listdir's own descriptor may show


@pytest.mark.parametrize("func, args", [(write_a_file, None), (open_many_files, ()), (answer_pickle_bytes, ())])
def test_the_child_cannot_write_files_open_many_or_answer_anything_but_json(tmp_path, func, args):
    target = tmp_path / "out"
    with pytest.raises(GatewayError) as caught:
        run(func, (str(target),) if args is None else args, LIMITS)
    assert caught.value.status in (502, 503)
    assert not target.exists() or target.stat().st_size == 0


def child_limits():
    import resource
    return [list(resource.getrlimit(limit)) for limit in (resource.RLIMIT_NPROC, resource.RLIMIT_FSIZE)]


def test_the_child_cannot_start_a_thread_or_process():
    assert run(child_limits, (), LIMITS) == [[0, 0], [0, 0]]  # set for every user
    if os.geteuid() != 0:  # and binding: root is exempt from RLIMIT_NPROC, so only a user sees it refuse
        with pytest.raises(GatewayError):
            run(start_a_thread, (), LIMITS)


def test_an_answer_over_its_cap_is_over_limits():
    with pytest.raises(GatewayError) as caught:
        run(str.__mul__, ("x", 2 << 20), Limits(memory_mb=128, cpu_s=2, wall_s=5, answer_bytes=1 << 20))
    assert (caught.value.status, caught.value.code) == (503, "OVER_LIMITS") and "1 MiB" in caught.value.message


def test_the_parent_never_unpickles_the_childs_answer(monkeypatch):
    import pickle
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("the answer was unpickled"))
    assert run(divmod, (9, 4), LIMITS) == [2, 1]
