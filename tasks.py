"""The worker's whole job: take a queued job, send its PDF to the gateway, keep the XML — or say why not.

The jobs table decides and Huey only wakes: a wake-up claims its job with one conditional UPDATE, so a
duplicate or late wake-up does nothing. A lease, extended while the gateway works, marks a job as being
processed; the maintenance loop (one leader among worker processes) re-queues jobs whose lease lapsed,
re-wakes queued jobs whose wake-up was lost, probes the gateway while the breaker is open, and applies
retention once a day.
"""
import logging
import os
import random
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from xml.etree.ElementTree import ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException
from flask import current_app
from huey.signals import SIGNAL_INTERRUPTED
from sqlalchemy import func, select

from webapp import breaker, gateway_client, metrics
from webapp.db import db
from webapp.gateway_client import GatewayError
from webapp.models import ACTIVE, COMPLETE, PROCESSING, QUEUED, Coordination, Job, utcnow
from webapp.queue import bound_app, huey

logger = logging.getLogger("pdfqueue.worker")

PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}"
HELD_MESSAGE = "The gateway is down; the job waits and runs when it is back."
MAINTENANCE = "maintenance"
_holders = set()  # lease holders (one per thread) now running a job: released if the consumer is interrupted
stopping = threading.Event()  # the consumer's stop flag once worker.py runs one: chained jobs end there


@huey.task()
def process_job(job_id):
    """Convert this job if it is still queued and due, then keep converting the oldest due job while any waits.

    A wake-up turned away because every slot is busy is simply dropped: the thread holding that slot
    claims the next due job when it finishes, so a backlog drains in upload order without new wake-ups."""
    with bound_app().app_context():
        if run_job(job_id):
            while not stopping.is_set() and run_job():
                pass


def run_job(job_id=None):
    """Claim this job (without one, the oldest due job), convert it, and record what happened.

    False if there was nothing for this thread to run."""
    worker = f"{PROCESS_ID}:{threading.get_ident()}"
    # Registered before the claim commits, so a stop signal right after it still finds the job to release.
    _holders.add(worker)
    try:
        job = _claim(job_id, worker)
        if job is None:
            return False
        _run_claimed(job, worker)
        return True
    finally:
        _holders.discard(worker)


def _claim(job_id, worker):
    """The claimed job's working fields (Job.claim), or None: not claimable, not due, or the breaker holds it."""
    config = current_app.config
    if breaker.is_open(max_age=breaker.CACHE_SECONDS):  # a second-old answer is fine: a miss only costs a refund
        if job_id is not None:
            Job.hold(job_id, HELD_MESSAGE)
        return None
    lease, capacity = config["LEASE_SECONDS"], config["WORKER_CONCURRENCY"]
    if job_id is None:
        return Job.claim_next(worker, lease, capacity)
    status, next_attempt_at = db.session.execute(
        select(Job.status, Job.next_attempt_at).where(Job.id == job_id)).first() or (None, None)
    db.session.commit()
    if status != QUEUED or (next_attempt_at and next_attempt_at > utcnow()):
        return None  # a duplicate or early wake-up: settled by a read, without the write lock
    return Job.claim(job_id, worker, lease, capacity)


def _run_claimed(job, worker):
    config = current_app.config
    started = time.monotonic()
    _log(job, QUEUED, PROCESSING)
    try:
        with leases.holding(job.id, worker, config["LEASE_SECONDS"], progress=30):
            result_path = convert(job, worker, started)
    except GatewayError as error:
        _after_failure(job, worker, error, started)
    except OSError as error:
        _after_failure(job, worker, GatewayError("IO_ERROR", f"storage error: {error.strerror or error}"), started)
    else:
        breaker.record_success(max_age=breaker.CACHE_SECONDS)
        if Job.complete(job.id, worker, result_path):
            _log(job, PROCESSING, COMPLETE, started)
        else:  # deleted, or the lease was lost and another worker has it: this result is not wanted
            (Path(config["DATA_DIR"]) / result_path).unlink(missing_ok=True)
            logger.warning("job %s changed hands while converting; result dropped", job.id, extra=_fields(job))


def convert(job, worker, started):
    """Send the job's PDF to the gateway and keep its well-formed XML; return the stored path."""
    config = current_app.config
    data_dir = Path(config["DATA_DIR"])
    if not job.upload_path or not (data_dir / job.upload_path).exists():
        raise GatewayError("IO_ERROR", "the uploaded PDF is gone", final=True)
    result_dir = Path(config["RESULT_DIR"])
    with tempfile.NamedTemporaryFile(dir=result_dir, prefix=".incoming-", suffix=".xml", delete=False) as out:
        partial = Path(out.name)
    try:
        with partial.open("wb") as out:
            with metrics.gateway_call():
                gateway_client.convert(
                    config["GATEWAY_URL"], data_dir / job.upload_path, job.mapping, job.correlation_id, out,
                    read_timeout=config["GATEWAY_TIMEOUT"], max_bytes=config["MAX_RESULT_MB"] * 1024 * 1024,
                    deadline=started + config["JOB_TIME_LIMIT"], clock=time.monotonic)
            leases.report(worker, progress=90)  # "received": written beside the storing if it takes a while
            out.flush()
            os.fsync(out.fileno())
        try:
            SafeET.parse(partial)
        except (ParseError, DefusedXmlException) as exc:
            raise GatewayError("GW_5XX", f"the gateway's answer is not well-formed XML ({exc})") from exc
        final = result_dir / f"{job.id}.xml"
        os.replace(partial, final)
        return f"results/{job.id}.xml"
    finally:
        partial.unlink(missing_ok=True)


def _after_failure(job, worker, error, started):
    """Decide between failed for good, a retry after back-off, or waiting out an open breaker."""
    config = current_app.config
    if error.final:
        if Job.fail(job.id, worker, error.code, error.message):
            _log(job, PROCESSING, "failed", started, error.code)
        return
    # A gateway that still answers /healthz is up: this file is the trouble (a PDF bomb over its limits, say),
    # so it is retried and dead-lettered alone rather than opening the breaker on everyone's jobs.
    gateway_down = error.code != "IO_ERROR" and not gateway_client.healthy(config["GATEWAY_URL"])
    if gateway_down and breaker.record_failure():
        if Job.release(job.id, worker, "CIRCUIT_OPEN", HELD_MESSAGE):
            _log(job, PROCESSING, QUEUED, started, "CIRCUIT_OPEN")
        return
    attempt = job.attempts  # read after the claim, so it counts this attempt
    if attempt >= config["MAX_ATTEMPTS"]:
        if Job.fail(job.id, worker, error.code, error.message, dead_letter=True):
            _log(job, PROCESSING, "failed", started, error.code, dead_letter=True)
        return
    delay = config["RETRY_BASE_SECONDS"] * 2 ** (attempt - 1) + random.uniform(0, config["RETRY_JITTER_SECONDS"])
    if Job.retry_later(job.id, worker, error.code, error.message, delay):
        _log(job, PROCESSING, QUEUED, started, error.code, retry_in=round(delay, 1))
        process_job.schedule((job.id,), delay=delay)


class LeaseKeeper:
    """One thread per process keeps the leases of the jobs its worker threads are converting.

    A job is held from just before its gateway call until it is stored; meanwhile the keeper extends its
    lease every LEASE_SECONDS/3 and writes the progress steps it is told of, "sent" (30) and "received"
    (90), each once the job has been at that step for STEP_SECONDS. A step shorter than that is not
    written: nobody watching could see it, and writing it would cost every conversion a transaction
    beside its critical path. Progress only moves forward. A job that is no longer this worker's
    (deleted, or reaped and taken over) is dropped; its result will be dropped too, since completing is
    conditional on the lease."""

    STEP_SECONDS = 0.05

    @dataclass
    class Held:
        job_id: str
        lease: float  # seconds
        write_at: float  # monotonic time of its next write
        progress: int | None  # the step to write then, or None for the lease alone

    def __init__(self):
        self._held = {}  # worker -> Held
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid = None

    @contextmanager
    def holding(self, job_id, worker, lease_seconds, progress):
        with self._lock:
            self._held[worker] = self.Held(job_id, lease_seconds, time.monotonic() + self.STEP_SECONDS, progress)
            if self._pid != os.getpid():  # first job in this process: start the keeper
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="lease-keeper", daemon=True).start()
        self._wake.set()
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(worker, None)

    def report(self, worker, progress):
        """The worker's job reached this progress: the keeper writes it if the job stays there a while."""
        with self._lock:
            held = self._held.get(worker)
            if held is not None:
                held.write_at, held.progress = time.monotonic() + self.STEP_SECONDS, progress
        self._wake.set()

    def _run(self):
        while True:
            with self._lock:
                next_write = min((held.write_at for held in self._held.values()), default=None)
            self._wake.wait(None if next_write is None else max(0.0, next_write - time.monotonic()))
            self._wake.clear()
            now = time.monotonic()
            with self._lock:
                due = [(worker, held.job_id, held.lease, held.progress)
                       for worker, held in self._held.items() if held.write_at <= now]
            if not due:
                continue
            with bound_app().app_context():
                try:
                    for worker, job_id, lease, progress in due:
                        kept = Job.heartbeat(job_id, worker, lease, progress=progress)
                        self._settle(worker, job_id, progress, kept)
                except Exception:  # the database restarting, say: try again in a second, well within the lease
                    logger.exception("could not extend leases; retrying in a second")
                    with self._lock:
                        for worker, job_id, *_ in due:
                            held = self._held.get(worker)
                            if held is not None and held.job_id == job_id:
                                held.write_at = time.monotonic() + 1
                finally:
                    db.session.remove()

    def _settle(self, worker, job_id, written, kept):
        with self._lock:
            held = self._held.get(worker)
            if held is None or held.job_id != job_id:
                return  # let go meanwhile
            if not kept:
                del self._held[worker]
            elif held.progress == written:
                held.write_at, held.progress = time.monotonic() + held.lease / 3, None
            # else a newer progress was reported meanwhile: it is due now


leases = LeaseKeeper()


def due_queued(limit, idle_for=None):
    """Ids of queued jobs that are due, oldest first; with idle_for, only those untouched that long."""
    now = utcnow()
    query = select(Job.id).where(Job.status == QUEUED, Job.is_due(now))
    if idle_for is not None:
        query = query.where(Job.updated_at < now - timedelta(seconds=idle_for))
    ids = db.session.execute(query.order_by(Job.created_at).limit(limit)).scalars().all()
    db.session.commit()
    return ids


@huey.signal(SIGNAL_INTERRUPTED)
def _release_interrupted(signal, task, *args, **kwargs):
    """The consumer is stopping mid-job: put the job back in the queue without spending its attempt."""
    with bound_app().app_context():
        for worker in list(_holders):
            released = Job.release_held(worker)
            if released is not None:
                logger.info("job %s released at shutdown", released.id, extra={
                    "job_id": released.id, "correlation_id": released.correlation_id, "from": PROCESSING, "to": QUEUED})


def _fields(job, **extra):
    return {"job_id": job.id, "correlation_id": job.correlation_id, "mapping": job.mapping, "bytes": job.bytes, **extra}


def _log(job, from_status, to_status, started=None, error_code=None, **extra):
    """One JSON line per transition."""
    fields = _fields(job, **extra)
    fields.update({"from": from_status, "to": to_status, "attempt": job.attempts, "error_code": error_code})
    if started is not None:
        fields["duration_ms"] = round((time.monotonic() - started) * 1000)
    logger.info("job %s %s -> %s", job.id, from_status, to_status, extra=fields)
    metrics.record_transition(to_status, error_code)


# -- maintenance ---------------------------------------------------------------------------------


def maintain_once(first=False):
    """One tick of upkeep; only the process holding the maintenance lease does the shared work.

    Returns True if this process led the tick."""
    config = current_app.config
    interval = config["MAINTENANCE_SECONDS"]
    Coordination.put(f"worker:{PROCESS_ID}", holder=PROCESS_ID, expires_at=utcnow() + timedelta(seconds=3 * interval))
    if not Coordination.take_lead(MAINTENANCE, PROCESS_ID, 3 * interval):
        return False
    reap_expired_leases()
    probe_gateway()
    if not breaker.is_open():
        rewake_lost(first)
    row = Coordination.get("retention")
    if row is None or row.expires_at is None or row.expires_at <= utcnow():
        Coordination.put("retention", expires_at=utcnow() + timedelta(days=1))
        apply_retention()
    return True


def reap_expired_leases():
    """Re-queue jobs whose worker stopped extending their lease (killed, or the box lost power)."""
    expired = db.session.execute(
        select(Job.id, Job.correlation_id).where(Job.status == PROCESSING, Job.lease_expires_at < utcnow())).all()
    db.session.commit()
    for job_id, correlation_id in expired:
        if Job.expire_lease(job_id):
            logger.warning("job %s lease expired; queued again", job_id,
                           extra={"job_id": job_id, "correlation_id": correlation_id, "from": PROCESSING, "to": QUEUED})
            process_job(job_id)


def rewake_lost(first=False):
    """Wake queued jobs whose wake-up was lost (the web died between commit and enqueue, say).

    At a leader's first tick, everything due (left by a stop). Later, only while the queue is empty, and
    no more than the free slots: a backlog waiting for capacity already has its wake-ups, and waking it
    again every tick would flood the queue."""
    if first:
        limit, idle_for = 1000, None
    else:
        if huey.pending_count():
            return
        processing = db.session.scalar(select(func.count()).select_from(Job).where(Job.status == PROCESSING))
        limit, idle_for = current_app.config["WORKER_CONCURRENCY"] - processing, current_app.config["REAP_SECONDS"]
    for job_id in due_queued(limit=max(limit, 0), idle_for=idle_for):
        process_job(job_id)


def probe_gateway():
    """Open the breaker if /healthz is down; close it (and drain the queue) once it answers again."""
    url = current_app.config["GATEWAY_URL"]
    if breaker.is_open():
        if breaker.probe_due():
            if gateway_client.healthy(url):
                breaker.close()
                for job_id in due_queued(limit=10000):
                    process_job(job_id)
            else:
                breaker.record_failure()
    elif not gateway_client.healthy(url):
        breaker.record_failure()


def apply_retention(now=None):
    """Delete PDFs and XML past their retention (never an active job's), and stray partial files."""
    config = current_app.config
    now = now or utcnow()
    data_dir = Path(config["DATA_DIR"])
    removed = {"pdf": 0, "xml": 0, "partial": 0}
    old_pdfs = db.session.execute(select(Job.id, Job.upload_path).where(
        Job.status.not_in(ACTIVE), Job.upload_path.is_not(None),
        Job.created_at < now - timedelta(days=config["RETENTION_PDF_DAYS"]))).all()
    old_results = db.session.execute(select(Job.id, Job.result_path).where(
        Job.status == COMPLETE, Job.result_path.is_not(None),
        Job.completed_at < now - timedelta(days=config["RETENTION_XML_DAYS"]))).all()
    db.session.commit()
    for job_id, path in old_pdfs:
        if Job.forget_upload(job_id):  # conditional: skipped if the job became active meanwhile
            (data_dir / path).unlink(missing_ok=True)
            removed["pdf"] += 1
    for job_id, path in old_results:
        if Job.mark_result_expired(job_id):
            (data_dir / path).unlink(missing_ok=True)
            removed["xml"] += 1
    cutoff = time.time() - 3600
    for folder in (config["UPLOAD_DIR"], config["RESULT_DIR"]):
        for partial in Path(folder).glob(".incoming-*"):
            if partial.stat().st_mtime < cutoff:  # left by a process that died mid-write
                partial.unlink(missing_ok=True)
                removed["partial"] += 1
    logger.info("retention applied", extra={"removed": removed})
    return removed


class Maintenance(threading.Thread):
    """Run maintain_once every MAINTENANCE_SECONDS until stopped."""

    def __init__(self, app):
        super().__init__(name="maintenance", daemon=True)
        self.app = app
        self.stopped = threading.Event()

    def run(self):
        led = False
        while True:
            with self.app.app_context():
                try:
                    led = maintain_once(first=not led) or led
                except Exception:  # upkeep must outlive a bad tick (database restarting, say); next tick retries
                    logger.exception("maintenance tick failed")
                finally:
                    db.session.remove()
            if self.stopped.wait(self.app.config["MAINTENANCE_SECONDS"]):
                with self.app.app_context():
                    Coordination.give_up(MAINTENANCE, PROCESS_ID)  # let another worker lead at once
                    db.session.remove()
                return
