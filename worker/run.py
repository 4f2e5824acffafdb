"""Running one job: claim it, send its PDF to the gateway, keep the checked XML, or settle the failed attempt.

The jobs table decides and Huey only wakes: a wake-up claims its job with one conditional UPDATE, so a
duplicate or late wake-up does nothing. A lease, renewed while the gateway works (worker/leases.py), marks a
job as being processed. A failed attempt is settled by the retry policy (worker/retry.py).
"""
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

from flask import current_app

from core import codes, counters, queue
from core.clock import utcnow
from core.jobs.model import Job
from core.jobs.states import Status
from core.paths import kept_file, stored_file
from worker import breaker, gateway_client, retry
from worker.leases import PROCESS_ID, leases
from worker.xmlcheck import WellFormed

logger = logging.getLogger("pdfqueue.worker")

HELD_MESSAGE = "The gateway is down; the job waits and runs when it is back."
_leaseholders = set()  # lease holders (one per thread) now running a job: released if the consumer is interrupted
stopping = threading.Event()  # set by the consumer as it stops: a thread draining the backlog ends there


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
    """The claimed job's working fields, or None: not claimable, not due, or the breaker holds it."""
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
            counters.observe_job_duration((utcnow() - job.created_at).total_seconds())
        else:  # deleted, or the lease was lost and another worker has it: this result is not wanted
            stored_file(config["DATA_DIR"], result_path).unlink(missing_ok=True)
            logger.warning("job %s changed hands while converting; result dropped", job.id, extra=_fields(job))


def fetch_result(job, worker, started):
    """Send the job's PDF to the gateway's /process and keep its well-formed XML; return the stored path."""
    config = current_app.config
    if job.mapping not in config["MAPPINGS"]:  # removed from the allow-list since the upload
        raise retry.FinalError(codes.UNKNOWN_MAPPING, f"the mapping {job.mapping!r} is no longer offered "
                               f"(MAPPINGS: {', '.join(config['MAPPINGS'])}); upload the PDF again with one of them")
    pdf = kept_file(config["DATA_DIR"], job.upload_path)
    if pdf is None or not pdf.exists():
        raise retry.FinalError(codes.IO_ERROR, "the uploaded PDF is gone")
    result_dir = Path(config["RESULT_DIR"])
    with tempfile.NamedTemporaryFile(dir=result_dir, prefix=".incoming-", suffix=".xml", delete=False) as out:
        partial = Path(out.name)
    try:
        with partial.open("wb") as out:
            checked = WellFormed(out)
            with gateway_client.gateway_call():
                gateway_client.process(
                    config["GATEWAY_URL"], pdf, job.mapping, job.correlation_id, checked,
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
        counters.record_retry(error.code)
        queue.wake(job.id, delay=step.delay)


def _fields(job, **extra):
    return {"job_id": job.id, "correlation_id": job.correlation_id, "mapping": job.mapping, "bytes": job.bytes, **extra}


def _log(job, from_status, to_status, started=None, error_code=None, **extra):
    """One JSON line per transition."""
    fields = _fields(job, **extra)
    fields.update({"from": from_status, "to": to_status, "attempt": job.attempts, "error_code": error_code})
    if started is not None:
        fields["duration_ms"] = round((time.monotonic() - started) * 1000)
    logger.info("job %s %s -> %s", job.id, from_status, to_status, extra=fields)
    counters.record_transition(to_status, error_code, job.attempts)
