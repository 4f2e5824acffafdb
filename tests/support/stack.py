"""Start pdfqueue's real processes on loopback in a throwaway DATA_DIR: gunicorn web processes, worker.py and a
gateway. The fault drills, the browser and scale-out tests and the benchmarks all run on this one stack."""
import atexit
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path

import requests

from gateway.testing import free_port, wait_until_answering

ROOT = Path(__file__).resolve().parents[2]
WEB = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
WORKER = [sys.executable, "-m", "worker"]
GATEWAY = [sys.executable, "-m", "gunicorn", "-c", "gateway/gunicorn.conf.py", "gateway.wsgi:app"]
METRICS_TOKEN = "stack-metrics-token"
# What Prometheus sends: /metrics and the details of /api/healthz need it.
MONITOR = {"Authorization": f"Bearer {METRICS_TOKEN}"}


class Stack:
    """The processes of one run by name (web or web1, web2…; worker or worker1…; gateway), each logging to
    DATA_DIR/<name>.log."""

    def __init__(self, data_dir, env):
        self.data_dir, self.env = Path(data_dir), env
        self.gateway_url = env["GATEWAY_URL"]
        self.web_urls = []
        self.procs = {}  # name -> Popen, while it runs
        self.commands = {}  # name -> (argv, health URL, extra env): how it was started, to start it again
        self.starting = []  # (health URL, process, name) of processes started but not yet seen answering
        self._app = None

    @property
    def web_url(self):
        return self.web_urls[0]

    def app(self):
        """An app on this stack's database (in this process), to make accounts without the sign-in form."""
        if self._app is None:
            from webapp import create_app
            self._app = create_app({"DATA_DIR": self.env["DATA_DIR"], "DATABASE_URL": self.env.get("DATABASE_URL", ""),
                                    "SECRET_KEY": self.env["SECRET_KEY"], "HUEY_MEMORY": True, "TESTING": True,
                                    "MIGRATE": False})
        return self._app

    def flask(self, *args, env=None):
        """Run a `flask` CLI command against this stack's database and files (or those env says instead)."""
        subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=ROOT, env=env or self.env,
                       check=True, capture_output=True)

    def start(self, name, argv, health_url=None, wait=True, **extra_env):
        """Start a process; with health_url, return once it answers there (wait=False: once wait_ready() is
        called, so that several processes start side by side)."""
        self.commands[name] = argv, health_url, extra_env
        with open(self.data_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, cwd=ROOT, env={**self.env, **extra_env}, stdout=log, stderr=log)
        self.procs[name] = proc
        if health_url:
            self.starting.append((health_url, proc, name))
            if wait:
                self.wait_ready()
        return proc

    def wait_ready(self):
        """Return once every process started without waiting answers its health URL."""
        # With the suite on both cores and coverage in every process, a start can take well over its usual
        # second or two: wait long rather than fail a test for a slow box.
        while self.starting:
            wait_until_answering(*self.starting.pop(0), timeout=90)

    def pause(self, name, tries=200):
        """SIGSTOP the process at a moment it holds neither SQLite database's write lock (the jobs' and Huey's).

        Stopped inside a write transaction (its heartbeat, Huey's scheduler, the deliverer's look at the outbox:
        several a second), it would keep every other process's write waiting out its busy timeout, 15 s, as long
        as the browser's own timeout: the page's upload would fail. Resume it with SIGCONT."""
        proc = self.procs[name]
        instance = Path(self.env.get("INSTANCE_DIR") or self.data_dir / "instance")
        # With DATABASE_URL the jobs are in PostgreSQL, where no write waits on another's idle session.
        candidates = [instance / "huey.db"] + ([] if self.env.get("DATABASE_URL") else [instance / "pdfqueue.db"])
        databases = [path for path in candidates if path.exists()]
        for _ in range(tries):
            proc.send_signal(signal.SIGSTOP)
            if not any(_write_locked(path) for path in databases):
                return
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.01)
        raise AssertionError(f"{name} held a write lock at each of {tries} stops")

    def start_again(self, name):
        """Start a stopped process as it was started before (same command, port and environment)."""
        argv, health_url, extra_env = self.commands[name]
        return self.start(name, argv, health_url, **extra_env)

    def start_web(self, name, wait=True):
        """Start a web process (gunicorn) on a port of its own."""
        port = free_port()
        self.web_urls.append(f"http://127.0.0.1:{port}")
        return self.start(name, WEB, f"{self.web_urls[-1]}/api/healthz", wait=wait, PORT=str(port))

    def stop(self, name, sig=signal.SIGTERM):
        """Send sig and wait for the process to exit (killing it after 20 s)."""
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        _wait_or_kill(proc, 20)

    def restart(self, name, hard=False):
        """Stop a process (SIGTERM; or SIGKILL to it and its children) and start it again on the same port."""
        if hard:
            proc = self.procs.pop(name)
            for pid in [proc.pid, *children(proc.pid)]:
                os.kill(pid, signal.SIGKILL)
            proc.wait()
        else:
            self.stop(name)
        return self.start_again(name)

    def stop_all(self):
        """Stop every process at once (each may take a few seconds), then wait for them all."""
        if self._app is not None:
            from core.db import db
            with self._app.app_context():
                db.engine.dispose()
        for proc in self.procs.values():
            # gunicorn's graceful TERM would wait out open event streams; QUIT stops it at once
            proc.send_signal(signal.SIGQUIT if "gunicorn" in proc.args else signal.SIGTERM)
        for proc in self.procs.values():
            _wait_or_kill(proc, 15)
        self.procs.clear()

    def log(self, name):
        """Everything the process has written so far, across its restarts."""
        return (self.data_dir / f"{name}.log").read_text(errors="replace")

    def log_records(self, name):
        """Every line the process wrote, each parsed as one JSON object."""
        return [json.loads(line) for line in self.log(name).splitlines() if line.strip()]


def _wait_or_kill(proc, timeout):
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _names(kind, count):
    """[kind] for one process, [kind1, kind2…] for several."""
    return [kind] if count == 1 else [f"{kind}{n}" for n in range(1, count + 1)]


@contextmanager
def running_stack(gateway_url=None, gateway_delay=None, webs=1, workers=1, data_dir=None, **settings):
    """Migrate a fresh database, start a gateway, the web processes and the workers; stop them all on exit.

    The gateway is ours under gunicorn, or tests/support/fakegateway.py with gateway_delay set; with gateway_url none
    is started and the stack uses that one (an in-process FakeGateway, or an address where nothing listens).
    data_dir defaults to a temporary directory; settings go into every process's environment."""
    with ExitStack() as cleanup:
        if data_dir is None:
            data_dir = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="pdfqueue-stack-"))
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        gateway_port = free_port()
        env = {**os.environ, "DATA_DIR": str(data_dir), "HOST": "127.0.0.1", "GATEWAY_HOST": "127.0.0.1",
               "GATEWAY_PORT": str(gateway_port), "GATEWAY_URL": gateway_url or f"http://127.0.0.1:{gateway_port}",
               "SECRET_KEY": "stack-secret-key-0123456789abcdefghijklmnop", "METRICS_TOKEN": METRICS_TOKEN,
               "LOG_LEVEL": "WARNING", **{k: str(v) for k, v in settings.items()}}
        stack = Stack(data_dir, env)
        cleanup.callback(stack.stop_all)
        # Side by side: the gateway boots while the database is migrated, then the web processes and the workers.
        if gateway_url is None:
            fake = [sys.executable, "-m", "tests.support.fakegateway", str(gateway_port), str(gateway_delay)]
            stack.start("gateway", GATEWAY if gateway_delay is None else fake, f"{stack.gateway_url}/healthz",
                        wait=False)
        _migrate(stack)
        for name in _names("web", webs):
            stack.start_web(name, wait=False)
        for name in _names("worker", workers):
            stack.start(name, WORKER)
        stack.wait_ready()
        yield stack


_migrated = {}  # this process's new SQLite database as `flask db upgrade` made it, which later stacks start from


def _migrate(stack):
    """Bring the stack's database to the head: `flask db upgrade`, run once per process for a new SQLite database
    (each later stack starts from a copy of what it made, as the in-process tests' apps do: tests/conftest.py), and
    every time for PostgreSQL or a database already there."""
    database = Path(stack.env.get("INSTANCE_DIR") or stack.data_dir / "instance") / "pdfqueue.db"
    if stack.env.get("DATABASE_URL") or database.exists():
        stack.flask("db", "upgrade")
        return
    if "sqlite" not in _migrated:
        env = {name: value for name, value in stack.env.items() if name != "INSTANCE_DIR"}
        made = Path(tempfile.mkdtemp(prefix="pdfqueue-migrated-"))
        atexit.register(shutil.rmtree, made, ignore_errors=True)
        stack.flask("db", "upgrade", env={**env, "DATA_DIR": str(made)})
        made_database = made / "instance" / "pdfqueue.db"
        with closing(sqlite3.connect(made_database)) as connection:  # the log folded in: the file alone is it
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        _migrated["sqlite"] = made_database
    database.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_migrated["sqlite"], database)


def owner_session(stack, admin=False):
    """A requests session as a new user of the stack, with a personal API token, as a script would use it."""
    from tests.support.people import with_token
    session = requests.Session()
    session.user, token = with_token(stack.app(), admin=admin)
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def children(pid):
    """The pids of a process's children (a gunicorn master's workers)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _write_locked(path):
    """True if another connection holds this SQLite database's write lock right now."""
    import sqlite3
    connection = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return True
        raise
    finally:
        connection.close()
