"""Real processes for the browser tests (tests/support/stack.py: our gateway, the web app under the project's gunicorn
config, and worker.py, on free loopback ports in a temporary DATA_DIR); and Debian's chromium via Playwright."""
import os
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.support.stack import ROOT, running_stack

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts"
# A page's step (a click answered, a change streamed) on a box busy with a whole test run (coverage on, under CI)
# can take past expect's default 5 s: wait up to 10 (a passing test waits no longer for it).
expect.set_options(timeout=10_000)


def pytest_collection_modifyitems(config, items):
    """Without chromium these tests skip, except under CI=true where a missing browser is a failure."""
    if Path(CHROMIUM).exists() or os.environ.get("CI") == "true":
        return
    skip = pytest.mark.skip(reason=f"{CHROMIUM} is not installed (run scripts/system-deps.sh)")
    for item in items:
        if Path(item.fspath).parent == Path(__file__).parent:
            item.add_marker(skip)


# Short leases and quick retries, so a page sees each state soon; two gateway workers and two worker threads.
SETTINGS = {"GATEWAY_WORKERS": 2, "UPLOADS_PER_MINUTE": 100, "LEASE_SECONDS": 10, "MAINTENANCE_SECONDS": 0.5,
            "WORKER_CONCURRENCY": 2, "RETRY_BASE_SECONDS": 0.5, "RETRY_JITTER_SECONDS": 0}


def browser_stack(data_dir, **settings):
    """The shared stack (tests/support/stack.py) with the browser tests' settings, in data_dir."""
    return running_stack(data_dir=data_dir, **{**SETTINGS, **settings})


SHARE_TTL_SECONDS = 120  # not the default 900, so that the share notice must read the answer's expires_at


# Package scope, not session: an idle stack's processes keep polling (with coverage on, a tenth of a core), so it
# stops once the browser tests are done rather than running on through the rest of the suite.
@pytest.fixture(scope="package")
def stack(tmp_path_factory):
    with browser_stack(tmp_path_factory.mktemp("stack"), SHARE_TTL_SECONDS=str(SHARE_TTL_SECONDS)) as running:
        yield running


@pytest.fixture(scope="package")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def let_in(context, stack, admin=False):
    """Sign the browser context in to stack as a new user (a session cookie, as /login would set); the user."""
    from tests.support.people import signed_in
    user, cookie = signed_in(stack.app(), admin=admin)
    context.add_cookies([{"name": "session", "value": cookie, "url": stack.web_url}])
    return user


@pytest.fixture
def fresh_page(chromium):
    """A fresh browser context, signed in nowhere, and its page."""
    context = chromium.new_context(accept_downloads=True, viewport={"width": 1360, "height": 900})
    context.set_default_timeout(15000)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def page(fresh_page, stack):
    """A fresh browser context signed in to the session's stack as a new user (so a fresh owner), and its page."""
    fresh_page.user = let_in(fresh_page.context, stack)
    return fresh_page


@pytest.fixture(scope="session")
def artifacts():
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
