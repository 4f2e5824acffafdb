"""Backup and restore (`flask --app wsgi backup DEST`, `restore SRC`): a copy taken while jobs are being written
restores every job it knew of, with its files."""
import json
import threading
from pathlib import Path

import pytest

from gateway.testing import free_port
from tests.support.app import WORKER_SETTINGS, ApiClient, pdf_bytes, run
from core.clock import utcnow
from core.db import db
from core.coordination import Coordination
from core.jobs.model import Job


def invoke(app, *args, ok=True):
    result = app.test_cli_runner().invoke(args=list(args))
    assert (result.exit_code == 0) == ok, result.output
    return result.output


def snapshot(app):
    """{job id: (status, upload bytes or None, result bytes or None)} as the app has them now."""
    data_dir = Path(app.config["DATA_DIR"])
    with app.app_context():
        jobs = db.session.execute(db.select(Job)).scalars().all()
        db.session.remove()
    read = lambda path: (data_dir / path).read_bytes() if path else None
    return {job.id: (job.status, read(job.upload_path), read(job.result_path)) for job in jobs}


@pytest.fixture
def live(make_app, fake, tmp_path):
    return make_app(DATA_DIR=str(tmp_path / "live"), GATEWAY_URL=fake.url, UPLOADS_PER_MINUTE=1000, **WORKER_SETTINGS)


def test_a_backup_taken_under_load_restores_every_job_and_its_files(live, make_app, tmp_path, fake):
    api = ApiClient(live.test_client())
    # Half complete, half queued with a retry an hour away: each run takes the job just uploaded (fair share
    # takes the first due one), and the load below, which runs whatever is due, leaves these as they are.
    live.config["RETRY_BASE_SECONDS"] = 3600
    for n in range(12):
        job = api.upload((pdf_bytes(f"before{n}"), f"before{n}.pdf")).get_json()["jobs"][0]
        fake.status = 200 if n % 2 else 500
        run(live, job["id"])
    fake.status = 200
    with live.app_context():  # a secret key generated into instance/ (no SECRET_KEY set) goes with the backup
        (Path(live.config["INSTANCE_DIR"]) / "secret_key").write_text("generated-key")
    before = snapshot(live)

    stop, written = threading.Event(), []

    def load():  # uploads and conversions going on while the backup runs
        writer = ApiClient(live.test_client())
        n = 0
        while not stop.is_set():
            job = writer.upload((pdf_bytes(f"during{n}"), f"during{n}.pdf")).get_json()["jobs"][0]
            run(live, job["id"])
            written.append(job["id"])
            n += 1

    thread = threading.Thread(target=load)
    thread.start()
    try:
        while len(written) < 3:  # the load is under way before the backup starts
            threading.Event().wait(0.01)
        output = invoke(live, "backup", str(tmp_path / "backup"))
        during = len(written)
        while len(written) < during + 3:  # and goes on after it
            threading.Event().wait(0.01)
    finally:
        stop.set()
        thread.join()
    manifest = json.loads((tmp_path / "backup" / "manifest.json").read_text())
    assert manifest["database"] == "sqlite" and manifest["missing"] == [] and manifest["secret_key"] is True
    assert f"backed up {manifest['jobs']} jobs" in output

    target = make_app(DATA_DIR=str(tmp_path / "restored"), PORT=free_port())
    stray = Path(target.config["UPLOAD_DIR"]) / "stray.pdf"
    stray.write_bytes(b"%PDF- not in the backup")
    invoke(target, "restore", str(tmp_path / "backup"), "--yes")
    restored = snapshot(target)
    # every job that existed when the backup began is back, in its state, with the very same files
    assert {job_id: restored.get(job_id) for job_id in before} == before
    # and so is every job the backup caught mid-load, with the files its row names
    assert len(restored) == manifest["jobs"] > len(before)
    assert all(pdf is not None and (status != "complete" or xml is not None) for status, pdf, xml in restored.values())
    assert not stray.exists()
    assert (Path(target.config["INSTANCE_DIR"]) / "secret_key").read_text() == "generated-key"
    with target.app_context():
        assert Job.query.filter_by(status="processing").count() == 0  # caught mid-conversion: queued again


def test_restore_refuses_while_a_worker_runs_and_into_a_backup_that_is_not_one(live, make_app, tmp_path):
    invoke(live, "backup", str(tmp_path / "backup"))
    target = make_app(DATA_DIR=str(tmp_path / "restored"), PORT=free_port())
    with target.app_context():
        Coordination.put("worker:box:1", holder="box:1", lease_expires_at=utcnow().replace(year=utcnow().year + 1))
        db.session.remove()
    assert "looks running" in invoke(target, "restore", str(tmp_path / "backup"), "--yes", ok=False)
    invoke(target, "restore", str(tmp_path / "backup"), "--yes", "--force")
    assert "not a pdfqueue backup" in invoke(target, "restore", str(tmp_path), "--yes", ok=False)
    assert "not empty" in invoke(live, "backup", str(tmp_path / "backup"), ok=False)


def test_postgresql_is_backed_up_with_pg_dump_and_restored_with_pg_restore(make_app, fake, tmp_path):
    import psycopg
    from tests.support.services import postgres_cluster, require
    require("pg_dump", "PostgreSQL client tools")
    with postgres_cluster() as url:
        live = make_app(DATA_DIR=str(tmp_path / "live"), DATABASE_URL=url, GATEWAY_URL=fake.url, **WORKER_SETTINGS)
        api = ApiClient(live.test_client())
        for n in range(4):
            job = api.upload((pdf_bytes(f"pg{n}"), f"pg{n}.pdf")).get_json()["jobs"][0]
            if n % 2:
                run(live, job["id"])
        before = snapshot(live)
        invoke(live, "backup", str(tmp_path / "backup"))
        assert (tmp_path / "backup" / "database.pgdump").stat().st_size > 0
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute("CREATE DATABASE restored")
        target = make_app(DATA_DIR=str(tmp_path / "restored"), DATABASE_URL=url.rsplit("/", 1)[0] + "/restored",
                          PORT=free_port())
        invoke(target, "restore", str(tmp_path / "backup"), "--yes")
        assert snapshot(target) == before
        for app in (live, target):
            with app.app_context():
                db.engine.dispose()


def test_restore_refuses_while_a_web_process_answers_on_its_port(live, make_app, tmp_path):
    from werkzeug.serving import make_server
    invoke(live, "backup", str(tmp_path / "backup"))
    server = make_server("127.0.0.1", 0, live, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        target = make_app(DATA_DIR=str(tmp_path / "restored"), HOST="127.0.0.1", PORT=server.server_port)
        assert "a pdfqueue web process answers" in invoke(target, "restore", str(tmp_path / "backup"), "--yes", ok=False)
    finally:
        server.shutdown()
        thread.join()
    invoke(target, "restore", str(tmp_path / "backup"), "--yes")
