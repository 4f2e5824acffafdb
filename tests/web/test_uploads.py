"""POST /api/upload: every error code, nothing half-kept, dedupe under races, hostile names, limits."""
import errno
import io
import os
import socket
import threading
from pathlib import Path

import pytest
import requests

from tests.support import people
from tests.support.app import ApiClient, pdf_bytes
from webapp import uploads
from tests.support.app import run


def stored_files(app):
    return sorted(os.listdir(app.config["UPLOAD_DIR"]))


def test_accepts_a_pdf_as_a_queued_job_stored_under_its_id(app, client):
    content = pdf_bytes("one")
    response = client.upload((content, "fatura.pdf"))
    assert response.status_code == 202
    (job,) = response.get_json()["jobs"]
    assert job["status"] == "queued" and job["filename"] == "fatura.pdf" and job["bytes"] == len(content)
    assert job["mapping"] == "pt_simon_invoice_v1" and not job["duplicate"]
    assert stored_files(app) == [f"{job['id']}.pdf"]
    assert (Path(app.config["UPLOAD_DIR"]) / f"{job['id']}.pdf").read_bytes() == content


def test_several_files_in_one_request_each_become_a_job(app, client):
    response = client.upload((pdf_bytes("a"), "a.pdf"), (pdf_bytes("b"), "b.pdf"), (b"GIF89a", "c.pdf"))
    body = response.get_json()
    assert response.status_code == 202
    assert [job["filename"] for job in body["jobs"]] == ["a.pdf", "b.pdf"]
    assert body["rejected"] == [{"filename": "c.pdf", "error": {"code": "NOT_PDF", "message": body["rejected"][0]["error"]["message"]}}]
    assert len(stored_files(app)) == 2


@pytest.mark.parametrize("files, mapping, status, code", [
    ([], None, 400, "NO_FILE"),
    ([(b"", "empty.pdf")], None, 400, "EMPTY"),
    ([(pdf_bytes(), "a.pdf")], "no_such_mapping", 400, "UNKNOWN_MAPPING"),
    ([(b"\x89PNG\r\n\x1a\n" + b"0" * 100, "image.pdf")], None, 415, "NOT_PDF"),
    ([(b"%PDF", "short.pdf")], None, 415, "NOT_PDF"),
])
def test_refused_files_get_their_code_and_leave_nothing(app, client, files, mapping, status, code):
    response = client.upload(*files, mapping=mapping)
    assert response.status_code == status
    assert response.get_json() == {"error": {"code": code, "message": response.get_json()["error"]["message"]}}
    assert response.get_json()["error"]["message"]
    assert stored_files(app) == []


def test_mapping_may_be_named_with_its_json_suffix(client):
    response = client.upload((pdf_bytes(), "a.pdf"), mapping="generic_v1.json")
    assert response.status_code == 202 and response.get_json()["jobs"][0]["mapping"] == "generic_v1"


def test_missing_or_wrong_csrf_token_is_refused(app, client):
    import io
    for headers in ({}, {"X-CSRF-Token": "forged"}):
        response = client.raw.post("/api/upload", data={"file": (io.BytesIO(pdf_bytes()), "a.pdf")}, headers=headers)
        assert response.status_code == 400 and response.get_json()["error"]["code"] == "CSRF"
    assert stored_files(app) == []


def test_over_the_size_limit_is_413_and_nothing_is_kept(make_app):
    app = make_app(MAX_UPLOAD_MB=1)
    from tests.support.app import ApiClient
    client = ApiClient(app.test_client())
    response = client.upload((pdf_bytes(size=1024 * 1024 + 1), "big.pdf"))
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "TOO_LARGE"
    assert stored_files(app) == []
    assert client.upload((pdf_bytes(size=1024 * 1024), "limit.pdf")).status_code == 202


def test_an_oversized_request_is_cut_off_before_its_body_is_read(app, live_server):
    session = people.http_session(app, live_server)
    token = session.get(f"{live_server}/api/session").json()["csrf_token"]
    cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
    host, port = live_server.removeprefix("http://").split(":")
    declared = app.config["MAX_CONTENT_LENGTH"] + 1
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall((f"POST /api/upload HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nX-CSRF-Token: {token}\r\n"
                      f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {declared}\r\n\r\n").encode())
        sock.sendall(b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.pdf\"\r\n\r\n%PDF-")
        answer = b""
        while b"\r\n\r\n" not in answer:  # answered while almost all of the declared body is unsent
            answer += sock.recv(4096)
        head, body = answer.split(b"\r\n\r\n", 1)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += sock.recv(4096)
        answer = (head + b"\r\n\r\n" + body).decode()
    assert answer.startswith("HTTP/1.1 413")
    assert "TOO_LARGE" in answer
    assert stored_files(app) == []


def test_disk_full_answers_507_and_keeps_nothing(app, client, monkeypatch):
    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(uploads.IncomingFile, "write", full)
    response = client.upload((pdf_bytes(), "a.pdf"))
    assert response.status_code == 507 and response.get_json()["error"]["code"] == "INSUFFICIENT_STORAGE"
    assert stored_files(app) == []


def test_database_down_answers_503_with_retry_after(app, client):
    Path(app.config["INSTANCE_DIR"], "pdfqueue.db").unlink()
    Path(app.config["INSTANCE_DIR"], "pdfqueue.db").mkdir()  # cannot be opened as a database any more
    from core.db import db
    with app.app_context():
        db.engine.dispose()
    response = client.upload((pdf_bytes(), "a.pdf"))
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "UNAVAILABLE"
    assert response.headers["Retry-After"]
    assert stored_files(app) == []


def test_same_file_same_mapping_returns_the_existing_job(client):
    first = client.upload((pdf_bytes("dup"), "a.pdf")).get_json()["jobs"][0]
    again = client.upload((pdf_bytes("dup"), "renamed.pdf")).get_json()["jobs"][0]
    assert again["id"] == first["id"] and again["duplicate"]
    other_mapping = client.upload((pdf_bytes("dup"), "a.pdf"), mapping="generic_v1").get_json()["jobs"][0]
    assert other_mapping["id"] != first["id"]


def test_concurrent_identical_uploads_make_one_job(app, live_server):
    session = people.http_session(app, live_server)
    token = session.get(f"{live_server}/api/session").json()["csrf_token"]
    content = pdf_bytes("race", size=200_000)
    ids, errors = [], []

    def send():
        try:
            response = requests.post(f"{live_server}/api/upload", files={"file": ("r.pdf", content, "application/pdf")},
                                     headers={"X-CSRF-Token": token}, cookies=session.cookies, timeout=30)
            ids.append((response.status_code, response.json()["jobs"][0]["id"]))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert {status for status, _ in ids} == {202} and len({job_id for _, job_id in ids}) == 1
    assert len(stored_files(app)) == 1


def test_the_eleventh_file_in_a_minute_is_refused_with_retry_after(app, client):
    for n in range(10):
        assert client.upload((pdf_bytes(f"n{n}"), f"{n}.pdf")).status_code == 202
    response = client.upload((pdf_bytes("eleven"), "11.pdf"))
    assert response.status_code == 429 and response.get_json()["error"]["code"] == "RATE_LIMITED"
    assert int(response.headers["Retry-After"]) > 0
    assert response.headers["X-RateLimit-Limit"] == "10"
    assert len(stored_files(app)) == 10


def test_the_limit_counts_files_not_requests(client):
    assert client.upload(*[(pdf_bytes(f"m{n}"), f"{n}.pdf") for n in range(8)]).status_code == 202
    response = client.upload((pdf_bytes("x1"), "x1.pdf"), (pdf_bytes("x2"), "x2.pdf"), (pdf_bytes("x3"), "x3.pdf"))
    assert response.status_code == 429


def test_dropping_the_cookie_does_not_escape_the_address_limit(make_app):
    app = make_app(UPLOADS_PER_MINUTE=2)
    from tests.support.app import ApiClient
    statuses = []
    for n in range(14):  # a fresh owner each time; the per-address limit is 6 × 2 = 12 files a minute
        statuses.append(ApiClient(app.test_client()).upload((pdf_bytes(f"c{n}"), "a.pdf")).status_code)
    assert statuses[:12] == [202] * 12 and statuses[12:] == [429, 429]


@pytest.mark.parametrize("given, shown", [
    ("../../etc/passwd.pdf", "../../etc/passwd.pdf"),
    ("<script>alert(1)</script>.pdf", "<script>alert(1)</script>.pdf"),
    ("tab\there\x07bell\x1b[31m.pdf", "tabherebell[31m.pdf"),
    ("a" * 300 + ".pdf", "a" * 255),
])
def test_hostile_file_names_are_display_text_only(app, client, given, shown):
    response = client.upload((pdf_bytes(given), given))
    job = response.get_json()["jobs"][0]
    assert job["filename"] == shown
    assert stored_files(app) == [f"{job['id']}.pdf"]
    assert not any(Path(app.config["DATA_DIR"]).glob("etc*"))


def test_a_raw_cr_lf_in_a_file_name_breaks_no_header_and_keeps_nothing(app, client):
    body = (b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"evil\r\nSet-Cookie: x=1.pdf\"\r\n"
            b"Content-Type: application/pdf\r\n\r\n" + pdf_bytes("crlf") + b"\r\n--B--\r\n")
    response = client.post("/api/upload", data=body, content_type="multipart/form-data; boundary=B")
    assert "Set-Cookie: x" not in str(response.headers)
    if response.status_code == 202:
        assert "\r" not in response.get_json()["jobs"][0]["filename"]
    else:
        assert response.status_code == 400 and stored_files(app) == []


def test_a_non_utf8_file_name_is_kept_as_readable_text(app, client):
    body = (b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"fatura\xff\xfe.pdf\"\r\n"
            b"Content-Type: application/pdf\r\n\r\n" + pdf_bytes("nonutf8") + b"\r\n--B--\r\n")
    response = client.post("/api/upload", data=body, content_type="multipart/form-data; boundary=B")
    job = response.get_json()["jobs"][0]
    assert response.status_code == 202 and job["filename"].startswith("fatura") and job["filename"].endswith(".pdf")
    job["filename"].encode("utf-8")
    assert stored_files(app) == [f"{job['id']}.pdf"]


def test_retry_after_says_when_the_oldest_file_of_the_window_expires(make_app, monkeypatch):
    import time as clock
    app = make_app(UPLOADS_PER_MINUTE=2)
    client = ApiClient(app.test_client())
    assert client.upload((pdf_bytes("w1"), "1.pdf")).status_code == 202
    real_time = clock.time
    monkeypatch.setattr(clock, "time", lambda: real_time() + 20)  # the limiter and the handler both read it
    assert client.upload((pdf_bytes("w2"), "2.pdf")).status_code == 202
    response = client.upload((pdf_bytes("w3"), "3.pdf"))
    assert response.status_code == 429
    # The first file leaves the moving window 60 s after it came, 20 s ago: not a whole window from now.
    assert 35 <= int(response.headers["Retry-After"]) <= 41, response.headers["Retry-After"]


def test_the_upload_window_can_be_shortened(make_app):
    app = make_app(UPLOADS_PER_MINUTE=2, UPLOAD_WINDOW_SECONDS=1)
    client = ApiClient(app.test_client())
    assert [client.upload((pdf_bytes(f"s{n}"), f"{n}.pdf")).status_code for n in range(3)] == [202, 202, 429]
    response = client.upload((pdf_bytes("s9"), "9.pdf"))
    assert response.get_json()["error"]["message"] == "Too many uploads (2 per 1 second); wait and try again."
    assert int(response.headers["Retry-After"]) in (0, 1)  # Flask-Limiter rounds the last second down


def _random_form(rng):
    """A multipart body of random parts (fields and files, whose bytes are full of line breaks, dashes and pieces
    of the boundary), under a random boundary."""
    boundary = "".join(rng.choice("abcXYZ019-_'") for _ in range(rng.randint(1, 40))).encode()
    pieces = [b"\r\n", b"\r", b"\n", b"--", b"-", b" ", b"x", b"\r\n--", b"--" + boundary, b"\r\n--" + boundary[:-1],
              boundary, bytes(rng.randrange(256) for _ in range(rng.randint(0, 50)))]
    body = []
    if rng.random() < 0.3:
        body.append(b"\r\n")  # blank lines before the first boundary
    for n in range(rng.randint(0, 5)):
        content = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        # No delimiter inside a part: not the RFC's (after CRLF), nor those werkzeug's parser also takes (after a
        # bare CR or LF, or at once after the blank line that ends the part's headers).
        if any(line_break + b"--" + boundary in content for line_break in (b"\r", b"\n")):
            content = content.replace(b"\r", b"").replace(b"\n", b"")
        if content.startswith(b"--" + boundary):
            content = b"x" + content
        headers = f'Content-Disposition: form-data; name="part{n}"'
        if rng.random() < 0.5:
            headers += f'; filename="f{n}.pdf"\r\nContent-Type: application/pdf'
        elif rng.random() < 0.3:
            headers += "\r\nContent-Type: text/plain; charset=iso-8859-1"
        body.append(b"--" + boundary + b"\r\n" + headers.encode() + b"\r\n\r\n" + content + b"\r\n")
    body.append(b"--" + boundary + b"--\r\n")
    return b"".join(body), boundary.decode()


def _parsed(parser, body, boundary):
    _, form, files = parser.parse(io.BytesIO(body), "multipart/form-data", len(body), {"boundary": boundary})
    return (list(form.items(multi=True)),
            [(name, part.filename, part.content_type, part.stream.read()) for name, part in files.items(multi=True)])


def test_the_form_parser_reads_what_werkzeugs_does():
    """python-multipart under werkzeug's request.files (uploads.MultipartFormParser) gives the same form and
    files as werkzeug's own parser, however the body is cut into reads."""
    import random
    from werkzeug.formparser import FormDataParser
    rng = random.Random(4321)
    theirs = FormDataParser(max_form_parts=1000, silent=False)
    compared = 0
    for _ in range(1000):
        body, boundary = _random_form(rng)
        ours = uploads.MultipartFormParser(max_form_parts=1000, silent=False)
        ours.buffer_size = rng.choice([1, 2, 3, 7, 64, 1000, 64 * 1024])
        want = _parsed(theirs, body, boundary)
        assert _parsed(ours, body, boundary) == want, (body, boundary, ours.buffer_size)
        compared += bool(want[0] or want[1])
    assert compared > 500


def test_a_body_that_ends_inside_a_part_reads_as_an_empty_form(app, client):
    body = (b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cut.pdf\"\r\n\r\n" + pdf_bytes("cut"))
    response = client.post("/api/upload", data=body, content_type="multipart/form-data; boundary=B")
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "NO_FILE"
    assert stored_files(app) == []  # nor the part's temp file


@pytest.mark.parametrize("where", ["field", "header"])
def test_a_field_or_a_part_header_over_the_form_memory_limit_is_413(make_app, where):
    app = make_app(MAX_FORM_MEMORY_SIZE=1000)
    client = ApiClient(app.test_client())
    big = "x" * 2000
    mapping = (f'Content-Disposition: form-data; name="mapping"\r\n\r\n{big}' if where == "field" else
               f'Content-Disposition: form-data; name="mapping"; x="{big}"\r\n\r\ngeneric_v1')
    body = (b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.pdf\"\r\n\r\n" + pdf_bytes("m")
            + f"\r\n--B\r\n{mapping}\r\n--B--\r\n".encode())
    response = client.post("/api/upload", data=body, content_type="multipart/form-data; boundary=B")
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "TOO_LARGE"
    assert stored_files(app) == []


@pytest.fixture
def incoming(monkeypatch):
    """Every temp file a request opened for a file part, in order."""
    from webapp import uploads
    opened = []

    class Spy(uploads.IncomingFile):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            opened.append(self)

    monkeypatch.setattr(uploads, "IncomingFile", Spy)
    return opened


def test_a_file_sent_to_a_route_that_takes_none_is_never_written(app, client, incoming):
    response = client.post("/tokens", data={"name": "x", "file": (io.BytesIO(pdf_bytes()), "a.pdf")},
                           content_type="multipart/form-data", headers={"Accept": "application/json"})
    assert response.status_code == 400 and "takes no files" in response.get_data(as_text=True)
    assert incoming == []


def test_a_form_with_more_parts_than_a_minutes_files_is_refused(make_app):
    app = make_app(UPLOADS_PER_MINUTE=3)
    client = ApiClient(app.test_client())
    assert app.config["MAX_FORM_PARTS"] == 8
    data = {"file": [(io.BytesIO(pdf_bytes(str(n))), f"{n}.pdf") for n in range(3)],
            **{f"field{n}": "x" for n in range(6)}}
    response = client.post("/api/upload", data=data, content_type="multipart/form-data")
    assert response.status_code == 413


def test_a_part_is_closed_before_the_next_one_opens(client, monkeypatch):
    from webapp import uploads
    open_at_start = []

    class Spy(uploads.IncomingFile):
        made = []

        def __init__(self, *args, **kwargs):
            open_at_start.append(sum(not part._file.closed for part in Spy.made))
            super().__init__(*args, **kwargs)
            Spy.made.append(self)

    monkeypatch.setattr(uploads, "IncomingFile", Spy)
    assert client.upload(*[(pdf_bytes(str(n)), f"{n}.pdf") for n in range(4)]).status_code == 202
    assert open_at_start == [0, 0, 0, 0]


@pytest.mark.parametrize("given, shown", [
    ("invoice\u202efdp.exe", "invoicefdp.exe"),  # RIGHT-TO-LEFT OVERRIDE: would read "invoiceexe.pdf"
    ("fat\u200bura\u200d.pdf", "fatura.pdf"),  # zero-width space and joiner
    ("\ufeff\u2066a\u2069.pdf", "a.pdf"),  # byte-order mark, isolates
    ("\u200b\u200e", "upload.pdf"),  # nothing visible left
])
def test_format_characters_are_stripped_from_shown_and_download_names(worker_app, api, given, shown):
    response = api.upload((pdf_bytes(given), given))
    job = response.get_json()["jobs"][0]
    assert job["filename"] == shown
    run(worker_app, job["id"])
    disposition = api.get(f"/api/jobs/{job['id']}/download").headers["Content-Disposition"]
    assert not any(c in disposition for c in ("\u202e", "\u200b", "%E2%80%AE", "%E2%80%8B", "%E2%80%8D"))
