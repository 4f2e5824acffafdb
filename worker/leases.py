"""Leases: which worker a job is leased to while it is converted, the keeper that renews them, and taking back the
jobs of this host's workers that are gone.

A lease holder (Job.leased_by) is this process's PROCESS_ID plus its thread: host, boot, pid namespace, pid and the
process's start, so a worker on the same host can tell for sure that the holder is gone (reclaim_orphaned_leases).
A lease of another host's worker waits out its time (worker/upkeep.py reaps it).
"""
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from core import queue
from core.db import db
from core.jobs.model import Job
from core.jobs.states import Status
from core.queue import bound_app

logger = logging.getLogger("pdfqueue.worker")


def _boot_id():
    """This boot of the machine (Linux's random boot id, shortened); "-" where there is none."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:12] or "-"
    except OSError:
        return "-"


def _pid_namespace():
    """The pid namespace this process sees pids in (a container has its own); "-" where unknown."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "-"


def _started(pid):
    """When the process with this pid started (clock ticks since boot), or None if there is no such process.

    Two processes that held the same pid one after the other differ here."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name before ")" may hold spaces


HOST = socket.gethostname()[:64]
BOOT, PID_NAMESPACE = _boot_id(), _pid_namespace()
PROCESS_ID = f"{HOST}:{BOOT}:{PID_NAMESPACE}:{os.getpid()}:{_started(os.getpid()) or '-'}"


def holder_is_gone(holder):
    """True if this lease holder (Job.leased_by) was a process of this host that is certainly gone: its pid
    has no process, or another one (started at another time), or the machine booted since.

    A holder of another host, of another pid namespace on this boot, or in a form not ours is never taken
    for gone: its lease waits out its time (reap_lapsed_leases)."""
    try:
        host, boot, namespace, pid, started, _thread = holder.rsplit(":", 5)
    except ValueError:
        return False
    if host != HOST or BOOT == "-":
        return False
    if boot != BOOT:
        return True  # rebooted since: nothing of that boot runs
    if namespace != PID_NAMESPACE or PID_NAMESPACE == "-" or not pid.isdigit():
        return False  # its pids are not ours to look up
    now_started = _started(int(pid))
    return now_started is None or (started != "-" and now_started != started)


def reclaim_orphaned_leases():
    """Put back in the queue, at once and without spending an attempt, the jobs whose lease holder is a
    process of this host that is gone (killed mid-job, say); wake them. How many.

    Each release is conditional on the lease being still the dead holder's, so two workers reclaiming at
    once release a job once, and it is then claimed like any queued job: never two workers on one job."""
    rows = db.session.execute(select(Job.id, Job.leased_by, Job.correlation_id).where(
        Job.status == Status.PROCESSING, Job.leased_by.like(f"{HOST}:%"))).all()
    db.session.commit()
    reclaimed = 0
    for job_id, holder, correlation_id in rows:
        if holder_is_gone(holder) and Job.release(job_id, holder):
            logger.warning("job %s reclaimed from a worker that is gone", job_id, extra={
                "job_id": job_id, "correlation_id": correlation_id, "holder": holder,
                "from": Status.PROCESSING, "to": Status.QUEUED})
            queue.wake(job_id)
            reclaimed += 1
    return reclaimed


class LeaseKeeper:
    """One thread per process renews the leases of the jobs its worker threads are converting.

    A job is kept from just before its gateway call until it is stored; meanwhile the keeper extends its
    lease every LEASE_SECONDS/3 and writes the progress steps it is told of, "sent" (30) and "received"
    (90), each once the job has been at that step for STEP_SECONDS. A step shorter than that is not
    written: nobody watching could see it, and writing it would cost every conversion a transaction
    beside its critical path. Progress only moves forward. A job that is no longer this worker's
    (deleted, or reaped and taken over) is dropped; its result will be dropped too, since completing is
    conditional on the lease."""

    STEP_SECONDS = 0.25

    @dataclass
    class Lease:
        job_id: str
        seconds: float  # its length
        write_at: float  # monotonic time of its next write
        progress: int | None  # the step to write then, or None for the lease alone

    def __init__(self):
        self._leases = {}  # worker -> Lease
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._wakes_at = None  # when the keeper wakes by itself (monotonic; None: only when told)
        self._pid = None

    @contextmanager
    def keeping(self, job_id, worker, lease_seconds, progress):
        with self._lock:
            write_at = time.monotonic() + self.STEP_SECONDS
            self._leases[worker] = self.Lease(job_id, lease_seconds, write_at, progress)
            if self._pid != os.getpid():  # first job in this process: start the keeper
                self._pid, self._wakes_at = os.getpid(), None
                threading.Thread(target=self._run, name="lease-keeper", daemon=True).start()
            wake = self._sooner(write_at)
        if wake:
            self._changed.set()
        try:
            yield
        finally:
            with self._lock:
                self._leases.pop(worker, None)

    def report(self, worker, progress):
        """The worker's job reached this progress: the keeper writes it if the job stays there a while."""
        with self._lock:
            lease = self._leases.get(worker)
            if lease is None:
                return
            lease.write_at, lease.progress = time.monotonic() + self.STEP_SECONDS, progress
            wake = self._sooner(lease.write_at)
        if wake:
            self._changed.set()

    def _sooner(self, write_at):
        """True if a write at write_at comes before the keeper wakes by itself (under the lock). Waking the keeper
        only then spares each conversion two thread switches on its own path: most leases end before their first
        write, and the keeper already wakes for an earlier one."""
        return self._wakes_at is None or write_at < self._wakes_at

    def _run(self):
        while True:
            with self._lock:
                next_write = min((lease.write_at for lease in self._leases.values()), default=None)
                self._wakes_at = next_write
            self._changed.wait(None if next_write is None else max(0.0, next_write - time.monotonic()))
            self._changed.clear()
            now = time.monotonic()
            with self._lock:
                due = [(worker, lease.job_id, lease.seconds, lease.progress)
                       for worker, lease in self._leases.items() if lease.write_at <= now]
            if not due:
                continue
            with bound_app().app_context():
                try:
                    for worker, job_id, seconds, progress in due:
                        kept = Job.renew_lease(job_id, worker, seconds, progress=progress)
                        self._settle(worker, job_id, progress, kept)
                except Exception:  # the database restarting, say: try again in a second, well within the lease
                    logger.exception("could not extend leases; retrying in a second")
                    with self._lock:
                        for worker, job_id, *_ in due:
                            lease = self._leases.get(worker)
                            if lease is not None and lease.job_id == job_id:
                                lease.write_at = time.monotonic() + 1
                finally:
                    db.session.remove()

    def _settle(self, worker, job_id, written, kept):
        with self._lock:
            lease = self._leases.get(worker)
            if lease is None or lease.job_id != job_id:
                return  # let go meanwhile
            if not kept:
                del self._leases[worker]
            elif lease.progress == written:
                lease.write_at, lease.progress = time.monotonic() + lease.seconds / 3, None
            # else a newer progress was reported meanwhile: it is due now


leases = LeaseKeeper()
