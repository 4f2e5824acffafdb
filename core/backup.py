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

A backup is 0700, its files 0600. A restore refuses a backup holding a symlink, copies and checks everything
beside what it replaces (a readable database, the files the manifest counted, every job's path inside DATA_DIR),
then swaps it in by renames: a failure leaves the installation as it was (see restore()).

The Huey queue (instance/huey.db) is not kept: it only holds wake-ups, and the worker's first maintenance
tick after a start wakes every queued job that is due. Jobs that were processing when the backup was taken
are given back to the queue at restore, without spending their attempt.
"""
import errno
import json
import os
import re
import shutil
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path
from stat import S_ISREG

import requests
from flask import current_app
from sqlalchemy import delete, select, text
from sqlalchemy.engine import make_url

from core.clock import isoformat, utcnow
from core.db import db, write_transaction
from core.coordination import Coordination, worker_heartbeat
from core.jobs.model import Job
from core.jobs.states import Status
from core.paths import StoredPathError, kept_file, stored_file

FOLDERS = {"uploads": "UPLOAD_DIR", "results": "RESULT_DIR"}  # a backup's folder: the setting naming it here
MANIFEST = "manifest.json"
SQLITE_FILE = "pdfqueue.db"
PG_FILE = "database.pgdump"
SECRET_FILE = "secret_key"


class BackupError(Exception):
    """A backup or restore that cannot be made, said in one line."""


class LinkError(BackupError):
    """A symlink (or anything but a regular file) where a backup holds files."""


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


def _private_file(path):
    """An empty new file at path, readable by the owner only (whatever the umask): the caller writes it."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    os.chmod(path, 0o600)


def _copy_file(source, target, mode=0o600):
    """Copy a regular file, never through a symlink (source's or target's), into a new file of mode; its mtime kept.

    Raise LinkError if source is not a regular file (a symlink, a directory, a device)."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # what O_NOFOLLOW answers for a symlink
            raise LinkError(f"{source} is a symlink") from None
        raise
    with os.fdopen(fd, "rb") as reader:
        stat = os.fstat(reader.fileno())
        if not S_ISREG(stat.st_mode):
            raise LinkError(f"{source} is not a regular file")
        with os.fdopen(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode), "wb") as writer:
            shutil.copyfileobj(reader, writer, 1024 * 1024)
    os.chmod(target, mode)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _copy_folder(source, target, mode=0o600):
    """Copy the kept files of one folder (not the partial .incoming- ones, nor symlinks or anything but a regular
    file); a file deleted meanwhile is skipped. How many were copied."""
    target.mkdir(parents=True, exist_ok=True)
    copied = 0
    for path in sorted(source.iterdir()) if source.exists() else ():
        if path.name.startswith(".incoming-") or not S_ISREG(path.lstat().st_mode):
            continue
        try:
            _copy_file(path, target / path.name, mode)
            copied += 1
        except FileNotFoundError:  # deleted since it was listed (retention, a deleted job)
            pass
    return copied


def _rows(kind, where):
    """(job count, alembic revision, [(upload_path, result_path)]) of the database copy at where."""
    if kind == "sqlite":
        with closing(sqlite3.connect(where)) as conn:
            count = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
            revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            paths = conn.execute("SELECT upload_path, result_path FROM jobs").fetchall()
        db_revision = revision[0] if revision else None
        return count, db_revision, paths
    raise AssertionError(kind)


def backup(dest):
    """Make a backup of this installation in the new directory dest; return its manifest.

    The directory is the owner's alone (0700, its files 0600, whatever the umask): it holds password hashes,
    webhook secrets and perhaps the secret key."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} exists and is not empty; give a new directory")
    dest.mkdir(parents=True, exist_ok=True)
    os.chmod(dest, 0o700)  # before anything is written into it
    config = current_app.config
    kind, where = _database()
    manifest = {"created_at": isoformat(utcnow()), "database": kind}
    if kind == "sqlite":
        _private_file(dest / SQLITE_FILE)  # SQLite writes into it (and its journal) with this mode
        _sqlite_copy(where, dest / SQLITE_FILE)
        count, revision, paths = _rows(kind, dest / SQLITE_FILE)
    else:
        # pg_dump reads one snapshot (a repeatable-read transaction), so the dump is consistent while we run.
        paths = [tuple(row) for row in db.session.execute(select(Job.upload_path, Job.result_path)).all()]
        db.session.rollback()
        tool, url, env = _pg_command("pg_dump", where)
        _private_file(dest / PG_FILE)
        done = subprocess.run([tool, "--format=custom", "--no-owner", f"--file={dest / PG_FILE}", url], env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise BackupError(f"pg_dump failed: {done.stderr.strip()[:500]}")
        os.chmod(dest / PG_FILE, 0o600)
        count = len(paths)
        revision = db.session.execute(text("SELECT version_num FROM alembic_version")).scalar()
        db.session.rollback()
    manifest.update(jobs=count, revision=revision)
    manifest["files"] = {}
    for folder, setting in FOLDERS.items():
        (dest / folder).mkdir(mode=0o700)
        os.chmod(dest / folder, 0o700)
        manifest["files"][folder] = _copy_folder(Path(config[setting]), dest / folder)
    secret = Path(config["INSTANCE_DIR"]) / SECRET_FILE
    if secret.exists():
        _copy_file(secret, dest / SECRET_FILE)
    manifest["secret_key"] = secret.exists()
    manifest["missing"] = sorted(path for row in paths for path in row
                                 if path and not ((kept := kept_file(dest, path)) and kept.exists()))
    _private_file(dest / MANIFEST)
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


# -- restore -------------------------------------------------------------------------------------------


def _refuse_links(src):
    """Raise LinkError naming the first symlink (or anything but a regular file) among what a restore reads."""
    for name in (MANIFEST, SQLITE_FILE, PG_FILE, SECRET_FILE, *FOLDERS):
        path = src / name
        if path.is_symlink():
            raise LinkError(_not_a_file(path))
    for folder in FOLDERS:
        for path in sorted((src / folder).iterdir()) if (src / folder).is_dir() else ():
            if not S_ISREG(path.lstat().st_mode):
                raise LinkError(_not_a_file(path))


def _not_a_file(path):
    what = "a symlink" if path.is_symlink() else "not a regular file"
    return (f"{path} is {what}: a pdfqueue backup holds only regular files, and restore follows no link; "
            "nothing was restored")


def _pg_paths(dump):
    """[(upload_path, result_path)] of the jobs a pg_dump file holds, from pg_restore's script of their rows."""
    tool = shutil.which("pg_restore")
    if tool is None:
        raise BackupError("pg_restore is not installed (the PostgreSQL client tools, e.g. apt install "
                          "postgresql-client)")
    done = subprocess.run([tool, "--data-only", "--table=jobs", "--file=-", str(dump)], capture_output=True, text=True)
    if done.returncode != 0:
        raise BackupError(f"the backup's database cannot be read: {done.stderr.strip()[:500]}; nothing was restored")
    lines = iter(done.stdout.splitlines())
    for line in lines:
        header = re.fullmatch(r"COPY (?:\S+\.)?jobs \((.*)\) FROM stdin;", line)
        if header:
            break
    else:
        return []
    columns = [name.strip().strip('"') for name in header.group(1).split(",")]
    wanted = [columns.index("upload_path"), columns.index("result_path")]
    rows = []
    for line in lines:
        if line == "\\.":
            break
        fields = [line.split("\t")[n] for n in wanted]
        for field in fields:  # COPY's escapes (\x2e, \057…) could spell a path the check below would not see
            if field != "\\N" and "\\" in field:
                raise BackupError(f"the backup's database names the file {field!r} (with an escape): nothing was "
                                  "restored")
        rows.append(tuple(None if field == "\\N" else field for field in fields))
    return rows


def _check_paths(paths, data_dir):
    """Raise BackupError naming the first stored path that would lead outside DATA_DIR's uploads/ and results/."""
    for path in (path for row in paths for path in row if path):
        try:
            stored_file(data_dir, path)
        except StoredPathError:
            raise BackupError(f"the backup's database names the file {path!r}, which leads outside DATA_DIR's "
                              f"{' and '.join(FOLDERS)}: nothing was restored") from None


class _Swap:
    """Replacements built beside their targets (same directory, so the same file system), then swapped in by
    renames; a failure undoes the renames made so far, leaving every target as it was."""

    def __init__(self):
        self.moves = []  # (target, its replacement, or None to only move the target aside)
        self.renamed = []  # (from, to), in the order made

    @staticmethod
    def beside(target, what):
        return target.with_name(f".{target.name}.restore-{what}")

    def stage(self, target):
        """Where to build target's replacement."""
        self.moves.append((target, self.beside(target, "new")))
        return self.beside(target, "new")

    def aside(self, target):
        """Move target out of the way with the rest, putting nothing in its place (an old SQLite -wal)."""
        self.moves.append((target, None))

    def left_over(self):
        """A replacement or an old copy an interrupted restore left beside a target, or None."""
        return next((path for target, _ in self.moves for path in (self.beside(target, "new"),
                     self.beside(target, "old")) if os.path.lexists(path)), None)

    def commit(self):
        try:
            for target, staged in self.moves:
                if os.path.lexists(target):
                    self._rename(target, self.beside(target, "old"))
                if staged is not None:
                    self._rename(staged, target)
        except BaseException:
            self.undo()
            raise

    def _rename(self, source, target):
        os.rename(source, target)
        self.renamed.append((source, target))

    def undo(self):
        while self.renamed:
            source, target = self.renamed.pop()
            try:
                os.rename(target, source)
            except OSError as exc:
                raise BackupError(f"the restore stopped midway and could not move {target} back to {source} "
                                  f"({exc}): do it by hand; the files beside it ending .restore-old are the data "
                                  "it replaced") from exc

    def discard(self):
        """Remove the replacements (after a failure, or undo)."""
        for _, staged in self.moves:
            if staged is not None:
                _remove(staged)

    def finish(self):
        """Remove the old copies (after a commit)."""
        for target, _ in self.moves:
            _remove(self.beside(target, "old"))


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _pg_restore(dump, url):
    """Replace the PostgreSQL database's contents with the dump's, in one transaction."""
    tool, plain, env = _pg_command("pg_restore", url)
    done = subprocess.run([tool, "--clean", "--if-exists", "--no-owner", "--single-transaction", f"--dbname={plain}",
                           str(dump)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise BackupError(f"pg_restore failed: {done.stderr.strip()[:500]}; nothing was restored")


def restore(src, force=False):
    """Replace this installation's database and files with the backup in src; return its manifest.

    Refuses while the service looks running (stop web and worker first) unless force. Everything is copied (and
    the database checked) beside what it replaces before anything is replaced; then renames swap it in. A backup
    that holds a symlink, a database that cannot be read, a file missing, a job naming a path outside DATA_DIR,
    a failure midway: the installation stays as it was."""
    src = Path(src)
    _refuse_links(src)
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
    swap = _Swap()
    folders = {folder: Path(config[setting]).resolve() for folder, setting in FOLDERS.items()}
    staged_folders = {folder: swap.stage(target) for folder, target in folders.items()}
    secret = swap.stage(Path(config["INSTANCE_DIR"]).resolve() / SECRET_FILE) if (src / SECRET_FILE).exists() else None
    if kind == "sqlite":
        database = swap.stage(where.resolve())
        for suffix in ("-wal", "-shm"):
            swap.aside(where.resolve().with_name(where.resolve().name + suffix))
    left = swap.left_over()
    if left is not None:
        raise BackupError(f"{left} is left by an interrupted restore (…restore-old: the data it replaced; "
                          "…restore-new: the backup's): put back what you need, remove it, and restore again")
    db.session.remove()
    db.engine.dispose()
    try:
        for folder, staged in staged_folders.items():
            staged.mkdir(mode=0o700)
            if folders[folder].is_dir():
                shutil.copymode(folders[folder], staged)
            copied = _copy_folder(src / folder, staged)
            expected = manifest.get("files", {}).get(folder, 0)
            if copied < expected:
                raise BackupError(f"the backup's {folder}/ holds {copied} files where it copied {expected}: it is "
                                  "incomplete; nothing was restored")
        if secret is not None:
            _copy_file(src / SECRET_FILE, secret)
        if kind == "sqlite":
            if not (src / SQLITE_FILE).is_file():
                raise BackupError(f"the backup has no {SQLITE_FILE}; nothing was restored")
            _private_file(database)
            try:
                _sqlite_copy(src / SQLITE_FILE, database)
                with closing(sqlite3.connect(database)) as conn:
                    if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                        raise sqlite3.DatabaseError("it fails PRAGMA quick_check")
                _count, _revision, paths = _rows(kind, database)
            except sqlite3.Error as exc:
                raise BackupError(f"the backup's database cannot be read ({exc}); nothing was restored") from None
        else:
            paths = _pg_paths(src / PG_FILE)
        _check_paths(paths, config["DATA_DIR"])
        swap.commit()
        if kind == "postgresql":
            try:
                _pg_restore(src / PG_FILE, where)
            except BaseException:  # one transaction: the database is as it was; so are the files, once undone
                swap.undo()
                raise
    except BaseException as exc:
        swap.discard()
        if isinstance(exc, OSError):
            raise BackupError(f"the restore stopped ({exc}); nothing was restored") from exc
        raise
    swap.finish()
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
