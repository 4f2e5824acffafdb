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
    assert run(divmod, (17, 5), LIMITS) == (3, 2)
    assert run(bytes, (3 << 20,), LIMITS) == bytes(3 << 20)  # bigger than a pipe buffer


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
    assert run(divmod, (7, 2), LIMITS) == (3, 1)
