"""A scaled-out pdfqueue on loopback: real redis-server and PostgreSQL, two web processes (gunicorn, one worker
each, different ports) and two worker processes sharing SECRET_KEY, REDIS_URL, DATABASE_URL and DATA_DIR, with
the fake gateway counting /process calls per correlation id."""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.fakegateway import FakeGateway
from tests.services import free_port, postgres_cluster, redis_server

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30


@dataclass
class Stack:
    web: list  # base URLs of the two web processes
    redis_url: str
    database_url: str
    gateway: FakeGateway
    logs: Path
    processes: dict = field(default_factory=dict)  # name -> Popen

    def log_records(self, name):
        """Every line the process wrote to stderr, each parsed as one JSON object."""
        lines = (self.logs / f"{name}.err").read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]


def _start(name, command, env, logs):
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=open(logs / f"{name}.out", "wb"),
                            stderr=open(logs / f"{name}.err", "wb"))


def _wait_healthy(stack, deadline):
    """Both web processes answer, and both workers have written a heartbeat."""
    while True:
        for name, process in stack.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}: "
                                   + (stack.logs / f"{name}.err").read_text()[-2000:])
        try:
            reports = [requests.get(f"{url}/api/healthz", timeout=2).json() for url in stack.web]
            workers = requests.get(f"{stack.web[0]}/metrics", timeout=2).text
            if all(r["status"] == "ok" and r["worker"] == "ok" for r in reports) and "pdfqueue_workers_alive 2.0" in workers:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the scaled-out stack did not come up in time")
        time.sleep(0.2)


def _wait_or_kill(process, timeout):
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="package")
def stack(tmp_path_factory):
    gateway = FakeGateway().start()
    gateway.delay = 0.2  # long enough that jobs overlap and both workers get some
    data_dir = tmp_path_factory.mktemp("scaleout-data")
    logs = tmp_path_factory.mktemp("scaleout-logs")
    with redis_server() as redis_url, postgres_cluster() as database_url:
        env = {**os.environ, "DATA_DIR": str(data_dir), "DATABASE_URL": database_url, "REDIS_URL": redis_url,
               "SECRET_KEY": "scale-out-secret", "GATEWAY_URL": gateway.url, "WEB_WORKERS": "1",
               "LOG_LEVEL": "INFO", "WORKER_CONCURRENCY": "4", "MAINTENANCE_SECONDS": "1",
               "UPLOADS_PER_MINUTE": "10", "HOST": "127.0.0.1"}
        subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=REPO, env=env,
                       check=True, capture_output=True)
        ports = [free_port(), free_port()]
        stack = Stack(web=[f"http://127.0.0.1:{port}" for port in ports], redis_url=redis_url,
                      database_url=database_url, gateway=gateway, logs=logs)
        for n, port in enumerate(ports, 1):
            stack.processes[f"web{n}"] = _start(f"web{n}", [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                                                            "wsgi:app"], {**env, "PORT": str(port)}, logs)
        for n in (1, 2):
            stack.processes[f"worker{n}"] = _start(f"worker{n}", [sys.executable, "worker.py"], env, logs)
        try:
            _wait_healthy(stack, time.monotonic() + START_TIMEOUT)
            yield stack
        finally:
            for name, process in stack.processes.items():  # all at once: each may take a few seconds
                if process.poll() is None:
                    # gunicorn's graceful TERM would wait out open event streams; QUIT stops it at once
                    process.send_signal(signal.SIGINT if name.startswith("worker") else signal.SIGQUIT)
            for process in stack.processes.values():
                _wait_or_kill(process, 15)
            gateway.stop()


class Owner:
    """One browser or script: its session cookie and CSRF token work on every web process (same SECRET_KEY)."""

    def __init__(self, stack):
        self.stack = stack
        self.http = requests.Session()
        self.token = self.http.get(f"{stack.web[0]}/api/session", timeout=5).json()["csrf_token"]

    def upload(self, web, content, name):
        return self.http.post(f"{self.stack.web[web]}/api/upload", files={"file": (name, content, "application/pdf")},
                              headers={"X-CSRF-Token": self.token}, timeout=10)

    def jobs(self, web=0):
        return self.http.get(f"{self.stack.web[web]}/api/jobs", params={"limit": 200}, timeout=5).json()["jobs"]

    def wait_done(self, count, timeout=45):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = self.jobs()
            if len(jobs) == count and all(job["status"] in ("complete", "failed") for job in jobs):
                return jobs
            time.sleep(0.2)
        raise AssertionError(f"jobs not done in time: {[(j['id'], j['status']) for j in self.jobs()]}")


@pytest.fixture
def owner_factory(stack):
    return lambda: Owner(stack)
