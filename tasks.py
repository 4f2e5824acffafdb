"""The worker's whole job: take a queued job, send its PDF to the gateway, keep the XML — or say why not.

The jobs table decides and Huey only wakes: a wake-up claims its job with one conditional UPDATE, so a
duplicate or late wake-up does nothing. A lease, renewed while the gateway works, marks a job as being
processed. A failed attempt is settled by the retry policy (webapp/retry.py). Every worker takes back at
once the jobs of dead workers of its own host (reclaim_orphaned_leases). The maintenance loop (one
leader among worker processes) settles jobs whose lease lapsed, re-wakes queued jobs whose wake-up was
lost, probes the gateway while the breaker is open, and applies retention and queues the admins' failure
digest once a day. Webhooks and emails are delivered by worker.py's deliverer (webapp/delivery.py).
"""
import logging
import os
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from xml.parsers import expat

from defusedxml import DefusedXmlException, EntitiesForbidden, ExternalReferenceForbidden
from flask import current_app
from huey.signals import SIGNAL_INTERRUPTED
from sqlalchemy import func, select

from webapp import breaker, codes, delivery, gateway_client, metrics, retry
from webapp.accounts import OneTimeLink, UserSession
from webapp.clock import utcnow
from webapp.db import db
from webapp.models import FINISHED, Coordination, Job, JobRemoval, Status
from webapp.notify import OutboxEvent
from webapp.queue import bound_app, huey

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
# Who holds a lease (Job.leased_by is this plus the thread): host, boot, pid namespace, pid and the process's
# start, so a worker on the same host can tell for sure that the holder is gone (reclaim_orphaned_leases).
PROCESS_ID = f"{HOST}:{BOOT}:{PID_NAMESPACE}:{os.getpid()}:{_started(os.getpid()) or '-'}"
HELD_MESSAGE = "The gateway is down; the job waits and runs when it is back."
MAINTENANCE = "maintenance"
RETENTION = "retention"
FAILURE_DIGEST = "failure_digest"
REMOVALS_KEPT = timedelta(days=1)  # a page away longer than this reloads anyway
NOTIFICATIONS_KEPT = timedelta(days=30)  # settled deliveries shown on the settings page this long
_leaseholders = set()  # lease holders (one per thread) now running a job: released if the consumer is interrupted
stopping = threading.Event()  # set by worker.py's consumer as it stops: a thread draining the backlog ends there


def wake(job_id):
    """Enqueue a wake-up for this job; the worker decides whether it still needs doing.

    The job is already committed, so a queue that cannot take the wake-up must not fail the request:
    the worker's maintenance loop re-wakes queued jobs whose wake-up was lost."""
    try:
        process_job(job_id)
    except Exception:  # swallowed on purpose: the job is safe in the table and will be re-woken
        logger.exception("could not enqueue a wake-up for job %s; maintenance will re-wake it", job_id)


@huey.task()
def process_job(job_id):
    """Convert a job if this one is still queued and due, then keep converting while any job is due (the one
    fair share puts first each time: see Job).

    A wake-up turned away because every slot is busy is simply dropped: the thread in that slot
    claims the next due job when it finishes, so a backlog drains in upload order without new wake-ups."""
    with bound_app().app_context():
        if run_job(job_id):
            while not stopping.is_set() and run_job():
                pass


def run_job(job_id=None):
    """Claim the job fair share puts first (if job_id is given, only if that job is still queued and due),
    convert it, and record what happened.

    False if there was nothing for this thread to run."""
    worker = f"{PROCESS_ID}:{threading.get_ident()}"
    # Registered before the claim commits, so a stop signal right after it still finds the job to release.
    _leaseholders.add(worker)
    try:
        job = _claim(job_id, worker)
        if job is None:
            return False
        _run_claimed(job, worker)
        return True
    finally:
        _leaseholders.discard(worker)


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
    status, next_attempt_at = Job.status_of(job_id)
    if status != Status.QUEUED or (next_attempt_at and next_attempt_at > utcnow()):
        return None  # a duplicate or early wake-up: settled by a read, without the write lock
    # The wake-up says there is work; fair share says which (the woken job, or one that is owed a turn first:
    # the thread keeps claiming until nothing is due, so the woken job is run all the same).
    return Job.claim_next(worker, lease, capacity)


def _run_claimed(job, worker):
    config = current_app.config
    started = time.monotonic()
    _log(job, Status.QUEUED, Status.PROCESSING)
    try:
        with leases.keeping(job.id, worker, config["LEASE_SECONDS"], progress=30):
            result_path = fetch_result(job, worker, started)
    except retry.ConversionError as error:
        settle_failure(job, worker, error, started)
    except OSError as error:
        settle_failure(job, worker, retry.StorageError(f"storage error: {error.strerror or error}"), started)
    else:
        breaker.record_success(max_age=breaker.CACHE_SECONDS)
        if Job.complete(job.id, worker, result_path):
            _log(job, Status.PROCESSING, Status.COMPLETE, started)
            metrics.observe_job_duration((utcnow() - job.created_at).total_seconds())
        else:  # deleted, or the lease was lost and another worker has it: this result is not wanted
            (Path(config["DATA_DIR"]) / result_path).unlink(missing_ok=True)
            logger.warning("job %s changed hands while converting; result dropped", job.id, extra=_fields(job))


def fetch_result(job, worker, started):
    """Send the job's PDF to the gateway's /process and keep its well-formed XML; return the stored path."""
    config = current_app.config
    data_dir = Path(config["DATA_DIR"])
    if job.mapping not in config["MAPPINGS"]:  # removed from the allow-list since the upload
        raise retry.FinalError(codes.UNKNOWN_MAPPING, f"the mapping {job.mapping!r} is no longer offered "
                               f"(MAPPINGS: {', '.join(config['MAPPINGS'])}); upload the PDF again with one of them")
    if not job.upload_path or not (data_dir / job.upload_path).exists():
        raise retry.FinalError(codes.IO_ERROR, "the uploaded PDF is gone")
    result_dir = Path(config["RESULT_DIR"])
    with tempfile.NamedTemporaryFile(dir=result_dir, prefix=".incoming-", suffix=".xml", delete=False) as out:
        partial = Path(out.name)
    try:
        with partial.open("wb") as out:
            checked = WellFormed(out)
            with metrics.gateway_call():
                gateway_client.process(
                    config["GATEWAY_URL"], data_dir / job.upload_path, job.mapping, job.correlation_id, checked,
                    read_timeout=config["GATEWAY_TIMEOUT"], max_bytes=config["MAX_RESULT_MB"] * 1024 * 1024,
                    deadline=started + config["JOB_TIME_LIMIT"], clock=time.monotonic)
            leases.report(worker, progress=90)  # "received": written beside the storing if it takes a while
            checked.finish()
            out.flush()
            os.fsync(out.fileno())
        final = result_dir / f"{job.id}.xml"
        os.replace(partial, final)
        return f"results/{job.id}.xml"
    finally:
        partial.unlink(missing_ok=True)


class WellFormed:
    """A file being written with the gateway's answer that checks, as the chunks pass, that they make one
    well-formed XML document (expat, no tree built, so no second read or parse of the stored file).

    As defusedxml does, entity declarations and external references are refused (a well-formed answer
    of ours has neither). finish() raises the TransientError if the answer was not well-formed."""

    def __init__(self, out):
        self._out = out
        self._parser = expat.ParserCreate()
        self._parser.EntityDeclHandler = self._refuse_entity
        self._parser.UnparsedEntityDeclHandler = self._refuse_entity
        self._parser.ExternalEntityRefHandler = self._refuse_reference
        self._error = None

    @staticmethod
    def _refuse_entity(name, *args):
        raise EntitiesForbidden(name, None, None, None, None, None)

    @staticmethod
    def _refuse_reference(context, base, sysid, pubid):
        raise ExternalReferenceForbidden(context, base, sysid, pubid)

    def write(self, chunk):
        self._out.write(chunk)
        if self._error is None:
            try:
                self._parser.Parse(chunk, False)
            except (expat.ExpatError, DefusedXmlException) as exc:
                self._error = exc

    def finish(self):
        if self._error is None:
            try:
                self._parser.Parse(b"", True)
            except (expat.ExpatError, DefusedXmlException) as exc:
                self._error = exc
        if self._error is not None:
            raise retry.TransientError(codes.GW_5XX, f"the gateway's answer is not well-formed XML ({self._error})")


def settle_failure(job, worker, error, started=None):
    """Apply the retry policy's answer to a failed attempt: fail, retry after a back-off, or hold for the breaker.

    worker None: the attempt's lease lapsed (its worker died; the reaper settles it)."""
    config = current_app.config
    # A gateway that fails /healthz too counts toward BREAKER_THRESHOLD. One that still answers may be fine and
    # this file the trouble (a PDF bomb over its limits, say): it counts only toward the rate of distinct
    # failing jobs (breaker.record_job_failure), which one file alone never reaches.
    breaker_open = False
    if error.blames_gateway:
        if gateway_client.healthy(config["GATEWAY_URL"]):
            # Only a 5xx or a timeout counts: a refusal (4xx) is the file's answer, however many files get it.
            breaker_open = not isinstance(error, retry.FinalError) and breaker.record_job_failure(job.id)
        else:
            breaker_open = breaker.record_failure()
    step = retry.next_step(error, job.attempts, config, breaker_open=breaker_open)  # attempts counts this one
    if isinstance(step, retry.Hold):
        if Job.release(job.id, worker, codes.CIRCUIT_OPEN, HELD_MESSAGE):
            _log(job, Status.PROCESSING, Status.QUEUED, started, codes.CIRCUIT_OPEN)
    elif isinstance(step, retry.Fail):
        if Job.fail(job.id, worker, error.code, error.message, dead_letter=step.dead_letter):
            _log(job, Status.PROCESSING, Status.FAILED, started, error.code, dead_letter=step.dead_letter)
    elif Job.retry_later(job.id, worker, error.code, error.message, step.delay):
        _log(job, Status.PROCESSING, Status.QUEUED, started, error.code, retry_in=round(step.delay, 1))
        metrics.record_retry(error.code)
        if step.delay > 0:
            process_job.schedule((job.id,), delay=step.delay)
        else:
            wake(job.id)


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
        self._pid = None

    @contextmanager
    def keeping(self, job_id, worker, lease_seconds, progress):
        with self._lock:
            self._leases[worker] = self.Lease(job_id, lease_seconds, time.monotonic() + self.STEP_SECONDS, progress)
            if self._pid != os.getpid():  # first job in this process: start the keeper
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="lease-keeper", daemon=True).start()
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
            if lease is not None:
                lease.write_at, lease.progress = time.monotonic() + self.STEP_SECONDS, progress
        self._changed.set()

    def _run(self):
        while True:
            with self._lock:
                next_write = min((lease.write_at for lease in self._leases.values()), default=None)
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


@huey.signal(SIGNAL_INTERRUPTED)
def _release_interrupted(signal, task, *args, **kwargs):
    """The consumer is stopping mid-job: put the job back in the queue without spending its attempt."""
    with bound_app().app_context():
        for worker in list(_leaseholders):
            released = Job.release(None, worker, returning=(Job.correlation_id,))
            if released is not None:
                logger.info("job %s released at shutdown", released.id, extra={
                    "job_id": released.id, "correlation_id": released.correlation_id,
                    "from": Status.PROCESSING, "to": Status.QUEUED})


def _fields(job, **extra):
    return {"job_id": job.id, "correlation_id": job.correlation_id, "mapping": job.mapping, "bytes": job.bytes, **extra}


def _log(job, from_status, to_status, started=None, error_code=None, **extra):
    """One JSON line per transition."""
    fields = _fields(job, **extra)
    fields.update({"from": from_status, "to": to_status, "attempt": job.attempts, "error_code": error_code})
    if started is not None:
        fields["duration_ms"] = round((time.monotonic() - started) * 1000)
    logger.info("job %s %s -> %s", job.id, from_status, to_status, extra=fields)
    metrics.record_transition(to_status, error_code, job.attempts)


# -- maintenance ---------------------------------------------------------------------------------


def maintain_once(first=False):
    """One tick of upkeep: every process reclaims the leases of this host's dead workers; only the process
    with the maintenance lease does the shared work.

    Returns True if this process led the tick."""
    config = current_app.config
    interval = config["MAINTENANCE_SECONDS"]
    Coordination.put(f"worker:{PROCESS_ID}", holder=PROCESS_ID,
                     lease_expires_at=utcnow() + timedelta(seconds=3 * interval))  # this worker's heartbeat
    reclaim_orphaned_leases()  # every worker, every tick: its first tick runs as it starts
    if not Coordination.take_lead(MAINTENANCE, PROCESS_ID, 3 * interval):
        return False
    reap_lapsed_leases()
    probe_gateway()
    if not breaker.is_open():
        rewake_lost(first)
    row = Coordination.get(RETENTION)
    if row is None or row.due_at is None or row.due_at <= utcnow():
        Coordination.put(RETENTION, due_at=utcnow() + timedelta(days=1))
        apply_retention()
    send_failure_digest()
    return True


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
    """Put back in the queue, at once and without spending an attempt, the jobs whose lease is held by a
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
            wake(job_id)
            reclaimed += 1
    return reclaimed


def send_failure_digest():
    """Once a day, a day after the first tick, put the admins' digest of failed jobs in the outbox (with SMTP_URL)."""
    row = Coordination.get(FAILURE_DIGEST)
    if row is None or row.due_at is None:
        Coordination.put(FAILURE_DIGEST, due_at=utcnow() + timedelta(days=1))
    elif row.due_at <= utcnow():
        Coordination.put(FAILURE_DIGEST, due_at=utcnow() + timedelta(days=1))
        delivery.enqueue_failure_digest()


def reap_lapsed_leases():
    """Settle jobs whose worker stopped renewing their lease (killed, or its box lost power) as failed attempts."""
    for job in Job.lapsed():
        logger.warning("job %s lease expired", job.id, extra=_fields(job, attempt=job.attempts))
        settle_failure(job, None, retry.LeaseLapsed())


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
        processing = db.session.scalar(select(func.count()).select_from(Job).where(Job.status == Status.PROCESSING))
        limit, idle_for = current_app.config["WORKER_CONCURRENCY"] - processing, current_app.config["REAP_SECONDS"]
    for job_id in Job.due_ids(limit=max(limit, 0), idle_for=idle_for):
        process_job(job_id)


def probe_gateway():
    """Open the breaker if /healthz is down; close it (and wake the jobs it held) once it answers again."""
    url = current_app.config["GATEWAY_URL"]
    if breaker.is_open():
        if breaker.probe_due():
            if gateway_client.healthy(url):
                breaker.close()
                wake_due()
            else:
                breaker.record_failure()
    elif not gateway_client.healthy(url):
        breaker.record_failure()


def wake_due():
    """Wake every queued job that is due (after the breaker closed); how many."""
    ids = Job.due_ids(limit=10000)
    for job_id in ids:
        wake(job_id)
    return len(ids)


def apply_retention(now=None):
    """Delete PDFs and XML past their retention (never an active job's), stray partial files, old removals,
    sign-in sessions and one-time links that can no longer be used, and settled notifications past 30 days."""
    config = current_app.config
    now = now or utcnow()
    data_dir = Path(config["DATA_DIR"])
    removed = {"pdf": 0, "xml": 0, "partial": 0}
    old_pdfs = db.session.execute(select(Job.id, Job.upload_path).where(
        Job.status.in_(FINISHED), Job.upload_path.is_not(None),
        Job.created_at < now - timedelta(days=config["RETENTION_PDF_DAYS"]))).all()
    old_results = db.session.execute(select(Job.id, Job.result_path).where(
        Job.status == Status.COMPLETE, Job.result_path.is_not(None),
        Job.completed_at < now - timedelta(days=config["RETENTION_XML_DAYS"]))).all()
    db.session.commit()
    for job_id, path in old_pdfs:
        if Job.forget_upload(job_id):  # conditional: skipped if the job became active meanwhile
            (data_dir / path).unlink(missing_ok=True)
            removed["pdf"] += 1
    for job_id, path in old_results:
        if Job.expire_result(job_id):
            (data_dir / path).unlink(missing_ok=True)
            removed["xml"] += 1
    cutoff = time.time() - 3600
    for folder in (config["UPLOAD_DIR"], config["RESULT_DIR"]):
        for partial in Path(folder).glob(".incoming-*"):
            if partial.stat().st_mtime < cutoff:  # left by a process that died mid-write
                partial.unlink(missing_ok=True)
                removed["partial"] += 1
    JobRemoval.forget_before(now - REMOVALS_KEPT)
    removed["sessions"] = UserSession.forget_before(now - timedelta(days=config["SESSION_DAYS"]))
    removed["links"] = OneTimeLink.forget_expired(now)
    removed["notifications"] = OutboxEvent.forget_before(now - NOTIFICATIONS_KEPT)
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
