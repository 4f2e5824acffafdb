"""Hardening (issue 15): secrets, share links, request bodies before checks, limits, display names, metrics."""
import io
import json
import multiprocessing
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from itsdangerous import URLSafeSerializer

from tests.conftest import ApiClient, pdf_bytes, run, upload
from tests import people
from webapp import create_app

ROOT = Path(__file__).resolve().parent.parent
KEY = "test-secret-key-0123456789abcdefghijklmnop"
OLD_KEY = "an-older-secret-key-0123456789abcdefghijkl"


# -- 1. secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["change-me", "secret", "CHANGE-ME", "short-but-not-a-placeholder"])
def test_a_placeholder_or_short_secret_key_refuses_to_start(tmp_path, key):
    with pytest.raises(SystemExit) as refused:
        create_app({"DATA_DIR": str(tmp_path), "TESTING": True, "SECRET_KEY": key, "HUEY_MEMORY": True})
    assert "SECRET_KEY" in str(refused.value) and "token_hex" in str(refused.value)


def test_a_short_fallback_key_refuses_to_start(tmp_path):
    with pytest.raises(SystemExit, match="SECRET_KEY_FALLBACKS"):
        create_app({"DATA_DIR": str(tmp_path), "TESTING": True, "SECRET_KEY": KEY, "SECRET_KEY_FALLBACKS": ["x"],
                    "HUEY_MEMORY": True})


def test_the_shipped_env_file_sets_no_secret_and_the_readme_puts_none_on_a_command_line():
    example = (ROOT / "deploy" / "pdfqueue.env.example").read_text()
    assert not re.search(r"^\s*SECRET_KEY\s*=\s*\S", example, re.M)
    readme = (ROOT / "README.md").read_text()
    assert "xargs" not in readme and "set -a" in readme


def _read_key(instance_dir, start, queue):
    from core.keys import secret_key
    start.wait()
    try:
        queue.put(secret_key(instance_dir))
    except BaseException as exc:  # noqa: BLE001 - the parent reports what went wrong
        queue.put(repr(exc))


def test_processes_racing_at_first_boot_read_one_key(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for attempt in range(15):
        instance = tmp_path / f"instance-{attempt}"
        instance.mkdir()
        start, queue = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_read_key, args=(str(instance), start, queue)) for _ in range(4)]
        for proc in procs:
            proc.start()
        start.set()
        keys = [queue.get(timeout=30) for _ in procs]
        for proc in procs:
            proc.join()
        assert len(set(keys)) == 1 and len(keys[0]) == 64, keys
        assert (instance / "secret_key").stat().st_mode & 0o777 == 0o600
        assert [p.name for p in instance.iterdir()] == ["secret_key"]  # no temp file left behind


def test_rotation_keeps_old_sessions_and_share_links_working(make_app, fake):
    old = make_app(SECRET_KEY=OLD_KEY, GATEWAY_URL=fake.url)
    api = ApiClient(old.test_client())
    job = upload(api)
    run(old, job["id"])
    link = api.post(f"/api/jobs/{job['id']}/share").get_json()["url"]
    cookie = api.raw.get_cookie(old.config["SESSION_COOKIE_NAME"]).value
    rotated = make_app(SECRET_KEY=KEY, SECRET_KEY_FALLBACKS=[OLD_KEY], GATEWAY_URL=fake.url)
    browser = rotated.test_client()
    browser.set_cookie(rotated.config["SESSION_COOKIE_NAME"], cookie)
    assert browser.get("/api/session").get_json()["user"]["id"] == api.user.id
    assert rotated.test_client().get(link).status_code == 200
    dropped = make_app(SECRET_KEY=KEY, GATEWAY_URL=fake.url)  # the old key retired: its links are dead
    assert dropped.test_client().get(link).status_code == 404


# -- 2. share links -----------------------------------------------------------------------------


@pytest.fixture
def shared_job(worker_app, api):
    job = upload(api, "shared")
    run(worker_app, job["id"])
    return job


def _claims(url):
    return URLSafeSerializer("unused").load_payload(url.rsplit("/", 1)[1].split(".")[0].encode())


def test_a_share_link_carries_the_job_and_its_nonce_not_the_owner(api, shared_job):
    url = api.post(f"/api/jobs/{shared_job['id']}/share").get_json()["url"]
    claims = _claims(url)
    assert set(claims) == {"j", "n", "e"} and claims["j"] == shared_job["id"]
    assert api.user.id not in json.dumps(claims)


def test_deleting_the_share_revokes_every_link_of_the_job(worker_app, api, shared_job):
    links = [api.post(f"/api/jobs/{shared_job['id']}/share").get_json()["url"] for _ in range(2)]
    stranger = worker_app.test_client()
    assert [stranger.get(link).status_code for link in links] == [200, 200]
    assert api.delete(f"/api/jobs/{shared_job['id']}/share").status_code == 204
    assert [stranger.get(link).status_code for link in links] == [404, 404]
    fresh = api.post(f"/api/jobs/{shared_job['id']}/share").get_json()["url"]
    assert stranger.get(fresh).status_code == 200


def test_only_the_owner_revokes_a_jobs_links(worker_app, api, shared_job):
    other = ApiClient(worker_app.test_client())
    assert other.delete(f"/api/jobs/{shared_job['id']}/share").status_code == 404


def test_the_expiry_is_fixed_in_the_link_when_it_is_made(worker_app, api, shared_job):
    worker_app.config["SHARE_TTL_SECONDS"] = 1
    link = api.post(f"/api/jobs/{shared_job['id']}/share").get_json()
    worker_app.config["SHARE_TTL_SECONDS"] = 3600  # a longer TTL set later does not lengthen a link given out
    time.sleep(1.2)
    expired = worker_app.test_client().get(link["url"])
    assert expired.status_code == 410 and expired.get_json()["error"]["code"] == "EXPIRED"


def test_share_tokens_are_redacted_from_the_access_log():
    code = """if True:
        import datetime, runpy
        from types import SimpleNamespace
        from gunicorn.config import Config
        from gunicorn.glogging import Logger
        cfg = Config()
        cfg.set("logconfig_dict", runpy.run_path("gunicorn.conf.py")["logconfig_dict"])
        cfg.set("accesslog", "-")
        response = SimpleNamespace(status="200 OK", response_length=10, headers=[], sent=10)
        request = SimpleNamespace(headers=[], method="GET", path="/d/abc.DEF-g_h", query="", uri="/d/abc.DEF-g_h",
                                  version=(1, 1))
        environ = {"REQUEST_METHOD": "GET", "RAW_URI": "/d/abc.DEF-g_h?x=1", "PATH_INFO": "/d/abc.DEF-g_h",
                   "QUERY_STRING": "x=1", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1"}
        Logger(cfg).access(response, request, environ, datetime.timedelta(seconds=0.1))
    """
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert "abc.DEF" not in done.stdout
    assert (line["message"], line["path"], line["query"]) == ("request", "/d/[redacted]", "x=1")


# -- 3. request bodies before checks ------------------------------------------------------------


@pytest.fixture
def incoming(monkeypatch):
    """Every temp file a request opened for a file part, in order."""
    from webapp import uploads
    opened = []

    class Spy(uploads.IncomingFile):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            opened.append(self)

    monkeypatch.setattr(uploads, "IncomingFile", Spy)
    return opened


def test_a_multipart_post_without_the_csrf_header_is_refused_before_its_body_is_read(app, client, incoming):
    response = client.raw.post("/api/upload", data={"csrf_token": client.token,
                                                    "file": (io.BytesIO(pdf_bytes()), "a.pdf")},
                               content_type="multipart/form-data")
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "CSRF"
    assert incoming == []


def test_the_x_csrftoken_header_is_accepted_too(client):
    response = client.raw.post("/api/upload", data={"file": (io.BytesIO(pdf_bytes()), "a.pdf")},
                               headers={"X-CSRFToken": client.token}, content_type="multipart/form-data")
    assert response.status_code == 202


def test_a_file_sent_to_a_route_that_takes_none_is_never_written(app, client, incoming):
    response = client.post("/tokens", data={"name": "x", "file": (io.BytesIO(pdf_bytes()), "a.pdf")},
                           content_type="multipart/form-data", headers={"Accept": "application/json"})
    assert response.status_code == 400 and "takes no files" in response.get_data(as_text=True)
    assert incoming == []


def test_a_form_with_more_parts_than_a_minutes_files_is_refused(make_app):
    app = make_app(UPLOADS_PER_MINUTE=3)
    client = ApiClient(app.test_client())
    assert app.config["MAX_FORM_PARTS"] == 8
    data = {"file": [(io.BytesIO(pdf_bytes(str(n))), f"{n}.pdf") for n in range(3)],
            **{f"field{n}": "x" for n in range(6)}}
    response = client.post("/api/upload", data=data, content_type="multipart/form-data")
    assert response.status_code == 413


def test_a_part_is_closed_before_the_next_one_opens(client, monkeypatch):
    from webapp import uploads
    open_at_start = []

    class Spy(uploads.IncomingFile):
        made = []

        def __init__(self, *args, **kwargs):
            open_at_start.append(sum(not part._file.closed for part in Spy.made))
            super().__init__(*args, **kwargs)
            Spy.made.append(self)

    monkeypatch.setattr(uploads, "IncomingFile", Spy)
    assert client.upload(*[(pdf_bytes(str(n)), f"{n}.pdf") for n in range(4)]).status_code == 202
    assert open_at_start == [0, 0, 0, 0]


def _trickle(port, headers, stop_after):
    """Send a request whose body never finishes, a byte a second; return what the server answered (or None)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(("POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  f"{headers}Content-Length: 1000000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; "
                  "filename=\"a.pdf\"\r\n\r\n%PDF-1.4\n").encode())
    sock.settimeout(1)
    answer = b""
    for _ in range(stop_after):
        try:
            sock.sendall(b"0")
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        except socket.timeout:
            continue
        except OSError:
            break
    sock.close()
    return answer


def test_a_trickled_body_is_cut_off_with_408():
    from tests.stack import owner_session, running_stack
    with running_stack(gateway_url="http://127.0.0.1:9", workers=0, BODY_TIMEOUT_SECONDS=1) as stack:
        token = owner_session(stack).headers["Authorization"]
        port = int(stack.web_url.rsplit(":", 1)[1])
        answer = _trickle(port, f"Authorization: {token}\r\n", stop_after=30)
        assert answer.startswith(b"HTTP/1.1 408")
        assert not list(Path(stack.data_dir, "uploads").glob(".incoming-*"))
        refused = _trickle(port, "", stop_after=30)  # refused unread (401): not drained for keep-alive either
        assert refused.startswith(b"HTTP/1.1 401")


# -- 4. limits ----------------------------------------------------------------------------------


def test_every_file_part_is_charged_whatever_its_name(make_app):
    client = ApiClient(make_app(UPLOADS_PER_MINUTE=3).test_client())
    data = {"file": (io.BytesIO(pdf_bytes("a")), "a.pdf"),
            **{f"other{n}": (io.BytesIO(pdf_bytes(str(n))), f"{n}.pdf") for n in range(3)}}
    response = client.post("/api/upload", data=data, content_type="multipart/form-data")
    assert response.status_code == 429


@pytest.mark.parametrize("method, path", [("post", "/api/jobs/{id}/retry"), ("post", "/api/jobs/{id}/share"),
                                          ("delete", "/api/jobs/{id}/share"), ("post", "/api/tokens")])
def test_actions_are_rate_limited(make_app, fake, method, path):
    app = make_app(GATEWAY_URL=fake.url, ACTIONS_PER_MINUTE=2)
    client = ApiClient(app.test_client())
    job = upload(client)
    statuses = [getattr(client, method)(path.format(id=job["id"]), json={"name": "t"}).status_code for _ in range(3)]
    assert statuses[2] == 429 and 429 not in statuses[:2]


def test_ipv6_clients_are_keyed_by_their_64(make_app):
    app = make_app(UPLOADS_PER_MINUTE=1)  # the address limit: 6 files a minute
    statuses = []
    for n in range(8):
        flask_client = app.test_client()
        flask_client.environ_base["REMOTE_ADDR"] = f"2001:db8:1:2::{n + 1:x}"
        statuses.append(ApiClient(flask_client).upload((pdf_bytes(str(n)), f"{n}.pdf")).status_code)
    assert statuses[:6] == [202] * 6 and statuses[6:] == [429, 429]


def test_client_address_keys():
    from flask import Flask
    from webapp.limits import client_address
    app = Flask(__name__)
    for raw, key in [("192.0.2.7", "192.0.2.7"), ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
                     ("::ffff:192.0.2.7", "192.0.2.7")]:
        with app.test_request_context(environ_base={"REMOTE_ADDR": raw}):
            assert client_address() == key


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


def test_a_since_far_in_the_past_is_bounded_in_sql(app, client):
    from sqlalchemy import event
    from core.clock import utcnow
    from core.db import db
    from webapp.stream import RESUME_MAX, resume_point
    before = utcnow()
    with app.test_request_context("/api/events?last_id=1970-01-01T00:00:00Z"):
        assert resume_point() >= before - RESUME_MAX
    statements = []
    with app.app_context():
        engine = db.engine
        listener = lambda *args: statements.append(args[2])  # noqa: E731
        event.listen(engine, "before_cursor_execute", listener)
        try:
            assert client.get("/queue/rows?since=1970-01-01T00:00:00Z").status_code in (200, 286)
        finally:
            event.remove(engine, "before_cursor_execute", listener)
    changed = [s for s in statements if "FROM jobs" in s and "ORDER BY jobs.updated_at" in s]  # Job.changed_since
    removals = [s for s in statements if "FROM job_removals" in s]
    assert changed and all("LIMIT" in s for s in changed) and removals and all("LIMIT" in s for s in removals)


# -- 5. poison files ----------------------------------------------------------------------------


def test_an_over_limits_answer_fails_the_job_after_one_call(worker_app, api, fake):
    from tests.conftest import load
    fake.status, fake.error_code = 503, "OVER_LIMITS"
    job = upload(api, "bomb")
    for _ in range(3):  # however often the worker comes back to it
        run(worker_app, job["id"])
    stored = load(worker_app, job["id"])
    assert (stored.status, stored.error_code, stored.dead_letter) == ("failed", "GW_OVER_LIMITS", False)
    assert "will not be retried" in stored.error and "fake gateway says 503" in stored.error
    assert fake.total_calls() == 1 and fake.health_checks == 0  # no breaker bookkeeping: the gateway is up
    with worker_app.app_context():
        from worker import breaker
        assert breaker.state() == "closed"


def test_the_gateway_answers_healthz_while_its_only_worker_parses_a_bomb():
    import threading
    import requests
    from gateway.testing import running_gateway
    from tests.invoicegen import make_flate_bomb_pdf
    bomb = make_flate_bomb_pdf(gib=4)
    # Memory enough that the bomb runs until its wall-time cap, which is long.
    env = {"GATEWAY_WORKERS": "1", "GATEWAY_PARSE_MEMORY_MB": "4096", "GATEWAY_PARSE_CPU_S": "4",
           "GATEWAY_PARSE_TIMEOUT_S": "4"}
    with running_gateway(env) as url:
        answers = []
        parsing = threading.Thread(target=lambda: answers.append(requests.post(
            f"{url}/process", files={"file": ("a.pdf", bomb, "application/pdf")},
            data={"mapping": "pt_simon_invoice_v1"}, timeout=60)))
        parsing.start()
        time.sleep(1)  # the bomb is in its child by now
        health = requests.get(f"{url}/healthz", timeout=30)
        assert health.status_code == 200 and parsing.is_alive()  # answered while the parse still ran
        parsing.join()
    assert answers[0].status_code == 503 and answers[0].json()["error"]["code"] == "OVER_LIMITS"


# -- 6. the gateway client caps error bodies ----------------------------------------------------


def test_the_gateway_clients_error_answer_is_read_only_so_far():
    import requests
    from worker import gateway_client

    class Endless(io.RawIOBase):
        read_so_far = 0

        def readable(self):
            return True

        def readinto(self, buffer):
            Endless.read_so_far += len(buffer)
            buffer[:] = b"x" * len(buffer)
            return len(buffer)

    response = requests.Response()
    response.status_code, response.raw = 503, io.BufferedReader(Endless())
    code, message = gateway_client._error(response)
    assert (code, message) == ("", "the gateway answered 503")
    assert Endless.read_so_far <= gateway_client.ERROR_BODY_BYTES + 2 * gateway_client.CHUNK


# -- 9. display names ---------------------------------------------------------------------------


@pytest.mark.parametrize("given, shown", [
    ("invoice\u202efdp.exe", "invoicefdp.exe"),  # RIGHT-TO-LEFT OVERRIDE: would read "invoiceexe.pdf"
    ("fat\u200bura\u200d.pdf", "fatura.pdf"),  # zero-width space and joiner
    ("\ufeff\u2066a\u2069.pdf", "a.pdf"),  # byte-order mark, isolates
    ("\u200b\u200e", "upload.pdf"),  # nothing visible left
])
def test_format_characters_are_stripped_from_shown_and_download_names(worker_app, api, given, shown):
    response = api.upload((pdf_bytes(given), given))
    job = response.get_json()["jobs"][0]
    assert job["filename"] == shown
    run(worker_app, job["id"])
    disposition = api.get(f"/api/jobs/{job['id']}/download").headers["Content-Disposition"]
    assert not any(c in disposition for c in ("\u202e", "\u200b", "%E2%80%AE", "%E2%80%8B", "%E2%80%8D"))


def test_the_migration_strips_format_characters_from_names_kept_before(tmp_path):
    from flask_migrate import downgrade, upgrade
    from sqlalchemy import text
    from core.db import db
    app = create_app({"DATA_DIR": str(tmp_path), "TESTING": True, "SECRET_KEY": KEY, "HUEY_MEMORY": True})
    with app.app_context():
        upgrade(directory=app.config["MIGRATIONS_DIR"], revision="0005")
        db.session.execute(text(
            "INSERT INTO jobs (id, owner, filename, mapping, bytes, sha256, status, progress, attempts, correlation_id,"
            " created_at, updated_at, dead_letter) VALUES ('j', 'o', :name, 'm', 1, 's', 'complete', 100, 1, 'c',"
            " '2026-01-01', '2026-01-01', 0)"), {"name": "a\u202egpj.pdf"})
        db.session.commit()
        upgrade(directory=app.config["MIGRATIONS_DIR"])
        assert db.session.execute(text("SELECT filename, share_nonce FROM jobs")).one() == ("agpj.pdf", None)
        db.session.remove()
        downgrade(directory=app.config["MIGRATIONS_DIR"], revision="0005")
        assert "share_nonce" not in {row[1] for row in db.session.execute(text("PRAGMA table_info(jobs)"))}
        db.session.remove()
        db.engine.dispose()


# -- 10. /metrics and /api/healthz --------------------------------------------------------------


def test_metrics_answer_only_with_the_metrics_token(make_app):
    app = make_app(METRICS_TOKEN="the-metrics-token")
    anonymous = app.test_client()
    assert anonymous.get("/metrics").status_code == 401
    assert anonymous.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert anonymous.get("/metrics", headers={"Authorization": "Bearer the-metrics-token"}).status_code == 200
    signed_in = ApiClient(app.test_client())  # a session is not Prometheus
    assert signed_in.get("/metrics").status_code == 401


def test_without_token_or_port_metrics_are_off(make_app):
    assert make_app(METRICS_TOKEN="").test_client().get("/metrics").status_code == 404


def test_the_metrics_port_serves_metrics_and_nothing_else(make_app, serve):
    import requests
    from gateway.testing import free_port
    port = free_port()
    app = make_app(METRICS_TOKEN="", METRICS_PORT=port)
    from werkzeug.serving import make_server
    import threading
    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    main = serve(app)  # the same app on another port: the public one
    try:
        assert requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200
        assert requests.get(f"http://127.0.0.1:{port}/api/healthz", timeout=5).status_code == 404
        assert requests.get(f"http://127.0.0.1:{port}/login", timeout=5).status_code == 404
        assert requests.get(f"{main}/metrics", timeout=5, headers={"Host": f"127.0.0.1:{port}"}).status_code == 404
    finally:
        server.shutdown()


def test_the_web_gunicorn_binds_the_metrics_port_when_asked():
    code = "import runpy; print(runpy.run_path('gunicorn.conf.py')['bind'])"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PORT": "8000", "METRICS_PORT": "9108"})
    assert done.stdout.strip() == "['127.0.0.1:8000', '127.0.0.1:9108']"


def test_public_health_callers_see_only_the_status(app, client):
    public = app.test_client().get("/api/healthz")
    assert public.get_json() == {"status": "ok"}
    assert set(client.get("/api/healthz").get_json()) > {"status", "db", "gateway", "worker"}  # signed in
    monitor = app.test_client().get("/api/healthz", headers={"Authorization": "Bearer test-metrics-token"})
    assert "breaker" in monitor.get_json()


# -- 7. migrations race -------------------------------------------------------------------------


def _upgrade_together(data_dir, count=2):
    import os
    env = {**os.environ, "DATA_DIR": str(data_dir), "SECRET_KEY": KEY, "LOG_LEVEL": "WARNING"}
    env.pop("DATABASE_URL", None)
    procs = [subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(count)]
    return [(proc.wait(timeout=120), proc.stdout.read().decode()[-600:]) for proc in procs]


def test_upgrades_started_together_on_a_fresh_data_dir_all_succeed(tmp_path):
    for attempt in range(2):  # before the lock, one run of two upgrades in two failed with "database is locked"
        results = _upgrade_together(tmp_path / f"data-{attempt}", count=3)
        assert [code for code, _ in results] == [0, 0, 0], results
    assert (tmp_path / "data-0" / "instance" / "pdfqueue.db.migrate-lock").exists()


# -- after the merge with main: bulk work and the archive ---------------------------------------


def test_bulk_is_limited_per_address_too_ipv6_by_its_64(make_app):
    app = make_app()
    statuses = []
    for person in range(5):  # each under the per-user 30 a minute; together over the address's 120
        flask_client = app.test_client()
        flask_client.environ_base["REMOTE_ADDR"] = f"2001:db8:7:7::{person + 1:x}"
        client = ApiClient(flask_client)
        statuses += [client.post("/api/jobs/bulk", json={"action": "retry", "ids": ["nope"]}).status_code
                     for _ in range(25)]
    assert 429 not in statuses[:120] and set(statuses[120:]) == {429}


def test_archive_entry_names_lose_format_characters():
    from webapp import bulk
    assert bulk.entry_name("fatura\u202efdp.pdf", set()) == "faturafdp.xml"
