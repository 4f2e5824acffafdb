"""A mailbox source (imap-tools): each PDF attachment of each message in the watched mailbox becomes a job, then the
message moves to pdfqueue/done, or to pdfqueue/rejected when it had no acceptable PDF.

Every message the mailbox holds is looked at, every poll: nothing is remembered by UID (UIDs restart when a
mailbox is recreated). A message leaves the mailbox only once its jobs are committed; one left behind by a crash is
taken again and dedupe makes that create nothing.
"""
import imaplib
import logging
import ssl

from flask import current_app
from imap_tools import MailBox, MailBoxUnencrypted
from imap_tools.errors import ImapToolsError, MailboxLoginError

from core.intake.failures import PollFailed, Rejected
from core.sources import DONE_FOLDER, REJECTED_FOLDER, unseal

logger = logging.getLogger("pdfqueue.intake")

BULK = 5  # messages fetched per FETCH: fewer round trips, and at most five messages in memory


class MailBoxStartTlsOrLoopback(MailBoxUnencrypted):
    """imap://: STARTTLS when the server offers it; in clear only to a loopback host (refused to any other)."""

    def __init__(self, host, port, timeout, loopback):
        self._loopback = loopback
        super().__init__(host, port, timeout)

    def _get_mailbox_client(self):
        client = super()._get_mailbox_client()
        if "STARTTLS" in client.capabilities:
            client.starttls(ssl.create_default_context())
        elif not self._loopback:
            client.shutdown()
            raise PollFailed(f"{self._host} offers no STARTTLS: the password would cross the network in clear. "
                             "Use imaps://, or a server with STARTTLS.")
        return client


def connect(parts, timeout):
    """A connected (not yet logged in) mailbox for the source's URL parts."""
    if parts["tls"]:
        return MailBox(parts["host"], parts["port"], timeout=timeout, ssl_context=ssl.create_default_context())
    return MailBoxStartTlsOrLoopback(parts["host"], parts["port"], timeout, parts["loopback"])


def server_folder(mailbox, name):
    """The folder name (pdfqueue/done) in the server's own hierarchy delimiter, created if missing."""
    delimiter = next((info.delim for info in mailbox.folder.list("", "INBOX") if info.delim), "/")
    folder = name.replace("/", delimiter)
    if not mailbox.folder.exists(folder):
        parent = folder.rsplit(delimiter, 1)[0]
        if parent != folder and not mailbox.folder.exists(parent):
            mailbox.folder.create(parent)
        mailbox.folder.create(folder)
    return folder


def is_pdf_attachment(attachment):
    """A part that claims to be a PDF, by its type or its name (its bytes are checked as an upload's)."""
    return (attachment.content_type or "").lower() == "application/pdf" or (
        attachment.filename or "").lower().endswith(".pdf")


def poll(run):
    """Take every message of the source's mailbox (run: a core.intake.runner.Poll)."""
    source = run.source
    parts = source.parts
    password = unseal(source.secret)
    try:
        with connect(parts, current_app.config["INTAKE_TIMEOUT"]) as mailbox:
            mailbox.login(parts["user"], password, initial_folder=parts["mailbox"])
            done, rejected = server_folder(mailbox, DONE_FOLDER), server_folder(mailbox, REJECTED_FOLDER)
            for message in mailbox.fetch("ALL", mark_seen=False, bulk=BULK):
                if not run.room():
                    break
                take_message(run, mailbox, message, done, rejected)
                run.renew()
    except MailboxLoginError:
        raise PollFailed(f"{parts['host']} refused the user name or password of {parts['user']}.") from None
    except (OSError, imaplib.IMAP4.error, ImapToolsError) as exc:
        raise PollFailed(f"Mailbox {parts['host']}:{parts['port']}: {describe(exc)}") from None


def take_message(run, mailbox, message, done, rejected):
    """Make the message's PDFs jobs, then move it: to done if any was acceptable, else to rejected."""
    sender = (message.from_ or "").lower()
    origin = {"source_from": sender[:320] or None, "source_subject": (message.subject or "")[:1024] or None,
              "source_message_id": (message.headers.get("message-id", ("",))[0].strip()[:1024] or None)}
    label = f"message {origin['source_message_id'] or message.uid} from {sender or 'nobody'}"
    allowed = run.source.senders
    acceptable = False
    if allowed and sender not in allowed:
        run.reject(label, f"{sender or 'The sender'} is not on the source's allow-list.")
    else:
        pdfs = [attachment for attachment in message.attachments if is_pdf_attachment(attachment)]
        if not pdfs:
            run.reject(label, "The message has no PDF attachment.")
        for attachment in pdfs:
            try:
                run.take([attachment.payload], attachment.filename or "attachment.pdf", size=attachment.size,
                         **origin)
            except Rejected:
                continue
            acceptable = True
    # Only now, its jobs committed, does the message leave the mailbox: killed before this, it is found again.
    mailbox.move(message.uid, done if acceptable else rejected)


def describe(exc):
    """A failure as one readable line."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server running?)"
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, EOFError)) or isinstance(exc, imaplib.IMAP4.abort):
        return "the server broke off the connection (is it restarting?)"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    text = str(exc) or type(exc).__name__
    return text[:500]
