"""GET /api/events (webapp/stream.py) and the changes it hears of (core/changes.py), against a live server:
headers, ping, delivery, resume, deletions from any process, owners, the poll and Redis."""
import json
import shutil
import socket
import subprocess
import threading
import time
from datetime import timedelta

import pytest
import requests
from sqlalchemy import create_engine, text

from core import operations
from tests.support import people
from tests.support.app import claim, pdf_bytes
from webapp import create_app
from core import changes
from webapp import stream as stream_module
from core.db import db
from core.clock import isoformat, parse_iso, utcnow
from core.jobs.model import Job


class Browser:
    """A requests session signed in as a new user, with its CSRF token, against the live server of app."""

    def __init__(self, base, app):
        self.base = base
        self.http = people.http_session(app, base)
        self.token = self.http.get(f"{base}/api/session").json()["csrf_token"]

    def upload(self, tag):
        response = self.http.post(f"{self.base}/api/upload", files={"file": (f"{tag}.pdf", pdf_bytes(tag))},
                                  headers={"X-CSRF-Token": self.token})
        assert response.status_code == 202, response.text
        return response.json()["jobs"][0]

    def delete(self, job_id):
        return self.http.delete(f"{self.base}/api/jobs/{job_id}", headers={"X-CSRF-Token": self.token})

    def events(self, query="", headers=None):
        return EventReader(self.http.get(f"{self.base}/api/events{query}", stream=True, timeout=10, headers=headers))


class EventReader:
    """Parse a text/event-stream response into (event, id, data) tuples and comments, with a deadline."""

    def __init__(self, response):
        self.response = response
        self.lines = response.iter_lines(decode_unicode=True)
        self.comments = []

    def next(self, timeout=5):
        deadline = time.monotonic() + timeout
        event, event_id, data = "message", None, []
        for line in self.lines:
            if line == "":
                if data:
                    return event, event_id, "\n".join(data)
                event, event_id = "message", None
            elif line.startswith(":"):
                self.comments.append(line[1:].strip())
            else:
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "event":
                    event = value
                elif field == "id":
                    event_id = value
                elif field == "data":
                    data.append(value)
            if time.monotonic() > deadline:
                break
        raise AssertionError("no event before the deadline")

    def until(self, predicate, timeout=5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            item = self.next(timeout=deadline - time.monotonic())
            if predicate(*item):
                return item
        raise AssertionError("the wanted event did not come")

    def close(self):
        self.response.close()


@pytest.fixture(autouse=True)
def stop_hubs(make_app, monkeypatch):
    """Stop every app's event hub after the test, so its threads do not outlive their database."""
    built = []
    original = changes.Hub.__init__

    def remember(self, app, changes_after):
        original(self, app, changes_after)
        built.append(self)

    monkeypatch.setattr(changes.Hub, "__init__", remember)
    yield
    for hub in built:
        hub.stop()


@pytest.fixture
def browser(live_server, app):
    return Browser(live_server, app)


@pytest.fixture
def fast_heartbeat(monkeypatch):
    monkeypatch.setattr(stream_module, "HEARTBEAT_SECONDS", 0.2)


@pytest.fixture
def fast_credentials(monkeypatch, fast_heartbeat):
    """Streams ask their credentials again at each (fast) heartbeat, as they do at the real one."""
    monkeypatch.setattr(stream_module, "CREDENTIALS_SECONDS", 0.2)


def job_event(job_id, status=None):
    def matches(event, _id, data):
        if event != "job":
            return False
        job = json.loads(data)
        return job["id"] == job_id and (status is None or job["status"] == status)
    return matches


def test_stream_headers_and_an_immediate_ping(browser):
    stream = browser.events()
    assert stream.response.headers["Content-Type"].startswith("text/event-stream")
    assert stream.response.headers["Cache-Control"] == "no-cache"
    assert stream.response.headers["X-Accel-Buffering"] == "no"
    first = next(stream.lines)
    assert first == ": ping"
    stream.close()


def test_heartbeat_comes_while_nothing_changes(browser, fast_heartbeat):
    stream = browser.events()
    deadline = time.monotonic() + 3
    while "heartbeat" not in stream.comments and time.monotonic() < deadline:
        line = next(stream.lines)
        if line.startswith(":"):
            stream.comments.append(line[1:].strip())
    assert "heartbeat" in stream.comments
    stream.close()


def test_a_change_in_this_process_is_sent_with_an_id(app, browser):
    stream = browser.events()
    job = browser.upload("one")
    event, event_id, data = stream.until(job_event(job["id"], "queued"))
    assert parse_iso(event_id) >= parse_iso(job["updated_at"])
    with app.app_context():
        assert claim(job["id"], "w1", 30, capacity=4)
    _, later_id, data = stream.until(job_event(job["id"], "processing"))
    assert json.loads(data)["progress"] == 10 and parse_iso(later_id) > parse_iso(event_id)
    stream.close()


def test_a_change_from_another_process_arrives_through_the_database_poll(app, browser):
    job = browser.upload("elsewhere")
    stream = browser.events()
    # Another process (the worker) writes the row; nothing in this process hears of it.
    engine = create_engine(app.config["SQLALCHEMY_DATABASE_URI"])
    with engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET status='complete', progress=100, updated_at=:now WHERE id=:id"),
                     {"now": utcnow().strftime("%Y-%m-%d %H:%M:%S.%f"), "id": job["id"]})
    engine.dispose()
    started = time.monotonic()
    stream.until(job_event(job["id"], "complete"), timeout=3)
    assert time.monotonic() - started < 2
    stream.close()


@pytest.mark.parametrize("how", ["header", "query"])
def test_reconnect_with_the_last_id_misses_nothing(app, browser, how):
    first = browser.upload("before")
    stream = browser.events()
    _, last_id, _ = stream.until(job_event(first["id"]))
    stream.close()
    # While disconnected: a new job and a change to the old one.
    second = browser.upload("while-away")
    with app.app_context():
        assert claim(first["id"], "w1", 30, capacity=4)
    if how == "header":
        resumed = browser.events(headers={"Last-Event-ID": last_id})
    else:
        resumed = browser.events(f"?last_id={last_id}")
    seen = {}
    while len(seen) < 2 or seen.get(first["id"]) != "processing":
        event, _, data = resumed.next()
        if event == "job":
            job = json.loads(data)
            seen[job["id"]] = job["status"]
    assert seen == {first["id"]: "processing", second["id"]: "queued"}
    resumed.close()


def test_dashboard_streams_rows_and_totals_out_of_band(browser):
    stream = browser.events("?html=1")
    job = browser.upload("row")
    event, event_id, data = stream.until(lambda event, _id, data: event == "row")
    # A job made after the stream's cursor goes to the top of the table.
    assert data.startswith(f'<template><tbody hx-swap-oob="afterbegin:#job-rows"><tr id="job-{job["id"]}" ')
    assert 'data-status="queued"' in data and data.endswith("</tbody></template>") and event_id
    event, event_id, data = stream.next()
    assert event == "totals" and data.startswith('<div id="totals-box" hx-swap-oob="true">') and event_id
    assert "<dt>Active</dt><dd>1</dd>" in data
    stream.close()


def test_a_dashboard_row_goes_on_top_only_for_a_job_made_after_the_cursor(app, client):
    job = client.upload((pdf_bytes("placed"), "placed.pdf")).get_json()["jobs"][0]
    made = parse_iso(job["created_at"])
    with app.test_request_context():
        assert claim(job["id"], "w1", 30, capacity=4)
        owner = db.session.get(Job, job["id"]).owner
        view = {"owner": owner, "owner_column": False, "status": "", "statuses": (), "q": "", "query": {}}  # my own queue
        [(_, _, newer)], _ = stream_module.read_changes(owner, made - timedelta(seconds=1), view)
        [(_, _, known)], _ = stream_module.read_changes(owner, made, view)
    assert newer.startswith(f'event: row\ndata: <template><tbody hx-swap-oob="afterbegin:#job-rows"><tr id="job-{job["id"]}" ')
    assert known.startswith(f'event: row\ndata: <template><tr id="job-{job["id"]}" hx-swap-oob="true" ')


@pytest.mark.parametrize("query, body", [("?html=1", '<template><tr id="job-{}" hx-swap-oob="delete"></tr></template>'),
                                         ("", "{}")])
def test_a_deleted_job_is_removed_from_other_tabs(browser, query, body):
    job = browser.upload("doomed")
    other_tab = browser.events(query)
    assert browser.delete(job["id"]).status_code == 204
    event, event_id, data = other_tab.until(lambda event, _id, data: event == "removed")
    assert data == body.format(job["id"]) and event_id
    other_tab.close()


def another_process(app):
    """An app on the same database with its own event hub, as the worker or the admin CLI would be."""
    return create_app({"DATA_DIR": app.config["DATA_DIR"], "TESTING": True, "SECRET_KEY": "test-secret-key-0123456789abcdefghijklmnop",
                       "HUEY_MEMORY": True})


def test_a_job_deleted_from_the_cli_leaves_every_open_tab(app, browser):
    job = browser.upload("cli-doomed")
    tabs = [browser.events("?html=1"), browser.events()]
    for tab in tabs:
        assert next(tab.lines) == ": ping"
    cli = another_process(app)
    result = cli.test_cli_runner().invoke(args=["jobs", "delete", job["id"], "--yes"])
    assert result.exit_code == 0, result.output
    bodies = [f'<template><tr id="job-{job["id"]}" hx-swap-oob="delete"></tr></template>', job["id"]]
    for tab, body in zip(tabs, bodies):
        event, event_id, data = tab.until(lambda event, _id, data: event == "removed", timeout=3)
        assert data == body and event_id
        tab.close()
    with cli.app_context():
        db.engine.dispose()


def test_a_removal_missed_while_away_is_sent_on_reconnect(app, browser):
    second = browser.upload("goes-while-away")
    tab = browser.events()
    _, last_id, _ = tab.until(job_event(second["id"]))
    tab.close()
    assert browser.delete(second["id"]).status_code == 204
    resumed = browser.events(headers={"Last-Event-ID": last_id})
    event, _, data = resumed.until(lambda event, _id, data: event == "removed")
    assert data == second["id"]
    resumed.close()


def test_retention_reaches_an_open_dashboard(app, browser):
    job = browser.upload("retained")
    with app.app_context():
        claim(job["id"], "w1", 30, capacity=4)
        Job.complete(job["id"], "w1", "results/retained.xml")
    tab = browser.events("?html=1")
    download = f'href="/api/jobs/{job["id"]}/download"'
    tab.until(lambda event, _id, data: event == "row" and download in data)
    worker = another_process(app)
    with worker.app_context():
        later = utcnow() + timedelta(days=worker.config["RETENTION_XML_DAYS"] + 1)
        assert operations.apply_retention(now=later)["xml"] == 1
        db.engine.dispose()
    # The row comes again without its download link once the XML is gone (a replay of the complete row, sent
    # again by the stream's overlap before retention ran, may come first: it is not the change awaited).
    event, _, data = tab.until(lambda event, _id, data: event == "row" and f'job-{job["id"]}' in data
                               and download not in data, timeout=3)
    assert "retained.pdf" in data
    tab.close()


def test_other_owners_never_see_my_jobs(live_server, app, browser, fast_heartbeat):
    stranger = Browser(live_server, app).events()
    mine = browser.events()
    job = browser.upload("private")
    mine.until(job_event(job["id"]))
    browser.delete(job["id"])
    with pytest.raises((AssertionError, requests.exceptions.ConnectionError)):
        stranger.next(timeout=1)
    stranger.close()
    mine.close()


def test_one_poll_thread_serves_many_streams_and_streams_hold_no_connection(app, browser, fast_heartbeat,
                                                                              monkeypatch):
    idle = set()  # the streams that have read their first changes and sat down to wait
    real_wait = changes.Listener.wait
    monkeypatch.setattr(changes.Listener, "wait",
                        lambda subscription, timeout: idle.add(subscription) or real_wait(subscription, timeout))
    streams = [browser.events() for _ in range(5)]
    for stream in streams:
        assert next(stream.lines) == ": ping"
    deadline = time.monotonic() + 3
    while len(idle) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(idle) == 5
    assert [t.name for t in changes.hub(app).threads] == ["pdfqueue-events-poll"]
    with app.app_context():
        samples = []
        for _ in range(20):
            samples.append(db.engine.pool.checkedout())
            time.sleep(0.01)
    assert max(samples) <= 1  # at most the hub's own poll, never one per idle stream
    assert changes.hub(app).listener_count() == 5
    for stream in streams:
        stream.close()
    deadline = time.monotonic() + 3
    while changes.hub(app).listener_count() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert changes.hub(app).listener_count() == 0  # cleaned up once the heartbeat finds the client gone


def test_sse_message_format():
    assert stream_module.sse("row", "<tr>\n</tr>", "2024-01-01T00:00:00.000001Z") == \
        "id: 2024-01-01T00:00:00.000001Z\nevent: row\ndata: <tr>\ndata: </tr>\n\n"
    assert stream_module.sse(comment="ping") == ": ping\n\n"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def redis_url(tmp_path):
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (scripts/system-deps.sh installs it)")
    port = free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait()


def test_with_redis_a_change_in_another_process_is_published(make_app, redis_url, tmp_path, monkeypatch):
    from werkzeug.serving import make_server

    monkeypatch.setattr(changes, "POLL_WITH_REDIS_SECONDS", 60)  # only pub/sub can deliver in time
    web = make_app(REDIS_URL=redis_url, HUEY_MEMORY=True)
    server = make_server("127.0.0.1", 0, web, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser = Browser(f"http://127.0.0.1:{server.server_port}", web)
        job = browser.upload("published")
        stream = browser.events()
        stream.until(job_event(job["id"], "queued"))
        worker = create_app({"DATA_DIR": str(tmp_path), "TESTING": True, "SECRET_KEY": "test-secret-key-0123456789abcdefghijklmnop",
                             "REDIS_URL": redis_url, "HUEY_MEMORY": True})
        with worker.app_context():
            assert claim(job["id"], "w1", 30, capacity=4)
            db.engine.dispose()
        stream.until(job_event(job["id"], "processing"), timeout=2)
        stream.close()
    finally:
        server.shutdown()


def test_isoformat_ids_round_trip():
    job_time = parse_iso("2024-05-01T10:00:00.123456Z")
    assert parse_iso(isoformat(job_time)) == job_time


@pytest.fixture
def serve():
    """Run an app on a real threaded server on loopback; yield a function returning its base URL."""
    import threading
    from werkzeug.serving import make_server
    servers = []

    def start(app):
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()


def _open_stream(app, base, session=None):
    session = session or people.http_session(app, base)
    response = session.get(f"{base}/api/events", stream=True, timeout=10)
    return session, response


def test_event_streams_are_capped_per_user_and_per_address(make_app, serve):
    app = make_app(STREAMS_PER_USER=2, STREAMS_PER_ADDRESS=3, STREAM_MAX_SECONDS=2)
    base = serve(app)
    first, opened = _open_stream(app, base)
    mine = [opened, _open_stream(app, base, first)[1]]
    assert [r.status_code for r in mine] == [200, 200]
    over = _open_stream(app, base, first)[1]
    assert over.status_code == 429 and over.json()["error"]["code"] == "RATE_LIMITED"
    second, theirs = _open_stream(app, base)  # another user on the same address: the third of three
    assert theirs.status_code == 200
    assert _open_stream(app, base, second)[1].status_code == 429  # the address is full
    for response in (*mine, theirs):  # the streams end at their lifetime, and free their places
        assert response.raw.read().startswith(b": ping")
        response.close()
    time.sleep(0.2)
    assert _open_stream(app, base, first)[1].status_code == 200


def test_an_event_stream_ends_after_its_lifetime_and_says_when_to_come_back(make_app, serve):
    app = make_app(STREAM_MAX_SECONDS=0.5)
    base = serve(app)
    _, response = _open_stream(app, base)
    body = response.raw.read().decode()  # returns: the server ended the stream
    assert body.startswith(": ping") and "retry: 3000" in body


# -- a stream ends with its credentials ----------------------------------------------------------


def ends_within(response, seconds):
    """True if the server ends the stream within seconds (heartbeats keep coming until then)."""
    if not hasattr(response, "lines"):
        response.lines = response.iter_lines()  # one reader for the stream's life: each would buffer its own
    deadline = time.monotonic() + seconds
    for _ in response.lines:
        if time.monotonic() > deadline:
            return False
    return True


@pytest.mark.parametrize("how", ["signed out", "disabled", "token revoked"])
def test_an_open_stream_ends_within_a_heartbeat_of_its_credentials_ending(app, live_server, fast_credentials, how):
    from core.accounts import ApiToken, User
    if how == "token revoked":
        user, secret = people.with_token(app)
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {secret}"
    else:
        http = Browser(live_server, app).http
        user = http.user
    stream = http.get(f"{live_server}/api/events", stream=True, timeout=10)
    assert stream.status_code == 200
    other = Browser(live_server, app)  # someone else's stream, which goes on
    theirs = other.http.get(f"{live_server}/api/events", stream=True, timeout=10)
    assert not ends_within(stream, 0.5)
    if how == "signed out":
        csrf = http.get(f"{live_server}/api/session").json()["csrf_token"]
        assert http.post(f"{live_server}/logout", headers={"X-CSRF-Token": csrf}, allow_redirects=False).status_code == 303
    with app.app_context():
        account = db.session.get(User, user.id)
        if how == "disabled":
            account.change(disabled=True)
        elif how == "token revoked":
            ApiToken.revoke(account, ApiToken.of(account)[0].id)
    assert ends_within(stream, 2)
    assert not ends_within(theirs, 0.5)
    theirs.close()


def test_a_demoted_admins_stream_of_everyones_jobs_ends_but_their_own_goes_on(app, live_server, fast_credentials):
    from core.accounts import User
    admin = people.http_session(app, live_server, admin=True)
    everyone = admin.get(f"{live_server}/api/events?owner=all", stream=True, timeout=10)
    own = admin.get(f"{live_server}/api/events", stream=True, timeout=10)
    assert not ends_within(everyone, 0.5)
    with app.app_context():
        db.session.get(User, admin.user.id).change(admin=False)
    assert ends_within(everyone, 2)
    assert not ends_within(own, 0.5)
    own.close()
    # Coming back, it sees its own jobs only.
    again = admin.get(f"{live_server}/api/events?owner=all&html=1", stream=True, timeout=10)
    assert again.status_code == 200
    again.close()
