"""GET /metrics: gauges counted from the database, counters kept there, all moving as jobs do."""
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from worker import upkeep
from tests.support.app import WORKER_SETTINGS, load, pdf_bytes, run, upload
from core import counters
from core.db import db
from core.clock import utcnow
from core.coordination import Coordination
import subprocess
import sys
from pathlib import Path
from tests.support.app import ApiClient


@pytest.fixture
def worker_app(make_app, fake):
    """As conftest's, with a low upload limit so a refusal is cheap to provoke, and a gateway timeout no loaded
    test box reaches (the counts below assume each attempt gets the fake's answer, never GW_TIMEOUT)."""
    return make_app(GATEWAY_URL=fake.url, UPLOADS_PER_MINUTE=5, **{**WORKER_SETTINGS, "GATEWAY_TIMEOUT": 30})


def scrape(api):
    """The /metrics answer as {(sample name, frozenset of label items): value}."""
    response = api.get("/metrics", headers={"Authorization": "Bearer test-metrics-token"})
    assert response.status_code == 200 and response.mimetype == "text/plain"
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.get_data(as_text=True)) for sample in family.samples}


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0)


def test_metrics_move_when_jobs_do(worker_app, api, fake):
    first, second = upload(api, "one"), upload(api, "two")
    before = scrape(api)
    assert value(before, "pdfqueue_jobs", state="queued") == 2
    assert value(before, "pdfqueue_queue_depth") == 2
    assert value(before, "pdfqueue_oldest_queued_age_seconds") >= 0

    run(worker_app, first["id"])
    fake.status = 422
    run(worker_app, second["id"])

    after = scrape(api)
    assert value(after, "pdfqueue_jobs", state="queued") == 0 and value(after, "pdfqueue_queue_depth") == 0
    assert value(after, "pdfqueue_jobs", state="complete") == 1 and value(after, "pdfqueue_jobs", state="failed") == 1
    assert value(after, "pdfqueue_failed_jobs", code="GW_4XX") == 1
    assert value(after, "pdfqueue_jobs_finished_total", status="complete", code="") == 1
    assert value(after, "pdfqueue_jobs_finished_total", status="failed", code="GW_4XX") == 1
    # the histogram recorded in the worker is read back by the web process
    assert value(after, "pdfqueue_gateway_request_seconds_count", outcome="ok") == 1
    assert value(after, "pdfqueue_gateway_request_seconds_count", outcome="GW_4XX") == 1
    assert value(after, "pdfqueue_gateway_request_seconds_bucket", outcome="ok", le="+Inf") == 1
    assert value(after, "pdfqueue_gateway_request_seconds_sum", outcome="ok") > 0


def test_latency_lands_in_the_right_cumulative_buckets(worker_app, api):
    with worker_app.app_context():
        for seconds in (0.05, 0.3, 0.3, 7, 500):
            counters.observe_gateway(seconds, "ok")
    samples = scrape(api)
    buckets = {le: value(samples, "pdfqueue_gateway_request_seconds_bucket", outcome="ok", le=le)
               for le in ("0.1", "0.5", "10.0", "180.0", "+Inf")}
    assert buckets == {"0.1": 1, "0.5": 3, "10.0": 4, "180.0": 4, "+Inf": 5}
    assert value(samples, "pdfqueue_gateway_request_seconds_sum", outcome="ok") == pytest.approx(507.65)


def test_rejected_uploads_are_counted_by_code(api):
    assert api.upload((b"not a pdf", "a.pdf")).status_code == 415
    assert api.upload((b"", "b.pdf")).status_code == 400
    partial = api.upload((pdf_bytes("ok"), "ok.pdf"), (b"GIF89a", "c.pdf"))
    assert partial.status_code == 202
    assert api.raw.post("/api/upload", data={}).status_code == 400  # no CSRF token
    statuses = [api.upload((pdf_bytes(f"fill{n}"), f"fill{n}.pdf")).status_code for n in range(2)]
    assert statuses == [202, 429]  # the four requests above spent four of the five
    samples = scrape(api)
    counts = {code: value(samples, "pdfqueue_uploads_rejected_total", code=code)
              for code in ("NOT_PDF", "EMPTY", "CSRF", "RATE_LIMITED")}
    assert counts == {"NOT_PDF": 2, "EMPTY": 1, "CSRF": 1, "RATE_LIMITED": 1}


def test_breaker_and_worker_heartbeat_show(worker_app, api, fake):
    samples = scrape(api)
    assert value(samples, "pdfqueue_breaker_open") == 0
    assert value(samples, "pdfqueue_worker_heartbeat_age_seconds") == float("inf")
    assert value(samples, "pdfqueue_workers_alive") == 0
    with worker_app.app_context():
        upkeep.maintain_once(first=True)  # writes this process's heartbeat, as the worker's upkeep loop does
        Coordination.put("breaker", state="open", count=7, due_at=utcnow() + timedelta(seconds=60))
        db.session.remove()
    samples = scrape(api)
    assert value(samples, "pdfqueue_breaker_open") == 1 and value(samples, "pdfqueue_breaker_failures") == 7
    assert 0 <= value(samples, "pdfqueue_worker_heartbeat_age_seconds") < 5
    assert value(samples, "pdfqueue_workers_alive") == 1
    health = api.get("/api/healthz").get_json()
    assert (health["breaker"], health["gateway"], health["worker"]) == ("open", "down", "ok")
    assert health["worker_heartbeat_age_s"] < 5


def test_a_metric_that_cannot_be_written_does_not_fail_the_caller(worker_app, caplog):
    with worker_app.app_context():
        db.session.execute(db.text("DROP TABLE metric_counters"))
        db.session.commit()
        counters.observe_gateway(1.0, "ok")  # buffered: the caller never touches the database
        assert "metrics not recorded" not in caplog.text
        counters.flush()  # the write fails: logged, not raised
    assert "metrics not recorded" in caplog.text


def test_samples_are_buffered_and_written_together(worker_app, api):
    with worker_app.app_context():
        counters.flush()
        counters.observe_gateway(0.3, "ok")
        counters.observe_gateway(0.4, "ok")  # both in the le=0.5 bucket
        count = lambda: db.session.execute(db.text(  # noqa: E731
            "SELECT value FROM metric_counters WHERE name = 'gateway_request_seconds_bucket' AND labels LIKE '%0.5%'")).scalar()
        assert count() is None  # nothing written yet
        db.session.commit()
        counters.flush()
        assert count() == 2


def test_accepted_uploads_job_durations_and_retry_outcomes_are_counted(worker_app, api, fake):
    first = upload(api, "one")
    assert api.upload((pdf_bytes("one"), "one.pdf")).get_json()["jobs"][0]["duplicate"] is True
    run(worker_app, first["id"])
    fake.status = 500
    second = upload(api, "three")  # alone in the queue, so each run is its attempt (fair share takes the first due)
    run(worker_app, second["id"])  # a transient failure: retried automatically
    fake.status = 200
    run(worker_app, second["id"])
    retried = load(worker_app, second["id"])
    assert (retried.status, retried.attempts) == ("complete", 2), (retried.error_code, retried.error)
    upload(api, "two")
    samples = scrape(api)
    assert value(samples, "pdfqueue_uploads_accepted_total", outcome="new") == 3
    assert value(samples, "pdfqueue_uploads_accepted_total", outcome="duplicate") == 1
    assert value(samples, "pdfqueue_job_retries_total", code="GW_5XX") == 1
    assert value(samples, "pdfqueue_retried_jobs_finished_total", status="complete") == 1
    # upload → complete, for each completed job, in a histogram whose p95 PromQL can take
    assert value(samples, "pdfqueue_job_duration_seconds_count") == 2
    assert value(samples, "pdfqueue_job_duration_seconds_bucket", le="+Inf") == 2
    assert value(samples, "pdfqueue_job_duration_seconds_sum") > 0


def test_job_duration_is_measured_from_the_upload(worker_app, api):
    job = upload(api)
    with worker_app.app_context():
        from core.jobs.model import Job
        Job.query.filter_by(id=job["id"]).update({"created_at": utcnow() - timedelta(seconds=200)})
        db.session.commit()
    run(worker_app, job["id"])
    samples = scrape(api)
    assert value(samples, "pdfqueue_job_duration_seconds_bucket", le="120.0") == 0
    assert value(samples, "pdfqueue_job_duration_seconds_bucket", le="300.0") == 1


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def serve():
    """Run an app on a real threaded server on loopback; yield a function returning its base URL."""
    import threading
    from werkzeug.serving import make_server
    servers = []

    def start(app):
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()


def test_metrics_answer_only_with_the_metrics_token(make_app):
    app = make_app(METRICS_TOKEN="the-metrics-token")
    anonymous = app.test_client()
    assert anonymous.get("/metrics").status_code == 401
    assert anonymous.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert anonymous.get("/metrics", headers={"Authorization": "Bearer the-metrics-token"}).status_code == 200
    signed_in = ApiClient(app.test_client())  # a session is not Prometheus
    assert signed_in.get("/metrics").status_code == 401


def test_without_token_or_port_metrics_are_off(make_app):
    assert make_app(METRICS_TOKEN="").test_client().get("/metrics").status_code == 404


def test_the_metrics_port_serves_metrics_and_nothing_else(make_app, serve):
    import requests
    from gateway.testing import free_port
    port = free_port()
    app = make_app(METRICS_TOKEN="", METRICS_PORT=port)
    from werkzeug.serving import make_server
    import threading
    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    main = serve(app)  # the same app on another port: the public one
    try:
        assert requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200
        assert requests.get(f"http://127.0.0.1:{port}/api/healthz", timeout=5).status_code == 404
        assert requests.get(f"http://127.0.0.1:{port}/login", timeout=5).status_code == 404
        assert requests.get(f"{main}/metrics", timeout=5, headers={"Host": f"127.0.0.1:{port}"}).status_code == 404
    finally:
        server.shutdown()


def test_the_web_gunicorn_binds_the_metrics_port_when_asked():
    code = "import runpy; print(runpy.run_path('gunicorn.conf.py')['bind'])"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PORT": "8000", "METRICS_PORT": "9108"})
    assert done.stdout.strip() == "['127.0.0.1:8000', '127.0.0.1:9108']"
