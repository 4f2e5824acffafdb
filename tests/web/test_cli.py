"""Admin commands: jobs list|show|retry|delete, cleanup, breaker status|reset."""
import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from tests.support.app import claim, pdf_bytes
from worker import breaker
from core.db import db
from core.clock import utcnow
from core.jobs.model import Job


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def jobs(app, client, other_client):
    """Two jobs of two owners: one queued, one failed."""
    failed = other_client.upload((pdf_bytes("f"), "f.pdf")).get_json()["jobs"][0]
    with app.app_context():
        assert claim(failed["id"], "w", 45, 4) and Job.fail(failed["id"], "w", "GW_4XX", "refused")
        db.session.remove()
    queued = client.upload((pdf_bytes("q"), "q.pdf")).get_json()["jobs"][0]
    return queued, failed


def invoke(runner, *args, ok=True, **kw):
    result = runner.invoke(args=list(args), **kw)
    assert (result.exit_code == 0) == ok, result.output
    return result.output


def test_jobs_list_shows_every_owner_and_filters(runner, jobs):
    queued, failed = jobs
    output = invoke(runner, "jobs", "list")
    assert queued["id"] in output and failed["id"] in output
    only_failed = invoke(runner, "jobs", "list", "--status", "failed", "--json").splitlines()
    assert [json.loads(line)["id"] for line in only_failed] == [failed["id"]]
    assert json.loads(only_failed[0])["error_code"] == "GW_4XX"


def test_jobs_show_prints_the_whole_job(runner, jobs):
    queued, _ = jobs
    detail = json.loads(invoke(runner, "jobs", "show", queued["id"]))
    assert detail["id"] == queued["id"] and detail["owner"] and detail["upload_path"]
    assert "no job nope" in invoke(runner, "jobs", "show", "nope", ok=False)


def test_jobs_retry_requeues_a_failed_job_only(app, runner, jobs):
    queued, failed = jobs
    assert "cannot be retried" in invoke(runner, "jobs", "retry", queued["id"], ok=False)
    assert "queued again" in invoke(runner, "jobs", "retry", failed["id"])
    with app.app_context():
        job = db.session.get(Job, failed["id"])
        assert (job.status, job.attempts, job.error_code) == ("queued", 0, None)


def test_jobs_delete_removes_the_row_and_its_file(app, runner, jobs):
    queued, _ = jobs
    with app.app_context():
        upload = Path(app.config["DATA_DIR"]) / db.session.get(Job, queued["id"]).upload_path
    assert upload.exists()
    invoke(runner, "jobs", "delete", queued["id"], input="n\n", ok=False)  # asks first
    assert upload.exists()
    assert "deleted" in invoke(runner, "jobs", "delete", queued["id"], "--yes")
    assert not upload.exists()
    with app.app_context():
        assert db.session.get(Job, queued["id"]) is None


@pytest.mark.parametrize("old_id", ["-9XnSsLk0L6DGXXs", "--yes-it-is-an-id"])
def test_an_id_that_looks_like_an_option_is_still_taken_as_the_id(app, runner, jobs, old_id):
    queued, _ = jobs
    with app.app_context():
        db.session.execute(update(Job).where(Job.id == queued["id"]).values(id=old_id))
        db.session.commit()
    assert json.loads(invoke(runner, "jobs", "show", old_id))["id"] == old_id
    assert "deleted" in invoke(runner, "jobs", "delete", old_id, "--yes")
    with app.app_context():
        assert db.session.get(Job, old_id) is None


def test_cleanup_applies_retention_now(app, runner, jobs):
    _, failed = jobs
    with app.app_context():
        db.session.execute(db.update(Job).where(Job.id == failed["id"])
                           .values(created_at=utcnow() - timedelta(days=app.config["RETENTION_PDF_DAYS"] + 1)))
        db.session.commit()
    assert "removed 1 PDFs, 0 results" in invoke(runner, "cleanup")
    with app.app_context():
        assert db.session.get(Job, failed["id"]).upload_path is None


def test_breaker_status_and_reset(app, runner):
    assert json.loads(invoke(runner, "breaker", "status"))["state"] == "closed"
    with app.app_context():
        for _ in range(app.config["BREAKER_THRESHOLD"]):
            breaker.record_failure()
        db.session.remove()
    status = json.loads(invoke(runner, "breaker", "status"))
    assert status["state"] == "open" and status["failures"] == app.config["BREAKER_THRESHOLD"] and status["next_probe_at"]
    assert "breaker closed" in invoke(runner, "breaker", "reset")
    assert json.loads(invoke(runner, "breaker", "status")) == {"state": "closed", "failures": 0, "next_probe_at": None}
