"""Incoming files: streamed to disk while hashed, checked, then kept under a name we choose."""
import hashlib
import logging
import os
import re
import shutil
import tempfile
import unicodedata
from pathlib import Path

from flask import Request, current_app, g, request
from werkzeug import formparser
from werkzeug.sansio.multipart import MultipartDecoder, State
from sqlalchemy.exc import IntegrityError
from werkzeug.exceptions import RequestEntityTooLarge

from core import codes, counters, queue
from core.accounts import storage_used
from core.errors import ApiError, from_os_error, insufficient_storage
from core.db import db
from core.jobs.model import Job, new_id

PDF_MAGIC = b"%PDF-"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_FILENAME = 255

logger = logging.getLogger("pdfqueue.web")


class IncomingFile:
    """A file part as it arrives: written to a temp file in uploads/, hashed, and held to the size limit."""

    def __init__(self, directory, limit):
        self._file = tempfile.NamedTemporaryFile(dir=directory, prefix=".incoming-", suffix=".part", delete=False)
        self.path = Path(self._file.name)
        self.limit = limit
        self.size = 0
        self.head = b""
        self.sha256 = hashlib.sha256()
        self.kept = False

    def write(self, data):
        self.size += len(data)
        if self.size > self.limit:
            raise RequestEntityTooLarge()
        if len(self.head) < len(PDF_MAGIC):
            self.head += data[: len(PDF_MAGIC) - len(self.head)]
        self.sha256.update(data)
        return self._file.write(data)

    def seek(self, offset, whence=0):
        # The parser seeks to 0 when the part ends: close it then, so a request holds one open file at a time.
        if not self._file.closed and offset == 0 and whence == 0:
            self._file.close()
            return 0
        return self._reader().seek(offset, whence)

    def tell(self):
        return self._reader().tell() if self._file.closed else self._file.tell()

    def read(self, *args):
        return self._reader().read(*args)

    def _reader(self):
        if self._file.closed:
            self._file = open(self.path, "rb")  # reopened only if a caller reads the part back
        return self._file

    def flush(self):
        if not self._file.closed:
            self._file.flush()

    def close(self):
        self._file.close()


# The only views whose requests may carry files; a file part sent anywhere else is refused unwritten.
UPLOAD_ENDPOINTS = {"api.upload", "pages.upload_form"}


class UploadRequest(Request):
    """A request whose file parts stream into uploads/ (on the upload routes only) instead of memory or /tmp."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        if self.endpoint not in UPLOAD_ENDPOINTS:
            raise ApiError(codes.BAD_REQUEST, 400, "This route takes no files.")
        config = current_app.config
        directory = Path(config["UPLOAD_DIR"])
        try:
            incoming = IncomingFile(directory, config["MAX_UPLOAD_MB"] * 1024 * 1024)
        except OSError as exc:
            raise from_os_error(exc) from exc
        g.setdefault("incoming_files", []).append(incoming)
        return incoming


# What may follow a boundary (werkzeug's multipart grammar): "--" and the end, or the line break of a part.
_AFTER_BOUNDARY = re.compile(rb"(--[^\S\n\r]*(?:\r\n|\n|\r)?|[^\S\n\r]*(?:\r\n|\n|\r))")


class _BoundaryMatch:
    __slots__ = ("_start", "_end", "_tail")

    def __init__(self, start, end, tail):
        self._start, self._end, self._tail = start, end, tail

    def start(self):
        return self._start

    def end(self):
        return self._end

    def group(self, index):
        return self._tail if index == 1 else None


class BoundaryFinder:
    """The search of werkzeug's boundary regexes (an optional or a required line break, "--" and the
    boundary, then what may follow it) done by bytes.find and one regex compiled once.

    Werkzeug compiles its two regexes for each request (the boundary is in them), which costs a tenth of an
    upload's CPU; this finds the same matches (tests/test_uploads.py compares them on random data)."""

    def __init__(self, boundary, break_required):
        self.marker = b"--" + boundary
        self.break_required = break_required

    def search(self, data, pos=0):
        marker, length = self.marker, len(self.marker)
        at = data.find(marker, pos)
        while at >= 0:
            if at - 2 >= pos and data[at - 2:at] == b"\r\n":
                start = at - 2
            elif at - 1 >= pos and data[at - 1:at] in (b"\r", b"\n"):
                start = at - 1
            else:
                start = None if self.break_required else at
            tail = None if start is None else _AFTER_BOUNDARY.match(data, at + length)
            if tail is not None:
                return _BoundaryMatch(start, tail.end(), tail.group(1))
            at = data.find(marker, at + 1)
        return None


class TolerantMultipartDecoder(MultipartDecoder):
    """Werkzeug's decoder, but a part header that is not UTF-8 is read as Latin-1 instead of dropping the
    whole form: old clients send file names in their local code page, and the name is display text only.

    Its boundary search is a BoundaryFinder, not two regexes compiled for each request."""

    def __init__(self, boundary, max_form_memory_size=None, *, max_parts=None):
        # A copy of werkzeug 3.1.x's MultipartDecoder.__init__ (pinned in pyproject.toml) less its two re.compile
        # calls; tests/test_uploads.py checks it sets the same attributes.
        self.buffer = bytearray()
        self.complete = False
        self.max_form_memory_size = max_form_memory_size
        self.max_parts = max_parts
        self.state = State.PREAMBLE
        self.boundary = boundary
        self.preamble_re = BoundaryFinder(boundary, break_required=False)
        self.boundary_re = BoundaryFinder(boundary, break_required=True)
        self._search_position = 0
        self._parts_decoded = 0

    def _parse_headers(self, data):
        try:
            return super()._parse_headers(data)
        except UnicodeDecodeError:
            return super()._parse_headers(bytes(data).decode("latin-1").encode("utf-8"))


def discard_incoming(_exc=None):
    """Delete every temp file of this request that was not kept (teardown)."""
    for incoming in g.pop("incoming_files", []):
        incoming.close()
        if not incoming.kept:
            incoming.path.unlink(missing_ok=True)


def display_name(raw):
    """The file name as given, made safe to show: no control characters, no format characters (Unicode
    category Cf: bidi overrides that make "fdp.exe" read "exe.pdf", zero-width ones that hide a difference), not
    absurdly long."""
    name = unicodedata.normalize("NFC", raw or "")
    name = _CONTROL.sub("", name.encode("utf-8", "replace").decode("utf-8", "replace"))
    name = "".join(char for char in name if unicodedata.category(char) != "Cf").strip()
    return name[:MAX_FILENAME] or "upload.pdf"


def normalize_mapping(name, allowed):
    """The mapping name in canonical form, or an UNKNOWN_MAPPING error."""
    canonical = name[:-5] if name.endswith(".json") else name
    if canonical not in allowed:
        raise ApiError(codes.UNKNOWN_MAPPING, 400, f"Unknown mapping {name[:80]!r}; choose one of: {', '.join(allowed)}.")
    return canonical


def _incoming_of(storage):
    incoming = storage.stream
    return incoming if isinstance(incoming, IncomingFile) else None


def _check_room(owner, size, name):
    """Raise 507 if keeping size more bytes would pass the owner's quota or the disk's free-space floor."""
    config = current_app.config
    mb = 1024 * 1024
    if shutil.disk_usage(config["UPLOAD_DIR"]).free < config["MIN_FREE_MB"] * mb:
        raise insufficient_storage()
    if storage_used(owner) + size > config["USER_QUOTA_MB"] * mb:
        raise ApiError(codes.INSUFFICIENT_STORAGE, 507,
                       f"{name} would take you past your storage quota of {config['USER_QUOTA_MB']} MB; "
                       "delete old jobs and try again. Nothing of it was kept.")


def accept(storage, owner, mapping):
    """Keep one uploaded file as a queued job; return (job, created). Raise ApiError if it is refused."""
    incoming = _incoming_of(storage)
    if incoming is None:  # a form field called "file" without a file name is not a file
        raise ApiError(codes.NO_FILE, 400, "The 'file' part carries no file.")
    name = display_name(storage.filename)
    if incoming.size == 0:
        raise ApiError(codes.EMPTY, 400, f"{name} is empty.")
    if incoming.head != PDF_MAGIC:
        raise ApiError(codes.NOT_PDF, 415, f"{name} is not a PDF (it does not start with %PDF-).")
    incoming.close()
    _check_room(owner, incoming.size, name)
    job_id = new_id()
    upload_dir = Path(current_app.config["UPLOAD_DIR"])
    final = upload_dir / f"{job_id}.pdf"
    try:
        os.replace(incoming.path, final)
        incoming.kept = True
    except OSError as exc:
        raise from_os_error(exc) from exc
    upload_path = f"uploads/{job_id}.pdf"
    sha256 = incoming.sha256.hexdigest()
    try:
        job = Job.create(id=job_id, owner=owner, filename=name, mapping=mapping, bytes=incoming.size,
                         sha256=sha256, upload_path=upload_path)
    except IntegrityError:
        existing = Job.query.filter_by(owner=owner, sha256=sha256, mapping=mapping, bytes=incoming.size).one()
        job, outcome = _dedupe(existing, upload_path, name)
        if outcome == "duplicate":
            final.unlink(missing_ok=True)
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    else:
        outcome = "new"
    counters.add((counters.UPLOADS_ACCEPTED, {"outcome": outcome}, 1))
    if outcome != "duplicate":
        logger.info("job %s queued", job.id, extra={
            "job_id": job.id, "correlation_id": job.correlation_id, "bytes": job.bytes, "mapping": job.mapping,
            "to": "queued", "reconverted": outcome == "reconverted"})
    return job, outcome != "duplicate"


def _dedupe(existing, upload_path, name):
    """The same file again: (the live job, "duplicate"), or the spent job converted again from the new PDF
    (Job.reconvert, "reconverted"), since "same file, same result" must hold after retention too."""
    old_upload = existing.upload_path
    if existing.spent and Job.reconvert(existing.id, upload_path, name):
        if old_upload and old_upload != upload_path:  # an expired job may still have had its PDF
            (Path(current_app.config["DATA_DIR"]) / old_upload).unlink(missing_ok=True)
        db.session.refresh(existing)
        return existing, "reconverted"
    return existing, "duplicate"


def init_app(app):
    """Use the streaming request class and clean up what a request did not keep."""
    app.request_class = UploadRequest
    # MultiPartParser builds its decoder from this module-level name and offers no hook to pass one.
    formparser.MultipartDecoder = TolerantMultipartDecoder
    app.teardown_request(discard_incoming)


def accept_request(owner):
    """Accept the request's PDFs (multipart parts named 'file') for owner, each becoming a queued job (woken) or the
    live job it repeats: (accepted job dicts with "duplicate", rejected {"filename", "error"} dicts, the last ApiError
    of a rejection or None). The API's upload and the plain form's both come here."""
    files = request.files.getlist("file")
    if not files:
        raise ApiError(codes.NO_FILE, 400, "Send at least one PDF in a multipart part named 'file'.")
    config = current_app.config
    mapping = normalize_mapping(request.form.get("mapping") or config["DEFAULT_MAPPING"], config["MAPPINGS"])
    accepted, rejected, last_error = [], [], None
    for storage in files:
        try:
            job, created = accept(storage, owner, mapping)
        except ApiError as error:
            rejected.append({"filename": display_name(storage.filename), **error.to_dict()})
            last_error = error
            continue
        if created:
            queue.wake(job.id)
        accepted.append({**job.to_dict(), "duplicate": not created})
    return accepted, rejected, last_error
