"""Counters every process adds to (the write side of /metrics): buffered per process, written to the database.

Why the database rather than prometheus-client's multiprocess mode: the gateway latency is observed in the
worker, another process and, past one box, another machine. Its mmap files would need a directory shared by
every box (mmap over a network volume is not coherent) and per-pid clean-up. A counter row in the database
every process already shares is seen by every web process and survives restarts, so any web process answers
for the whole system. Samples are buffered in each process and written once a second by a background thread
(and at scrape and exit), so a job or an upload never waits on the database for a counter. The read side, the
scrape, is the web's (webapp/metrics.py).
"""
import atexit
import json
import logging
import os
import threading
import time

from flask import current_app
from sqlalchemy import Float, String
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column

from core.db import db, write_transaction
from core.jobs.states import FINISHED

logger = logging.getLogger("webapp.metrics")

# Seconds; a conversion may take up to GATEWAY_TIMEOUT (180 s by default), so the top buckets reach it.
GATEWAY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 180)
GATEWAY_LATENCY = "gateway_request_seconds"
UPLOADS_REJECTED = "uploads_rejected"
UPLOADS_ACCEPTED = "uploads_accepted"  # by outcome: new, duplicate (the live job returned), reconverted
JOBS_FINISHED = "jobs_finished"
RETRIES = "job_retries"  # automatic retries scheduled after a transient failure, by code
RETRIED_FINISHED = "retried_jobs_finished"  # jobs that needed more than one attempt, by final status
# Upload to complete, seconds: the wait in the queue and any retries included, so the top reaches an hour.
JOB_DURATION = "job_duration_seconds"
JOB_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
NOTIFICATIONS = "notifications"  # worker/delivery.py: each delivery attempt's outcome, by kind
INTAKE_POLLS = "intake_polls"  # core/intake/: polls of each source
INTAKE_ERRORS = "intake_errors"  # polls of each source that failed (server down, password refused, no room)
INTAKE_FILES = "intake_files"  # files a source brought, by outcome: new, duplicate, reconverted, rejected

class MetricCounter(db.Model):
    """One counter series: a name, its labels as sorted JSON, and a value only ever added to."""

    __tablename__ = "metric_counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    labels: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[float] = mapped_column(Float, default=0.0)


def _label_key(labels):
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


FLUSH_SECONDS = 1.0


class Buffer:
    """One app's samples not yet written, and its flusher thread (one per process: restarted after a fork).

    Per app rather than per module, so that samples are written to the database of the app that made them."""

    def __init__(self, app):
        self.app = app
        self.pending = {}  # (name, label key) -> amount not yet written
        self.lock = threading.Lock()  # guards pending
        self.writing = threading.Lock()  # one write at a time: a scrape's flush waits for a write in flight
        self.pid = None

    def add(self, samples):
        with self.lock:
            for name, labels, amount in samples:
                key = (name, _label_key(labels))
                self.pending[key] = self.pending.get(key, 0) + amount
        if self.pid != os.getpid():  # first sample in this process (or after a fork): start its flusher
            self.pid = os.getpid()
            threading.Thread(target=self._run, name="metrics-flush", daemon=True).start()
            atexit.register(self._flush_in_context)

    def flush(self):
        with self.writing:
            with self.lock:
                batch, self.pending = self.pending, {}
            if batch:
                _write(batch)

    def _flush_in_context(self):
        with self.app.app_context():
            self.flush()
            db.session.remove()

    def _run(self):
        while True:
            time.sleep(FLUSH_SECONDS)
            self._flush_in_context()


def _buffer():
    return current_app.extensions["pdfqueue_metrics"]


def add(*samples):
    """Add to counters, each sample a (name, labels, amount). Buffered: a background thread writes them in one
    transaction a second, so the job or upload that made them never waits on the database for a counter."""
    _buffer().add(samples)


def flush():
    """Write the buffered samples now, after any write already under way (so a scrape sees every sample so far)."""
    _buffer().flush()


def _write(batch):
    """Add a batch to the counters in one transaction (never failing the caller; a lost batch is logged)."""
    try:
        with write_transaction() as session:
            insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
            for (name, labels), amount in batch.items():
                stmt = insert(MetricCounter).values(name=name, labels=labels, value=amount)
                session.execute(stmt.on_conflict_do_update(index_elements=["name", "labels"],
                                                           set_={"value": MetricCounter.value + amount}))
    except SQLAlchemyError:  # a lost sample must not fail the upload or the conversion that made it
        logger.warning("metrics not recorded: %s", sorted({name for name, _ in batch}), exc_info=True)


def _observation(name, buckets, seconds, labels):
    """The samples of one histogram observation: its bucket (not yet cumulative) and its sum."""
    bucket = next((str(float(le)) for le in buckets if seconds <= le), "+Inf")
    return (name + "_bucket", {**labels, "le": bucket}, 1), (name + "_sum", labels, seconds)


def observe_gateway(seconds, outcome):
    """Record one gateway call's duration under its outcome ('ok' or the job error code)."""
    add(*_observation(GATEWAY_LATENCY, GATEWAY_BUCKETS, seconds, {"outcome": outcome}))


def observe_job_duration(seconds):
    """Record how long a completed job took from its upload to its result."""
    add(*_observation(JOB_DURATION, JOB_BUCKETS, max(0.0, seconds), {}))


def record_retry(error_code):
    """Count one automatic retry scheduled after a transient failure."""
    add((RETRIES, {"code": error_code or ""}, 1))


def record_transition(to_status, error_code=None, attempts=1):
    """Count a job reaching a final state (complete, or failed with its code), and apart those that were retried."""
    if to_status in FINISHED:
        add((JOBS_FINISHED, {"status": to_status, "code": error_code or ""}, 1))
        if attempts > 1:
            add((RETRIED_FINISHED, {"status": to_status}, 1))


def init_app(app):
    """Buffer this app's counters (written by a thread of their own)."""
    app.extensions["pdfqueue_metrics"] = Buffer(app)
