"""worker.py's consumer: one idle thread watches the queue, and the watch passes on whenever a task is taken."""
import threading

import pytest

from worker.consumer import Watch


@pytest.fixture
def watch():
    watch = Watch(fastest=0.01, slowest=0.03, backoff=1.1)
    watch.PARKED_SECONDS = 30  # a parked thread that is never handed the watch would outlast the test
    return watch


@pytest.mark.parametrize("taker", ["the watcher", "a thread woken to take over"])
def test_taking_a_task_wakes_a_parked_thread_to_watch(watch, taker):
    watcher, woken, sleeper = object(), object(), object()
    watch.watcher = watcher
    thread = threading.Thread(target=watch.wait, args=(sleeper,), daemon=True)
    thread.start()  # parks: someone else watches
    threading.Event().wait(0.05)
    if taker == "the watcher":
        watch.took_task(watcher)
    else:  # the watcher handed over, and the thread it woke found a task before it took the watch
        watch.watcher = None
        watch.took_task(woken)
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert watch.watcher is None  # whoever looks next takes the watch


def test_the_watcher_backs_off_while_the_queue_is_empty_and_speeds_up_after_a_task(watch):
    worker = object()
    for _ in range(30):
        watch.wait(worker)
    assert watch.watcher is worker and watch.interval == pytest.approx(0.03)
    watch.took_task(worker)
    assert watch.interval == 0.01 and watch.watcher is None


def test_with_a_doorbell_the_watcher_looks_rarely_but_at_once_when_it_rings(tmp_path):
    from core import queue
    from worker import doorbell
    bell = doorbell.Doorbell(tmp_path)
    try:
        watch = Watch(fastest=0.01, slowest=0.03, backoff=1.1, bell=bell)
        assert watch.slowest == Watch.DOORBELL_SLOWEST_SECONDS  # the bell, not the poll, brings new work
        watcher = object()
        watch.watcher, watch.interval = watcher, 300  # long backed off: only a ring ends this wait in time
        thread = threading.Thread(target=watch.wait, args=(watcher,), daemon=True)
        thread.start()
        threading.Event().wait(0.05)
        queue.ring(tmp_path)  # what every enqueue into Huey's SQLite queue does (core/queue.py)
        thread.join(timeout=10)
        assert not thread.is_alive() and watch.interval == 0.01
    finally:
        bell.close()


def test_a_ring_skips_and_removes_the_bells_of_workers_that_are_gone(tmp_path):
    from core import queue
    from worker import doorbell
    bell = doorbell.Doorbell(tmp_path)
    stale = queue.doorbell_folder(tmp_path) / "424242.sock"
    import socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dead:
        dead.bind(str(stale))  # bound, then closed: a file nobody listens on
    queue.ring(tmp_path)
    assert not stale.exists() and bell.path.exists()
    assert bell.wait(0)
    bell.close()
