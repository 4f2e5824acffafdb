"""Backup and restore of a whole installation: the database, uploads/, results/ and the generated secret key.

A backup is a directory:

    manifest.json          when, which database, how many jobs, the migration revision, files copied
    pdfqueue.db            SQLite: a consistent copy made with SQLite's online backup API (the service may run)
    database.pgdump        PostgreSQL: `pg_dump --format=custom` (one consistent snapshot; the service may run)
    uploads/  results/     the kept PDFs and XML results
    secret_key             instance/secret_key, when the key was generated there rather than set in SECRET_KEY

The database is copied first and the files after it. Every file a job row names is on disk before the row
says so (an upload is kept before its row is made, a result before the job completes), so every job in the
copy finds its files unless something deleted them while the backup ran (retention, a user deleting a job);
those are listed in the manifest as "missing". Files newer than the copy are copied too, and harmless.

The Huey queue (instance/huey.db) is not kept: it only holds wake-ups, and the worker's first maintenance
tick after a start wakes every queued job that is due. Jobs that were processing when the backup was taken
are given back to the queue at restore, without spending their attempt.
"""
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import requests
from flask import current_app
from sqlalchemy import delete, select, text
from sqlalchemy.engine import make_url

from core.clock import isoformat, utcnow
from core.db import db, write_transaction
from core.coordination import Coordination, worker_heartbeat
from core.jobs.model import Job
from core.jobs.states import Status

FOLDERS = {"uploads": "UPLOAD_DIR", "results": "RESULT_DIR"}  # a backup's folder: the setting naming it here
MANIFEST = "manifest.json"
SQLITE_FILE = "pdfqueue.db"
PG_FILE = "database.pgdump"
SECRET_FILE = "secret_key"


class BackupError(Exception):
    """A backup or restore that cannot be made, said in one line."""


def _database():
    """('sqlite', path) or ('postgresql', URL) for the app's database."""
    url = make_url(current_app.config["SQLALCHEMY_DATABASE_URI"])
    if url.get_backend_name() == "sqlite":
        return "sqlite", Path(url.database)
    if url.get_backend_name() == "postgresql":
        return "postgresql", url
    raise BackupError(f"cannot back up a {url.get_backend_name()} database")


def _pg_command(binary, url):
    """argv and environment for a libpq tool on this URL (the password goes in PGPASSWORD, not on the command line)."""
    tool = shutil.which(binary)
    if tool is None:
        raise BackupError(f"{binary} is not installed (the PostgreSQL client tools, e.g. apt install postgresql-client)")
    env = {**os.environ}
    if url.password:
        env["PGPASSWORD"] = url.password
    plain = url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    return tool, plain, env


def _sqlite_copy(source, target):
    """Copy one SQLite database into another with the online backup API: a consistent snapshot, writers allowed."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(target, timeout=30)
    try:
        src.backup(dst)  # all pages in one step: one read transaction, so one point in time
    finally:
        dst.close()
        src.close()


def _copy_folder(source, target):
    """Copy the kept files of one folder (not the partial .incoming- ones); a file deleted meanwhile is skipped."""
    target.mkdir(parents=True, exist_ok=True)
    copied = 0
    for path in sorted(source.iterdir()) if source.exists() else ():
        if path.name.startswith(".incoming-") or not path.is_file():
            continue
        try:
            shutil.copy2(path, target / path.name)
            copied += 1
        except FileNotFoundError:  # deleted since it was listed (retention, a deleted job)
            pass
    return copied


def _rows(kind, where):
    """(job count, alembic revision, [(upload_path, result_path)]) of the database copy at where."""
    if kind == "sqlite":
        with sqlite3.connect(where) as conn:
            count = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
            revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            paths = conn.execute("SELECT upload_path, result_path FROM jobs").fetchall()
        db_revision = revision[0] if revision else None
        return count, db_revision, paths
    raise AssertionError(kind)


def backup(dest):
    """Make a backup of this installation in the new directory dest; return its manifest."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} exists and is not empty; give a new directory")
    dest.mkdir(parents=True, exist_ok=True)
    config = current_app.config
    kind, where = _database()
    manifest = {"created_at": isoformat(utcnow()), "database": kind}
    if kind == "sqlite":
        _sqlite_copy(where, dest / SQLITE_FILE)
        count, revision, paths = _rows(kind, dest / SQLITE_FILE)
    else:
        # pg_dump reads one snapshot (a repeatable-read transaction), so the dump is consistent while we run.
        paths = [tuple(row) for row in db.session.execute(select(Job.upload_path, Job.result_path)).all()]
        db.session.rollback()
        tool, url, env = _pg_command("pg_dump", where)
        done = subprocess.run([tool, "--format=custom", "--no-owner", f"--file={dest / PG_FILE}", url], env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise BackupError(f"pg_dump failed: {done.stderr.strip()[:500]}")
        count = len(paths)
        revision = db.session.execute(text("SELECT version_num FROM alembic_version")).scalar()
        db.session.rollback()
    manifest.update(jobs=count, revision=revision)
    manifest["files"] = {folder: _copy_folder(Path(config[setting]), dest / folder)
                         for folder, setting in FOLDERS.items()}
    secret = Path(config["INSTANCE_DIR"]) / SECRET_FILE
    if secret.exists():
        shutil.copy2(secret, dest / SECRET_FILE)
        os.chmod(dest / SECRET_FILE, 0o600)
    manifest["secret_key"] = secret.exists()
    manifest["missing"] = sorted(path for row in paths for path in row if path and not (dest / path).exists())
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def service_running():
    """Why the service looks running (a current worker heartbeat, a web process answering), or None."""
    try:
        _age, alive = worker_heartbeat()
        db.session.rollback()
    except Exception:  # no database yet, or no tables: nothing runs on it
        db.session.rollback()
        alive = 0
    if alive:
        return f"{alive} worker(s) wrote a heartbeat within the last {3 * current_app.config['MAINTENANCE_SECONDS']:g} s"
    config = current_app.config
    url = f"http://{config['HOST']}:{config['PORT']}/api/healthz"
    try:
        answer = requests.get(url, timeout=2)
        if "status" in (answer.json() or {}):  # /api/healthz's answer, to anyone (details need a session)
            return f"a pdfqueue web process answers at {url}"
    except (requests.RequestException, ValueError):
        pass
    return None


def restore(src, force=False):
    """Replace this installation's database and files with the backup in src; return its manifest.

    Refuses while the service looks running (stop web and worker first) unless force."""
    src = Path(src)
    try:
        manifest = json.loads((src / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{src} is not a pdfqueue backup (no readable {MANIFEST})") from exc
    if not force:
        running = service_running()
        if running:
            raise BackupError(f"the service looks running ({running}); stop web and worker first, or pass --force")
    config = current_app.config
    kind, where = _database()
    if kind != manifest["database"]:
        raise BackupError(f"the backup holds a {manifest['database']} database, this installation uses {kind}")
    db.session.remove()
    db.engine.dispose()
    if kind == "sqlite":
        _sqlite_copy(src / SQLITE_FILE, where)
    else:
        tool, url, env = _pg_command("pg_restore", where)
        done = subprocess.run([tool, "--clean", "--if-exists", "--no-owner", "--single-transaction",
                               f"--dbname={url}", str(src / PG_FILE)], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise BackupError(f"pg_restore failed: {done.stderr.strip()[:500]}")
    for folder, setting in FOLDERS.items():
        target = Path(config[setting])
        target.mkdir(parents=True, exist_ok=True)
        for path in target.iterdir():  # what the restored database does not know of goes
            if path.is_file():
                path.unlink()
        _copy_folder(src / folder, target)
    if (src / SECRET_FILE).exists():
        shutil.copy2(src / SECRET_FILE, Path(config["INSTANCE_DIR"]) / SECRET_FILE)
        os.chmod(Path(config["INSTANCE_DIR"]) / SECRET_FILE, 0o600)
    # Heartbeats and the maintenance lease were the backed-up processes': they are gone.
    with write_transaction() as session:
        session.execute(delete(Coordination).where(Coordination.name.like("worker:%")
                                                   | (Coordination.name == "maintenance")))
    # Jobs caught mid-conversion go back to the queue with their attempt given back (their worker is gone).
    caught = db.session.execute(select(Job.id, Job.leased_by).where(Job.status == Status.PROCESSING)).all()
    db.session.rollback()
    for job_id, worker in caught:
        Job.release(job_id, worker)
    return manifest
