"""One poll of one source: its lease, its minute's budget of files, every file through the upload's checks, and
its outcome recorded on the source (and in /metrics)."""
import hashlib
import logging
import os
import secrets
import socket
import tempfile
from datetime import timedelta
from pathlib import Path

from flask import current_app

from core import codes, counters, queue
from core.acceptance import PDF_MAGIC, check_pdf, check_size, display_name, keep, log_queued
from core.clock import utcnow
from core.db import db
from core.errors import ApiError
from core.intake.failures import PollFailed, Rejected
from core.sources import FOLDER, IMAP, Source, SourceError

logger = logging.getLogger("pdfqueue.intake")

# A file refused for what it is: it goes to the rejected folder. Any other refusal (no room, storage failing) is the
# box's, not the file's: the poll stops and the file waits where it is for the next one.
FILE_FAULTS = {codes.EMPTY, codes.NOT_PDF, codes.TOO_LARGE}
WINDOW = timedelta(seconds=60)


def holder_id():
    """A poll's lease holder: this process, and this one poll of it."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Poll:
    """One poll of a source under its lease: what it took and refused, and the source's minute's budget."""

    def __init__(self, source, holder):
        config = current_app.config
        self.source = source
        self.holder = holder
        self.taken = []  # (name, job id, outcome: new, duplicate or reconverted)
        self.rejected = []  # (name, reason)
        self.rate = config["INTAKE_FILES_PER_MINUTE"]
        self.lease_seconds = config["INTAKE_LEASE_SECONDS"]
        now = utcnow()
        if source.window_started_at is not None and now - source.window_started_at < WINDOW:
            self.window = [source.window_started_at, source.window_files or 0]
        else:
            self.window = [now, 0]
        self.due_in = None  # seconds to the next poll when sooner than INTAKE_POLL_SECONDS (more waits)
        self.error = None  # why the poll failed, once it has

    def room(self):
        """True while the source's minute has files left; else the next poll is due when the minute ends."""
        now = utcnow()
        if now - self.window[0] >= WINDOW:
            self.window = [now, 0]
        if self.window[1] < self.rate:
            return True
        self.soon((self.window[0] + WINDOW - now).total_seconds())
        return False

    def soon(self, seconds):
        """Have the next poll due within seconds (a file settling, the minute's budget spent)."""
        seconds = max(seconds, 0.2)
        self.due_in = seconds if self.due_in is None else min(self.due_in, seconds)

    def renew(self):
        """Keep the lease while a long poll goes on; PollFailed if another poller has it now (ours lapsed)."""
        if not Source.renew_lease(self.source.id, self.holder, self.lease_seconds):
            raise PollFailed("The poll outlasted its lease and another took the source over.")

    def spool(self, chunks, name):
        """Write chunks into a temp file in uploads/, hashed: (path, size, sha256, head)."""
        config = current_app.config
        limit = config["MAX_UPLOAD_MB"] * 1024 * 1024
        digest, size, head, temp = hashlib.sha256(), 0, b"", None
        try:
            fd, temp = tempfile.mkstemp(dir=config["UPLOAD_DIR"], prefix=".intake-", suffix=".part")
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        break  # check_size refuses it; no need to keep the rest
                    if len(head) < len(PDF_MAGIC):
                        head += chunk[:len(PDF_MAGIC) - len(head)]
                    digest.update(chunk)
                    handle.write(chunk)
        except OSError as exc:
            if temp is not None:
                Path(temp).unlink(missing_ok=True)
            raise PollFailed(f"Could not write {name} to uploads/: {exc.strerror}.") from exc
        return Path(temp), size, digest.hexdigest(), head

    def take(self, chunks, raw_name, size=None, **origin):
        """Keep one file (chunks of its bytes) as a job of the source's owner: (job, outcome). Raise Rejected if
        the file is refused for what it is, PollFailed if it cannot be kept now."""
        name = display_name(raw_name)
        try:
            if size is not None:
                check_size(size, name)  # before reading it at all
            temp, size, sha256, head = self.spool(chunks, name)
            try:
                check_size(size, name)
                check_pdf(head, size, name)
                job, outcome = keep(temp, self.source.owner, self.source.mapping, name, size, sha256,
                                    source_id=self.source.id, source_kind=self.source.kind, **origin)
            finally:
                temp.unlink(missing_ok=True)
        except ApiError as error:
            if error.code in FILE_FAULTS:
                self.rejected.append((name, error.message))
                counters.add((counters.INTAKE_FILES, {"source": str(self.source.id), "outcome": "rejected"}, 1))
                raise Rejected(error.message) from None
            raise PollFailed(error.message) from None
        self.window[1] += 1
        if outcome != "duplicate":
            queue.wake(job.id)
        log_queued(logger, job, outcome)
        self.taken.append((name, job.id, outcome))
        counters.add((counters.INTAKE_FILES, {"source": str(self.source.id), "outcome": outcome}, 1))
        return job, outcome

    def reject(self, name, reason):
        """Count a file (or a message) refused before any of it was kept."""
        self.rejected.append((name, reason))
        counters.add((counters.INTAKE_FILES, {"source": str(self.source.id), "outcome": "rejected"}, 1))


def poll(source_id, anytime=False, even_off=False, holder=None):
    """Poll the source once if its lease is free, it is on (or even_off) and due (or anytime): the Poll, or None if
    it was not polled (busy, not due, off or gone). Its outcome is recorded on the source whatever happens."""
    holder = holder or holder_id()
    config = current_app.config
    if not Source.take_lease(source_id, holder, config["INTAKE_LEASE_SECONDS"], anytime=anytime, even_off=even_off):
        return None
    source = db.session.get(Source, source_id)
    db.session.refresh(source)
    run = Poll(source, holder)
    error = None
    try:
        _poll_kind(source.kind)(run)
    except (PollFailed, SourceError) as failure:
        error = str(failure)
    except Exception as failure:  # swallowed on purpose: the source shows it and is tried again after back-off
        logger.exception("poll of source %s failed", source_id)
        error = f"Unexpected error: {failure}"
    finally:
        Source.finish_poll(source_id, holder, len(run.taken), len(run.rejected), tuple(run.window), error=error,
                           due_in=run.due_in)
        db.session.expire_all()
    labels = {"source": str(source_id)}
    counters.add((counters.INTAKE_POLLS, labels, 1), *([(counters.INTAKE_ERRORS, labels, 1)] if error else []))
    if error:
        logger.warning("poll of source %s failed: %s", source_id, error, extra={"source_id": source_id})
    run.error = error
    return run


def _poll_kind(kind):
    from core.intake import folder, imap  # each pulls its own library in only where it is used
    return {IMAP: imap.poll, FOLDER: folder.poll}[kind]
