"""GET /metrics in Prometheus text format: gauges read from the database at scrape time, counters kept there.

Counters are rows in the database (core/counters.py says why), so any web process answers for the whole system.
Gauges (jobs by
state, queue depth, ...) are counted from the jobs table when Prometheus scrapes, by a custom collector, so
they cannot drift. The counters' write side, which every process uses, is core/counters.py.
"""
import hmac
import json
import logging

from flask import Blueprint, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import func, select

from core import codes
from core.clock import utcnow
from core.sources import Source
from core.counters import (GATEWAY_BUCKETS, GATEWAY_LATENCY, INTAKE_ERRORS, INTAKE_FILES, INTAKE_POLLS, JOB_BUCKETS,
                           JOB_DURATION, JOBS_FINISHED, NOTIFICATIONS, RETRIED_FINISHED, RETRIES, UPLOADS_ACCEPTED,
                           UPLOADS_REJECTED, MetricCounter, add, flush)
from core.db import db
from core.errors import ApiError
from core.coordination import Coordination, worker_heartbeat
from core.jobs.model import Job
from core.jobs.states import Status
from core.outbox import PENDING, OutboxEvent, Subscription

logger = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)

UPLOAD_ENDPOINTS = ("api.upload", "pages.upload_form")
# An upload turned away with an HTML page (the form without JavaScript) says its code only by its status.
_CODE_BY_STATUS = {400: codes.BAD_REQUEST, 413: codes.TOO_LARGE, 415: codes.NOT_PDF, 429: codes.RATE_LIMITED,
                   503: codes.UNAVAILABLE, 507: codes.INSUFFICIENT_STORAGE}


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

        failing = GaugeMetricFamily("pdfqueue_intake_failing_polls",
                                    "Polls in a row that failed, per enabled source (0 once one succeeds).",
                                    labels=["source", "kind"])
        for source_id, kind, failures in session.execute(
                select(Source.id, Source.kind, Source.failures).where(Source.enabled.is_(True))):
            failing.add_metric([str(source_id), kind], failures or 0)
        yield failing

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

        taken = CounterMetricFamily("pdfqueue_intake_files", "Files a source (mailbox or folder) brought, by source id "
                                    "and outcome (new, duplicate, reconverted, rejected).", labels=["source", "outcome"])
        for labels, value in series.get(INTAKE_FILES, []):
            taken.add_metric([labels["source"], labels["outcome"]], value)
        yield taken

        yield self._histogram(series, GATEWAY_LATENCY, GATEWAY_BUCKETS, "Gateway /process calls made by workers, "
                              "seconds, by outcome ('ok' or the job error code).", "outcome")
        yield self._histogram(series, JOB_DURATION, JOB_BUCKETS,
                              "Completed jobs from upload to result, seconds (queue wait and retries included).")

        for name, help_text, label in (
                (UPLOADS_ACCEPTED, "Uploaded files accepted, by outcome (new, duplicate, reconverted).", "outcome"),
                (RETRIES, "Automatic retries scheduled after a transient failure, by error code.", "code"),
                (RETRIED_FINISHED, "Jobs that took more than one attempt, by the state they ended in.", "status"),
                (INTAKE_POLLS, "Polls of each source (mailbox or folder), by source id.", "source"),
                (INTAKE_ERRORS, "Polls of each source that failed (server down, password refused, no room), by "
                 "source id.", "source")):
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
    """Serve /metrics and count rejected uploads (the app's counters are buffered by core/counters.py)."""
    app.register_blueprint(bp)
    app.after_request(record_upload_rejections)
    if app.config.get("METRICS_PORT"):
        app.wsgi_app = MetricsPortOnly(app.wsgi_app, app.config["METRICS_PORT"])
