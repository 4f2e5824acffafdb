"""Intake from a real IMAP server (Dovecot on loopback) and from folders, driven through the admin CLI
(`flask --app wsgi sources ...`) as an operator does: each acceptable PDF one job, every message or file in its
place, nothing twice, and failures shown on the source rather than mail dropped."""
import hashlib
import json
from email.message import EmailMessage

import pytest
from sqlalchemy import select

from core.db import db
from core.jobs.model import Job
from core.sources import Source
from tests.support.app import pdf_bytes
from tests.support.people import signed_in
from tests.support.services import dovecot_server

DONE, REJECTED = "pdfqueue/done", "pdfqueue/rejected"


@pytest.fixture(scope="module")
def dovecot():
    with dovecot_server() as server:
        yield server


@pytest.fixture
def mailbox(dovecot):
    """The user's mailbox, emptied of what earlier tests left (every folder but INBOX gone, INBOX empty)."""
    box = dovecot.mailbox()
    for info in sorted(box.folder.list(), key=lambda info: -len(info.name)):
        if info.name != "INBOX":
            box.folder.delete(info.name)
    box.folder.set("INBOX")
    uids = box.uids()
    if uids:
        box.delete(uids)
    yield box
    box.logout()


def message(sender="billing@supplier.example", subject="Invoice", attachments=(), message_id=None):
    """An email with attachments, each (bytes, filename, content type)."""
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = sender, "invoices@example.com", subject
    mail["Message-ID"] = message_id or f"<{hashlib.sha1(subject.encode()).hexdigest()}@supplier.example>"
    mail.set_content("Please find attached.")
    for content, name, kind in attachments:
        maintype, subtype = kind.split("/")
        mail.add_attachment(content, maintype=maintype, subtype=subtype, filename=name)
    return mail.as_bytes()


def pdf(tag, size=None):
    return (pdf_bytes(tag, size), f"{tag}.pdf", "application/pdf")


def subjects(box, folder):
    box.folder.set(folder)
    found = sorted(mail.subject for mail in box.fetch(mark_seen=False))
    box.folder.set("INBOX")
    return found


@pytest.fixture
def app(make_app):
    return make_app(MAX_UPLOAD_MB=1, INTAKE_SETTLE_SECONDS=0.3, INTAKE_RETRY_BASE_SECONDS=30)


@pytest.fixture
def owner(app):
    user, cookie = signed_in(app)
    user.cookie = cookie
    return user


def cli(app, *args, env=None):
    result = app.test_cli_runner().invoke(args=["sources", *args], env=env)
    return result


def add_mailbox(app, dovecot, owner, *extra, password=None):
    """`sources add imap://…` with the password from PDFQUEUE_SOURCE_PASSWORD, as a script does: the source's id."""
    result = cli(app, "add", dovecot.url(), "--owner", owner.email, *extra,
                 env={"PDFQUEUE_SOURCE_PASSWORD": password or dovecot.PASSWORD})
    assert result.exit_code == 0, result.output
    return int(result.output.split()[1])


def jobs_of(app, owner):
    with app.app_context():
        jobs = db.session.execute(select(Job).where(Job.owner == owner.id).order_by(Job.filename)).scalars().all()
        db.session.expunge_all()
        return jobs


def source_row(app, source_id):
    with app.app_context():
        source = db.session.get(Source, source_id)
        db.session.expunge_all()
        return source


def test_each_acceptable_pdf_becomes_one_job_and_every_message_ends_in_its_folder(app, dovecot, mailbox, owner):
    big = pdf("oversized", size=1024 * 1024 + 10)  # MAX_UPLOAD_MB=1
    for mail in (message(subject="one pdf", attachments=[pdf("a")]),
                 message(subject="three pdfs", attachments=[pdf("b"), pdf("c"), pdf("d")]),
                 message(subject="an image", attachments=[(b"\x89PNG\r\n\x1a\n" + b"0" * 100, "scan.png",
                                                           "image/png")]),
                 message(subject="too large", attachments=[big]),
                 message(subject="again", attachments=[pdf("a")]),  # the same file as "one pdf"
                 message(subject="no attachment"),
                 message(subject="pdf and fake", attachments=[pdf("e"), (b"not a pdf", "fake.pdf", "application/pdf")]),
                 message(sender="stranger@elsewhere.example", subject="stranger", attachments=[pdf("f")])):
        mailbox.append(mail)
    source_id = add_mailbox(app, dovecot, owner, "--from", "billing@supplier.example", "--from", "Other@Supplier.example")

    result = cli(app, "poll", str(source_id))
    assert result.exit_code == 0, result.output
    jobs = jobs_of(app, owner)
    assert [job.filename for job in jobs] == ["a.pdf", "b.pdf", "c.pdf", "d.pdf", "e.pdf"]
    assert all(job.status == "queued" and job.source_id == source_id for job in jobs)
    three = [job for job in jobs if job.source_subject == "three pdfs"]
    assert len(three) == 3 and {job.source_from for job in three} == {"billing@supplier.example"}
    assert all(job.source_message_id.endswith("@supplier.example>") for job in three)
    assert subjects(mailbox, "INBOX") == []
    assert subjects(mailbox, DONE) == ["again", "one pdf", "pdf and fake", "three pdfs"]
    assert subjects(mailbox, REJECTED) == ["an image", "no attachment", "stranger", "too large"]
    assert "rejected fake.pdf: fake.pdf is not a PDF" in result.output
    assert "took b.pdf" in result.output

    again = cli(app, "poll", str(source_id))  # the same messages put back: dedupe, not UIDs, keeps them single
    assert again.exit_code == 0 and "nothing new" in again.output
    mailbox.folder.set(DONE)
    mailbox.move(mailbox.uids(), "INBOX")
    mailbox.folder.set("INBOX")
    third = cli(app, "poll", str(source_id))
    assert third.exit_code == 0, third.output
    assert len(jobs_of(app, owner)) == 5 and "(job" in third.output and ", duplicate)" in third.output
    assert subjects(mailbox, "INBOX") == []
    row = source_row(app, source_id)
    assert (row.files_taken, row.polls, row.errors, row.last_error) == (6 + 6, 3, 0, None)  # duplicates taken too


def test_the_api_and_the_list_say_where_a_job_came_from(app, dovecot, mailbox, owner):
    mailbox.append(message(subject="Fatura 12/2026", attachments=[pdf("api")], message_id="<m-12@supplier.example>"))
    source_id = add_mailbox(app, dovecot, owner)
    assert cli(app, "poll").exit_code == 0
    client = app.test_client()
    client.set_cookie(app.config["SESSION_COOKIE_NAME"], owner.cookie)
    job_id = jobs_of(app, owner)[0].id
    answer = client.get(f"/api/jobs/{job_id}").get_json()
    assert answer["source"] == {"id": source_id, "kind": "imap", "from": "billing@supplier.example",
                                "subject": "Fatura 12/2026", "message_id": "<m-12@supplier.example>"}
    listed = [json.loads(line) for line in cli(app, "list", "--json").output.splitlines()]
    assert listed[0]["id"] == source_id and listed[0]["files_taken"] == 1 and listed[0]["owner_email"] == owner.email
    assert "password" not in json.dumps(listed) and dovecot.PASSWORD not in json.dumps(listed)
