"""Backup and restore (`flask --app wsgi backup DEST`, `restore SRC`): a copy taken while jobs are being written
restores every job it knew of, with its files; a backup is its owner's alone; a restore follows no symlink, lets
no stored path out of DATA_DIR, and either replaces everything or leaves everything as it was."""
import json
import os
import sqlite3
import stat
import threading
from contextlib import closing
from pathlib import Path

import pytest

from core import backup as backup_module
from core import counters
from gateway.testing import free_port
from tests.support.app import WORKER_SETTINGS, ApiClient, finish, pdf_bytes, run, upload
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


# -- what a backup keeps to itself, and what a restore will not do ---------------------------------------------


@pytest.fixture
def small(make_app, tmp_path):
    """An installation with two jobs (one complete), a generated secret key, and a backup of it in tmp_path/backup."""
    app = make_app(DATA_DIR=str(tmp_path / "live"))
    api = ApiClient(app.test_client())
    done = upload(api, "done")
    upload(api, "queued")
    finish(app, done["id"])
    (Path(app.config["INSTANCE_DIR"]) / "secret_key").write_text("generated-key")
    invoke(app, "backup", str(tmp_path / "backup"))
    app.done_id = done["id"]
    return app


@pytest.fixture
def target(make_app, tmp_path):
    """Another installation, with jobs and files of its own, that a restore would replace."""
    app = make_app(DATA_DIR=str(tmp_path / "target"), PORT=free_port())
    api = ApiClient(app.test_client())
    finish(app, upload(api, "old")["id"], xml="<Invoice>old</Invoice>")
    (Path(app.config["INSTANCE_DIR"]) / "secret_key").write_text("old-key")
    return app


def files_of(app):
    """{path under DATA_DIR: bytes} of every file, the database folded into its main file first (and the app's
    buffered metrics written first, or its flusher thread could write them between two looks)."""
    data_dir = Path(app.config["DATA_DIR"])
    with app.app_context():
        counters.flush()
        db.session.remove()
        db.engine.dispose()
    with closing(sqlite3.connect(data_dir / "instance" / "pdfqueue.db")) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return {str(path.relative_to(data_dir)): path.read_bytes() for path in sorted(data_dir.rglob("*"))
            if path.is_file() or path.is_symlink()}


def test_a_backup_is_for_its_owner_alone_whatever_the_umask(make_app, tmp_path):
    app = make_app(DATA_DIR=str(tmp_path / "live"))
    api = ApiClient(app.test_client())
    finish(app, upload(api, "kept")["id"])
    (Path(app.config["INSTANCE_DIR"]) / "secret_key").write_text("generated-key")
    before = os.umask(0)
    try:
        invoke(app, "backup", str(tmp_path / "backup"))
    finally:
        os.umask(before)
    backup = tmp_path / "backup"
    modes = {str(path.relative_to(backup)): stat.S_IMODE(path.stat().st_mode) for path in backup.rglob("*")}
    assert stat.S_IMODE(backup.stat().st_mode) == 0o700
    assert {name: mode for name, mode in modes.items() if (backup / name).is_dir()} == {"uploads": 0o700,
                                                                                        "results": 0o700}
    assert {mode for name, mode in modes.items() if (backup / name).is_file()} == {0o600}
    assert {"pdfqueue.db", "manifest.json", "secret_key"} <= set(modes) and len(modes) == 7


@pytest.mark.parametrize("link", ["uploads/evil.pdf", "results/evil.xml", "secret_key"])
def test_a_restore_follows_no_symlink_in_the_backup(small, target, tmp_path, link):
    outside = tmp_path / "outside.txt"
    outside.write_text("not the backup's")
    (tmp_path / "backup" / link).unlink(missing_ok=True)
    (tmp_path / "backup" / link).symlink_to(outside)
    before = files_of(target)
    output = invoke(target, "restore", str(tmp_path / "backup"), "--yes", "--force", ok=False)
    assert f"{link} is a symlink" in output and "nothing was restored" in output
    assert files_of(target) == before


def corrupt_database(backup):
    (backup / "pdfqueue.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 4096)


def missing_file(backup):
    next((backup / "uploads").iterdir()).unlink()


def no_database(backup):
    (backup / "pdfqueue.db").unlink()


@pytest.mark.parametrize("spoil", [corrupt_database, missing_file, no_database])
def test_a_restore_from_a_spoilt_backup_leaves_the_old_data_as_it_was(small, target, tmp_path, spoil):
    spoil(tmp_path / "backup")
    before = files_of(target)
    output = invoke(target, "restore", str(tmp_path / "backup"), "--yes", "--force", ok=False)
    assert "nothing was restored" in output
    assert files_of(target) == before


@pytest.mark.parametrize("crash_at", ["copying", "swapping"])
def test_a_restore_that_stops_midway_leaves_the_old_data_as_it_was(small, target, tmp_path, monkeypatch, crash_at):
    calls = []

    def crash(real):
        def step(*args):
            calls.append(args)
            if len(calls) == 3:  # the disk fills, a rename fails: midway
                raise OSError(28, "No space left on device")
            return real(*args)
        return step

    if crash_at == "copying":
        monkeypatch.setattr(backup_module, "_copy_file", crash(backup_module._copy_file))
    else:
        monkeypatch.setattr(backup_module._Swap, "_rename", crash(backup_module._Swap._rename))
    before = files_of(target)
    output = invoke(target, "restore", str(tmp_path / "backup"), "--yes", "--force", ok=False)
    assert "No space left on device" in output and "nothing was restored" in output
    assert files_of(target) == before
    monkeypatch.undo()  # and nothing left behind stands in the way of the next restore
    invoke(target, "restore", str(tmp_path / "backup"), "--yes", "--force")
    assert snapshot(target) == snapshot(small)


def test_a_restore_refuses_a_database_naming_a_file_outside_data_dir(small, target, tmp_path):
    with closing(sqlite3.connect(tmp_path / "backup" / "pdfqueue.db")) as conn:
        conn.execute("UPDATE jobs SET result_path = '../../etc/passwd' WHERE id = ?", (small.done_id,))
        conn.commit()
    before = files_of(target)
    output = invoke(target, "restore", str(tmp_path / "backup"), "--yes", "--force", ok=False)
    assert "'../../etc/passwd'" in output and "outside DATA_DIR" in output
    assert files_of(target) == before


def test_a_postgresql_restore_refuses_a_dump_naming_a_file_outside_data_dir(make_app, tmp_path):
    import psycopg
    from tests.support.services import postgres_cluster, require
    require("pg_dump", "PostgreSQL client tools")
    with postgres_cluster() as url:
        live = make_app(DATA_DIR=str(tmp_path / "live"), DATABASE_URL=url)
        api = ApiClient(live.test_client())
        jobs = [upload(api, f"pg{n}")["id"] for n in range(3)]
        with live.app_context():  # a backup taken of a tampered database
            db.session.execute(db.update(Job).where(Job.id == jobs[1]).values(upload_path="/etc/passwd"))
            db.session.commit()
        invoke(live, "backup", str(tmp_path / "backup"))
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute("CREATE DATABASE restored")
        target = make_app(DATA_DIR=str(tmp_path / "restored"), DATABASE_URL=url.rsplit("/", 1)[0] + "/restored",
                          PORT=free_port())
        finish(target, upload(ApiClient(target.test_client()), "old")["id"])
        before = snapshot(target)
        output = invoke(target, "restore", str(tmp_path / "backup"), "--yes", ok=False)
        assert "'/etc/passwd'" in output and "outside DATA_DIR" in output
        assert snapshot(target) == before
        for app in (live, target):
            with app.app_context():
                counters.flush()  # the uploads' samples, written while the cluster runs
                db.engine.dispose()


def test_what_a_killed_restore_left_beside_the_data_stops_the_next_one(small, target, tmp_path):
    left = Path(target.config["DATA_DIR"]) / ".results.restore-old"  # a restore killed while it swapped
    left.mkdir()
    (left / "old.xml").write_text("<Invoice>the only copy</Invoice>")
    before = files_of(target)
    output = invoke(target, "restore", str(tmp_path / "backup"), "--yes", "--force", ok=False)
    assert f"{left} is left by an interrupted restore" in output
    assert files_of(target) == before
