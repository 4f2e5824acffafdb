"""Incoming files: streamed to disk while hashed, checked, then kept under a name we choose."""
import hashlib
import logging
import tempfile
from math import inf
from pathlib import Path

from flask_babel import lazy_gettext as _l
from flask import Request, current_app, g, request
from python_multipart.multipart import MultipartParser, MultipartState
from werkzeug.datastructures import FileStorage, Headers
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.http import parse_options_header

from core import codes, counters, queue
from core.acceptance import PDF_MAGIC, check_pdf, display_name, keep, log_queued  # noqa: F401 (display_name: bulk.py)
from core.errors import ApiError, from_os_error

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


def _header_text(raw):
    """A part header's bytes as text: UTF-8, or Latin-1 when it is not. Old clients send file names in their
    local code page, and the name is display text only: the part is read, not the whole form dropped."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


_PART_CHARSETS = {"ascii", "us-ascii", "utf-8", "iso-8859-1"}  # werkzeug's safe list for a text part's charset


class _FormParts:
    """What werkzeug's MultiPartParser does with each part the parser finds: at most max_form_parts of them, a
    part's headers and a text field each held to max_form_memory_size (413 past either), a file part streamed
    into the request's stream factory and closed (seek(0)) at its end, werkzeug's FileStorage for it."""

    def __init__(self, form_parser, content_length):
        self.stream_factory = form_parser.stream_factory
        self.max_parts = form_parser.max_form_parts
        self.max_memory = form_parser.max_form_memory_size
        self.content_length = content_length
        self.count = 0
        self.fields, self.files = [], []
        self.raw_name, self.raw_value, self.raw_headers = bytearray(), bytearray(), []
        self.header_bytes = 0
        self.headers = self.name = self.filename = self.container = self.write = None
        self.size = 0

    def header_data(self, buffer, data, start, end):
        self.header_bytes += end - start
        if self.max_memory is not None and self.header_bytes > self.max_memory:
            raise RequestEntityTooLarge()
        buffer += data[start:end]

    def header_end(self):
        self.raw_headers.append((_header_text(self.raw_name).strip(" \t"), _header_text(self.raw_value).strip(" \t")))
        self.raw_name.clear()
        self.raw_value.clear()

    def begin(self):
        headers = self.headers = Headers(self.raw_headers)
        self.raw_headers, self.header_bytes = [], 0
        self.count += 1
        if self.max_parts is not None and self.count > self.max_parts:
            raise RequestEntityTooLarge()
        if "content-disposition" not in headers:
            raise ValueError("Missing Content-Disposition header")
        _, extra = parse_options_header(headers["content-disposition"])
        self.name, self.filename = extra.get("name"), extra.get("filename")
        if self.filename is None:
            self.container, self.size, self.write = [], 0, self._field_data
            return
        try:
            content_length = int(headers.get("content-length", 0))
        except ValueError:
            content_length = 0
        self.container = self.stream_factory(total_content_length=self.content_length, filename=self.filename,
                                             content_type=headers.get("content-type"), content_length=content_length)
        self.write = self.container.write

    def _field_data(self, data):
        self.size += len(data)
        if self.max_memory is not None and self.size > self.max_memory:
            raise RequestEntityTooLarge()
        self.container.append(data)

    def data(self, data, start, end):
        self.write(data[start:end])

    def end(self):
        if self.filename is None:
            charset = parse_options_header(self.headers.get("content-type"))[1].get("charset", "").lower()
            value = b"".join(self.container).decode(charset if charset in _PART_CHARSETS else "utf-8", "replace")
            self.fields.append((self.name, value))
        else:
            self.container.seek(0)
            self.files.append((self.name, FileStorage(self.container, self.filename, self.name, headers=self.headers)))
        self.container = self.write = None


class MultipartFormParser(FormDataParser):
    """Werkzeug's form parser with multipart bodies parsed by python-multipart (Starlette's parser) instead of
    werkzeug's decoder: the same form and files, at less CPU (bench/bench_multipart.py), through werkzeug's
    public surface only (form_data_parser_class, parse, the stream factory)."""

    buffer_size = 64 * 1024  # werkzeug's MultiPartParser reads as much at a time

    def parse(self, stream, mimetype, content_length, options=None):
        if mimetype != "multipart/form-data":
            return super().parse(stream, mimetype, content_length, options)
        try:
            form, files = self._parse_multipart_body(stream, content_length, options or {})
        except ValueError:  # a malformed body reads as an empty form, as werkzeug's does (silent)
            if not self.silent:
                raise
            return stream, self.cls(), self.cls()
        return stream, form, files

    def _parse_multipart_body(self, stream, content_length, options):
        boundary = options.get("boundary", "").encode("ascii")
        if not boundary:
            raise ValueError("Missing boundary")
        parts = _FormParts(self, content_length)
        parser = MultipartParser(boundary, {
            "on_header_field": lambda data, start, end: parts.header_data(parts.raw_name, data, start, end),
            "on_header_value": lambda data, start, end: parts.header_data(parts.raw_value, data, start, end),
            "on_header_end": parts.header_end,
            "on_headers_finished": parts.begin,
            "on_part_data": parts.data,
            "on_part_end": parts.end,
        }, max_header_count=inf, max_header_size=inf)  # headers are held to max_form_memory_size, as werkzeug's
        read = stream.read
        while data := read(self.buffer_size):
            parser.write(data)
        if parser.state != MultipartState.END:
            raise ValueError("Invalid form-data: the body ends inside a part")
        return self.cls(parts.fields), self.cls(parts.files)


# The only views whose requests may carry files; a file part sent anywhere else is refused unwritten.
UPLOAD_ENDPOINTS = {"api.upload", "pages.upload_form"}


class UploadRequest(Request):
    """A request whose file parts stream into uploads/ (on the upload routes only) instead of memory or /tmp."""

    form_data_parser_class = MultipartFormParser

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


def discard_incoming(_exc=None):
    """Delete every temp file of this request that was not kept (teardown)."""
    for incoming in g.pop("incoming_files", []):
        incoming.close()
        if not incoming.kept:
            incoming.path.unlink(missing_ok=True)


def normalize_mapping(name, allowed):
    """The mapping name in canonical form, or an UNKNOWN_MAPPING error."""
    canonical = name[:-5] if name.endswith(".json") else name
    if canonical not in allowed:
        raise ApiError(codes.UNKNOWN_MAPPING, 400, _l("Unknown mapping %(name)r; choose one of: %(mappings)s.",
                                                     name=name[:80], mappings=", ".join(allowed)))
    return canonical


def _incoming_of(storage):
    incoming = storage.stream
    return incoming if isinstance(incoming, IncomingFile) else None


def accept(storage, owner, mapping):
    """Keep one uploaded file as a queued job; return (job, created). Raise ApiError if it is refused."""
    incoming = _incoming_of(storage)
    if incoming is None:  # a form field called "file" without a file name is not a file
        raise ApiError(codes.NO_FILE, 400, _l("The 'file' part carries no file."))
    name = display_name(storage.filename)
    check_pdf(incoming.head, incoming.size, name)
    incoming.close()
    job, outcome = keep(incoming.path, owner, mapping, name, incoming.size, incoming.sha256.hexdigest())
    incoming.kept = True
    counters.add((counters.UPLOADS_ACCEPTED, {"outcome": outcome}, 1))
    log_queued(logger, job, outcome)
    return job, outcome != "duplicate"


def init_app(app):
    """Use the streaming request class and clean up what a request did not keep."""
    app.request_class = UploadRequest
    app.teardown_request(discard_incoming)


def accept_request(owner, refusals=None):
    """Accept the request's PDFs (multipart parts named 'file') for owner, each becoming a queued job (woken) or the
    live job it repeats: (accepted job dicts with "duplicate", rejected {"filename", "error"} dicts, the last ApiError
    of a rejection or None); each rejection's ApiError is also added to refusals, when given (the page says them in
    its reader's language). The API's upload and the plain form's both come here."""
    files = request.files.getlist("file")
    if not files:
        raise ApiError(codes.NO_FILE, 400, _l("Send at least one PDF in a multipart part named 'file'."))
    config = current_app.config
    mapping = normalize_mapping(request.form.get("mapping") or config["DEFAULT_MAPPING"], config["MAPPINGS"])
    accepted, rejected, last_error = [], [], None
    for storage in files:
        try:
            job, created = accept(storage, owner, mapping)
        except ApiError as error:
            rejected.append({"filename": display_name(storage.filename), **error.to_dict()})
            last_error = error
            if refusals is not None:
                refusals.append(error)
            continue
        if created:
            queue.wake(job.id)
        accepted.append({**job.to_dict(), "duplicate": not created})
    return accepted, rejected, last_error
