"""Multipart bodies parsed by python-multipart instead of werkzeug's decoder, under werkzeug's request.files.

werkzeug's decoder compiles two regular expressions with each request's boundary: most of the CPU the gateway
itself spent on a request (py-spy, docs/benchmarks.md "Issue 24"). The web made the same change for the same
reason (webapp/uploads.py); the gateway stands alone, so it keeps its own, smaller one: its forms are a file and
two short fields, and it keeps every part as werkzeug would (text fields in memory, files in werkzeug's stream
factory: memory, or a temporary file past 500 KiB), with werkzeug's limits on parts and field sizes.

One form python-multipart misreads: a part with no body written without the blank line after its headers (the
line break before the next boundary ends both; RFC 2046 allows it, werkzeug's test client writes it). A body up
to REPARSE_BYTES that python-multipart cannot read is read again by werkzeug's own parser, so such a form (and
any other werkzeug reads) still is; a larger one reads as an empty form.
"""

import io
from math import inf

from flask import Request
from python_multipart.multipart import MultipartParser, MultipartState
from werkzeug.datastructures import FileStorage, Headers
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.http import parse_options_header

_TEXT_CHARSETS = {"ascii", "us-ascii", "utf-8", "iso-8859-1"}  # werkzeug's safe list for a text part's charset
REPARSE_BYTES = 1 << 20


class MultipartFormParser(FormDataParser):
    """werkzeug's form parser, with multipart bodies read by python-multipart."""

    buffer_size = 64 * 1024

    def parse(self, stream, mimetype, content_length, options=None):
        if mimetype != "multipart/form-data":
            return super().parse(stream, mimetype, content_length, options)
        kept, size = [], 0
        try:
            boundary = (options or {}).get("boundary", "").encode("ascii")
            if not boundary:
                raise ValueError("Missing boundary")
            parts = _Parts(self, content_length, boundary)
            parser = MultipartParser(boundary, {
                "on_header_field": parts.header_name, "on_header_value": parts.header_value,
                "on_header_end": parts.header_end, "on_headers_finished": parts.begin,
                "on_part_data": parts.data, "on_part_end": parts.end,
            }, max_header_count=inf, max_header_size=inf)  # held to max_form_memory_size below, as werkzeug's
            while data := stream.read(self.buffer_size):
                size += len(data)
                if size <= REPARSE_BYTES:
                    kept.append(data)
                parser.write(data)
            if parser.state != MultipartState.END:
                raise ValueError("the body ends inside a part")
        except ValueError:
            while size <= REPARSE_BYTES and (data := stream.read(self.buffer_size)):
                size += len(data)
                kept.append(data)
            if size <= REPARSE_BYTES:
                return super().parse(io.BytesIO(b"".join(kept)), mimetype, size, options)
            if not self.silent:
                raise
            return stream, self.cls(), self.cls()  # a malformed body reads as an empty form, as werkzeug's does
        return stream, self.cls(parts.fields), self.cls(parts.files)


class _Parts:
    """What werkzeug's MultiPartParser does with each part: at most max_form_parts, headers and each text field
    held to max_form_memory_size (413 past either), a file written into the stream factory, FileStorage for it."""

    def __init__(self, form_parser, content_length, boundary):
        self.dash_boundary = b"--" + boundary
        self.stream_factory = form_parser.stream_factory
        self.max_parts, self.max_memory = form_parser.max_form_parts, form_parser.max_form_memory_size
        self.content_length = content_length
        self.fields, self.files, self.count = [], [], 0
        self.name_bytes, self.value_bytes, self.raw_headers, self.header_size = bytearray(), bytearray(), [], 0
        self.headers = self.name = self.filename = self.container = None
        self.size = 0

    def _header_bytes(self, buffer, data, start, end):
        self.header_size += end - start
        if self.max_memory is not None and self.header_size > self.max_memory:
            raise RequestEntityTooLarge()
        buffer += data[start:end]

    def header_name(self, data, start, end):
        self._header_bytes(self.name_bytes, data, start, end)

    def header_value(self, data, start, end):
        self._header_bytes(self.value_bytes, data, start, end)

    def header_end(self):
        self.raw_headers.append((_text(self.name_bytes).strip(" \t"), _text(self.value_bytes).strip(" \t")))
        self.name_bytes.clear()
        self.value_bytes.clear()

    def begin(self):
        self.headers, self.raw_headers, self.header_size = Headers(self.raw_headers), [], 0
        self.count += 1
        if self.max_parts is not None and self.count > self.max_parts:
            raise RequestEntityTooLarge()
        if "content-disposition" not in self.headers:
            raise ValueError("Missing Content-Disposition header")
        _, extra = parse_options_header(self.headers["content-disposition"])
        self.name, self.filename, self.size = extra.get("name"), extra.get("filename"), 0
        if self.filename is None:
            self.container = []
        else:
            self.container = self.stream_factory(total_content_length=self.content_length, filename=self.filename,
                                                 content_type=self.headers.get("content-type"), content_length=0)

    def data(self, data, start, end):
        if not self.size and data.startswith(self.dash_boundary, start):  # a body-less part without its blank line
            raise ValueError("a part python-multipart misreads")
        self.size += end - start
        if self.filename is not None:
            self.container.write(data[start:end])
            return
        if self.max_memory is not None and self.size > self.max_memory:
            raise RequestEntityTooLarge()
        self.container.append(data[start:end])

    def end(self):
        if self.filename is None:
            charset = parse_options_header(self.headers.get("content-type"))[1].get("charset", "").lower()
            value = b"".join(self.container).decode(charset if charset in _TEXT_CHARSETS else "utf-8", "replace")
            self.fields.append((self.name, value))
        else:
            self.container.seek(0)
            self.files.append((self.name, FileStorage(self.container, self.filename, self.name, headers=self.headers)))
        self.container = None


def _text(raw):
    """A part header's bytes as text: UTF-8, or Latin-1 when it is not (a file name in a client's code page)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class GatewayRequest(Request):
    form_data_parser_class = MultipartFormParser
