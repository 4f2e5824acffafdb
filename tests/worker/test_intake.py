"""Intake from a real IMAP server (Dovecot on loopback) and from folders, driven through the admin CLI
(`flask --app wsgi sources ...`) as an operator does: each acceptable PDF one job, every message or file in its
place, nothing twice, and failures shown on the source rather than mail dropped."""
import contextlib
import hashlib
import json
import os
import threading
import time
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from core.clock import utcnow
from core.db import db
from core.jobs.model import Job
from core.sources import Source
from tests.support.app import pdf_bytes
from tests.support.people import signed_in
from tests.support.services import dovecot_server, free_port

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


def test_a_wrong_password_is_shown_retried_later_and_drops_no_mail(app, dovecot, mailbox, owner):
    mailbox.append(message(subject="waits", attachments=[pdf("waits")]))
    source_id = add_mailbox(app, dovecot, owner, password="not the password")
    result = cli(app, "poll", str(source_id))
    assert result.exit_code == 1 and "refused the user name or password of invoices" in result.output
    row = source_row(app, source_id)
    assert row.failures == 1 and row.errors == 1 and "refused" in row.last_error
    assert row.next_poll_at > utcnow() + timedelta(seconds=20)  # back-off: INTAKE_RETRY_BASE_SECONDS=30
    assert row.lease_holder is None
    assert subjects(mailbox, "INBOX") == ["waits"] and jobs_of(app, owner) == []
    with app.app_context():
        assert Source.due_ids() == []  # backing off: the worker leaves it alone for now
    assert "last error: " in cli(app, "list").output


def test_a_server_that_is_down_is_an_error_on_the_source_not_lost_mail(app, dovecot, owner):
    source_id = add_mailbox(app, dovecot, owner)
    with app.app_context():
        db.session.execute(Source.__table__.update().values(url=f"imap://invoices@127.0.0.1:{free_port()}/INBOX"))
        db.session.commit()
    result = cli(app, "poll", str(source_id))
    assert result.exit_code == 1 and "connection refused" in result.output
    assert "connection refused" in source_row(app, source_id).last_error


def test_no_room_keeps_the_message_in_the_mailbox_for_a_later_poll(make_app, dovecot, mailbox):
    app = make_app(USER_QUOTA_MB=0)  # every file would pass the owner's quota: 507, the box's fault, not the mail's
    owner = signed_in(app)[0]
    mailbox.append(message(subject="no room", attachments=[pdf("room")]))
    source_id = add_mailbox(app, dovecot, owner)
    result = cli(app, "poll", str(source_id))
    assert result.exit_code == 1 and "storage quota" in result.output
    assert subjects(mailbox, "INBOX") == ["no room"] and jobs_of(app, owner) == []
    assert list(Path(app.config["UPLOAD_DIR"]).iterdir()) == []  # nothing half-kept
    app.config["USER_QUOTA_MB"] = 100  # the admin made room
    assert cli(app, "poll", str(source_id)).exit_code == 0
    assert [job.filename for job in jobs_of(app, owner)] == ["room.pdf"] and subjects(mailbox, "INBOX") == []


def test_a_source_takes_no_more_than_its_rate_a_minute_and_leaves_the_rest_waiting(make_app, dovecot, mailbox):
    app = make_app(INTAKE_FILES_PER_MINUTE=2)
    owner = signed_in(app)[0]
    for tag in ("r1", "r2", "r3"):
        mailbox.append(message(subject=tag, attachments=[pdf(tag)]))
    source_id = add_mailbox(app, dovecot, owner)
    assert cli(app, "poll", str(source_id)).exit_code == 0
    assert len(jobs_of(app, owner)) == 2 and len(subjects(mailbox, "INBOX")) == 1
    row = source_row(app, source_id)
    assert row.window_files == 2 and row.next_poll_at <= row.window_started_at + timedelta(seconds=61)
    assert "nothing new" in cli(app, "poll", str(source_id)).output  # the minute's two are spent
    assert len(subjects(mailbox, "INBOX")) == 1


def test_a_poll_never_starts_while_the_sources_previous_one_runs(app, dovecot, mailbox, owner):
    mailbox.append(message(subject="once", attachments=[pdf("once")]))
    source_id = add_mailbox(app, dovecot, owner)
    with app.app_context():
        assert Source.take_lease(source_id, "another-worker:1", 60)  # a poll of it is under way elsewhere
    result = cli(app, "poll", str(source_id))
    assert "under way elsewhere; nothing done" in result.output and jobs_of(app, owner) == []
    with app.app_context():
        db.session.execute(Source.__table__.update().values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()  # that worker died: its lease lapses and the source is polled again
    assert "took once.pdf" in cli(app, "poll", str(source_id)).output


def test_the_password_is_kept_encrypted_and_follows_the_key_rotation(make_app, dovecot, mailbox, tmp_path):
    old_key, new_key = "o" * 40, "n" * 40
    app = make_app(SECRET_KEY=old_key)
    owner = signed_in(app)[0]
    source_id = add_mailbox(app, dovecot, owner)
    with app.app_context():
        stored = db.session.get(Source, source_id).secret
    assert dovecot.PASSWORD not in stored and dovecot.PASSWORD.encode().hex() not in stored
    mailbox.append(message(subject="rotated", attachments=[pdf("rotated")]))
    rotated = make_app(SECRET_KEY=new_key, SECRET_KEY_FALLBACKS=[old_key])
    assert "took rotated.pdf" in cli(rotated, "poll", str(source_id)).output
    lost = make_app(SECRET_KEY=new_key)  # the old key dropped before the password was set again
    result = cli(lost, "poll", str(source_id))
    assert result.exit_code == 1 and "cannot be read with SECRET_KEY" in result.output


@pytest.mark.parametrize("url, says", [
    ("http://example.com/INBOX", "not a source URL"),
    ("imap://mail.example.com/INBOX", "user and host are missing"),
    ("imaps://me:secret@mail.example.com/INBOX", "Leave the password out"),
    ("folder://relative/path", "folder:///ABSOLUTE/PATH"),
    ("folder:///no/such/folder/anywhere", "is not a folder on this machine"),
])
def test_a_bad_source_is_refused_with_what_is_wrong(app, owner, url, says):
    result = cli(app, "add", url, "--owner", owner.email, env={"PDFQUEUE_SOURCE_PASSWORD": "x"})
    assert result.exit_code == 1 and says in result.output
    with app.app_context():
        assert Source.listed() == []


def test_an_unknown_owner_or_mapping_is_refused(app, owner, tmp_path):
    assert "No account for" in cli(app, "add", f"folder://{tmp_path}", "--owner", "nobody@example.com").output
    result = cli(app, "add", f"folder://{tmp_path}", "--owner", owner.email, "--mapping", "nope")
    assert result.exit_code == 1 and "Unknown mapping 'nope'" in result.output


def test_disable_enable_and_remove(app, owner, tmp_path):
    added = cli(app, "add", f"folder://{tmp_path}", "--owner", owner.email)
    source_id = int(added.output.split()[1])
    assert cli(app, "disable", str(source_id)).output == f"source {source_id} disabled\n"
    assert "off" in cli(app, "list").output
    with app.app_context():
        assert Source.due_ids() == []
    assert cli(app, "enable", str(source_id)).exit_code == 0
    with app.app_context():
        assert Source.due_ids() == [source_id]
    assert cli(app, "remove", str(source_id)).output == f"source {source_id} removed\n"
    assert "no source" in cli(app, "remove", str(source_id)).output
    assert "No sources yet." in cli(app, "list").output


# -- folders ----------------------------------------------------------------------------------------------------------

@pytest.fixture
def inbox(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    return folder


def add_folder(app, owner, folder):
    result = cli(app, "add", f"folder://{folder}", "--owner", owner.email)
    assert result.exit_code == 0, result.output
    return int(result.output.split()[1])


def settled(path, seconds=5):
    """Make a file look written seconds ago (instead of waiting out INTAKE_SETTLE_SECONDS)."""
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


def test_a_file_written_slowly_is_taken_only_once_complete(app, owner, inbox):
    source_id = add_folder(app, owner, inbox)
    whole = pdf_bytes("slow", size=64 * 1024)
    target = inbox / "slow.pdf"
    written = threading.Event()

    def write_slowly():
        with open(target, "wb") as handle:
            for start in range(0, len(whole), 4096):
                handle.write(whole[start:start + 4096])
                handle.flush()
                time.sleep(0.05)  # a scanner on a slow share: ~0.8 s for the file, each gap shorter than the settle
        written.set()

    writer = threading.Thread(target=write_slowly)
    writer.start()
    polls = 0
    while not (inbox / "done" / "slow.pdf").exists():
        assert cli(app, "poll", str(source_id)).exit_code == 0
        polls += 1
        assert polls < 500
    writer.join()
    assert written.is_set() and polls > 1
    jobs = jobs_of(app, owner)
    assert len(jobs) == 1 and jobs[0].bytes == len(whole) and jobs[0].sha256 == hashlib.sha256(whole).hexdigest()
    assert jobs[0].source == {"id": source_id, "kind": "folder", "from": None, "subject": None, "message_id": None}
    assert not target.exists()


def test_two_hundred_files_dropped_at_once_all_become_jobs(make_app, inbox):
    app = make_app(INTAKE_FILES_PER_MINUTE=1000)
    owner = signed_in(app)[0]
    for number in range(200):
        (inbox / f"invoice-{number:03}.pdf").write_bytes(pdf_bytes(f"many-{number}"))
        settled(inbox / f"invoice-{number:03}.pdf")
    source_id = add_folder(app, owner, inbox)
    assert cli(app, "poll", str(source_id)).exit_code == 0
    assert len(jobs_of(app, owner)) == 200
    assert len(list((inbox / "done").iterdir())) == 200 and sorted(inbox.iterdir()) == [inbox / "done",
                                                                                        inbox / "rejected"]


def test_what_is_not_a_pdf_goes_to_rejected_with_its_reason(app, owner, inbox):
    (inbox / "photo.jpg").write_bytes(b"\xff\xd8\xff" + b"0" * 100)
    (inbox / "fake.pdf").write_bytes(b"PK\x03\x04 a zip named .pdf")
    (inbox / "real.pdf").write_bytes(pdf_bytes("real"))
    (inbox / "copying.pdf.part").write_bytes(b"%PDF-1.4 half")  # an unfinished name: left alone
    (inbox / ".hidden.pdf").write_bytes(pdf_bytes("hidden"))
    for path in inbox.iterdir():
        settled(path)
    source_id = add_folder(app, owner, inbox)
    result = cli(app, "poll", str(source_id))
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in (inbox / "rejected").iterdir()) == [
        "fake.pdf", "fake.pdf.reason.txt", "photo.jpg", "photo.jpg.reason.txt"]
    assert "is not a PDF (it does not start with %PDF-)" in (inbox / "rejected" / "fake.pdf.reason.txt").read_text()
    assert "its name does not end in .pdf" in (inbox / "rejected" / "photo.jpg.reason.txt").read_text()
    assert [path.name for path in (inbox / "done").iterdir()] == ["real.pdf"]
    assert sorted(path.name for path in inbox.iterdir()) == [".hidden.pdf", "copying.pdf.part", "done", "rejected"]
    assert [job.filename for job in jobs_of(app, owner)] == ["real.pdf"]
    (inbox / "real.pdf").write_bytes(pdf_bytes("real"))  # the same file again: dropped as done, no second job
    settled(inbox / "real.pdf")
    assert ", duplicate)" in cli(app, "poll", str(source_id)).output
    assert sorted(path.name for path in (inbox / "done").iterdir()) == ["real-1.pdf", "real.pdf"]
    assert len(jobs_of(app, owner)) == 1


def test_a_folder_that_is_gone_is_an_error_on_the_source(app, owner, inbox):
    source_id = add_folder(app, owner, inbox)
    inbox.rmdir()
    result = cli(app, "poll", str(source_id))
    assert result.exit_code == 1 and "No such file or directory" in result.output
    assert source_row(app, source_id).failures == 1


@contextlib.contextmanager
def leading_intake(app):
    """worker/intake.py's thread as the worker runs it: started once this process leads upkeep, stopped at the end."""
    from core.coordination import Coordination
    from worker.intake import Intake
    from worker.leases import PROCESS_ID
    from worker.upkeep import MAINTENANCE
    with app.app_context():
        assert Coordination.take_lead(MAINTENANCE, PROCESS_ID, 60)
        db.session.remove()
    intake = Intake(app)
    intake.start()
    try:
        yield intake
    finally:
        intake.stop()
        intake.join(timeout=10)


def test_the_worker_leading_upkeep_takes_a_dropped_file_within_seconds(app, owner, inbox):
    """worker/intake.py as the worker runs it: this process leads upkeep, watches the folder, polls on a change."""
    source_id = add_folder(app, owner, inbox)
    with leading_intake(app):
        deadline = time.monotonic() + 30
        while source_row(app, source_id).polls == 0:  # its first poll, due at once
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (inbox / "dropped.pdf").write_bytes(pdf_bytes("dropped"))
        while not jobs_of(app, owner):
            assert time.monotonic() < deadline, source_row(app, source_id).to_dict()
            time.sleep(0.05)
    assert [job.filename for job in jobs_of(app, owner)] == ["dropped.pdf"]
    while (inbox / "dropped.pdf").exists():  # moved once its job is committed
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert (inbox / "done" / "dropped.pdf").exists()


def this_hosts_address():
    """An address of this machine that is not loopback (the one a route out would use)."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, the kernel only picks a source address
            return probe.getsockname()[0]
        except OSError:
            return None


def test_plain_imap_to_a_host_beyond_loopback_never_sends_the_password(app, owner):
    """An imap:// server that offers no STARTTLS, on an address other than loopback: the poll refuses before LOGIN."""
    import socket
    address = this_hosts_address()
    if address is None or address.startswith("127."):
        from tests.support.services import unavailable
        unavailable("this machine has no address beyond loopback")
    heard = []
    listener = socket.create_server((address, 0))
    port = listener.getsockname()[1]

    def serve():
        connection, _ = listener.accept()
        with connection, connection.makefile("rwb") as stream:
            stream.write(b"* OK fake IMAP server without STARTTLS\r\n")
            stream.flush()
            for line in stream:
                heard.append(line)
                tag = line.split(b" ", 1)[0]
                if b"CAPABILITY" in line.upper():
                    stream.write(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + tag + b" OK done\r\n")
                else:
                    stream.write(tag + b" OK done\r\n")
                stream.flush()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        beyond = SimpleNamespace(url=lambda: f"imap://invoices@{address}:{port}/INBOX", PASSWORD="a secret")
        source_id = add_mailbox(app, beyond, owner)
        result = cli(app, "poll", str(source_id))
        server.join(timeout=10)
    finally:
        listener.close()
    assert result.exit_code == 1 and "offers no STARTTLS" in result.output
    assert heard and not any(b"LOGIN" in line.upper() or b"a secret" in line for line in heard)


def test_the_worker_takes_new_mail_at_once_through_imap_idle(make_app, dovecot, mailbox):
    """With polls an hour apart, only the server's IDLE news can bring a new message in within seconds."""
    app = make_app(INTAKE_POLL_SECONDS=3600)
    owner = signed_in(app)[0]
    source_id = add_mailbox(app, dovecot, owner)
    with leading_intake(app) as intake:
        deadline = time.monotonic() + 30
        while not (source_id in intake.idlers and intake.idlers[source_id].idling.is_set()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        polls = source_row(app, source_id).polls
        mailbox.append(message(subject="pushed", attachments=[pdf("pushed")]))
        while not jobs_of(app, owner):
            assert time.monotonic() < deadline, source_row(app, source_id).to_dict()
            time.sleep(0.05)
    assert [job.filename for job in jobs_of(app, owner)] == ["pushed.pdf"]
    assert source_row(app, source_id).polls > polls


def test_without_the_variable_the_password_is_asked_for_hidden(app, owner, monkeypatch):
    from core.sources import unseal
    monkeypatch.delenv("PDFQUEUE_SOURCE_PASSWORD", raising=False)
    result = app.test_cli_runner().invoke(args=["sources", "add", "imaps://me@mail.example.com:993/Invoices",
                                                "--owner", owner.email], input="typed at the prompt\n")
    assert result.exit_code == 0 and "Password of the mailbox" in result.output
    assert "typed at the prompt" not in result.output  # hidden input: not echoed
    with app.app_context():
        [source] = Source.listed()
        assert unseal(source.secret) == "typed at the prompt"
        assert source.parts == {"user": "me", "host": "mail.example.com", "tls": True, "port": 993,
                                "mailbox": "Invoices", "loopback": False}


@pytest.fixture(scope="module")
def dovecot_tls():
    with dovecot_server(tls=True) as server:
        yield server


def test_imaps_and_starttls_carry_the_mail_over_tls_and_an_untrusted_certificate_is_refused(app, owner, dovecot_tls,
                                                                                           monkeypatch):
    box = dovecot_tls.mailbox()
    box.append(message(subject="over imaps", attachments=[pdf("imaps")]))
    imaps = f"imaps://{dovecot_tls.USER}@127.0.0.1:{dovecot_tls.imaps_port}/INBOX"
    result = cli(app, "add", imaps, "--owner", owner.email, env={"PDFQUEUE_SOURCE_PASSWORD": dovecot_tls.PASSWORD})
    source_id = int(result.output.split()[1])
    refused = cli(app, "poll", str(source_id))  # the throwaway CA is not trusted yet
    assert refused.exit_code == 1 and "CERTIFICATE_VERIFY_FAILED" in refused.output
    assert subjects(box, "INBOX") == ["over imaps"]

    monkeypatch.setenv("SSL_CERT_FILE", str(dovecot_tls.ca_file))  # OpenSSL's default trust: now that CA
    assert "took imaps.pdf" in cli(app, "poll", str(source_id)).output
    box.append(message(subject="over starttls", attachments=[pdf("starttls")]))
    starttls = f"imap://{dovecot_tls.USER}@127.0.0.1:{dovecot_tls.port}/INBOX"  # the server offers STARTTLS: used
    result = cli(app, "add", starttls, "--owner", owner.email, env={"PDFQUEUE_SOURCE_PASSWORD": dovecot_tls.PASSWORD})
    assert "took starttls.pdf" in cli(app, "poll", str(int(result.output.split()[1]))).output
    logins = [line for line in dovecot_tls.log().splitlines() if "Login: user=<invoices>" in line]
    assert ", TLS, " in logins[-1]  # the STARTTLS poll's login, after the upgrade
    assert sum(", TLS, " in line for line in logins) == 2  # the imaps poll's and the STARTTLS poll's
    box.logout()
