"""Accounts: sign-in and out, sessions that really end, tokens, one-time links, admins, limits, the modes."""
import io
import re
from pathlib import Path

import pytest

from core import operations
from tests.support import people
from tests.support.app import ApiClient, pdf_bytes
from core.accounts import ApiToken, User, UserSession, hasher
from core.db import db
from core.jobs.model import Job

PASSWORD = "correct horse battery"


def csrf_of(client, path="/login"):
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).get_data(as_text=True)).group(1)


def sign_in(client, email, password=PASSWORD, next_path=None):
    data = {"email": email, "password": password, "csrf_token": csrf_of(client)}
    if next_path is not None:
        data["next"] = next_path
    return client.post("/login", data=data)


@pytest.fixture
def member(app):
    with app.app_context():
        return people.snapshot(User.create("member@example.com", PASSWORD))


def stored_uploads(app):
    return sorted(p.name for p in Path(app.config["UPLOAD_DIR"]).iterdir())


# -- without credentials ------------------------------------------------------------------------


@pytest.mark.parametrize("method, path", [
    ("GET", "/api/session"), ("GET", "/api/jobs"), ("GET", "/api/jobs/x"), ("GET", "/api/jobs/x/download"),
    ("POST", "/api/upload"), ("POST", "/api/jobs/x/retry"), ("POST", "/api/jobs/x/share"), ("DELETE", "/api/jobs/x"),
    ("GET", "/api/events"), ("GET", "/api/tokens"), ("POST", "/api/tokens"), ("DELETE", "/api/tokens/x"),
])
def test_every_api_route_without_credentials_is_401_json_never_a_redirect(app, method, path):
    response = app.test_client().open(path, method=method)
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "UNAUTHENTICATED"


@pytest.mark.parametrize("path", ["/", "/queue", "/review/x", "/tokens", "/admin/users"])
def test_pages_without_a_session_send_to_the_sign_in_page(app, path):
    response = app.test_client().get(path)
    assert response.status_code == 302 and response.headers["Location"] == f"/login?next={path}"


METRICS = {"Authorization": "Bearer test-metrics-token"}


def test_health_metrics_and_share_links_need_no_session(app, client):
    anonymous = app.test_client()
    assert anonymous.get("/api/healthz").status_code in (200, 503)
    assert anonymous.get("/metrics", headers=METRICS).status_code == 200  # Prometheus' token is no session
    assert anonymous.get("/d/not-a-token").status_code == 404  # reached the view: a bad link, not a 401


def test_a_wrong_unknown_or_malformed_token_is_401(app, member):
    with app.app_context():
        _, secret = ApiToken.create(member, "script")
    anonymous = app.test_client()
    for credentials in ("Bearer pdfq_wrong", "Bearer nonsense", "Bearer ", f"Bearer {secret[:-2]}"):
        response = anonymous.get("/api/jobs", headers={"Authorization": credentials})
        assert response.status_code == 401 and response.get_json()["error"]["code"] == "UNAUTHENTICATED"
    assert anonymous.get("/queue", headers={"Authorization": "Bearer pdfq_wrong"}).status_code == 401  # no redirect


# -- signing in and out ---------------------------------------------------------------------------


def test_signing_in_lands_on_next_and_shows_who_i_am(app, member):
    browser = app.test_client()
    response = sign_in(browser, "Member@Example.com ", next_path="/review/abc")
    assert response.status_code == 303 and response.headers["Location"] == "/review/abc"
    assert browser.get("/api/session").get_json()["user"] == {"id": member.id, "email": member.email, "admin": False}
    assert "member@example.com" in browser.get("/queue").get_data(as_text=True)


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:x"])
def test_next_is_followed_for_paths_on_this_site_only(app, member, target):
    response = sign_in(app.test_client(), member.email, next_path=target)
    assert response.status_code == 303 and response.headers["Location"] == "/queue"


def test_a_wrong_password_an_unknown_email_and_a_disabled_user_get_the_same_answer(app, member):
    with app.app_context():
        disabled = User.create("gone@example.com", PASSWORD)
        disabled.change(disabled=True)
    answers = [sign_in(app.test_client(), email, password) for email, password in
               (("member@example.com", "wrong password!"), ("nobody@example.com", PASSWORD),
                ("gone@example.com", PASSWORD))]
    assert {answer.status_code for answer in answers} == {401}
    messages = {re.search(r'role="alert">([^<]+)<', answer.get_data(as_text=True)).group(1) for answer in answers}
    assert len(messages) == 1


def test_the_sign_in_form_needs_its_csrf_token(app, member):
    response = app.test_client().post("/login", data={"email": member.email, "password": PASSWORD},
                                      headers={"Accept": "text/html"})
    assert response.status_code == 400 and "CSRF" in response.get_data(as_text=True)


def test_signing_in_renews_the_session(app, member):
    browser = app.test_client()
    browser.get("/login")
    before = browser.get_cookie("session").value
    sign_in(browser, member.email)
    after = browser.get_cookie("session").value
    assert before != after
    replay = app.test_client()
    replay.set_cookie("session", before)
    assert replay.get("/api/session").status_code == 401


def test_a_copied_cookie_stops_working_once_its_session_signs_out(app, member):
    browser = app.test_client()
    sign_in(browser, member.email)
    copied = browser.get_cookie("session").value
    token = browser.get("/api/session").get_json()["csrf_token"]
    assert browser.post("/logout", headers={"X-CSRF-Token": token}).status_code == 303
    thief = app.test_client()
    thief.set_cookie("session", copied)
    assert thief.get("/api/jobs").status_code == 401
    assert browser.get("/api/jobs").status_code == 401


def test_disabling_a_user_ends_every_session_and_token_at_once(app, member):
    browser = app.test_client()
    sign_in(browser, member.email)
    with app.app_context():
        _, secret = ApiToken.create(member, "script")
    bearer = {"Authorization": f"Bearer {secret}"}
    assert browser.get("/api/jobs").status_code == 200 and app.test_client().get("/api/jobs", headers=bearer).status_code == 200
    with app.app_context():
        db.session.get(User, member.id).change(disabled=True)
    assert browser.get("/api/jobs").status_code == 401
    assert app.test_client().get("/api/jobs", headers=bearer).status_code == 401


@pytest.mark.real_argon2
def test_a_password_is_rehashed_at_sign_in_when_the_parameters_change(app, member, monkeypatch):
    from argon2 import PasswordHasher
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    with app.app_context():
        User.query.filter_by(id=member.id).update({"password_hash": weak.hash(PASSWORD)})
        db.session.commit()
    assert sign_in(app.test_client(), member.email).status_code == 303
    with app.app_context():
        stored = db.session.get(User, member.id).password_hash
    assert stored.startswith("$argon2id$") and not hasher.check_needs_rehash(stored)


def test_failed_sign_ins_are_throttled_per_account_with_retry_after(make_app):
    app = make_app(SIGNINS_PER_MINUTE=3)
    with app.app_context():
        User.create("target@example.com", PASSWORD)
    statuses = [sign_in(app.test_client(), "target@example.com", f"guess number {n}").status_code for n in range(4)]
    assert statuses == [401, 401, 401, 429]
    throttled = sign_in(app.test_client(), "target@example.com", PASSWORD)  # even the right one waits now
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) > 0
    assert sign_in(app.test_client(), "other@example.com", "wrong but not throttled").status_code == 401


def test_a_stranger_failing_from_one_address_does_not_lock_the_user_out_from_theirs(make_app):
    app = make_app(SIGNINS_PER_MINUTE=3)
    with app.app_context():
        User.create("named@example.com", PASSWORD)
    stranger, user = {"REMOTE_ADDR": "203.0.113.9"}, {"REMOTE_ADDR": "198.51.100.7"}

    def attempt(address, password):
        client = app.test_client()
        client.environ_base.update(address)
        return sign_in(client, "named@example.com", password).status_code
    assert [attempt(stranger, f"guess {n}") for n in range(4)] == [401, 401, 401, 429]
    assert attempt(user, PASSWORD) == 303  # the owner, from their own address, still gets in


def test_a_guesser_spread_over_many_addresses_is_stopped_per_account(make_app):
    app = make_app(SIGNINS_PER_MINUTE=1)  # 1 per account and address, 10 per account from anywhere
    with app.app_context():
        User.create("spread@example.com", PASSWORD)
    statuses = []
    for n in range(11):
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = f"192.0.2.{n + 1}"
        statuses.append(sign_in(client, "spread@example.com", f"guess {n}").status_code)
    assert statuses == [401] * 10 + [429]


def test_failed_sign_ins_are_throttled_per_address_across_accounts(make_app):
    app = make_app(SIGNINS_PER_MINUTE=2)  # 8 a minute per address
    statuses = [sign_in(app.test_client(), f"user{n}@example.com", "wrong password!").status_code for n in range(9)]
    assert statuses == [401] * 8 + [429]


# -- personal API tokens -------------------------------------------------------------------------


@pytest.mark.parametrize("body", [{"name": [None, None]}, {"name": 7}, {"name": {"a": 1}}, {"name": "   "}, {}, ["x"]])
def test_a_token_needs_a_name_that_is_text(client, body):
    """Schemathesis: {"name": [null, null]} was a 500 (the list met str.strip)."""
    refused = client.post("/api/tokens", json=body)
    assert refused.status_code == 400 and refused.get_json()["error"]["code"] == "BAD_REQUEST"


def test_a_token_is_shown_once_works_without_csrf_and_stops_when_revoked(app, client):
    made = client.post("/api/tokens", json={"name": "month-end"})
    assert made.status_code == 201
    body = made.get_json()
    assert set(body) >= {"id", "name", "token", "created_at"} and body["token"].startswith("pdfq_")
    listed = client.get("/api/tokens").get_json()["tokens"]
    assert [t["name"] for t in listed] == ["month-end"] and "token" not in listed[0]
    with app.app_context():
        assert body["token"] not in {t.secret_digest for t in ApiToken.query.all()}  # stored as a digest
    script = app.test_client()
    bearer = {"Authorization": f"Bearer {body['token']}"}
    upload = script.post("/api/upload", headers=bearer, data={"file": (io.BytesIO(pdf_bytes("tok")), "t.pdf")})
    assert upload.status_code == 202  # no CSRF token needed with a token and no cookie
    assert client.get("/api/jobs").get_json()["jobs"][0]["filename"] == "t.pdf"  # the token acts as its user
    assert client.delete(f"/api/tokens/{body['id']}").status_code == 204
    assert script.get("/api/jobs", headers=bearer).status_code == 401
    assert client.delete(f"/api/tokens/{body['id']}").status_code == 404


def test_a_token_beside_another_users_session_cookie_is_the_tokens_user_without_csrf(app, client):
    script_user, secret = people.with_token(app)
    response = client.raw.post("/api/upload", headers={"Authorization": f"Bearer {secret}"},
                               data={"file": (io.BytesIO(pdf_bytes("mixed")), "m.pdf")})
    assert response.status_code == 202 and "Set-Cookie" not in response.headers
    with app.app_context():
        assert Job.query.one().owner == script_user.id  # the token's user, not the cookie's
    wrong = client.raw.get("/api/jobs", headers={"Authorization": "Bearer pdfq_wrong"})
    assert wrong.status_code == 401  # never a fall back to the cookie's user
    assert client.raw.post("/api/upload", headers={"Authorization": "Bearer pdfq_wrong", "X-CSRF-Token": client.token},
                           data={"file": (io.BytesIO(pdf_bytes("w")), "w.pdf")}).status_code == 401


def test_a_script_keeping_cookies_in_a_requests_session_works_with_its_token(make_app, fake):
    """One requests.Session, as scripts are written: read /api/session, then upload, share, retry, bulk-delete."""
    import requests
    from werkzeug.serving import make_server
    from tests.support.app import WORKER_SETTINGS, run
    import threading
    app = make_app(GATEWAY_URL=fake.url, **WORKER_SETTINGS)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        user, secret = people.with_token(app)
        script = requests.Session()
        script.headers["Authorization"] = f"Bearer {secret}"
        me = script.get(f"{base}/api/session", timeout=10)
        assert me.status_code == 200 and me.json()["user"]["email"] == user.email
        assert "Set-Cookie" not in me.headers
        # A cookie from anywhere (an earlier answer, a browser export) rides along from now on.
        script.cookies.set(app.config["SESSION_COOKIE_NAME"], people.signed_in(app)[1], domain="127.0.0.1", path="/")
        uploaded = script.post(f"{base}/api/upload", files={"file": ("a.pdf", pdf_bytes("a"), "application/pdf")},
                               timeout=10)
        assert uploaded.status_code == 202, uploaded.text
        assert "Set-Cookie" not in uploaded.headers
        done_id = uploaded.json()["jobs"][0]["id"]
        run(app, done_id)
        shared = script.post(f"{base}/api/jobs/{done_id}/share", timeout=10)
        assert shared.status_code == 201, shared.text
        failing = script.post(f"{base}/api/upload", files={"file": ("b.pdf", pdf_bytes("b"), "application/pdf")},
                              timeout=10)
        job_id = failing.json()["jobs"][0]["id"]
        fake.status, fake.error_code = 422, "UNREADABLE"
        run(app, job_id)
        assert script.get(f"{base}/api/jobs/{job_id}", timeout=10).json()["status"] == "failed"
        retried = script.post(f"{base}/api/jobs/{job_id}/retry", timeout=10)
        assert retried.status_code == 202, retried.text
        deleted = script.post(f"{base}/api/jobs/bulk", json={"action": "delete", "ids": [job_id, done_id]}, timeout=10)
        assert deleted.status_code == 200 and sorted(deleted.json()["done"]) == sorted([job_id, done_id]), deleted.text
        assert not any("Set-Cookie" in r.headers for r in (shared, retried, deleted))
    finally:
        server.shutdown()


def test_a_token_needs_a_name(client):
    response = client.post("/api/tokens", json={})
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "BAD_REQUEST"


def test_the_tokens_page_makes_and_revokes_tokens(app):
    browser = people.test_client(app)
    page = browser.post("/tokens", data={"name": "laptop", "csrf_token": csrf_of(browser, "/tokens")})
    secret = re.search(r'id="new-token" class="share-url" readonly value="([^"]+)"', page.get_data(as_text=True)).group(1)
    assert app.test_client().get("/api/jobs", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    assert secret not in browser.get("/tokens").get_data(as_text=True)  # shown once
    with app.app_context():
        token_id = ApiToken.query.one().id
    browser.post(f"/tokens/{token_id}/revoke", data={"csrf_token": csrf_of(browser, "/tokens")})
    assert app.test_client().get("/api/jobs", headers={"Authorization": f"Bearer {secret}"}).status_code == 401


# -- first run and one-time links ----------------------------------------------------------------


def test_the_first_run_set_up_link_makes_the_first_admin_once(app):
    from webapp.auth import setup_link
    link = setup_link(app)
    path = link[link.index("/setup/"):]
    browser = app.test_client()
    form = {"email": "boss@example.com", "password": PASSWORD, "confirm": PASSWORD, "csrf_token": csrf_of(browser, path)}
    for mistake in ({"password": "short", "confirm": "short"}, {"email": "not an address"}):
        assert browser.post(path, data={**form, **mistake}).status_code == 400  # said, and the link is not spent
    assert browser.post(path, data=form).status_code == 303
    assert browser.get("/api/session").get_json()["user"]["admin"] is True
    again = app.test_client()
    assert again.get(path).status_code == 410
    assert setup_link(app) is None  # a user exists: no new link is made either


def test_a_set_up_link_is_dead_once_anyone_has_an_account(app):
    from webapp.auth import setup_link
    link = setup_link(app)
    with app.app_context():
        User.create("shell@example.com", PASSWORD, admin=True)  # `flask users create --admin` got there first
    assert app.test_client().get(link[link.index("/setup/"):]).status_code == 410


def test_an_invitation_makes_an_account_once(app):
    admin = ApiClient(app.test_client(), admin=True)
    page = admin.post("/admin/users/invite", data={"email": "new@example.com", "admin": "1",
                                                    "csrf_token": admin.token}).get_data(as_text=True)
    link = re.search(r'id="one-time-link" class="share-url" readonly value="([^"]+)"', page).group(1)
    path = link[link.index("/link/"):]
    joining = app.test_client()
    form = {"password": PASSWORD, "confirm": PASSWORD, "csrf_token": csrf_of(joining, path)}
    assert joining.post(path, data=form).status_code == 303
    assert joining.get("/api/session").get_json()["user"] == {**joining.get("/api/session").get_json()["user"],
                                                              "email": "new@example.com", "admin": True}
    assert app.test_client().get(path).status_code == 410


def test_admins_list_pending_invitations_and_revoke_one(app):
    admin = ApiClient(app.test_client(), admin=True)
    links = {}
    for email in ("keep@example.com", "drop@example.com"):
        page = admin.post("/admin/users/invite", data={"email": email, "csrf_token": admin.token}).get_data(as_text=True)
        link = re.search(r'id="one-time-link" class="share-url" readonly value="([^"]+)"', page).group(1)
        links[email] = link[link.index("/link/"):]
    listed = admin.get("/admin/users").get_data(as_text=True)
    table = listed[listed.index('id="invitations"'):]
    assert "keep@example.com" in table and "drop@example.com" in table
    assert not any(path.rsplit("/", 1)[1] in listed for path in links.values())  # the page never shows a secret
    revoke = re.search(r'action="(/admin/invitations/[0-9a-f]{64}/revoke)">\s*<input type="hidden" name="csrf_token" '
                       r'value="[^"]+">\s*<button [^>]*aria-label="Revoke the invitation of drop@example.com"', table)
    answer = admin.post(revoke.group(1), data={"csrf_token": admin.token})
    assert answer.status_code == 200 and "The invitation of drop@example.com is revoked." in answer.get_data(as_text=True)
    assert app.test_client().get(links["drop@example.com"]).status_code == 410
    assert app.test_client().get(links["keep@example.com"]).status_code == 200
    assert admin.post(revoke.group(1), data={"csrf_token": admin.token}).status_code == 404
    assert "drop@example.com" not in admin.get("/admin/users").get_data(as_text=True)
    member = ApiClient(app.test_client())
    assert member.raw.post(revoke.group(1), data={"csrf_token": member.token}).status_code == 404


def test_a_reset_link_sets_a_new_password_and_ends_old_sessions(app, member):
    admin = ApiClient(app.test_client(), admin=True)
    old = app.test_client()
    sign_in(old, member.email)
    page = admin.post(f"/admin/users/{member.id}/reset", data={"csrf_token": admin.token}).get_data(as_text=True)
    link = re.search(r'id="one-time-link" class="share-url" readonly value="([^"]+)"', page).group(1)
    path = link[link.index("/link/"):]
    resetting = app.test_client()
    new = "a new and long password"
    assert resetting.post(path, data={"password": new, "confirm": new, "csrf_token": csrf_of(resetting, path)}
                          ).status_code == 303
    assert old.get("/api/jobs").status_code == 401
    assert sign_in(app.test_client(), member.email, PASSWORD).status_code == 401
    assert sign_in(app.test_client(), member.email, new).status_code == 303


def reset_path(app, admin, user_id):
    page = admin.post(f"/admin/users/{user_id}/reset", data={"csrf_token": admin.token}).get_data(as_text=True)
    link = re.search(r'id="one-time-link" class="share-url" readonly value="([^"]+)"', page).group(1)
    return link[link.index("/link/"):]


@pytest.mark.parametrize("revoke", [True, False], ids=["ticked", "unticked"])
def test_the_reset_page_offers_to_revoke_the_users_tokens(app, member, revoke):
    with app.app_context():
        _, secret = ApiToken.create(db.session.get(User, member.id), "nightly script")
    bearer = {"Authorization": f"Bearer {secret}"}
    path = reset_path(app, ApiClient(app.test_client(), admin=True), member.id)
    resetting = app.test_client()
    form = resetting.get(path).get_data(as_text=True)
    assert re.search(r'<input name="revoke_tokens" type="checkbox" value="1" checked> Also revoke my 1 API token ', form)
    new = "a new and long password"
    data = {"password": new, "confirm": new, "csrf_token": csrf_of(resetting, path)}
    if revoke:
        data["revoke_tokens"] = "1"  # as the browser sends the ticked box; an unticked one sends nothing
    assert resetting.post(path, data=data).status_code == 303
    assert app.test_client().get("/api/jobs", headers=bearer).status_code == (401 if revoke else 200)


def test_disabling_a_user_deletes_their_tokens_and_enabling_them_revives_none(app, member):
    with app.app_context():
        _, secret = ApiToken.create(db.session.get(User, member.id), "script")
    bearer = {"Authorization": f"Bearer {secret}"}
    admin = ApiClient(app.test_client(), admin=True)
    assert app.test_client().get("/api/jobs", headers=bearer).status_code == 200
    for action in ("disable", "enable"):
        assert admin.post(f"/admin/users/{member.id}/{action}", data={"csrf_token": admin.token}).status_code == 200
    assert app.test_client().get("/api/jobs", headers=bearer).status_code == 401
    with app.app_context():
        assert ApiToken.of(db.session.get(User, member.id)) == []


def test_the_cli_reset_revokes_the_users_tokens(app, member, monkeypatch):
    with app.app_context():
        _, secret = ApiToken.create(db.session.get(User, member.id), "script")
    monkeypatch.setenv("PDFQUEUE_PASSWORD", "another long password")
    result = app.test_cli_runner().invoke(args=["users", "reset", member.email])
    assert result.exit_code == 0 and "API tokens are revoked" in result.output
    assert app.test_client().get("/api/jobs", headers={"Authorization": f"Bearer {secret}"}).status_code == 401


# -- admins and everyone's jobs ------------------------------------------------------------------


def test_another_users_job_is_404_but_an_admin_sees_and_acts_on_every_job(app):
    alice, bob, admin = ApiClient(app.test_client()), ApiClient(app.test_client()), ApiClient(app.test_client(), True)
    job = alice.upload((pdf_bytes("alice"), "alice.pdf")).get_json()["jobs"][0]
    bob.upload((pdf_bytes("bob"), "bob.pdf"))
    assert bob.get(f"/api/jobs/{job['id']}").status_code == 404
    assert bob.delete(f"/api/jobs/{job['id']}").status_code == 404
    assert [j["filename"] for j in bob.get("/api/jobs?owner=all").get_json()["jobs"]] == ["bob.pdf"]
    everyone = admin.get("/api/jobs?owner=all").get_json()
    assert {(j["filename"], j["owner_email"]) for j in everyone["jobs"]} == {
        ("alice.pdf", alice.user.email), ("bob.pdf", bob.user.email)}
    assert everyone["active_count"] == 2
    assert admin.get("/api/jobs").get_json()["jobs"] == []  # an admin's own view is still their own
    assert admin.get(f"/api/jobs/{job['id']}").status_code == 200
    assert admin.delete(f"/api/jobs/{job['id']}").status_code == 204
    assert alice.get(f"/api/jobs/{job['id']}").status_code == 404


def test_jobs_from_before_accounts_stay_visible_to_admins(app):
    with app.app_context():
        Job.create(owner="anonymous-browser-id", filename="old.pdf", mapping="m", bytes=1, sha256="0" * 64)
    everyone = ApiClient(app.test_client(), admin=True).get("/api/jobs?owner=all").get_json()["jobs"]
    assert [(j["filename"], j["owner"], j["owner_email"]) for j in everyone] == [
        ("old.pdf", "anonymous-browser-id", None)]


def test_the_users_page_is_for_admins_only_and_disables_enables_and_promotes(app, member):
    assert ApiClient(app.test_client()).get("/admin/users").status_code == 404
    admin = ApiClient(app.test_client(), admin=True)
    assert member.email in admin.get("/admin/users").get_data(as_text=True)
    for action, check in (("disable", lambda u: u.disabled), ("enable", lambda u: not u.disabled),
                          ("make-admin", lambda u: u.admin), ("revoke-admin", lambda u: not u.admin)):
        assert admin.post(f"/admin/users/{member.id}/{action}", data={"csrf_token": admin.token}).status_code == 200
        with app.app_context():
            assert check(db.session.get(User, member.id)), action
    own = admin.post(f"/admin/users/{admin.user.id}/disable", data={"csrf_token": admin.token})
    assert own.status_code == 400


# -- limits --------------------------------------------------------------------------------------


def test_ten_files_a_minute_per_user_count_across_sessions_and_tokens(make_app):
    app = make_app(UPLOADS_PER_MINUTE=3)
    user, cookie = people.signed_in(app)
    with app.app_context():
        _, secret = ApiToken.create(db.session.get(User, user.id), "script")
    browser = ApiClient(app.test_client())
    browser.raw.set_cookie("session", cookie)
    browser.token = browser.get("/api/session").get_json()["csrf_token"]
    assert browser.upload((pdf_bytes("1"), "1.pdf"), (pdf_bytes("2"), "2.pdf")).status_code == 202
    bearer = {"Authorization": f"Bearer {secret}"}
    script = app.test_client()
    assert script.post("/api/upload", headers=bearer, data={"file": (io.BytesIO(pdf_bytes("3")), "3.pdf")}).status_code == 202
    over = script.post("/api/upload", headers=bearer, data={"file": (io.BytesIO(pdf_bytes("4")), "4.pdf")})
    assert over.status_code == 429 and over.headers["Retry-After"]


def test_the_storage_quota_answers_507_and_keeps_nothing(make_app):
    app = make_app(USER_QUOTA_MB=1)
    client = ApiClient(app.test_client())
    assert client.upload((pdf_bytes("a", size=600_000), "a.pdf")).status_code == 202
    kept = stored_uploads(app)
    response = client.upload((pdf_bytes("b", size=600_000), "b.pdf"))
    assert response.status_code == 507 and response.get_json()["error"]["code"] == "INSUFFICIENT_STORAGE"
    assert "quota" in response.get_json()["error"]["message"] and stored_uploads(app) == kept
    assert ApiClient(app.test_client()).upload((pdf_bytes("c", size=600_000), "c.pdf")).status_code == 202  # per user


def test_below_the_free_space_floor_uploads_are_507_and_nothing_is_kept(make_app):
    app = make_app(MIN_FREE_MB=10 ** 9)  # more than any disk has free
    response = ApiClient(app.test_client()).upload((pdf_bytes("floor"), "f.pdf"))
    assert response.status_code == 507 and response.get_json()["error"]["code"] == "INSUFFICIENT_STORAGE"
    assert stored_uploads(app) == []


# -- modes ---------------------------------------------------------------------------------------


def test_auth_none_keeps_anonymous_owners_on_loopback_and_refuses_other_addresses(make_app):
    app = make_app(AUTH="none")
    anonymous = ApiClient(app.test_client())
    assert anonymous.upload((pdf_bytes("anon"), "anon.pdf")).status_code == 202
    assert anonymous.get("/api/session").get_json()["user"] is None
    with pytest.raises(SystemExit, match="AUTH=none"):
        make_app(AUTH="none", HOST="0.0.0.0")


def test_auth_proxy_takes_the_user_from_the_trusted_header_and_creates_them(make_app):
    with pytest.raises(SystemExit, match="BEHIND_PROXY"):
        make_app(AUTH="proxy")
    app = make_app(AUTH="proxy", BEHIND_PROXY=True, REMOTE_USER_HEADER="Remote-Email")
    client = app.test_client()
    session = client.get("/api/session", headers={"Remote-Email": "sso@example.com"}).get_json()
    assert session["user"]["email"] == "sso@example.com"
    assert client.get("/api/jobs").status_code == 401  # no header: nobody
    with app.app_context():
        User.by_email("sso@example.com").change(disabled=True)
    assert client.get("/api/jobs", headers={"Remote-Email": "sso@example.com"}).status_code == 401


def test_auth_proxy_ignores_the_header_from_any_peer_not_a_trusted_proxy(make_app, caplog):
    """Another service on the box, or a path to gunicorn that skips the proxy, names an admin: it is nobody, and no
    account is made; a forged X-Forwarded-For does not make the peer a trusted one."""
    app = make_app(AUTH="proxy", BEHIND_PROXY=True, TRUSTED_PROXIES="10.0.0.2, fd00::/64")
    with app.app_context():
        User.create("boss@example.com", admin=True)
    client = app.test_client()
    for peer in ("127.0.0.1", "10.0.0.3", "fd01::1"):
        forged = {"X-Forwarded-Email": "boss@example.com", "X-Forwarded-For": "10.0.0.2"}
        assert client.get("/api/jobs", headers=forged, environ_base={"REMOTE_ADDR": peer}).status_code == 401
        assert client.get("/api/session", headers={"X-Forwarded-Email": "new@example.com"},
                          environ_base={"REMOTE_ADDR": peer}).status_code == 401
    with app.app_context():
        assert User.by_email("new@example.com") is None
    assert "ignored X-Forwarded-Email from 127.0.0.1: not a trusted proxy" in caplog.text
    for proxy in ("10.0.0.2", "fd00::7", "::ffff:10.0.0.2"):
        me = client.get("/api/session", headers={"X-Forwarded-Email": "boss@example.com"},
                        environ_base={"REMOTE_ADDR": proxy}).get_json()
        assert me["user"]["email"] == "boss@example.com", proxy


def test_auth_proxy_with_a_secret_believes_only_requests_that_carry_it(make_app):
    app = make_app(AUTH="proxy", BEHIND_PROXY=True, PROXY_SECRET="s3cret-from-nginx")
    client = app.test_client()  # from 127.0.0.1, a trusted address: any process on the box could be this
    named = {"X-Forwarded-Email": "sso@example.com"}
    assert client.get("/api/jobs", headers=named).status_code == 401
    assert client.get("/api/jobs", headers={**named, "X-Proxy-Secret": "s3cret-from-ngin"}).status_code == 401
    assert client.get("/api/jobs", headers={**named, "X-Proxy-Secret": "s3cret-from-nginx"}).status_code == 200


def test_trusted_proxies_that_are_not_addresses_refuse_to_start(make_app):
    with pytest.raises(SystemExit, match="TRUSTED_PROXIES.*'nginx' is not an address"):
        make_app(AUTH="proxy", BEHIND_PROXY=True, TRUSTED_PROXIES="127.0.0.1,nginx")


def test_auth_none_behind_a_proxy_refuses_to_start(make_app):
    with pytest.raises(SystemExit, match="AUTH=none.*BEHIND_PROXY"):
        make_app(AUTH="none", BEHIND_PROXY=True)


def test_an_unknown_auth_mode_refuses_to_start(make_app):
    with pytest.raises(SystemExit, match="AUTH must be one of"):
        make_app(AUTH="ldap")


# -- the admin CLI -------------------------------------------------------------------------------


def test_the_cli_creates_lists_disables_enables_and_resets_users(app, monkeypatch):
    runner = app.test_cli_runner()
    monkeypatch.setenv("PDFQUEUE_PASSWORD", PASSWORD)
    assert runner.invoke(args=["users", "create", "ops@example.com", "--admin"]).exit_code == 0
    assert "already has an account" in runner.invoke(args=["users", "create", "ops@example.com"]).output
    assert "ops@example.com  admin" in runner.invoke(args=["users", "list"]).output
    assert sign_in(app.test_client(), "ops@example.com").status_code == 303
    assert runner.invoke(args=["users", "disable", "ops@example.com"]).exit_code == 0
    assert sign_in(app.test_client(), "ops@example.com").status_code == 401
    assert runner.invoke(args=["users", "enable", "ops@example.com"]).exit_code == 0
    monkeypatch.setenv("PDFQUEUE_PASSWORD", "another long password")
    assert runner.invoke(args=["users", "reset", "ops@example.com"]).exit_code == 0
    assert sign_in(app.test_client(), "ops@example.com", "another long password").status_code == 303
    assert runner.invoke(args=["users", "disable", "nobody@example.com"]).exit_code != 0


def test_the_cli_makes_a_token_and_prints_it_alone_on_the_last_line(app):
    runner = app.test_cli_runner()
    with app.app_context():
        User.create("robot@example.com")
    result = runner.invoke(args=["tokens", "create", "robot@example.com", "--name", "provisioning"])
    assert result.exit_code == 0
    secret = result.output.strip().splitlines()[-1]
    assert app.test_client().get("/api/jobs", headers={"Authorization": f"Bearer {secret}"}).status_code == 200


def test_sessions_are_rows_whose_digest_only_is_stored(app, member):
    browser = app.test_client()
    sign_in(browser, member.email)
    with app.app_context():
        digests = [s.key_digest for s in UserSession.query.all()]
    assert len(digests) == 1 and browser.get_cookie("session").value.find(digests[0]) == -1


def test_retention_forgets_sessions_past_their_days_and_links_past_their_time(app, member):
    from datetime import timedelta

    from core.accounts import INVITE, OneTimeLink
    from core.clock import utcnow
    browser = app.test_client()
    sign_in(browser, member.email)
    with app.app_context():
        OneTimeLink.create(INVITE, timedelta(days=1), email="later@example.com")
        removed = operations.apply_retention(now=utcnow() + timedelta(days=app.config["SESSION_DAYS"] + 2))
        assert (removed["sessions"], removed["links"]) == (1, 1)
        assert UserSession.query.count() == 0 and OneTimeLink.query.count() == 0
