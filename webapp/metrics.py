"""GET /metrics in Prometheus text format: gauges read from the database at scrape time, counters kept there.

Why the database rather than prometheus-client's multiprocess mode: the gateway latency is observed in the
worker, another process and, past one box, another machine. Its mmap files would need a directory shared by
every box (mmap over a network volume is not coherent) and per-pid clean-up. A counter row in the database
every process already shares is seen by every web process and survives restarts, so any web process answers
for the whole system. Samples are buffered in each process and written once a second by a background thread
(and at scrape and exit), so a job or an upload never waits on the database for a counter. Gauges (jobs by
state, queue depth, ...) are counted from the jobs table when Prometheus scrapes, by a custom collector, so
they cannot drift.
"""
import atexit
import hmac
import json
import logging
import os
import threading
import time
from contextlib import contextmanager

from flask import Blueprint, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import Float, String, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column

from . import codes
from .db import db, write_transaction
from .errors import ApiError
from .clock import utcnow
from .models import FINISHED, Coordination, Job, Status
from .notify import PENDING, OutboxEvent, Subscription
from .retry import ConversionError

logger = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)

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
NOTIFICATIONS = "notifications"  # webapp/delivery.py: each delivery attempt's outcome, by kind
UPLOAD_ENDPOINTS = ("api.upload", "pages.upload_form")
# An upload turned away with an HTML page (the form without JavaScript) says its code only by its status.
_CODE_BY_STATUS = {400: codes.BAD_REQUEST, 413: codes.TOO_LARGE, 415: codes.NOT_PDF, 429: codes.RATE_LIMITED,
                   503: codes.UNAVAILABLE, 507: codes.INSUFFICIENT_STORAGE}


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


@contextmanager
def gateway_call():
    """Time the gateway call in the block and record it with its outcome."""
    started = time.monotonic()
    outcome = "ok"
    try:
        yield
    except ConversionError as error:
        outcome = error.code
        raise
    except OSError:
        outcome = codes.IO_ERROR
        raise
    finally:
        observe_gateway(time.monotonic() - started, outcome)


def record_transition(to_status, error_code=None, attempts=1):
    """Count a job reaching a final state (complete, or failed with its code), and apart those that were retried."""
    if to_status in FINISHED:
        add((JOBS_FINISHED, {"status": to_status, "code": error_code or ""}, 1))
        if attempts > 1:
            add((RETRIED_FINISHED, {"status": to_status}, 1))


def record_upload_rejections(response):
    """Count the files an upload request turned away, by error code."""
    if request.endpoint not in UPLOAD_ENDPOINTS or request.method != "POST":
        return response
    body = response.get_json(silent=True) if response.is_json else None
    if body is not None:
        codes = [item["error"]["code"] for item in body.get("rejected", [])]
        if not codes and "error" in body:
            codes = [body["error"]["code"]]
    else:
        codes = [_CODE_BY_STATUS.get(response.status_code, f"HTTP_{response.status_code}")] if response.status_code >= 400 else []
    if codes:
        add(*[(UPLOADS_REJECTED, {"code": code}, 1) for code in codes])
    return response


# -- the scrape -----------------------------------------------------------------------------------


def worker_heartbeat():
    """(seconds since the newest worker heartbeat or None if never, number of workers whose beat is current)."""
    now = utcnow()
    newest, alive = db.session.execute(
        select(func.max(Coordination.updated_at),
               func.count().filter(Coordination.lease_expires_at > now))
        .where(Coordination.name.like("worker:%"))).one()
    return (None if newest is None else max(0.0, (now - newest).total_seconds())), alive


class DatabaseCollector:
    """Everything /metrics shows, read from the database when Prometheus asks."""

    def collect(self):
        now = utcnow()
        session = db.session
        by_state = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        jobs = GaugeMetricFamily("pdfqueue_jobs", "Jobs by state.", labels=["state"])
        for state in Status:
            jobs.add_metric([state], by_state.get(state, 0))
        yield jobs

        due = Job.is_due(now)
        depth, oldest = session.execute(
            select(func.count().filter(due), func.min(Job.created_at)).where(Job.status == Status.QUEUED)).one()
        yield GaugeMetricFamily("pdfqueue_queue_depth", "Queued jobs that are due to run.", value=depth)
        yield GaugeMetricFamily("pdfqueue_oldest_queued_age_seconds", "Age of the oldest queued job (0 if none).",
                                value=0 if oldest is None else (now - oldest).total_seconds())

        failed = GaugeMetricFamily("pdfqueue_failed_jobs", "Jobs now failed, by error code.", labels=["code"])
        for code, count in session.execute(
                select(Job.error_code, func.count()).where(Job.status == Status.FAILED).group_by(Job.error_code)):
            failed.add_metric([code or ""], count)
        yield failed

        breaker = Coordination.get("breaker")
        is_open = breaker is not None and breaker.state == "open"
        yield GaugeMetricFamily("pdfqueue_breaker_open", "1 while the gateway circuit breaker is open.", value=int(is_open))
        yield GaugeMetricFamily("pdfqueue_breaker_failures", "Consecutive gateway failures counted by the breaker.",
                                value=(breaker.count or 0) if breaker is not None else 0)

        age, alive = worker_heartbeat()
        yield GaugeMetricFamily("pdfqueue_worker_heartbeat_age_seconds",
                                "Seconds since the newest worker heartbeat (+Inf if none ever).",
                                value=float("inf") if age is None else age)
        yield GaugeMetricFamily("pdfqueue_workers_alive", "Worker processes whose heartbeat is current.", value=alive)

        pending = GaugeMetricFamily("pdfqueue_notifications_pending",
                                    "Outbox events not yet delivered (webhooks, emails), by kind.", labels=["kind"])
        kinds = dict(session.execute(
            select(Subscription.kind, func.count())
            .select_from(OutboxEvent).outerjoin(Subscription, Subscription.id == OutboxEvent.subscription_id)
            .where(OutboxEvent.state == PENDING).group_by(Subscription.kind)).all())
        kinds["email"] = kinds.get("email", 0) + kinds.pop(None, 0)  # the admins' digests belong to no subscription
        for kind in ("webhook", "email"):
            pending.add_metric([kind], kinds.get(kind, 0))
        yield pending
        oldest_event = session.scalar(select(func.min(OutboxEvent.created_at)).where(OutboxEvent.state == PENDING))
        yield GaugeMetricFamily("pdfqueue_notifications_oldest_pending_age_seconds",
                                "Age of the oldest undelivered outbox event (0 if none).",
                                value=0 if oldest_event is None else (now - oldest_event).total_seconds())

        yield from self._counters(session)
        session.rollback()  # end the read transaction; a scrape holds nothing

    def _counters(self, session):
        rows = session.execute(select(MetricCounter.name, MetricCounter.labels, MetricCounter.value)).all()
        series = {}
        for name, labels, value in rows:
            series.setdefault(name, []).append((json.loads(labels), value))

        rejected = CounterMetricFamily("pdfqueue_uploads_rejected", "Uploaded files turned away, by error code.",
                                       labels=["code"])
        for labels, value in series.get(UPLOADS_REJECTED, []):
            rejected.add_metric([labels["code"]], value)
        yield rejected

        finished = CounterMetricFamily("pdfqueue_jobs_finished", "Jobs that reached a final state, by state and code.",
                                       labels=["status", "code"])
        for labels, value in series.get(JOBS_FINISHED, []):
            finished.add_metric([labels["status"], labels["code"]], value)
        yield finished

        delivered = CounterMetricFamily("pdfqueue_notifications", "Delivery attempts of webhooks and emails, by "
                                        "kind and outcome (delivered, retried, gave_up, skipped).",
                                        labels=["kind", "outcome"])
        for labels, value in series.get(NOTIFICATIONS, []):
            delivered.add_metric([labels["kind"], labels["outcome"]], value)
        yield delivered

        yield self._histogram(series, GATEWAY_LATENCY, GATEWAY_BUCKETS, "Gateway /process calls made by workers, "
                              "seconds, by outcome ('ok' or the job error code).", "outcome")
        yield self._histogram(series, JOB_DURATION, JOB_BUCKETS,
                              "Completed jobs from upload to result, seconds (queue wait and retries included).")

        for name, help_text, label in (
                (UPLOADS_ACCEPTED, "Uploaded files accepted, by outcome (new, duplicate, reconverted).", "outcome"),
                (RETRIES, "Automatic retries scheduled after a transient failure, by error code.", "code"),
                (RETRIED_FINISHED, "Jobs that took more than one attempt, by the state they ended in.", "status")):
            family = CounterMetricFamily("pdfqueue_" + name, help_text, labels=[label])
            for labels, value in series.get(name, []):
                family.add_metric([labels[label]], value)
            yield family

    @staticmethod
    def _histogram(series, name, bucket_bounds, help_text, label=None):
        """A histogram family from its stored samples (per-bucket counts made cumulative), by label if any."""
        family = HistogramMetricFamily("pdfqueue_" + name, help_text, labels=[label] if label else [])
        buckets, sums = {}, {}
        for labels, value in series.get(name + "_bucket", []):
            buckets.setdefault(labels.get(label, ""), {})[labels["le"]] = value
        for labels, value in series.get(name + "_sum", []):
            sums[labels.get(label, "")] = value
        for key, counts in sorted(buckets.items()):
            cumulative, running = [], 0.0
            for le in [str(float(b)) for b in bucket_bounds] + ["+Inf"]:
                running += counts.get(le, 0.0)
                cumulative.append((le, running))
            family.add_metric([key] if label else [], cumulative, sums.get(key, 0.0))
        return family


registry = CollectorRegistry()
registry.register(DatabaseCollector())


def local_port(environ):
    """The port of our own end of the connection (gunicorn's or Werkzeug's socket): no header can fake it."""
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    try:
        return sock.getsockname()[1] if sock is not None else None
    except (OSError, IndexError, TypeError):
        return None


def has_metrics_token():
    """True if the request carries Authorization: Bearer METRICS_TOKEN (and one is set)."""
    expected = current_app.config.get("METRICS_TOKEN")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return bool(expected) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                                                 expected.encode())


def on_metrics_port():
    port = current_app.config.get("METRICS_PORT")
    return bool(port) and local_port(request.environ) == port


class MetricsPortOnly:
    """WSGI middleware: the METRICS_PORT listener serves /metrics and nothing else."""

    def __init__(self, app, port):
        self.app, self.port = app, port

    def __call__(self, environ, start_response):
        if local_port(environ) == self.port and environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
            return [b"Not Found\n"]
        return self.app(environ, start_response)


@bp.get("/metrics")
def metrics():
    """Expose the whole system's metrics (any web process answers the same) to Prometheus: on METRICS_PORT, or
    with METRICS_TOKEN as a bearer token; to nobody else."""
    if not (on_metrics_port() or has_metrics_token()):
        if not current_app.config.get("METRICS_TOKEN"):
            raise ApiError(codes.NOT_FOUND, 404, "Metrics are served on METRICS_PORT, or here with METRICS_TOKEN.")
        raise ApiError(codes.UNAUTHENTICATED, 401, "Send METRICS_TOKEN as Authorization: Bearer.",
                       headers={"WWW-Authenticate": "Bearer"})
    flush()  # this process's own last second, so a scrape right after a change sees it
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def init_app(app):
    """Serve /metrics, buffer this app's counters, and count rejected uploads."""
    app.extensions["pdfqueue_metrics"] = Buffer(app)
    app.register_blueprint(bp)
    app.after_request(record_upload_rejections)
    if app.config.get("METRICS_PORT"):
        app.wsgi_app = MetricsPortOnly(app.wsgi_app, app.config["METRICS_PORT"])
