"""worker.py's consumer: one idle thread watches the queue, and the watch passes on whenever a task is taken."""
import threading

import pytest

from worker import Watch


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
