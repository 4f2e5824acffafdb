"""worker.py's consumer: one idle thread watches the queue, and the watch passes on whenever a task is taken."""
import threading
import time

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


@pytest.fixture
def consumer(monkeypatch):
    """A WatchingConsumer of two threads on a Huey of its own (in memory), stopped afterwards."""
    from huey import MemoryHuey
    from worker import consumer as module, run
    monkeypatch.setattr(run, "stopping", threading.Event())  # stop() sets it
    monkeypatch.setattr(module.Watch, "PARKED_SECONDS", 30)  # a parked thread moves only when handed the watch
    huey = MemoryHuey("watch-test", results=False, utc=True)
    made = []

    def build():
        made.append(module.WatchingConsumer(huey, workers=2, worker_type="thread", initial_delay=0.01,
                                            backoff=1.1, max_delay=0.05, periodic=False, check_worker_health=False))
        return made[-1]

    build.huey = huey
    yield build
    for running in made:
        running.stop()


def wait_until(check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_a_thread_that_starts_a_task_hands_the_watch_to_an_idle_one(consumer):
    """Huey's own Worker.loop with our hooks: sleep() parks all idle threads but the watcher, and Huey's
    SIGNAL_EXECUTING, as a task starts in the watcher's thread, wakes a parked one to watch in its place."""
    started, release = [], threading.Event()
    huey = consumer.huey

    @huey.task()
    def hold():
        started.append(threading.current_thread().name)
        release.wait(10)

    running = consumer()
    watch = running._watch
    running.start()
    try:
        (first, _), (second, _) = running.worker_threads
        assert wait_until(lambda: watch.watcher is not None)
        watcher = watch.watcher
        hold()
        assert wait_until(lambda: len(started) == 1)
        assert wait_until(lambda: watch.watcher not in (None, watcher))  # the other thread watches now
        hold()  # and so takes the next task at once, while the first still runs
        assert wait_until(lambda: len(started) == 2)
        assert len(set(started)) == 2
    finally:
        release.set()
    assert huey._signal.receivers["executing"] == [running._executing]


def test_stopping_lets_the_parked_threads_go_and_disconnects_the_hand_over(consumer):
    running = consumer()
    running.start()
    assert wait_until(lambda: running._watch.watcher is not None)
    running.stop(graceful=True)  # joins the threads: a parked one would hold this for PARKED_SECONDS
    assert not any(thread.is_alive() for _, thread in running.worker_threads)
    assert running._executing not in consumer.huey._signal.receivers.get("executing", [])
