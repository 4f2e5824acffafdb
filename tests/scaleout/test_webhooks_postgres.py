"""The outbox on PostgreSQL: the transition's INSERT … SELECT, and two deliverers racing for the same events
(each worker runs one) send each event once per claim, every event delivered."""
import threading

import pytest

from tests.support.app import ApiClient
from tests.support.receiver import Receiver
from tests.support.services import postgres_cluster
from tests.web.test_webhooks import FAST, METRICS, finish, hook, outbox
from worker import delivery
from core import counters
from core.db import db


@pytest.fixture
def pg_app(make_app):
    with postgres_cluster() as database_url:
        app = make_app(DATABASE_URL=database_url, **FAST)
        yield app
        with app.app_context():  # before the cluster stops: the last second's counters, the pool
            counters.flush()
            db.engine.dispose()


def test_two_deliverers_on_postgres_deliver_every_event_once(pg_app):
    receiver = Receiver().start()
    try:
        api = ApiClient(pg_app.test_client())
        hook(api, receiver.url + "/h")
        jobs = {finish(pg_app, api.user.id, failed=n % 3 == 0) for n in range(40)}
        senders = [delivery.Sender(pg_app.config) for _ in range(2)]
        threads = [threading.Thread(target=lambda s=s: [delivery.deliver_due(pg_app, s, limit=7) for _ in range(10)])
                   for s in senders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rows = outbox(pg_app)
        assert {row.job_id for row in rows} == jobs and all(row.state == "delivered" for row in rows)
        assert len(receiver.received) == len(rows) == len(receiver.ids())  # no event sent twice
        scrape = api.get("/metrics", headers=METRICS).get_data(as_text=True)
        assert 'pdfqueue_notifications_pending{kind="webhook"} 0.0' in scrape
    finally:
        receiver.stop()
