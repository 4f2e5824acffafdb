"""Notifications: webhooks made through the API and the page, the outbox written with the job's change, signed
deliveries to a real receiver on loopback (down, then up; redirecting; rebinding its DNS), email through a real
local SMTP server (aiosmtpd), and what the user and /metrics see of it all."""
from worker import upkeep
import email
import secrets
import smtplib
import socket
import time
from datetime import timedelta

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from sqlalchemy import select, text, update
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from gateway.testing import free_port
from tests.support.app import ApiClient, claim
from tests.support.people import signed_in
from tests.support.receiver import Receiver
from core import operations
from core import codes
from worker import delivery
from core import outbox as outbox_module
from core.accounts import User
from core.clock import utcnow
from core.db import db
from core.jobs.model import Job
from core.outbox import OutboxEvent

# Retries within a fraction of a second, so "down for a while" takes a second or two, not minutes.
FAST = {"WEBHOOK_ALLOWED_HOSTS": ["127.0.0.1", "hooks.test"], "WEBHOOK_RETRY_BASE_SECONDS": 0.05,
        "WEBHOOK_RETRY_MAX_SECONDS": 0.2, "WEBHOOK_CONNECT_TIMEOUT": 1, "WEBHOOK_READ_TIMEOUT": 2,
        "WEBHOOK_POLL_SECONDS": 0.1, "SMTP_TIMEOUT": 5}
METRICS = {"Authorization": "Bearer test-metrics-token"}  # tests/conftest.py's METRICS_TOKEN
PUBLIC = "93.184.215.14"  # an address on the public internet (never called: the tests resolve to it, then refuse)


@pytest.fixture
def notify_app(make_app):
    return make_app(**FAST)


@pytest.fixture
def api(notify_app):
    return ApiClient(notify_app.test_client())


@pytest.fixture
def receiver():
    running = Receiver().start()
    yield running
    if running.server is not None:
        running.stop()


@pytest.fixture
def deliverer(notify_app):
    """The worker's deliverer thread, running in this process."""
    thread = delivery.Deliverer(notify_app)
    thread.start()
    yield thread
    thread.stop()
    thread.join(10)


def finish(app, owner, failed=False):
    """A job of owner's that goes queued → processing → complete (or failed for good); its id."""
    with app.app_context():
        job = Job.create(owner=owner, filename=f"f-{secrets.token_hex(3)}.pdf", mapping="pt_simon_invoice_v1",
                         bytes=10, sha256=secrets.token_hex(32), upload_path="uploads/x.pdf")
        job_id = job.id
        assert claim(job_id, "w", 30, capacity=100)
        if failed:
            assert Job.fail(job_id, "w", codes.GW_4XX, "the gateway refused it")
        else:
            assert Job.complete(job_id, "w", "results/x.xml")
        db.session.remove()
        return job_id


def outbox(app):
    with app.app_context():
        rows = db.session.execute(select(OutboxEvent).order_by(OutboxEvent.created_at)).scalars().all()
        db.session.expunge_all()
        db.session.remove()
        return rows


def hook(api, url, events=("job.complete", "job.failed")):
    response = api.post("/api/webhooks", json={"url": url, "events": list(events)})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def wait(predicate, timeout=20):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


# -- the API ----------------------------------------------------------------------------------------


def test_a_webhook_is_made_listed_and_deleted_and_its_secret_is_shown_only_once(notify_app, api):
    made = hook(api, "http://127.0.0.1:9/hook", ["job.complete"])
    assert set(made) == {"id", "url", "events", "secret"} and made["events"] == ["job.complete"]
    assert made["secret"].startswith("whsec_")
    listed = api.get("/api/webhooks").get_json()["webhooks"]
    assert [h["id"] for h in listed] == [made["id"]] and "secret" not in listed[0]
    assert listed[0]["deliveries"] == {"pending": 0, "next_attempt_at": None, "last_status": None,
                                       "last_attempt_at": None, "last_state": None}
    stranger = ApiClient(notify_app.test_client())
    assert stranger.get("/api/webhooks").get_json()["webhooks"] == []
    assert stranger.delete(f"/api/webhooks/{made['id']}").status_code == 404
    assert stranger.get(f"/api/webhooks/{made['id']}/deliveries").status_code == 404
    assert api.delete(f"/api/webhooks/{made['id']}").status_code == 204
    assert api.get("/api/webhooks").get_json()["webhooks"] == []


@pytest.mark.parametrize("url, code", [
    ("https://127.0.0.1/hook", codes.PRIVATE_ADDRESS),
    ("https://localhost:8443/hook", codes.PRIVATE_ADDRESS),
    ("https://10.1.2.3/hook", codes.PRIVATE_ADDRESS),
    ("https://192.168.0.10/hook", codes.PRIVATE_ADDRESS),
    ("https://169.254.169.254/latest/meta-data", codes.PRIVATE_ADDRESS),
    ("https://[::1]/hook", codes.PRIVATE_ADDRESS),
    ("https://[::ffff:10.0.0.1]/hook", codes.PRIVATE_ADDRESS),
    ("https://[fe80::1]/hook", codes.PRIVATE_ADDRESS),
    ("https://0.0.0.0/hook", codes.PRIVATE_ADDRESS),
    (f"http://{PUBLIC}/hook", codes.WEBHOOK_URL),  # public, but not https
    ("ftp://example.com/hook", codes.WEBHOOK_URL),
    ("not a url", codes.WEBHOOK_URL),
    ("https://no-such-host.invalid/hook", codes.WEBHOOK_URL),
    ("", codes.WEBHOOK_URL),
])
def test_a_webhook_url_on_a_private_address_or_without_https_is_refused_with_a_clear_error(client, url, code):
    response = client.post("/api/webhooks", json={"url": url, "events": ["job.complete"]})
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == code and error["message"]
    assert client.get("/api/webhooks").get_json()["webhooks"] == []  # nothing half-kept


def test_a_refused_webhook_url_does_not_say_what_its_host_resolved_to(client):
    response = client.post("/api/webhooks", json={"url": "https://localhost:8443/hook", "events": ["job.complete"]})
    error = response.get_json()["error"]
    assert (response.status_code, error["code"]) == (400, codes.PRIVATE_ADDRESS)
    assert "localhost" in error["message"] and "loopback" in error["message"]
    assert "127.0.0.1" not in error["message"] and "::1" not in error["message"]


def test_ipv6_that_carries_a_private_ipv4_address_is_refused_and_a_public_one_taken(client):
    """6to4 (2002::/16) and NAT64 (64:ff9b::/96, 64:ff9b:1::/48) reach the IPv4 address they carry."""
    for address in ("2002:7f00:1::", "2002:a00:1::1", "64:ff9b::a00:1", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",
                    "64:ff9b:1::c0a8:1"):
        response = client.post("/api/webhooks", json={"url": f"https://[{address}]/hook"})
        assert (response.status_code, response.get_json()["error"]["code"]) == (400, codes.PRIVATE_ADDRESS), address
    for address in ("2002:5db8:d70e::1", "64:ff9b::5db8:d70e", "64:ff9b:1::5db8:d70e"):  # PUBLIC, carried
        assert client.post("/api/webhooks", json={"url": f"https://[{address}]/hook"}).status_code == 201, address


def test_a_public_https_url_and_an_allowed_host_are_taken(client, notify_app, api):
    assert client.post("/api/webhooks", json={"url": f"https://{PUBLIC}/hook"}).status_code == 201
    assert hook(api, "http://127.0.0.1:1/h")["url"] == "http://127.0.0.1:1/h"  # 127.0.0.1 is listed in FAST


@pytest.mark.parametrize("body", [{"url": f"https://{PUBLIC}/h", "events": ["job.started"]},
                                  {"url": f"https://{PUBLIC}/h", "events": []},
                                  {"url": f"https://{PUBLIC}/h", "events": "job.complete"}, ["not", "an", "object"]])
def test_bad_events_are_refused(client, body):
    response = client.post("/api/webhooks", json=body)
    assert (response.status_code, response.get_json()["error"]["code"]) == (400, codes.BAD_REQUEST)


def test_webhook_changes_need_the_csrf_token_with_a_cookie(notify_app, api):
    response = api.raw.post("/api/webhooks", json={"url": "http://127.0.0.1:1/h"})
    assert (response.status_code, response.get_json()["error"]["code"]) == (400, codes.CSRF)


# -- the outbox, written with the job's change ------------------------------------------------------


def test_only_an_owner_with_a_matching_webhook_gets_an_outbox_row(notify_app, api):
    hook(api, "http://127.0.0.1:1/h", ["job.complete"])
    completed = finish(notify_app, api.user.id)
    finish(notify_app, api.user.id, failed=True)  # not asked for
    finish(notify_app, "someone-else")
    rows = outbox(notify_app)
    assert [(row.type, row.job_id, row.state) for row in rows] == [("job.complete", completed, "pending")]
    import json
    body = json.loads(rows[0].payload)
    assert body["type"] == "job.complete" and body["data"]["id"] == completed
    assert body["data"]["status"] == "complete" and body["timestamp"].endswith("Z")


def test_the_outbox_row_and_the_jobs_change_commit_together(notify_app, api, monkeypatch):
    hook(api, "http://127.0.0.1:1/h")

    def broken(session, *args):
        session.execute(text("SELECT 1"))
        raise RuntimeError("the outbox insert failed")
    monkeypatch.setattr(outbox_module, "enqueue_for_job", broken)
    with notify_app.app_context():
        job_id = Job.create(owner=api.user.id, filename="a.pdf", mapping="m", bytes=1, sha256="5" * 64).id
        claim(job_id, "w", 30, capacity=10)
        with pytest.raises(RuntimeError):
            Job.complete(job_id, "w", "results/a.xml")
        db.session.remove()
        assert db.session.get(Job, job_id).status == "processing"  # no event, so no change either


# -- delivery -----------------------------------------------------------------------------------------


def test_a_completed_job_reaches_the_receiver_correctly_signed(notify_app, api, receiver, deliverer):
    made = hook(api, receiver.url + "/hooks?x=1")
    job_id = finish(notify_app, api.user.id)
    (headers, body), = receiver.wait_for(1, timeout=10)
    payload = Webhook(made["secret"]).verify(body, headers)  # raises unless the signature and timestamp are right
    assert payload["type"] == "job.complete" and payload["data"]["id"] == job_id
    assert headers["webhook-signature"].startswith("v1,")
    wait(lambda: outbox(notify_app)[0].state == "delivered")
    (row,) = outbox(notify_app)
    assert (headers["webhook-id"], row.attempts, row.last_status) == (row.id, 1, "200")
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 43).verify(body, headers)  # another secret does not verify


def test_a_receiver_down_for_a_while_then_up_gets_every_event(notify_app, api, deliverer):
    down = Receiver()  # not started: its port refuses connections
    hook(api, down.url + "/h")
    ids = [finish(notify_app, api.user.id, failed=n % 2) for n in range(5)]
    wait(lambda: all(row.attempts >= 2 for row in outbox(notify_app)))
    listed = api.get("/api/webhooks").get_json()["webhooks"][0]["deliveries"]
    assert listed["pending"] == 5 and listed["last_status"] == "connection refused" and listed["next_attempt_at"]
    page = api.get("/notifications").get_data(as_text=True)
    assert "connection refused" in page and "pending: 5" in page
    down.start()
    try:
        wait(lambda: len(down.ids()) == 5)
        assert {row.id for row in outbox(notify_app)} == down.ids()
        assert sorted(row.job_id for row in outbox(notify_app)) == sorted(ids)
        wait(lambda: all(row.state == "delivered" for row in outbox(notify_app)))
    finally:
        down.stop()


def test_a_disabled_users_webhooks_stop_what_was_pending_and_get_nothing_new(notify_app, api, receiver):
    hook(api, receiver.url + "/h")
    pending = finish(notify_app, api.user.id)  # written while they were active, not yet sent
    with notify_app.app_context():
        db.session.get(User, api.user.id).change(disabled=True)
        db.session.remove()
    finish(notify_app, api.user.id)  # their job still finishes, but keeps no event
    delivery.deliver_due(notify_app, delivery.Sender(notify_app.config))
    assert [(row.job_id, row.state, row.last_status) for row in outbox(notify_app)] == [
        (pending, "skipped", "skipped: the user is disabled")]
    assert receiver.ids() == set()


def test_an_event_left_leased_by_a_deliverer_that_died_is_sent_again_with_the_same_id(notify_app, api, receiver):
    hook(api, receiver.url + "/h")
    finish(notify_app, api.user.id)
    sender = delivery.Sender(notify_app.config)
    with notify_app.app_context():
        (claimed,) = delivery.claim_due(10, lease_seconds=60)  # a deliverer takes it, then is killed
        db.session.remove()
    assert delivery.deliver_due(notify_app, sender) == 0  # leased: nobody else sends it meanwhile
    with notify_app.app_context():
        with db.engine.begin() as connection:
            connection.execute(update(OutboxEvent.__table__).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert delivery.deliver_due(notify_app, sender) == 1
    assert receiver.ids() == {claimed.id}
    assert outbox(notify_app)[0].attempts == 2


def test_after_24_hours_of_failing_an_event_is_given_up_visibly(notify_app, api, receiver):
    receiver.status = 500
    hook(api, receiver.url + "/h")
    finish(notify_app, api.user.id)
    with notify_app.app_context():
        with db.engine.begin() as connection:
            connection.execute(update(OutboxEvent.__table__).values(created_at=utcnow() - timedelta(hours=25)))
    assert delivery.deliver_due(notify_app, delivery.Sender(notify_app.config)) == 1
    (row,) = outbox(notify_app)
    assert (row.state, row.last_status) == ("failed", "500")
    body = api.get("/metrics", headers=METRICS).get_data(as_text=True)
    assert 'pdfqueue_notifications_total{kind="webhook",outcome="gave_up"} 1.0' in body
    assert api.get(f"/api/webhooks/{api.get('/api/webhooks').get_json()['webhooks'][0]['id']}/deliveries") \
        .get_json()["deliveries"][0]["state"] == "failed"


def test_retention_forgets_settled_events_after_30_days_but_never_a_pending_one(notify_app, api, receiver):
    hook(api, receiver.url + "/h")
    finish(notify_app, api.user.id)
    finish(notify_app, api.user.id)
    with notify_app.app_context():
        with db.engine.begin() as connection:
            connection.execute(update(OutboxEvent.__table__).values(created_at=utcnow() - timedelta(days=31)))
            first = connection.execute(select(OutboxEvent.id).limit(1)).scalar()
            connection.execute(update(OutboxEvent.__table__).where(OutboxEvent.id == first).values(state="delivered"))
        assert operations.apply_retention()["notifications"] == 1
        db.session.remove()
    assert [row.state for row in outbox(notify_app)] == ["pending"]


def test_a_redirect_is_not_followed(notify_app, api, receiver):
    elsewhere = Receiver().start()
    try:
        receiver.status, receiver.location = 307, elsewhere.url + "/stolen"
        hook(api, receiver.url + "/h")
        finish(notify_app, api.user.id)
        delivery.deliver_due(notify_app, delivery.Sender(notify_app.config))
        (row,) = outbox(notify_app)
        assert (row.state, row.last_status) == ("pending", "307") and elsewhere.seen == []
    finally:
        elsewhere.stop()


def test_deliveries_and_the_pending_gauge_are_in_metrics(notify_app, api, receiver):
    hook(api, receiver.url + "/h")
    finish(notify_app, api.user.id)
    finish(notify_app, api.user.id)
    assert 'pdfqueue_notifications_pending{kind="webhook"} 2.0' in api.get("/metrics", headers=METRICS).get_data(as_text=True)
    delivery.deliver_due(notify_app, delivery.Sender(notify_app.config))
    body = api.get("/metrics", headers=METRICS).get_data(as_text=True)
    assert 'pdfqueue_notifications_total{kind="webhook",outcome="delivered"} 2.0' in body
    assert 'pdfqueue_notifications_pending{kind="webhook"} 0.0' in body


# -- SSRF at delivery: the address checked is the address called ---------------------------------------


def resolver(mapping, calls=None):
    """A getaddrinfo that answers from mapping (host -> addresses), counting its calls."""
    def resolve(host, port, type=0, **kwargs):
        if calls is not None:
            calls.append(host)
        if host not in mapping:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in mapping[host]]
    return resolve


def test_a_host_that_resolves_to_a_private_address_at_delivery_is_refused_dns_rebinding(notify_app, api, receiver):
    with notify_app.app_context():  # made while the name resolved to a public address
        outbox_module.Subscription.add_webhook(api.user.id, f"https://rebind.example:{receiver.port}/h", ["job.complete"], [],
                                        resolve=resolver({"rebind.example": [PUBLIC]}))
        db.session.remove()
    finish(notify_app, api.user.id)
    rebound = delivery.Sender(notify_app.config, resolve=resolver({"rebind.example": ["127.0.0.1"]}))
    delivery.deliver_due(notify_app, rebound)
    (row,) = outbox(notify_app)
    assert row.state == "pending" and row.last_status.startswith("refused:") and "loopback" in row.last_status
    assert receiver.seen == []  # never connected


@pytest.mark.parametrize("rebound", ["2002:7f00:1::", "10.0.0.7"])
def test_a_refusal_at_delivery_names_the_host_not_its_address_and_sees_through_6to4(notify_app, api, receiver,
                                                                                    rebound):
    with notify_app.app_context():
        outbox_module.Subscription.add_webhook(api.user.id, f"https://rebind.example:{receiver.port}/h",
                                               ["job.complete"], [], resolve=resolver({"rebind.example": [PUBLIC]}))
        db.session.remove()
    finish(notify_app, api.user.id)
    rebound_sender = delivery.Sender(notify_app.config, resolve=resolver({"rebind.example": [rebound]}))
    delivery.deliver_due(notify_app, rebound_sender)
    (row,) = outbox(notify_app)
    assert row.state == "pending" and row.last_status.startswith("refused:") and "rebind.example" in row.last_status
    assert rebound not in row.last_status and "127.0.0.1" not in row.last_status
    (listed,) = api.get("/api/webhooks").get_json()["webhooks"]
    assert rebound not in listed["deliveries"]["last_status"]
    assert receiver.seen == []


def test_delivery_connects_to_the_very_address_it_checked(notify_app, api, receiver):
    # hooks.test is in WEBHOOK_ALLOWED_HOSTS but no real DNS knows it: the delivery can only arrive if the
    # connection goes to the address the one resolution gave, never resolving the name again.
    calls = []
    hook(api, f"http://hooks.test:{receiver.port}/h")
    finish(notify_app, api.user.id)
    sender = delivery.Sender(notify_app.config, resolve=resolver({"hooks.test": ["127.0.0.1"]}, calls))
    delivery.deliver_due(notify_app, sender)
    ((headers, _),) = receiver.received
    assert headers["host"] == f"hooks.test:{receiver.port}" and calls == ["hooks.test"]


@pytest.mark.parametrize("addresses, refused", [
    ([PUBLIC], None), (["127.0.0.1"], "loopback"), (["10.0.0.7"], "private"), (["172.16.5.4"], "private"),
    (["169.254.169.254"], "link-local"), (["::1"], "loopback"), (["fd00::1"], "private"),
    (["::ffff:127.0.0.1"], "loopback"), (["100.64.0.1"], "private"), ([PUBLIC, "10.0.0.7"], "private"),
    (["2002:7f00:1::"], "loopback"), (["2002:a00:1::"], "private"), (["64:ff9b::a00:1"], "private"),
    (["64:ff9b::7f00:1"], "loopback"), (["64:ff9b:1::a00:1"], "private"), ([PUBLIC, "2002:a9fe:a9fe::"], "link-local"),
])
def test_every_address_a_name_resolves_to_must_be_public(addresses, refused):
    resolve = resolver({"h.example": addresses})
    if refused is None:
        assert outbox_module.pinned_address("h.example", 443, [], resolve) == PUBLIC
    else:
        with pytest.raises(outbox_module.NotifyError, match=refused) as caught:
            outbox_module.pinned_address("h.example", 443, [], resolve)
        assert caught.value.code == codes.PRIVATE_ADDRESS
    assert outbox_module.pinned_address("h.example", 443, ["H.example"], resolve) == addresses[0]  # listed: any address


def test_the_back_off_doubles_to_its_cap_with_jitter():
    config = {"WEBHOOK_RETRY_BASE_SECONDS": 10, "WEBHOOK_RETRY_MAX_SECONDS": 3600}
    assert [outbox_module.next_delay(n, config, rand=lambda: 0) for n in (1, 2, 3, 10, 30)] == [10, 20, 40, 3600, 3600]
    assert outbox_module.next_delay(2, config, rand=lambda: 1) == 30  # up to half the delay again


# -- email, through a real SMTP server on loopback ----------------------------------------------------


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.rcpt_tos, email.message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def smtp():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    inbox.url = f"smtp://127.0.0.1:{controller.port}"
    yield inbox
    controller.stop()


@pytest.fixture
def mail_app(make_app, smtp):
    return make_app(**FAST, SMTP_URL=smtp.url, SMTP_FROM="pdfqueue@example.com")


class Logins:
    """An aiosmtpd authenticator that takes any login and keeps what it was sent."""

    def __init__(self):
        self.seen = []

    def __call__(self, server, session, envelope, mechanism, auth_data):
        self.seen.append((mechanism, auth_data))
        return AuthResult(success=True)


@pytest.fixture
def plain_smtp(monkeypatch):
    """An SMTP server on loopback that offers no STARTTLS and takes passwords in clear; mail.example.com leads to it,
    standing for a server beyond this machine."""
    inbox, logins = Inbox(), Logins()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port(), auth_require_tls=False,
                            authenticator=logins)
    controller.start()
    inbox.port, inbox.logins = controller.port, logins
    connect = smtplib.SMTP._get_socket
    monkeypatch.setattr(smtplib.SMTP, "_get_socket", lambda client, host, port, timeout: connect(
        client, "127.0.0.1" if host == "mail.example.com" else host, port, timeout))
    yield inbox
    controller.stop()


def test_a_password_is_never_sent_in_clear_to_a_server_beyond_loopback(plain_smtp):
    mail = {"SMTP_TIMEOUT": 5, "SMTP_FROM": "pdfqueue@example.com"}
    for url in (f"smtp://user:s3cret@mail.example.com:{plain_smtp.port}?starttls=required",
                f"smtp://user:s3cret@mail.example.com:{plain_smtp.port}"):  # refused at start; refused here too
        with pytest.raises(smtplib.SMTPException, match="mail.example.com offers no STARTTLS"):
            delivery.send_email({**mail, "SMTP_URL": url}, "someone@example.com", "subject", "text")
    assert plain_smtp.logins.seen == [] and plain_smtp.messages == []
    # on loopback the password never leaves this machine: the same server takes it
    delivery.send_email({**mail, "SMTP_URL": f"smtp://user:s3cret@127.0.0.1:{plain_smtp.port}"},
                        "someone@example.com", "subject", "text")
    assert len(plain_smtp.logins.seen) == 1 and len(plain_smtp.messages) == 1


def test_an_email_when_a_batch_finishes_and_when_a_job_fails_for_good(mail_app, smtp):
    api = ApiClient(mail_app.test_client())
    response = api.post("/notifications/email", data={"events": ["batch.finished", "job.failed"],
                                                      "csrf_token": api.token})
    assert response.status_code == 303
    sender = delivery.Sender(mail_app.config)
    with mail_app.app_context():
        first_id = Job.create(owner=api.user.id, filename="first.pdf", mapping="pt_simon_invoice_v1", bytes=10,
                              sha256="6" * 64, upload_path="uploads/x.pdf").id
        waiting_id = Job.create(owner=api.user.id, filename="last.pdf", mapping="m", bytes=1, sha256="7" * 64).id
        assert claim(first_id, "w", 30, capacity=10)  # the first uploaded is claimed first
        assert Job.complete(first_id, "w", "results/x.xml")
        db.session.remove()
    delivery.deliver_due(mail_app, sender)
    assert smtp.messages == []  # a job is still queued: the batch is not done
    assert [row.state for row in outbox(mail_app)] == ["skipped"]
    with mail_app.app_context():
        claim(waiting_id, "w", 30, capacity=10)
        Job.fail(waiting_id, "w", codes.GW_4XX, "the PDF is encrypted")
        db.session.remove()
    delivery.deliver_due(mail_app, sender)
    subjects = sorted(message["Subject"] for _, message in smtp.messages)
    assert subjects == ["pdfqueue: batch done (1 complete, 1 failed)", "pdfqueue: last.pdf failed"]
    assert all(to == [api.user.email] for to, _ in smtp.messages)
    failed = next(message for _, message in smtp.messages if "failed" == message["Subject"].split()[-1])
    assert "the PDF is encrypted" in failed.get_payload() and failed["From"] == "pdfqueue@example.com"
    assert {row.state for row in outbox(mail_app)} == {"skipped", "delivered"}


def test_an_email_is_written_in_its_recipients_language(mail_app, smtp):
    api = ApiClient(mail_app.test_client())
    api.post("/notifications/email", data={"events": ["job.failed"], "csrf_token": api.token})
    api.post("/language", data={"locale": "pt_PT", "csrf_token": api.token})  # chosen in the pages' menu
    with mail_app.app_context():
        job_id = Job.create(owner=api.user.id, filename="fatura.pdf", mapping="pt_simon_invoice_v1", bytes=10,
                            sha256="8" * 64, upload_path="uploads/y.pdf").id
        assert claim(job_id, "w", 30, capacity=10)
        Job.fail(job_id, "w", codes.GW_4XX, "the PDF is encrypted")
        db.session.remove()
    delivery.deliver_due(mail_app, delivery.Sender(mail_app.config))
    [(_, message)] = smtp.messages
    assert message["Subject"] == "pdfqueue: fatura.pdf falhou"
    body = message.get_payload(decode=True).decode()
    assert "Não foi possível converter fatura.pdf: the PDF is encrypted (GW_4XX)." in body
    assert f"Veja-a em {mail_app.config['PUBLIC_URL']}/review/{job_id}" in body


def test_a_disabled_user_gets_no_email(mail_app, smtp):
    api = ApiClient(mail_app.test_client())
    assert api.post("/notifications/email", data={"events": ["job.failed"], "csrf_token": api.token}).status_code == 303
    finish(mail_app, api.user.id, failed=True)
    with mail_app.app_context():
        db.session.get(User, api.user.id).change(disabled=True)
        db.session.remove()
    finish(mail_app, api.user.id, failed=True)
    delivery.deliver_due(mail_app, delivery.Sender(mail_app.config))
    assert smtp.messages == [] and [row.state for row in outbox(mail_app)] == ["skipped"]


def test_admins_get_a_daily_digest_of_failures(mail_app, smtp):
    admin, _ = signed_in(mail_app, admin=True)
    user, _ = signed_in(mail_app)
    finish(mail_app, user.id, failed=True)
    finish(mail_app, user.id)
    with mail_app.app_context():
        assert delivery.enqueue_failure_digest() == 1
        db.session.remove()
    delivery.deliver_due(mail_app, delivery.Sender(mail_app.config))
    ((to, message),) = smtp.messages
    assert to == [admin.email] and message["Subject"] == "pdfqueue: 1 failed jobs in the last day"
    assert user.email in message.get_payload() and "GW_4XX" in message.get_payload()


def test_the_digest_is_due_once_a_day(mail_app, smtp):
    signed_in(mail_app, admin=True)
    user, _ = signed_in(mail_app)
    finish(mail_app, user.id, failed=True)
    with mail_app.app_context():
        upkeep.send_failure_digest()  # the first tick only sets when
        assert outbox(mail_app) == []
        from core.coordination import Coordination
        Coordination.put(upkeep.DIGEST_DUE, due_at=utcnow() - timedelta(seconds=1))
        upkeep.send_failure_digest()
        upkeep.send_failure_digest()
        db.session.remove()
    assert [row.type for row in outbox(mail_app)] == ["digest.failures"]


def test_email_choices_need_smtp(api):
    response = api.post("/notifications/email", data={"events": ["job.failed"], "csrf_token": api.token})
    assert response.status_code == 400 and codes.EMAIL_OFF in response.get_data(as_text=True)


# -- the page -----------------------------------------------------------------------------------------


def test_the_settings_page_makes_a_webhook_and_shows_its_secret_once(notify_app, api):
    assert 'href="/notifications"' in api.get("/").get_data(as_text=True) or \
        'href="/notifications"' in api.get("/queue").get_data(as_text=True)
    made = api.post("/notifications/webhooks", data={"url": "http://127.0.0.1:1/h", "events": ["job.failed"],
                                                     "csrf_token": api.token})
    page = made.get_data(as_text=True)
    assert made.status_code == 200 and "whsec_" in page and "http://127.0.0.1:1/h" in page
    again = api.get("/notifications").get_data(as_text=True)
    assert "whsec_" not in again and "http://127.0.0.1:1/h" in again
    refused = api.post("/notifications/webhooks", data={"url": "https://10.0.0.1/h", "events": ["job.failed"],
                                                        "csrf_token": api.token})
    assert refused.status_code == 400 and codes.PRIVATE_ADDRESS in refused.get_data(as_text=True)
    no_csrf = api.raw.post("/notifications/webhooks", data={"url": "http://127.0.0.1:2/h", "events": ["job.failed"]})
    assert no_csrf.status_code == 400
    (hook_id,) = [h["id"] for h in api.get("/api/webhooks").get_json()["webhooks"]]
    assert api.post(f"/notifications/webhooks/{hook_id}/delete", data={"csrf_token": api.token}).status_code == 303
    assert api.get("/api/webhooks").get_json()["webhooks"] == []


def test_the_deliveries_partial_refreshes_while_any_is_pending(notify_app, api):
    hook(api, "http://127.0.0.1:1/h")
    assert "hx-trigger" not in api.get("/notifications/deliveries").get_data(as_text=True)
    finish(notify_app, api.user.id)
    partial = api.get("/notifications/deliveries").get_data(as_text=True)
    assert 'hx-trigger="every 5s"' in partial and "job.complete" in partial


def test_migration_0009_up_and_down(tmp_path):
    from flask_migrate import downgrade, upgrade

    from webapp import create_app
    app = create_app({"DATA_DIR": str(tmp_path), "TESTING": True, "SECRET_KEY": "test-secret-key-0123456789abcdefghijklmnop",
                      "HUEY_MEMORY": True})
    with app.app_context():
        upgrade(directory=app.config["MIGRATIONS_DIR"])
        user_id = User.create("m@example.com").id
        outbox_module.Subscription.choose_email(user_id, ["job.failed"])
        assert outbox_module.Subscription.email_of(user_id) == ["job.failed"]
        db.session.remove()
        downgrade(directory=app.config["MIGRATIONS_DIR"], revision="0008_share_nonce")
        tables = {row[0] for row in db.session.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))}
        assert "outbox" not in tables and "subscriptions" not in tables and "users" in tables
        db.session.remove()
        upgrade(directory=app.config["MIGRATIONS_DIR"])
        assert outbox_module.Subscription.email_of(user_id) == []
        db.session.remove()
        db.engine.dispose()
