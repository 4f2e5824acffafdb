"""Intake drills on the real processes: a worker SIGKILLed between committing a message's jobs and moving the
message, and the IMAP server stopped for a while; each loses nothing and duplicates nothing.

    make faults PYTEST_ARGS="-k intake"
    INTAKE_OUTAGE_SECONDS=60 make faults PYTEST_ARGS="-k stopped"    # the server down for the issue's full minute
"""
import os
import re
import signal
import sys
import time
from email.message import EmailMessage

import pytest
import requests
from sqlalchemy import func, select

from core.db import db
from core.jobs.model import Job
from core.sources import Source
from tests.support.app import pdf_bytes
from tests.support.people import with_token
from tests.support.services import dovecot_server
from tests.support.stack import MONITOR, WORKER, running_stack

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

# Upkeep twice a second, a poll's lease of 3 s (a killed poller's lapses fast), polls each second, back-off 1-4 s.
FAST = {"MAINTENANCE_SECONDS": 0.5, "LEASE_SECONDS": 3, "INTAKE_POLL_SECONDS": 1, "INTAKE_LEASE_SECONDS": 3,
        "INTAKE_RETRY_BASE_SECONDS": 1, "INTAKE_RETRY_MAX_SECONDS": 4, "LOG_LEVEL": "INFO"}
OUTAGE_SECONDS = float(os.environ.get("INTAKE_OUTAGE_SECONDS", "5"))  # the "a minute", shortened
# A worker whose moves of messages kill it: it dies after committing a message's jobs, before the message moves.
DIES_BEFORE_MOVE = [sys.executable, "-c", "import os, signal, imap_tools.mailbox as m; "
                    "m.BaseMailBox.move = lambda *args, **kw: os.kill(os.getpid(), signal.SIGKILL); "
                    "from worker.consumer import main; main()"]


def mail(subject, *tags):
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "billing@supplier.example", "invoices@example.com", subject
    message["Message-ID"] = f"<{subject.replace(' ', '-')}@supplier.example>"
    message.set_content("Attached.")
    for tag in tags:
        message.add_attachment(pdf_bytes(tag), maintype="application", subtype="pdf", filename=f"{tag}.pdf")
    return message.as_bytes()


def wait_for(condition, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def jobs(stack, owner):
    with stack.app().app_context():
        found = db.session.execute(select(Job.filename, func.count()).where(Job.owner == owner.id)
                                   .group_by(Job.filename)).all()
        db.session.remove()
        return dict(found)


def source(stack):
    with stack.app().app_context():
        row = db.session.execute(select(Source)).scalar_one()
        db.session.expunge_all()
        db.session.remove()
        return row


def folder_subjects(server, folder):
    box = server.mailbox()
    try:
        if not box.folder.exists(folder):
            return []
        box.folder.set(folder)
        return sorted(message.subject for message in box.fetch(mark_seen=False))
    finally:
        box.logout()


def add_source(stack, server, owner):
    stack.flask("sources", "add", server.url(), "--owner", owner.email,
                env={**stack.env, "PDFQUEUE_SOURCE_PASSWORD": server.PASSWORD})


def test_a_worker_killed_between_the_jobs_and_the_move_loses_and_duplicates_nothing(tmp_path):
    with dovecot_server() as server, running_stack(data_dir=tmp_path, workers=0, **FAST) as stack:
        owner, _ = with_token(stack.app())
        box = server.mailbox()
        box.append(mail("two invoices", "k1", "k2"))
        box.append(mail("one more", "k3"))
        box.logout()
        add_source(stack, server, owner)
        doomed = stack.start("worker", DIES_BEFORE_MOVE)
        wait_for(lambda: doomed.poll() is not None, "the worker to die at its first move")
        assert doomed.returncode == -signal.SIGKILL
        assert jobs(stack, owner) == {"k1.pdf": 1, "k2.pdf": 1}  # the first message's jobs, committed
        assert folder_subjects(server, "INBOX") == ["one more", "two invoices"]  # and the message still there
        stack.procs.pop("worker", None)

        stack.start("worker", WORKER)  # its poll's lease lapses; the next worker finds both messages again
        wait_for(lambda: folder_subjects(server, "INBOX") == [], "the mailbox to drain")
        assert jobs(stack, owner) == {"k1.pdf": 1, "k2.pdf": 1, "k3.pdf": 1}
        assert folder_subjects(server, "pdfqueue/done") == ["one more", "two invoices"]
        assert folder_subjects(server, "pdfqueue/rejected") == []


def test_the_imap_server_stopped_for_a_while_delays_mail_and_loses_none(tmp_path):
    with dovecot_server() as server, running_stack(data_dir=tmp_path, **FAST) as stack:
        owner, _ = with_token(stack.app())
        add_source(stack, server, owner)
        wait_for(lambda: source(stack).last_ok_at is not None, "a first good poll")
        server.stop()
        # Mail keeps arriving while IMAP is down (the MTA delivers into the maildir, as Dovecot's LDA would).
        new = server.root / "mail" / server.USER / "new"
        for number in range(3):
            (new / f"{time.time()}.outage{number}.host").write_bytes(mail(f"during outage {number}", f"o{number}"))
        failing = wait_for(lambda: (row := source(stack)).errors and row, "the failed poll on the source")
        # Refused, or broken off when the server stopped in the middle of a poll.
        assert re.search("connection refused|broke off", failing.last_error) and failing.next_poll_at is not None
        errors_metric = 'pdfqueue_intake_errors_total{source="%d"}' % failing.id  # the worker writes it within 1 s
        wait_for(lambda: errors_metric in requests.get(f"{stack.web_url}/metrics", headers=MONITOR, timeout=10).text,
                 "the failed polls in /metrics")
        time.sleep(OUTAGE_SECONDS)  # the outage itself: the server stays down this long
        assert jobs(stack, owner) == {}
        down = source(stack)
        assert down.errors >= failing.errors and down.failures >= 1 and down.last_ok_at == failing.last_ok_at

        server.start()
        wait_for(lambda: len(jobs(stack, owner)) == 3, "the mail kept during the outage", timeout=60)
        wait_for(lambda: folder_subjects(server, "INBOX") == [], "the mailbox to drain")
        assert jobs(stack, owner) == {"o0.pdf": 1, "o1.pdf": 1, "o2.pdf": 1}
        recovered = source(stack)
        assert recovered.failures == 0 and recovered.last_error is None
