"""Time and CPU to drain a mailbox: N messages (one PDF each, --kb KB) put into a real Dovecot on loopback with IMAP
APPEND, then one poll of a mailbox source (core/intake/) in this process, as `flask --app wsgi sources poll` runs it:
each message fetched, its PDF checked, kept as a queued job, the message moved to pdfqueue/done.

    .venv/bin/python bench/bench_intake.py [--messages 200] [--kb 60]

CPU is this process's (time.process_time: the poll's Python, SQLite included); Dovecot's own is apart, read from
/proc for its processes. The source's rate is lifted (INTAKE_FILES_PER_MINUTE) so that one poll drains it all.
"""
import argparse
import os
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flask_migrate import upgrade  # noqa: E402

from bench.figures import table  # noqa: E402
from tests.support.app import pdf_bytes  # noqa: E402
from tests.support.services import dovecot_server  # noqa: E402


def process_cpu(pid):
    """User + system CPU seconds of a process and its children that were waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def dovecot_cpu():
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if "dovecot" in (entry / "comm").read_text() or "imap" in (entry / "comm").read_text():
                    total += process_cpu(entry.name)
            except OSError:
                continue
    return total


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--kb", type=int, default=60)
    args = parser.parse_args()
    from core.accounts import User
    from core.db import db
    from core.intake import runner
    from core.sources import create
    from webapp import create_app

    with tempfile.TemporaryDirectory(prefix="bench-intake-") as data_dir, dovecot_server() as server:
        app = create_app({"DATA_DIR": data_dir, "SECRET_KEY": "bench-intake-secret-key-0123456789abcdef",
                          "HUEY_MEMORY": True, "INTAKE_FILES_PER_MINUTE": 100000, "LOG_LEVEL": "WARNING"})
        box = server.mailbox()
        started = time.monotonic()
        for number in range(args.messages):
            mail = EmailMessage()
            mail["From"], mail["Subject"] = "billing@supplier.example", f"Invoice {number}"
            mail["Message-ID"] = f"<bench-{number}@supplier.example>"
            mail.set_content("Attached.")
            mail.add_attachment(pdf_bytes(f"bench-{number}", size=args.kb * 1024), maintype="application",
                                subtype="pdf", filename=f"invoice-{number:04}.pdf")
            box.append(mail.as_bytes())
        appended = time.monotonic() - started
        with app.app_context():
            upgrade(directory=app.config["MIGRATIONS_DIR"])
            User.create("owner@example.com")
            source = create(server.url(), "owner@example.com", password=server.PASSWORD)
            dovecot_before = dovecot_cpu()
            wall, cpu = time.monotonic(), time.process_time()
            run = runner.poll(source.id, anytime=True)
            wall, cpu = time.monotonic() - wall, time.process_time() - cpu
            dovecot = dovecot_cpu() - dovecot_before
            db.session.remove()
        box.folder.set("INBOX")
        left = len(box.uids())
        box.logout()
        assert run.error is None and len(run.taken) == args.messages and left == 0, (run.error, len(run.taken), left)
    print(f"{args.messages} messages of one {args.kb} KB PDF each, appended in {appended:.1f} s\n")
    table([
        (f"{args.messages}-message mailbox drained (wall)", "—", f"{wall:.1f} s ({1000 * wall / args.messages:.0f} ms a message)"),
        ("CPU of the poll (this process)", "—", f"{cpu:.1f} s ({1000 * cpu / args.messages:.0f} ms a message)"),
        ("CPU of Dovecot meanwhile", "—", f"{dovecot:.1f} s"),
    ])


if __name__ == "__main__":
    main()
