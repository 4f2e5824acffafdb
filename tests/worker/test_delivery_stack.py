"""Webhooks on the real processes (tests/support/stack.py: gunicorn web, worker.py, a fake gateway): a completed job's
event reaches a receiver on loopback, signed; a worker SIGKILLed with events undelivered, some of them mid-
delivery, sends them all once it is started again."""
import json
import os
import signal
import sqlite3
import time
from datetime import datetime, timezone

import pytest
from standardwebhooks import Webhook

from tests.support.app import pdf_bytes
from tests.support.receiver import Receiver
from tests.support.stack import owner_session, running_stack

# Leases of a delivery are its timeouts plus a margin (worker/delivery.py): short timeouts keep the wait short.
SETTINGS = {"WEBHOOK_ALLOWED_HOSTS": "127.0.0.1", "WEBHOOK_RETRY_BASE_SECONDS": 0.2, "WEBHOOK_RETRY_MAX_SECONDS": 0.5,
            "WEBHOOK_CONNECT_TIMEOUT": 1, "WEBHOOK_READ_TIMEOUT": 1, "SMTP_TIMEOUT": 0.5, "WEBHOOK_LEASE_MARGIN_SECONDS": 1,
            "WEBHOOK_POLL_SECONDS": 0.2, "MAINTENANCE_SECONDS": 0.5, "UPLOADS_PER_MINUTE": 1000}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(gateway_delay=0.05, data_dir=tmp_path_factory.mktemp("hooks"), **SETTINGS) as running:
        yield running


def upload(session, stack, tag):
    response = session.post(f"{stack.web_url}/api/upload", files={"file": (f"{tag}.pdf", pdf_bytes(tag))})
    assert response.status_code == 202, response.text
    return response.json()["jobs"][0]["id"]


def outbox_states(stack):
    with sqlite3.connect(stack.data_dir / "instance" / "pdfqueue.db") as connection:
        return dict(connection.execute("SELECT id, state FROM outbox").fetchall())


def test_a_completed_job_reaches_the_receiver_signed(stack):
    receiver = Receiver().start()
    try:
        session = owner_session(stack)
        made = session.post(f"{stack.web_url}/api/webhooks", json={"url": receiver.url + "/hook",
                                                                   "events": ["job.complete"]}).json()
        job_id = upload(session, stack, "signed")
        (headers, body), = receiver.wait_for(1, timeout=30)
        arrived = datetime.now(timezone.utc)
        payload = Webhook(made["secret"]).verify(body, headers)
        assert (payload["type"], payload["data"]["id"], payload["data"]["status"]) == ("job.complete", job_id,
                                                                                       "complete")
        completed = datetime.fromisoformat(payload["data"]["completed_at"].replace("Z", "+00:00"))
        print(f"delivered {(arrived - completed).total_seconds():.3f} s after completion")
        # The deliverer records the answer once it has read it, after the receiver kept the request: wait for that.
        deadline = time.monotonic() + 10
        while True:
            hooks = session.get(f"{stack.web_url}/api/webhooks").json()["webhooks"]
            if hooks[0]["deliveries"]["last_status"] is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert hooks[0]["deliveries"]["last_status"] == "200"
    finally:
        receiver.stop()


def test_a_worker_killed_with_events_undelivered_sends_them_after_restart(stack):
    receiver = Receiver().start()
    receiver.hanging.set()  # deliveries are held mid-request: the worker is killed while sending them
    try:
        session = owner_session(stack)
        session.post(f"{stack.web_url}/api/webhooks", json={"url": receiver.url + "/hook", "events": ["job.complete"]})
        jobs = [upload(session, stack, f"killed-{n}") for n in range(3)]
        receiver.wait_for(3, timeout=30, source=receiver.seen)  # every job complete, its event sent, unanswered
        assert len(receiver.seen) >= 3, "the deliveries were not in flight"
        worker = stack.procs.pop("worker")
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        receiver.hanging.clear()
        receiver.released.set()
        assert receiver.received == []
        pending = [event for event, state in outbox_states(stack).items() if state == "pending"]
        stack.start_again("worker")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(state == "pending" for state in outbox_states(stack).values()):
            time.sleep(0.1)
        states = outbox_states(stack)
        assert set(pending) <= receiver.ids()  # every event undelivered at the kill arrived after the restart
        payload_jobs = {json.loads(body)["data"]["id"] for _, body in receiver.received}
        assert set(jobs) <= payload_jobs and all(states[event] == "delivered" for event in pending)
    finally:
        receiver.stop()
