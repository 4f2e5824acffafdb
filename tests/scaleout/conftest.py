"""A scaled-out pdfqueue on loopback (tests/support/stack.py): real redis-server and PostgreSQL, two web processes
(gunicorn, one worker each, different ports) and two worker processes sharing SECRET_KEY, REDIS_URL,
DATABASE_URL and DATA_DIR, with the fake gateway counting /process calls per correlation id."""
import re
import time

import pytest
import requests

from tests.support.fakegateway import FakeGateway
from tests.support.services import postgres_cluster, redis_server
from tests.support.stack import MONITOR, running_stack

START_TIMEOUT = 30


def _wait_healthy(stack, deadline):
    """Both web processes answer, and both workers have written a heartbeat."""
    while True:
        for name, process in stack.procs.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}: " + stack.log(name)[-2000:])
        try:
            reports = [requests.get(f"{url}/api/healthz", timeout=2, headers=MONITOR).json() for url in stack.web_urls]
            workers = requests.get(f"{stack.web_url}/metrics", timeout=2, headers=MONITOR).text
            if all(r["status"] == "ok" and r["worker"] == "ok" for r in reports) and "pdfqueue_workers_alive 2.0" in workers:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the scaled-out stack did not come up in time")
        time.sleep(0.2)


@pytest.fixture(scope="package")
def gateway():
    fake = FakeGateway().start()
    fake.delay = 0.2  # long enough that jobs overlap
    yield fake
    fake.stop()


@pytest.fixture(scope="package")
def stack(gateway, tmp_path_factory):
    with redis_server() as redis_url, postgres_cluster() as database_url, \
            running_stack(gateway_url=gateway.url, webs=2, workers=2, data_dir=tmp_path_factory.mktemp("scaleout"),
                          DATABASE_URL=database_url, REDIS_URL=redis_url, WEB_WORKERS=1, LOG_LEVEL="INFO",
                          WORKER_CONCURRENCY=4, MAINTENANCE_SECONDS=1, UPLOADS_PER_MINUTE=10) as stack:
        _wait_healthy(stack, time.monotonic() + START_TIMEOUT)
        yield stack


class Owner:
    """One person in a browser, signed in through /login on the first web process: the session cookie and its CSRF
    token work on every web process (same SECRET_KEY, sessions in the shared database)."""

    PASSWORD = "scaled out and long enough"

    def __init__(self, stack):
        from tests.support.people import new_email
        from core.accounts import User
        self.stack = stack
        self.email = new_email("scaleout")
        with stack.app().app_context():
            User.create(self.email, self.PASSWORD)
        self.http = requests.Session()
        login = f"{stack.web_url}/login"
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', self.http.get(login, timeout=5).text).group(1)
        signed = self.http.post(login, data={"email": self.email, "password": self.PASSWORD, "csrf_token": csrf},
                                allow_redirects=False, timeout=10)
        assert signed.status_code == 303, signed.text
        self.token = self.http.get(f"{stack.web_urls[-1]}/api/session", timeout=5).json()["csrf_token"]

    def upload(self, web, content, name):
        return self.http.post(f"{self.stack.web_urls[web]}/api/upload", files={"file": (name, content, "application/pdf")},
                              headers={"X-CSRF-Token": self.token}, timeout=10)

    def jobs(self, web=0):
        return self.http.get(f"{self.stack.web_urls[web]}/api/jobs", params={"limit": 200}, timeout=5).json()["jobs"]

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
