"""Real processes for the browser tests: the embedded gateway, the web app under the project's gunicorn
config, and worker.py, on free loopback ports in a temporary DATA_DIR; and Debian's chromium via Playwright."""
import os
import subprocess
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from gateway.testing import free_port, running_gateway, wait_until_answering

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts"


def pytest_collection_modifyitems(config, items):
    """Without chromium these tests skip, except under CI=true where a missing browser is a failure."""
    if Path(CHROMIUM).exists() or os.environ.get("CI") == "true":
        return
    skip = pytest.mark.skip(reason=f"{CHROMIUM} is not installed (run scripts/system-deps.sh)")
    for item in items:
        if Path(item.fspath).parent == Path(__file__).parent:
            item.add_marker(skip)


class Stack:
    """A running pdfqueue: its URL, its data directory, and its worker process (to pause it)."""

    def __init__(self, url, data_dir, worker):
        self.url, self.data_dir, self.worker = url, data_dir, worker


@contextmanager
def _process(args, env, log, what):
    with open(log, "ab") as out:
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def running_stack(data_dir, gateway_url=None, **settings):
    """Migrate a fresh database, then run web and worker (and the gateway unless gateway_url is given)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        if gateway_url is None:
            gateway_url = stack.enter_context(running_gateway({"GATEWAY_WORKERS": "2"}))
        port = free_port()
        env = {**os.environ, "DATA_DIR": str(data_dir), "GATEWAY_URL": gateway_url, "HOST": "127.0.0.1",
               "PORT": str(port), "SECRET_KEY": "browser-tests", "UPLOADS_PER_MINUTE": "100", "LOG_LEVEL": "WARNING",
               "LEASE_SECONDS": "10", "MAINTENANCE_SECONDS": "0.5", "WORKER_CONCURRENCY": "2",
               "RETRY_BASE_SECONDS": "0.5", "RETRY_JITTER_SECONDS": "0", **settings}
        subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env,
                       check=True, capture_output=True)
        web = stack.enter_context(_process([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                                           env, data_dir / "web.log", "web"))
        worker = stack.enter_context(_process([sys.executable, "worker.py"], env, data_dir / "worker.log", "worker"))
        url = f"http://127.0.0.1:{port}"
        wait_until_answering(f"{url}/api/healthz", web, "the web app")
        yield Stack(url, data_dir, worker)


SHARE_TTL_SECONDS = 120  # not the default 900, so that the share notice must read the answer's expires_at


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("stack"), SHARE_TTL_SECONDS=str(SHARE_TTL_SECONDS)) as running:
        yield running


@pytest.fixture(scope="session")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium):
    """A fresh browser context (so a fresh owner) and its page."""
    context = chromium.new_context(accept_downloads=True, viewport={"width": 1360, "height": 900})
    context.set_default_timeout(15000)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture(scope="session")
def artifacts():
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
