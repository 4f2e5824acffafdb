"""The parse zygote (gateway/zygote.py): the same sandbox as sandbox.run, forked from a small warm process that
never holds a document, started again when it dies, one per gunicorn worker."""

import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
# The probes of the sandbox's own tests, run here in children forked from the zygote instead.
from test_gw_sandbox import (LIMITS, answer_pickle_bytes, child_limits, crash, environment, hog_memory,
                             open_descriptors, open_many_files, refuse, spin, start_a_thread, write_a_file)

from gateway import sandbox
from gateway import zygote as zygote_module
from gateway.errors import GatewayError
from gateway.mappings import load_all
from gateway.sandbox import Limits
from tests.support.invoicegen import make_invoice

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def zygote():
    """A zygote of the default mappings, as every app of this test run shares it."""
    return zygote_module.for_mappings(load_all())


@pytest.fixture
def own_zygote():
    """A zygote of this test's own, stopped after it."""
    started = zygote_module.Zygote(load_all())
    yield started
    started.close()


def test_a_document_converts(zygote):
    pdf, truth = make_invoice(n_lines=30, seed=24)
    pages, body = zygote.run(zygote_module.convert, (pdf, "pt_simon_invoice_v1", "xml", False, 2000), LIMITS)
    assert pages == 1 and f"<InvoiceNumber>{truth['Header']['InvoiceNumber']}</InvoiceNumber>" in body


def test_results_and_errors_come_back_as_from_sandbox_run(zygote):
    assert zygote.run(divmod, (17, 5), LIMITS) == [3, 2]
    assert zygote.run(str.__mul__, ("x", 3 << 20), LIMITS) == "x" * (3 << 20)  # bigger than a socket buffer
    with pytest.raises(GatewayError) as caught:
        zygote.run(refuse, (), LIMITS)
    assert (caught.value.status, caught.value.code, caught.value.message) == (422, "UNREADABLE", "nope")
    with pytest.raises(GatewayError) as caught:
        zygote.run(int, ("not a number",), LIMITS)
    assert (caught.value.status, caught.value.code) == (502, "GATEWAY_ERROR")


@pytest.mark.parametrize("func, limits, word", [
    (spin, Limits(memory_mb=128, cpu_s=1, wall_s=10), "CPU"),
    (hog_memory, LIMITS, "128 MiB"),
    (time.sleep, Limits(memory_mb=128, cpu_s=2, wall_s=0.5), "longer than 0.5 s"),
    (crash, LIMITS, "SIGSEGV"),
])
def test_each_limit_is_503_over_limits_and_costs_only_the_child(zygote, func, limits, word):
    started = time.monotonic()
    with pytest.raises(GatewayError) as caught:
        zygote.run(func, (30,) if func is time.sleep else (), limits)
    assert (caught.value.status, caught.value.code) == (503, "OVER_LIMITS") and word in caught.value.message
    assert time.monotonic() - started < 8
    assert zygote.run(divmod, (7, 2), LIMITS) == [3, 1]


def test_an_answer_over_its_cap_is_over_limits(zygote):
    with pytest.raises(GatewayError) as caught:
        zygote.run(str.__mul__, ("x", 2 << 20), Limits(memory_mb=128, cpu_s=2, wall_s=5, answer_bytes=1 << 20))
    assert (caught.value.status, caught.value.code) == (503, "OVER_LIMITS") and "1 MiB" in caught.value.message
    assert zygote.run(divmod, (7, 2), LIMITS) == [3, 1]


def test_the_child_is_confined_as_sandbox_runs_is(zygote, monkeypatch, tmp_path):
    monkeypatch.setenv("SECRET_KEY", "the-web-apps-secret")
    assert zygote.run(environment, (), LIMITS) == {}
    fds = zygote.run(open_descriptors, (), LIMITS)
    assert fds[:4] == [0, 1, 2, 3] and len(fds) <= 5  # listdir's own descriptor may show
    assert zygote.run(child_limits, (), LIMITS) == [[0, 0], [0, 0]]
    target = tmp_path / "out"
    for func, args in [(write_a_file, (str(target),)), (open_many_files, ()), (answer_pickle_bytes, ())]:
        with pytest.raises(GatewayError) as caught:
            zygote.run(func, args, LIMITS)
        assert caught.value.status in (502, 503)
    assert not target.exists() or target.stat().st_size == 0
    if os.geteuid() != 0:  # root is exempt from RLIMIT_NPROC
        with pytest.raises(GatewayError):
            zygote.run(start_a_thread, (), LIMITS)


def test_the_zygote_runs_one_thread(zygote):
    zygote.run(divmod, (1, 1), LIMITS)
    status = Path(f"/proc/{zygote._process.pid}/status").read_text()
    assert "\nThreads:\t1\n" in status  # forking a process with threads would copy their locks mid-use


def test_the_gateways_environment_never_reaches_the_zygote(own_zygote, monkeypatch):
    """Not even the block it started with, which clearing os.environ leaves in memory (and every child's)."""
    secret = "gateway-secret-" + os.urandom(8).hex()
    monkeypatch.setenv("GATEWAY_SOMETHING_SECRET", secret)
    own_zygote.run(divmod, (1, 1), LIMITS)
    assert secret.encode() not in memory_of(own_zygote._process.pid)
    started_with = Path(f"/proc/{own_zygote._process.pid}/environ").read_bytes().split(b"\0")
    names = {entry.split(b"=", 1)[0].decode() for entry in started_with if entry}
    assert "PYTHONPATH" in names and all(name.startswith(("PYTHON", "COVERAGE_")) for name in names), names


def test_the_zygote_imports_no_flask_gevent_or_pydantic():
    code = ("import sys, gateway.zygote; heavy = {'flask', 'werkzeug', 'gevent', 'pydantic', 'pydantic_core'}; "
            "print(sorted(heavy & {name.split('.')[0] for name in sys.modules}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_zygote_never_holds_a_document(own_zygote):
    marker = b"zygote-must-not-see-" + os.urandom(8).hex().encode()
    pdf = make_invoice(n_lines=5, seed=1)[0] + b"%" + marker + b"\n"
    own_zygote.run(zygote_module.convert, (pdf, "generic_v1", "xml", False, 10), LIMITS)
    assert marker not in memory_of(own_zygote._process.pid)
    assert marker in pdf  # and the search would have found it


def memory_of(pid):
    """Every readable private mapping of a process, concatenated."""
    chunks = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            start, end = (int(value, 16) for value in fields[0].split("-"))
            if fields[1].startswith("r") and (len(fields) < 6 or not fields[5].startswith("/")):
                try:
                    mem.seek(start)
                    chunks.append(mem.read(end - start))
                except (OSError, ValueError, OverflowError):
                    pass
    return b"".join(chunks)


def test_children_run_side_by_side(zygote):
    results = {}

    def convert(n):
        results[n] = zygote.run(time.sleep, (0.5,), LIMITS)
    threads = [threading.Thread(target=convert, args=(n,)) for n in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {n: None for n in range(4)} and time.monotonic() - started < 1.5


def test_the_next_requests_child_is_forked_ahead_and_holds_nothing_but_its_socket_while_it_waits(own_zygote):
    """The spare: forked from the zygote before its request comes (so never with a document in it), holding only
    stdio and its own socket (another child's request socket held open would keep that answer from ending)."""
    first = own_zygote.run(os.getpid, (), LIMITS)
    spare = only_child(own_zygote._process.pid, gone=first)
    deadline = time.monotonic() + 10  # it closes what it inherited as it starts (with coverage on, not at once)
    while len(descriptors := sorted(int(fd) for fd in os.listdir(f"/proc/{spare}/fd"))) != 4:
        assert time.monotonic() < deadline, f"the spare holds stdio and its socket only: {descriptors}"
        time.sleep(0.02)
    assert descriptors[:3] == [0, 1, 2]
    assert os.readlink(f"/proc/{spare}/fd/{descriptors[3]}").startswith("socket:")
    assert own_zygote.run(os.getpid, (), LIMITS) == spare  # the next request runs in it
    only_child(own_zygote._process.pid, gone=spare)  # and the one after that gets a new one


def test_a_request_whose_spare_died_gets_a_child_forked_for_it_and_the_spare_comes_back(own_zygote):
    """Not a 503 blamed on the document: its child is forked when the spare cannot take it."""
    first = own_zygote.run(os.getpid, (), LIMITS)
    spare = only_child(own_zygote._process.pid, gone=first)
    os.kill(spare, signal.SIGKILL)  # the request comes at once: before or after the zygote has reaped the spare
    ran_in = own_zygote.run(os.getpid, (), LIMITS)
    assert ran_in != spare and own_zygote.run(divmod, (5, 2), LIMITS) == [2, 1]
    assert only_child(own_zygote._process.pid, gone=ran_in) != spare


def test_a_spare_that_waits_on_an_idle_gateway_parses_the_sample_before_its_request_comes(own_zygote):
    """Its page copies (and pdfium's first steps) are then taken ahead, off its request's path: a request run in a
    spare that waited finds about a thousand more pages already copied than one run in a child forked for it."""
    first = own_zygote.run(os.getpid, (), LIMITS)
    spare = only_child(own_zygote._process.pid, gone=first)
    time.sleep(zygote_module.SPARE_WARM_AFTER_S + 1)
    minor_faults = 6  # getrusage's ru_minflt (the probe is the standard library's: importing one costs faults too)
    warm = own_zygote.run(resource.getrusage, (resource.RUSAGE_SELF,), LIMITS)[minor_faults]
    os.kill(only_child(own_zygote._process.pid, gone=spare), signal.SIGKILL)
    cold = own_zygote.run(resource.getrusage, (resource.RUSAGE_SELF,), LIMITS)[minor_faults]  # forked for it
    assert warm > cold + 500, (warm, cold)


def test_a_whole_answer_is_taken_without_waiting_for_the_child_to_exit():
    """A child's answer carries its length: the worker answers once it has all of it, while the child is still
    exiting (freeing its memory) and before the zygote reaps it; the socket is still open here."""
    ours, theirs = socket.socketpair()
    body = b'{"ok": [2, 1]}'
    theirs.sendall(sandbox.FRAME.pack(len(body)) + body)
    answer, overrun = sandbox._read_until(ours.detach(), time.monotonic() + 5, 1 << 20, framed=True)
    assert overrun is None and zygote_module._whole_answer(answer) == body
    assert zygote_module._whole_answer(answer[:-1]) is None  # a child that died mid-answer: the trailer says why
    theirs.close()


def only_child(pid, gone, timeout=10):
    """The zygote's one child once the child that ran the last request (pid gone) has been reaped: its spare. (The
    worker has its answer before that child exits, and perhaps before the zygote has forked the next spare.)"""
    deadline = time.monotonic() + timeout
    while gone in (found := children(pid)) or len(found) != 1:
        assert time.monotonic() < deadline, f"the zygote has one child, its spare: {found}"
        time.sleep(0.02)
    return found[0]


def test_a_zygote_that_died_is_started_again(own_zygote):
    assert own_zygote.run(divmod, (1, 1), LIMITS) == [1, 0]
    first = own_zygote._process.pid
    os.kill(first, signal.SIGKILL)
    own_zygote._process.wait()
    assert own_zygote.run(divmod, (5, 2), LIMITS) == [2, 1]
    assert own_zygote._process.pid != first


def test_a_zygote_whose_worker_stops_while_it_warms_up_exits_quietly(own_zygote, capfd):
    own_zygote.start()  # warming up: it has not said "ready" yet
    process = own_zygote._process
    own_zygote.close()  # the worker stops at once (a gateway stopped right after it started)
    assert process.wait(timeout=30) == 0
    assert capfd.readouterr().err == ""  # no traceback in the gateway's log, whose lines are all JSON


def test_a_zygote_dying_mid_parse_answers_503_overloaded_and_the_next_parse_works(own_zygote):
    own_zygote.run(divmod, (1, 1), LIMITS)  # started and ready
    dying = own_zygote._process.pid
    threading.Timer(0.5, os.kill, (dying, signal.SIGKILL)).start()
    with pytest.raises(GatewayError) as caught:
        own_zygote.run(time.sleep, (5,), LIMITS)
    assert (caught.value.status, caught.value.code) == (503, "OVERLOADED")  # transient: the worker retries
    assert own_zygote.run(divmod, (5, 2), LIMITS) == [2, 1]


def test_a_zygote_that_cannot_start_answers_503_overloaded(own_zygote, monkeypatch):
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with pytest.raises(GatewayError) as caught:
        own_zygote.run(divmod, (1, 1), LIMITS)
    assert (caught.value.status, caught.value.code) == (503, "OVERLOADED")


def test_a_zygote_that_exits_at_start_answers_503_overloaded(own_zygote, monkeypatch):
    monkeypatch.setattr(own_zygote, "_mappings_state", b"not a pickle")  # it dies reading its mappings
    with pytest.raises(GatewayError) as caught:
        own_zygote.run(divmod, (1, 1), LIMITS)
    assert (caught.value.status, caught.value.code) == (503, "OVERLOADED")


def test_a_zygote_that_cannot_fork_answers_503_overloaded(monkeypatch):
    """Played here by a thread: it answers a request with fork's errno and closes the request socket unread."""
    import errno

    stand_in = zygote_module.Zygote()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    class Running:
        pid = -1

        def poll(self):
            return None
    with stand_in._own_lock():
        stand_in._process, stand_in._control, stand_in._ready = Running(), ours, True

    def cannot_fork():
        _, fds, _, _ = socket.recv_fds(theirs, 64, 1)
        with socket.socket(fileno=fds[0]) as request:
            time.sleep(0.2)  # the request is in its buffer, unread, when it closes: the worker's read sees a reset
            request.sendall(zygote_module._TRAILER.pack(zygote_module._MAGIC, zygote_module._NO_FORK, errno.EAGAIN))
    playing = threading.Thread(target=cannot_fork)
    playing.start()
    with pytest.raises(GatewayError) as caught:
        stand_in.run(divmod, (1, 1), LIMITS)
    playing.join()
    assert (caught.value.status, caught.value.code) == (503, "OVERLOADED") and "temporarily" in caught.value.message
    ours.close()
    theirs.close()


def test_each_gunicorn_worker_has_its_own_zygote_which_dies_with_it():
    from gateway.testing import running_gateway
    with running_gateway({"GATEWAY_WORKERS": "2"}) as url:
        pdf = make_invoice(n_lines=5, seed=2)[0]
        for _ in range(4):
            response = requests.post(f"{url}/process", files={"file": ("a.pdf", pdf, "application/pdf")},
                                     data={"mapping": "generic_v1"}, timeout=30)
            assert response.status_code == 200
        master = gateway_master(url)
        deadline = time.monotonic() + 10  # a busy box may still be reaping a zygote it replaced, say
        while True:
            workers = children(master)
            zygotes = {worker: children(worker) for worker in workers}
            if len(workers) == 2 and all(len(each) == 1 for each in zygotes.values()):
                break
            assert time.monotonic() < deadline, f"each of 2 workers has one zygote: {zygotes}"
            time.sleep(0.2)
        victim = workers[0]
        os.kill(victim, signal.SIGKILL)
        (orphan,) = zygotes[victim]
        deadline = time.monotonic() + 10
        while Path(f"/proc/{orphan}").exists() and Path(f"/proc/{orphan}/stat").read_text().split()[2] != "Z":
            assert time.monotonic() < deadline, "the zygote of a killed worker exits"
            time.sleep(0.1)


def children(pid):
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def gateway_master(url):
    """The gunicorn master running_gateway started for url (a child of this process)."""
    port = url.rsplit(":", 1)[1]
    (master,) = [pid for pid in children(os.getpid())
                 if f"GATEWAY_PORT={port}\0".encode() in Path(f"/proc/{pid}/environ").read_bytes()]
    return master
