"""The gateway's multipart parser (gateway/forms.py) reads every body as werkzeug's own parser does."""

import io

import pytest
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser, default_stream_factory

from gateway.forms import MultipartFormParser

PDF = b"%PDF-1.7\n" + bytes(range(256)) * 8 + b"\r\n--not-the-boundary\r\n"


def body(*parts, boundary="b0undary", end=True):
    chunks = []
    for headers, data in parts:
        chunks.append(f"--{boundary}\r\n".encode() + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + data + b"\r\n")
    if end:
        chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks)


def field(name, value, *extra):
    return [f'Content-Disposition: form-data; name="{name}"'.encode(), *extra], value


def file(name, filename, data, *extra):
    return [b'Content-Disposition: form-data; name="%s"; filename="%s"' % (name.encode(), filename),
            b"Content-Type: application/pdf", *extra], data


BODIES = {
    "file and fields": body(field("mapping", b"pt_simon_invoice_v1"), file("file", b"a.pdf", PDF), field("pretty", b"1")),
    "utf-8 file name": body(file("file", "fatura-nº1.pdf".encode(), PDF)),
    "field with a charset": body(field("mapping", "nº".encode("latin-1"), b"Content-Type: text/plain; charset=iso-8859-1")),
    "field with an unknown charset": body(field("mapping", "nº".encode(), b"Content-Type: text/plain; charset=koi8-r")),
    "a file over 500 KiB (spooled)": body(file("file", b"big.pdf", PDF * 300), field("mapping", b"generic_v1")),
    "two files and a repeated field": body(file("file", b"a.pdf", PDF), file("file", b"b.pdf", b"%PDF-2"),
                                           field("x", b"1"), field("x", b"2")),
    "empty file": body(file("file", b"e.pdf", b""), field("mapping", b"m")),
    # RFC 2046 lets a body-less part end at its headers (the boundary's line break ends both): werkzeug's test
    # client writes one so, python-multipart misreads it, and werkzeug's parser reads the body again
    "body-less part, no blank line (last)": (b"--b0undary\r\nContent-Disposition: form-data; name=\"mapping\"\r\n\r\nm"
                                            b"\r\n--b0undary\r\nContent-Disposition: form-data; name=\"file\"; "
                                            b"filename=\"e.pdf\"\r\n\r\n--b0undary--\r\n"),
    "body-less part, no blank line (first)": (b"--b0undary\r\nContent-Disposition: form-data; name=\"file\"; "
                                             b"filename=\"e.pdf\"\r\n\r\n--b0undary\r\nContent-Disposition: form-data; "
                                             b"name=\"mapping\"\r\n\r\nm\r\n--b0undary--\r\n"),
    "no content-disposition": body(([b"Content-Type: text/plain"], b"x")),
    "ends inside a part": body(field("mapping", b"m"), file("file", b"a.pdf", PDF), end=False)[:-10],
    "not a multipart body at all": b"hello",
    "empty body": b"",
}


def parse(parser_class, data, **limits):
    parser = parser_class(default_stream_factory, silent=True, **limits)
    _, form, files = parser.parse(io.BytesIO(data), "multipart/form-data", len(data), {"boundary": "b0undary"})
    return ({key: form.getlist(key) for key in form},
            {key: [(f.filename, f.mimetype, f.read()) for f in files.getlist(key)] for key in files})


@pytest.mark.parametrize("name", list(BODIES))
def test_the_same_form_and_files_as_werkzeugs_parser(name):
    assert parse(MultipartFormParser, BODIES[name]) == parse(FormDataParser, BODIES[name])


def test_a_latin_1_file_name_drops_nothing():
    """werkzeug drops the whole form (silently: a 400 MISSING_PART) when a header is not UTF-8; the name is never
    used here, so the part is read, its name decoded as Latin-1."""
    data = body(file("file", "fatura-nº1.pdf".encode("latin-1"), PDF), field("mapping", b"generic_v1"))
    assert parse(FormDataParser, data) == ({}, {})
    assert parse(MultipartFormParser, data) == ({"mapping": ["generic_v1"]},
                                                {"file": [("fatura-nº1.pdf", "application/pdf", PDF)]})


@pytest.mark.parametrize("limits, data", [
    ({"max_form_parts": 2}, body(field("a", b"1"), field("b", b"2"), field("c", b"3"))),
    ({"max_form_memory_size": 100}, body(field("mapping", b"x" * 101))),
    ({"max_form_memory_size": 100}, body(([b"Content-Disposition: form-data; name=\"" + b"n" * 120 + b"\""], b"1"))),
])
def test_werkzeugs_limits_hold(limits, data):
    for parser_class in (FormDataParser, MultipartFormParser):
        with pytest.raises(RequestEntityTooLarge):
            parse(parser_class, data, **limits)


def test_other_bodies_go_to_werkzeug():
    parser = MultipartFormParser(default_stream_factory, silent=True)
    _, form, _ = parser.parse(io.BytesIO(b"mapping=generic_v1"), "application/x-www-form-urlencoded", 18, {})
    assert form["mapping"] == "generic_v1"
