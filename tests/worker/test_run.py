"""The worker against a fake gateway on loopback: happy path, failures, retries, breaker, leases, signals."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

import tasks
from worker import leases
from core import queue
from worker import upkeep
from core import operations
from tests.support.app import WORKER_SETTINGS, ApiClient, claim, load, pdf_bytes, run, upload
from worker import breaker
from core.db import db
from core.clock import utcnow
from core.coordination import Coordination
from core.jobs.model import Job

REPO = Path(__file__).resolve().parents[2]


def test_happy_path_stores_well_formed_xml_and_completes(worker_app, api, fake):
    job = upload(api, "happy")
    run(worker_app, job["id"])
    done = api.get(f"/api/jobs/{job['id']}").get_json()
    assert (done["status"], done["progress"], done["attempts"], done["error_code"]) == ("complete", 100, 1, None)
    assert done["completed_at"] and done["download_url"] == f"/api/jobs/{job['id']}/download"
    assert fake.calls[job["correlation_id"]] == 1
    response = api.get(done["download_url"])
    assert response.status_code == 200 and response.mimetype == "application/xml"
    assert f"FT {job['correlation_id']}" in response.get_data(as_text=True)
    assert 'attachment; filename=happy.xml' in response.headers["Content-Disposition"]
    assert not list(Path(worker_app.config["RESULT_DIR"]).glob(".incoming-*"))


def test_gateway_4xx_is_final_with_the_gateways_own_message(worker_app, api, fake):
    fake.status = 422
    job = upload(api)
    run(worker_app, job["id"])
    failed = api.get(f"/api/jobs/{job['id']}").get_json()
    assert (failed["status"], failed["error_code"], failed["error"]) == ("failed", "GW_4XX", "fake gateway says 422")
    assert fake.total_calls() == 1 and not failed["dead_letter"]
    assert api.get(f"/api/jobs/{job['id']}/download").get_json()["error"]["code"] == "NOT_READY"


def test_5xx_is_retried_with_backoff_then_dead_lettered(make_app, fake):
    app = make_app(GATEWAY_URL=fake.url, RETRY_BASE_SECONDS=5, RETRY_JITTER_SECONDS=5, BREAKER_THRESHOLD=100)
    api = ApiClient(app.test_client())
    fake.status = 500
    job = upload(api)
    delays = []
    for attempt in (1, 2):
        before = utcnow()
        run(app, job["id"])
        queued = load(app, job["id"])
        assert (queued.status, queued.attempts, queued.error_code) == ("queued", attempt, "GW_5XX")
        delays.append((queued.next_attempt_at - before).total_seconds())
        run(app, job["id"])  # an early wake-up does nothing: the retry is not due yet
        assert fake.total_calls() == attempt
        with app.app_context():  # let the back-off pass
            Job.query.filter_by(id=job["id"]).update({"next_attempt_at": utcnow(), "queue_key": utcnow()})
            db.session.commit()
    assert 5 <= delays[0] <= 10.5 and 10 <= delays[1] <= 15.5
    run(app, job["id"])
    dead = load(app, job["id"])
    assert (dead.status, dead.attempts, dead.dead_letter, dead.error_code) == ("failed", 3, True, "GW_5XX")
    assert fake.total_calls() == 3


def test_a_hung_gateway_times_out(make_app, fake):
    app = make_app(GATEWAY_URL=fake.url, GATEWAY_TIMEOUT=0.5, RETRY_BASE_SECONDS=0, RETRY_JITTER_SECONDS=0,
                   BREAKER_THRESHOLD=100, MAX_ATTEMPTS=1)
    fake.hang = True
    job = upload(ApiClient(app.test_client()))
    started = time.monotonic()
    run(app, job["id"])
    assert time.monotonic() - started < 10
    failed = load(app, job["id"])
    assert (failed.status, failed.error_code) == ("failed", "GW_TIMEOUT")


@pytest.mark.parametrize("body", [
    b"<Invoice><unclosed></Invoice>",
    b"<Invoice><Lines><Line>cut off mid-answ",
    b"<Invoice/><Invoice/>",
    b'<!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><Invoice>&b;</Invoice>',
    b'<!DOCTYPE r [<!ENTITY e SYSTEM "file:///etc/passwd">]><Invoice>&e;</Invoice>',
])
def test_malformed_xml_from_the_gateway_is_not_kept(worker_app, api, fake, body):
    fake.body = body
    job = upload(api)
    run(worker_app, job["id"])
    job = load(worker_app, job["id"])
    assert (job.status, job.error_code) == ("queued", "GW_5XX") and "well-formed" in job.error
    assert list(Path(worker_app.config["RESULT_DIR"]).iterdir()) == []


def test_breaker_holds_jobs_queued_through_an_outage_and_drains_after(make_app, fake):
    app = make_app(GATEWAY_URL=fake.url, BREAKER_THRESHOLD=2, RETRY_BASE_SECONDS=0, RETRY_JITTER_SECONDS=0)
    api = ApiClient(app.test_client())
    fake.status, fake.healthy = 503, False
    jobs = [upload(api, f"b{n}") for n in range(4)]
    for job in jobs:
        run(app, job["id"])
    assert fake.total_calls() == 2  # the second failure opened the breaker; no calls after that
    for job in jobs:
        held = load(app, job["id"])
        assert held.status == "queued" and held.error_code in ("GW_5XX", "CIRCUIT_OPEN")
    assert [load(app, j["id"]).attempts for j in jobs] == [1, 0, 0, 0]  # held jobs spend nothing
    assert api.get("/api/healthz").get_json()["gateway"] == "down"
    with app.app_context():
        upkeep.probe_gateway()  # probe not due yet: stays open
        assert breaker.is_open()
        Coordination.put(breaker.NAME, due_at=utcnow() - timedelta(seconds=1))
        upkeep.probe_gateway()  # due, gateway still down: stays open, probes later
        assert breaker.is_open()
    fake.status, fake.healthy = 200, True
    with app.app_context():
        Coordination.put(breaker.NAME, due_at=utcnow() - timedelta(seconds=1))
        upkeep.probe_gateway()
        assert not breaker.is_open()
        db.session.remove()
    with app.app_context():
        Job.query.filter_by(id=jobs[0]["id"]).update({"next_attempt_at": None})
        db.session.commit()
    # One wake-up drains them all: its thread keeps claiming while any is due (the retried one last: it
    # queues by its retry time, after the three uploaded before that).
    tasks.process_job.call_local(jobs[0]["id"])
    assert [load(app, j["id"]).status for j in jobs] == ["complete"] * 4
    assert api.get("/api/healthz").get_json()["gateway"] == "ok"


def test_two_wakeups_racing_for_one_job_call_the_gateway_once(worker_app, api, fake):
    import threading
    fake.delay = 0.3
    job = upload(api)
    threads = [threading.Thread(target=run, args=(worker_app, job["id"])) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert fake.calls[job["correlation_id"]] == 1 and load(worker_app, job["id"]).status == "complete"


def test_retry_endpoint_requeues_a_failed_job_only(worker_app, api, fake):
    fake.status = 400
    job = upload(api)
    assert api.post(f"/api/jobs/{job['id']}/retry").get_json()["error"]["code"] == "NOT_RETRYABLE"
    run(worker_app, job["id"])
    fake.status = 200
    response = api.post(f"/api/jobs/{job['id']}/retry")
    assert response.status_code == 202
    assert (response.get_json()["status"], response.get_json()["attempts"]) == ("queued", 0)
    assert json.loads(response.headers["HX-Trigger"]) == {"queue:active": None}  # wakes a stopped poller
    run(worker_app, job["id"])
    assert load(worker_app, job["id"]).status == "complete"
    assert api.post(f"/api/jobs/{job['id']}/retry").status_code == 409


def test_retry_of_a_failed_job_whose_pdf_is_gone_is_409(worker_app, api, fake):
    fake.status = 400
    job = upload(api)
    run(worker_app, job["id"])
    (Path(worker_app.config["UPLOAD_DIR"]) / f"{job['id']}.pdf").unlink()
    response = api.post(f"/api/jobs/{job['id']}/retry")
    assert response.status_code == 409 and "gone" in response.get_json()["error"]["message"]


def test_share_link_downloads_without_a_session_until_it_expires(make_app, fake):
    # A link's expiry is a whole second: with 1 s, a loaded box could see it expire before its first use.
    app = make_app(GATEWAY_URL=fake.url, SHARE_TTL_SECONDS=3)
    api = ApiClient(app.test_client())
    job = upload(api)
    assert api.post(f"/api/jobs/{job['id']}/share").status_code == 409
    run(app, job["id"])
    link = api.post(f"/api/jobs/{job['id']}/share").get_json()
    stranger = app.test_client()
    assert stranger.get(link["url"]).status_code == 200
    assert stranger.get(link["url"][:-3] + "xyz").status_code == 404
    time.sleep(4.1)
    expired = stranger.get(link["url"])
    assert expired.status_code == 410 and expired.get_json()["error"]["code"] == "EXPIRED"


def test_retention_removes_old_files_but_never_an_active_jobs(worker_app, api, fake):
    done, active = upload(api, "old-done"), upload(api, "old-active")
    run(worker_app, done["id"])
    with worker_app.app_context():
        assert claim(active["id"], "w", 30, capacity=4)
        long_ago = utcnow() - timedelta(days=60)
        Job.query.update({"created_at": long_ago})
        Job.query.filter_by(id=done["id"]).update({"completed_at": long_ago})
        db.session.commit()
        removed = operations.apply_retention()
    assert removed["pdf"] == 1 and removed["xml"] == 1
    uploads = Path(worker_app.config["UPLOAD_DIR"])
    assert not (uploads / f"{done['id']}.pdf").exists() and (uploads / f"{active['id']}.pdf").exists()
    response = api.get(f"/api/jobs/{done['id']}/download")
    assert response.status_code == 410 and response.get_json()["error"]["code"] == "EXPIRED"
    assert load(worker_app, active["id"]).status == "processing"


def test_retention_keeps_recent_files(worker_app, api, fake):
    job = upload(api, "recent")
    run(worker_app, job["id"])
    with worker_app.app_context():
        assert operations.apply_retention() == {"pdf": 0, "xml": 0, "partial": 0, "sessions": 0, "links": 0,
                                          "notifications": 0}
    assert api.get(f"/api/jobs/{job['id']}/download").status_code == 200


# -- the real consumer in its own process -----------------------------------------------------------


@pytest.fixture
def stack(make_app, fake, tmp_path):
    """An app on a real SQLite queue, and a starter for worker.py processes sharing its DATA_DIR."""
    settings = {"GATEWAY_URL": fake.url, "LEASE_SECONDS": 2, "MAINTENANCE_SECONDS": 0.3, "REAP_SECONDS": 1,
                "RETRY_BASE_SECONDS": 0, "RETRY_JITTER_SECONDS": 0, "WORKER_SHUTDOWN_SECONDS": 0.5,
                "UPLOADS_PER_MINUTE": 100, "WORKER_CONCURRENCY": 2}
    app = make_app(HUEY_MEMORY=False, **settings)
    procs = []

    def start_worker(**overrides):
        env = {**os.environ, "DATA_DIR": str(tmp_path), "SECRET_KEY": "test-secret-key-0123456789abcdefghijklmnop", "LOG_LEVEL": "WARNING",
               **{k: str(v) for k, v in {**settings, **overrides}.items()}}
        proc = subprocess.Popen([sys.executable, "-m", "worker"], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        return proc

    app.start_worker = start_worker
    yield app
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def wait_for(predicate, timeout=20, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def test_real_consumer_converts_uploads(stack, fake):
    api = ApiClient(stack.test_client())
    stack.start_worker()
    jobs = [upload(api, f"r{n}") for n in range(5)]
    assert wait_for(lambda: all(load(stack, j["id"]).status == "complete" for j in jobs))
    assert all(fake.calls[j["correlation_id"]] == 1 for j in jobs)


def test_worker_killed_mid_call_is_finished_by_a_fresh_worker(stack, fake):
    fake.delay = 3
    api = ApiClient(stack.test_client())
    first = stack.start_worker()
    job = upload(api, "killed")
    assert wait_for(lambda: fake.calls[job["correlation_id"]] == 1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    fake.delay = 0
    stack.start_worker()
    assert wait_for(lambda: load(stack, job["id"]).status == "complete", timeout=30)
    assert fake.calls[job["correlation_id"]] == 2  # the lost call, and the one that finished it
    # The fresh worker, on the same host, saw the first one gone and took its job back at once (not after the
    # lease): the killed attempt is not spent.
    assert load(stack, job["id"]).attempts == 1


def test_a_job_whose_worker_dies_every_time_is_dead_lettered_after_max_attempts(worker_app, api, fake):
    job = upload(api, "kills-its-worker")
    states = []
    with worker_app.app_context():
        for attempt in range(1, worker_app.config["MAX_ATTEMPTS"] + 1):
            assert claim(job["id"], f"doomed-worker-{attempt}", 30, capacity=4)
            # The worker dies mid-call: its lease is never renewed and lapses.
            Job.query.filter_by(id=job["id"]).update({"lease_expires_at": utcnow() - timedelta(seconds=1)})
            db.session.commit()
            upkeep.reap_lapsed_leases()
            reaped = load(worker_app, job["id"])
            states.append((reaped.status, reaped.attempts, reaped.error_code, reaped.dead_letter))
    assert states == [("queued", 1, "LEASE_EXPIRED", False), ("queued", 2, "LEASE_EXPIRED", False),
                      ("failed", 3, "LEASE_EXPIRED", True)]
    assert fake.total_calls() == 0


def test_a_call_longer_than_the_lease_keeps_its_job(stack, fake):
    fake.delay = 3.5  # the lease is 2 s and the reaper looks every 0.3 s: only the lease keeper saves the job
    api = ApiClient(stack.test_client())
    stack.start_worker()
    job = upload(api, "long-call")
    assert wait_for(lambda: load(stack, job["id"]).status == "complete", timeout=30)
    assert (load(stack, job["id"]).attempts, fake.calls[job["correlation_id"]]) == (1, 1)


def test_duplicate_wakeups_never_run_a_job_twice(stack, fake):
    fake.delay = 0.5
    api = ApiClient(stack.test_client())
    job = upload(api, "dup-wake")
    with stack.app_context():
        for _ in range(5):
            queue.wake(job["id"])
    stack.start_worker()
    assert wait_for(lambda: load(stack, job["id"]).status == "complete")
    time.sleep(1)  # let the extra wake-ups be consumed
    assert fake.calls[job["correlation_id"]] == 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stopping_the_worker_releases_its_job_without_spending_an_attempt(stack, fake, signum):
    fake.hang = True
    api = ApiClient(stack.test_client())
    proc = stack.start_worker()
    job = upload(api, f"stop-{signum}")
    assert wait_for(lambda: load(stack, job["id"]).status == "processing")
    proc.send_signal(signum)
    assert proc.wait(timeout=15) is not None
    released = load(stack, job["id"])
    assert (released.status, released.attempts, released.leased_by) == ("queued", 0, None)
    fake.hang = False
    fake.release.set()
    stack.start_worker()
    assert wait_for(lambda: load(stack, job["id"]).status == "complete")


def test_a_lost_wakeup_is_recovered(stack, fake):
    with stack.app_context():  # a job committed without its wake-up (the web died in between)
        job_id = Job.create(owner="o", filename="lost.pdf", mapping="pt_simon_invoice_v1", bytes=10,
                            sha256="9" * 64, upload_path="uploads/lost.pdf").id
    Path(stack.config["UPLOAD_DIR"], "lost.pdf").write_bytes(pdf_bytes("lost"))
    stack.start_worker()
    assert wait_for(lambda: load(stack, job_id).status == "complete")


def test_gateway_calls_never_exceed_the_concurrency_across_processes(stack, fake):
    fake.delay = 0.3
    api = ApiClient(stack.test_client())
    stack.start_worker()
    stack.start_worker()  # 2 processes × 2 threads, but WORKER_CONCURRENCY=2 in total
    jobs = [upload(api, f"c{n}") for n in range(10)]
    assert wait_for(lambda: all(load(stack, j["id"]).status == "complete" for j in jobs), timeout=40)
    assert fake.peak_in_flight <= 2
    assert all(fake.calls[j["correlation_id"]] == 1 for j in jobs)


def test_lost_wakeups_are_rewoken_without_flooding_the_queue(worker_app):
    from core.queue import huey
    with worker_app.app_context():
        ids = [Job.create(owner="o", filename=f"{n}.pdf", mapping="m", bytes=n, sha256="8" * 64).id for n in range(10)]
        assert claim(ids[0], "w", 30, capacity=4) and claim(ids[1], "w", 30, capacity=4)
        Job.query.update({"updated_at": utcnow() - timedelta(minutes=5)})
        db.session.commit()
        huey.flush()
        upkeep.rewake_lost()
        assert huey.pending_count() == 2  # WORKER_CONCURRENCY 4, two processing: two free slots
        upkeep.rewake_lost()
        assert huey.pending_count() == 2  # wake-ups still pending: nothing was lost, nothing is added
        huey.flush()
        upkeep.rewake_lost(first=True)
        assert huey.pending_count() == 8  # a leader's first tick wakes everything queued


def test_a_queue_that_refuses_the_wakeup_does_not_fail_the_upload(worker_app, api, monkeypatch):
    from core.queue import huey

    def broken(*args, **kwargs):
        raise OSError("queue storage unavailable")
    monkeypatch.setattr(huey.storage, "enqueue", broken)
    response = api.upload((pdf_bytes("no-wake"), "a.pdf"))
    assert response.status_code == 202 and response.get_json()["jobs"][0]["status"] == "queued"


def test_a_finishing_thread_drains_the_backlog_in_upload_order(worker_app, api, fake, monkeypatch):
    jobs = [upload(api, f"drain{n}") for n in range(3)]
    with worker_app.app_context():
        tasks.process_job.call_local(jobs[0]["id"])  # one wake-up; the other two were turned away, say
    assert [load(worker_app, j["id"]).status for j in jobs] == ["complete"] * 3
    assert [fake.calls[j["correlation_id"]] for j in jobs] == [1, 1, 1]
    later = [upload(api, f"stop{n}") for n in range(2)]
    monkeypatch.setattr(tasks, "stopping", __import__("threading").Event())
    tasks.stopping.set()  # the consumer is shutting down: finish this job, take no other
    with worker_app.app_context():
        tasks.process_job.call_local(later[0]["id"])
    assert [load(worker_app, j["id"]).status for j in later] == ["complete", "queued"]


def test_5xx_for_one_file_from_a_healthy_gateway_does_not_open_the_breaker(make_app, fake):
    app = make_app(GATEWAY_URL=fake.url, BREAKER_THRESHOLD=2, RETRY_BASE_SECONDS=0, RETRY_JITTER_SECONDS=0)
    api = ApiClient(app.test_client())
    fake.status, fake.healthy = 503, True  # e.g. a PDF bomb over the gateway's limits, again and again
    # Fewer distinct jobs than BREAKER_DISTINCT_JOBS (3): a bad file or two is theirs, not the gateway's trouble.
    jobs = [upload(api, f"bomb{n}") for n in range(2)]
    for job in jobs:
        run(app, job["id"])
    run(app, jobs[0]["id"])
    assert [(load(app, j["id"]).error_code, load(app, j["id"]).attempts) for j in jobs] == [("GW_5XX", 2), ("GW_5XX", 1)]
    assert fake.total_calls() == 3
    assert api.get("/api/healthz").get_json()["gateway"] == "ok"


def test_progress_moves_forward_through_each_step(worker_app, api, fake, monkeypatch):
    from core import changes
    database = Path(worker_app.config["INSTANCE_DIR"]) / "pdfqueue.db"
    seen = []

    def record(owner):  # called after each committed change, in the thread that made it
        with sqlite3.connect(database) as conn:
            seen.append(conn.execute("SELECT progress FROM jobs").fetchone()[0])  # the test's one job

    monkeypatch.setattr(changes, "publish", record)
    # Each step lasts well past the keeper's STEP_SECONDS: the gateway works 0.3 s, and storing the answer
    # takes 0.3 s (a slow disk's fsync).
    monkeypatch.setattr(leases.LeaseKeeper, "STEP_SECONDS", 0.05)
    fsync = os.fsync
    monkeypatch.setattr(leases.os, "fsync", lambda fd: (time.sleep(0.3), fsync(fd)))
    fake.delay = 0.3
    job = upload(api, "steps")
    run(worker_app, job["id"])
    assert seen == [0, 10, 30, 90, 100]  # created, claimed, sent, received, stored


def test_progress_steps_too_short_to_see_are_not_written(worker_app, api, fake, monkeypatch):
    from core import changes
    seen = []
    monkeypatch.setattr(changes, "publish", seen.append)
    monkeypatch.setattr(leases.LeaseKeeper, "STEP_SECONDS", 5)  # far longer than this conversion's steps
    job = upload(api, "quick")  # the fake gateway answers at once and the answer is tiny
    run(worker_app, job["id"])
    assert len(seen) == 3  # created, claimed, stored: no write for a step nobody could have seen


@pytest.mark.parametrize("size", [30_000, 3 * 1024 * 1024])  # sent from memory; streamed
def test_the_process_request_is_a_multipart_form_any_parser_reads(tmp_path, size):
    from werkzeug.formparser import parse_form_data

    from worker import gateway_client
    pdf = tmp_path / "a.pdf"
    pdf.write_bytes(b"%PDF-1.4\n" + os.urandom(size))
    with pdf.open("rb") as opened:
        body, content_type = gateway_client._multipart(opened, "pt_simon_invoice_v1")
        data = body if isinstance(body, bytes) else body.read()
    import io
    _, form, files = parse_form_data({"REQUEST_METHOD": "POST", "CONTENT_TYPE": content_type,
                                      "CONTENT_LENGTH": str(len(data)), "wsgi.input": io.BytesIO(data)})
    assert form["mapping"] == "pt_simon_invoice_v1"
    assert files["file"].filename == "document.pdf" and files["file"].read() == pdf.read_bytes()
    assert isinstance(body, bytes) == (size <= gateway_client.IN_MEMORY_BYTES)


# -- re-conversion after retention, the breaker's rate, the mapping re-check (issue 17) ------------------


def _age(app, job_id, **values):
    with app.app_context():
        Job.query.filter_by(id=job_id).update(values)
        db.session.commit()


def test_the_same_file_after_its_result_expired_is_converted_again(worker_app, api):
    job = upload(api, "again")
    run(worker_app, job["id"])
    _age(worker_app, job["id"], completed_at=utcnow() - timedelta(days=400), created_at=utcnow() - timedelta(days=400))
    with worker_app.app_context():
        assert operations.apply_retention()["xml"] == 1
    assert api.get(f"/api/jobs/{job['id']}/download").status_code == 410
    again = api.upload((pdf_bytes("again"), "again-2.pdf")).get_json()["jobs"][0]
    assert (again["id"], again["status"], again["duplicate"], again["filename"]) == (job["id"], "queued", False, "again-2.pdf")
    run(worker_app, job["id"])
    assert api.get(f"/api/jobs/{job['id']}/download").status_code == 200
    # a live job is still what the same file returns
    live = api.upload((pdf_bytes("again"), "again-3.pdf")).get_json()["jobs"][0]
    assert (live["id"], live["duplicate"], live["status"]) == (job["id"], True, "complete")
    assert sorted(p.name for p in Path(worker_app.config["UPLOAD_DIR"]).iterdir()) == [Path(load(worker_app, job["id"]).upload_path).name]


def test_the_same_file_after_its_failed_job_lost_its_pdf_is_converted_again(worker_app, api, fake):
    fake.status = 422
    job = upload(api, "gone")
    run(worker_app, job["id"])
    again = api.upload((pdf_bytes("gone"), "gone.pdf")).get_json()["jobs"][0]
    assert (again["duplicate"], again["status"]) == (True, "failed")  # its PDF is kept: a retry can run it
    _age(worker_app, job["id"], created_at=utcnow() - timedelta(days=400))
    with worker_app.app_context():
        assert operations.apply_retention()["pdf"] == 1
    assert api.post(f"/api/jobs/{job['id']}/retry").status_code == 409
    fake.status = 200
    again = api.upload((pdf_bytes("gone"), "gone.pdf")).get_json()["jobs"][0]
    assert (again["id"], again["duplicate"], again["status"], again["attempts"], again["error_code"]) == \
        (job["id"], False, "queued", 0, None)
    run(worker_app, job["id"])
    assert load(worker_app, job["id"]).status == "complete"


def test_a_5xx_from_several_distinct_jobs_opens_the_breaker_though_healthz_answers(make_app, fake):
    app = make_app(GATEWAY_URL=fake.url, BREAKER_THRESHOLD=100, BREAKER_DISTINCT_JOBS=3, BREAKER_WINDOW_SECONDS=60,
                   RETRY_BASE_SECONDS=0, RETRY_JITTER_SECONDS=0, MAX_ATTEMPTS=4)
    api = ApiClient(app.test_client())
    fake.status = 500  # /process is broken; /healthz still says ok
    bad = upload(api, "r0")  # alone in the queue: each run is its attempt (fair share would take turns)
    for _ in range(4):  # one bad file failing again and again is one job: the breaker stays closed
        run(app, bad["id"])
    with app.app_context():
        assert not breaker.is_open()
    assert (load(app, bad["id"]).status, load(app, bad["id"]).attempts) == ("failed", 4)  # out of the queue
    jobs = [bad] + [upload(api, f"r{n}") for n in range(1, 4)]
    run(app, jobs[1]["id"])
    with app.app_context():
        assert not breaker.is_open()
    run(app, jobs[2]["id"])  # the third distinct job opens it
    with app.app_context():
        assert breaker.is_open()
    calls = fake.total_calls()
    run(app, jobs[3]["id"])
    assert fake.total_calls() == calls and load(app, jobs[3]["id"]).held
    assert load(app, jobs[2]["id"]).attempts == 0  # the failure that opened it is held, not spent
    # the probe closes it on a healthy /healthz; the failing jobs are remembered until a conversion works
    with app.app_context():
        Coordination.put(breaker.NAME, due_at=utcnow() - timedelta(seconds=1))
        upkeep.probe_gateway()
        assert not breaker.is_open()
    run(app, jobs[3]["id"])
    with app.app_context():
        assert breaker.is_open()  # still broken: open again at once
        breaker.close()
    fake.status = 200
    run(app, jobs[3]["id"])
    with app.app_context():
        assert not breaker.is_open() and breaker._failing_jobs() == 0


def test_a_mapping_taken_out_of_mappings_fails_the_job_before_the_gateway_is_called(make_app, fake):
    app = make_app(GATEWAY_URL=fake.url, BREAKER_DISTINCT_JOBS=0)
    job = upload(ApiClient(app.test_client()), "unmapped")
    app.config["MAPPINGS"] = ["generic_v1"]  # an operator narrowed the allow-list after the upload
    run(app, job["id"])
    failed = load(app, job["id"])
    assert (failed.status, failed.error_code) == ("failed", "UNKNOWN_MAPPING")
    assert "pt_simon_invoice_v1" in failed.error and "no longer offered" in failed.error
    assert fake.total_calls() == 0


def test_a_gateway_413_is_recorded_as_too_large(worker_app, api, fake):
    fake.status = 413
    job = upload(api)
    run(worker_app, job["id"])
    failed = load(worker_app, job["id"])
    assert (failed.status, failed.error_code, failed.attempts) == ("failed", "TOO_LARGE", 1)


def test_with_retention_after_download_a_result_goes_at_its_first_download(make_app, fake):
    app = make_app(GATEWAY_URL=fake.url, RETENTION_XML_AFTER_DOWNLOAD=True, BREAKER_DISTINCT_JOBS=0)
    api = ApiClient(app.test_client())
    owned, shared = upload(api, "once"), upload(api, "shared")
    for job in (owned, shared):
        run(app, job["id"])
    first = api.get(f"/api/jobs/{owned['id']}/download")
    assert first.status_code == 200 and f"FT {owned['correlation_id']}" in first.get_data(as_text=True)
    assert api.get(f"/api/jobs/{owned['id']}/download").get_json()["error"]["code"] == "EXPIRED"
    assert api.get(f"/api/jobs/{owned['id']}").get_json()["result_expired"] is True
    link = api.post(f"/api/jobs/{shared['id']}/share").get_json()["url"]
    anyone = app.test_client()
    assert anyone.get(link).status_code == 200 and anyone.get(link).status_code == 410
    assert list(Path(app.config["RESULT_DIR"]).iterdir()) == []


def test_results_stay_after_a_download_by_default(worker_app, api):
    job = upload(api)
    run(worker_app, job["id"])
    assert [api.get(f"/api/jobs/{job['id']}/download").status_code for _ in range(2)] == [200, 200]


def test_refusals_of_many_distinct_files_never_open_the_breaker(make_app, fake):
    app = make_app(GATEWAY_URL=fake.url, BREAKER_THRESHOLD=100, BREAKER_DISTINCT_JOBS=2)
    api = ApiClient(app.test_client())
    fake.status = 422  # the gateway is fine and says no to each file: final, the files' own answer
    for n in range(3):
        run(app, upload(api, f"no{n}")["id"])
    with app.app_context():
        assert not breaker.is_open() and breaker._failing_jobs() == 0


def test_an_over_limits_answer_fails_the_job_after_one_call(worker_app, api, fake):
    from tests.support.app import load
    fake.status, fake.error_code = 503, "OVER_LIMITS"
    job = upload(api, "bomb")
    for _ in range(3):  # however often the worker comes back to it
        run(worker_app, job["id"])
    stored = load(worker_app, job["id"])
    assert (stored.status, stored.error_code, stored.dead_letter) == ("failed", "GW_OVER_LIMITS", False)
    assert "will not be retried" in stored.error and "fake gateway says 503" in stored.error
    assert fake.total_calls() == 1 and fake.health_checks == 0  # no breaker bookkeeping: the gateway is up
    with worker_app.app_context():
        from worker import breaker
        assert breaker.state() == "closed"


def test_a_job_whose_pdf_path_leads_outside_data_dir_is_never_sent(make_app, fake, tmp_path):
    app = make_app(DATA_DIR=str(tmp_path / "data"), GATEWAY_URL=fake.url, **WORKER_SETTINGS)
    outside = tmp_path / "outside.pdf"
    outside.write_bytes(pdf_bytes("not the job's"))
    job = upload(ApiClient(app.test_client()), "tampered")
    with app.app_context():  # the row edited behind the app's back
        Job.query.filter_by(id=job["id"]).update({"upload_path": str(outside)})
        db.session.commit()
    run(app, job["id"])
    failed = load(app, job["id"])
    assert (failed.status, failed.error_code) == ("failed", "IO_ERROR") and sum(fake.calls.values()) == 0


def test_parse_failed_answers_fail_their_jobs_at_once_and_never_count_toward_the_breaker(make_app, fake):
    app = make_app(GATEWAY_URL=fake.url, BREAKER_THRESHOLD=2, BREAKER_DISTINCT_JOBS=2, UPLOADS_PER_MINUTE=100)
    api = ApiClient(app.test_client())
    fake.status, fake.error_code = 422, "PARSE_FAILED"
    fake.healthy = False  # even with /healthz failing at that moment: the parse's answer is the file's own
    jobs = [upload(api, f"raises{n}") for n in range(3)]
    for job in jobs:
        for _ in range(2):  # however often the worker comes back to it
            run(app, job["id"])
    for job in jobs:
        stored = load(app, job["id"])
        assert (stored.status, stored.error_code, stored.attempts, stored.dead_letter) == (
            "failed", "GW_PARSE_FAILED", 1, False)
        assert "will not be retried" in stored.error and "fake gateway says 422" in stored.error
    assert fake.total_calls() == 3 and fake.health_checks == 0  # no breaker bookkeeping at all
    with app.app_context():
        assert breaker.state() == "closed" and breaker._failing_jobs() == 0
