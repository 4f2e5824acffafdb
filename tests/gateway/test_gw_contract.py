"""The HTTP contract of shared/spec/gateway.md: status codes, negotiation, correlation ids, error shape, logs."""

import io
import json
import logging

import pytest
from tests.support.invoicegen import make_invoice, make_png_bytes, make_text_pdf

from gateway import create_app


def assert_error(response, status, code):
    assert response.status_code == status
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert body["error"]["message"] and "\n" not in body["error"]["message"]


@pytest.fixture(scope="module")
def small_pdf():
    return make_invoice(n_lines=2, seed=5)[0]


def test_healthz_lists_mappings(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "mappings": ["generic_v1", "pt_simon_invoice_v1"]}


def test_correlation_id_is_echoed(convert, small_pdf):
    response = convert(small_pdf, headers={"X-Correlation-ID": "job-42/attempt-1"})
    assert response.status_code == 200
    assert response.headers["X-Correlation-ID"] == "job-42/attempt-1"


def test_correlation_id_is_made_up_when_missing(client):
    assert len(client.get("/healthz").headers["X-Correlation-ID"]) == 32


def test_errors_echo_the_correlation_id_too(convert):
    response = convert(make_png_bytes(), headers={"X-Correlation-ID": "c-1"})
    assert response.headers["X-Correlation-ID"] == "c-1"


@pytest.mark.parametrize("accept, content_type", [
    (None, "application/xml; charset=utf-8"),
    ("*/*", "application/xml; charset=utf-8"),
    ("application/xml", "application/xml; charset=utf-8"),
    ("text/html, application/xml;q=0.9", "application/xml; charset=utf-8"),
    ("application/json", "application/json"),
    ("application/xml;q=0.5, application/json", "application/json"),
])
def test_accept_picks_the_format(convert, small_pdf, accept, content_type):
    response = convert(small_pdf, headers={"Accept": accept} if accept else {})
    assert response.status_code == 200
    assert response.content_type == content_type


@pytest.mark.parametrize("accept", ["text/html", "application/pdf", "image/*"])
def test_other_accept_is_406(convert, small_pdf, accept):
    assert_error(convert(small_pdf, headers={"Accept": accept}), 406, "NOT_ACCEPTABLE")


@pytest.mark.parametrize("name", ["pt_simon_invoice_v1", "pt_simon_invoice_v1.json", " pt_simon_invoice_v1 "])
def test_mapping_name_with_or_without_suffix(convert, small_pdf, name):
    assert convert(small_pdf, mapping=name).status_code == 200


@pytest.mark.parametrize("name", [
    "nope_v1", "../gateway/mappings/pt_simon_invoice_v1", "../../etc/passwd", "/etc/passwd",
    "mappings/generic_v1", "generic_v1.json.json", "..", "pt_simon_invoice_v1\x00",
])
def test_unknown_or_pathlike_mapping_is_406(convert, small_pdf, name):
    assert_error(convert(small_pdf, mapping=name), 406, "UNKNOWN_MAPPING")


def test_missing_file_part_is_400(client):
    response = client.post("/process", data={"mapping": "generic_v1"}, content_type="multipart/form-data")
    assert_error(response, 400, "MISSING_PART")


def test_missing_mapping_part_is_400(client, small_pdf):
    response = client.post("/process", data={"file": (io.BytesIO(small_pdf), "a.pdf")})
    assert_error(response, 400, "MISSING_PART")


def test_not_multipart_is_400(client, small_pdf):
    response = client.post("/process", data=small_pdf, content_type="application/pdf")
    assert_error(response, 400, "BAD_REQUEST")


def test_empty_file_is_400(convert):
    assert_error(convert(b""), 400, "EMPTY_FILE")


def test_bad_pretty_is_400(convert, small_pdf):
    assert_error(convert(small_pdf, pretty="very"), 400, "BAD_REQUEST")


def test_png_named_pdf_is_415(convert):
    assert_error(convert(make_png_bytes()), 415, "NOT_PDF")


def test_text_pdf_without_invoice_is_422(convert):
    pdf = make_text_pdf([["Ata da reunião", "Nada a registar."]])
    assert_error(convert(pdf), 422, "NOTHING_FOUND")
    assert convert(pdf, mapping="generic_v1").status_code == 200


def test_page_cap_is_422():
    client = create_app({"MAX_PAGES": 2}).test_client()
    pdf = make_text_pdf([["a"], ["b"], ["c"]])
    response = client.post("/process", data={"file": (io.BytesIO(pdf), "a.pdf"), "mapping": "generic_v1"})
    assert_error(response, 422, "TOO_MANY_PAGES")


def test_size_limit_is_configurable():
    client = create_app({"MAX_MB": 1}).test_client()
    pdf = b"%PDF-1.7\n" + b" " * (1 << 20)
    response = client.post("/process", data={"file": (io.BytesIO(pdf), "a.pdf"), "mapping": "generic_v1"})
    assert_error(response, 413, "TOO_LARGE")


def test_unknown_route_and_method_answer_json(client):
    assert_error(client.get("/nope"), 404, "NOT_FOUND")
    assert_error(client.get("/process"), 405, "METHOD_NOT_ALLOWED")


def records_of(name):
    """A fixture's body: every record the named logger (and those under it) writes while the test runs."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.fixture
def access_records():
    yield from records_of("gateway.access")


def test_one_log_line_per_request(convert, access_records):
    pdf, truth = make_invoice(n_lines=60, seed=3)
    convert(pdf, headers={"X-Correlation-ID": "log-me"})
    convert(make_png_bytes(), mapping="generic_v1", headers={"X-Correlation-ID": "log-me-too"})
    ok, refused = access_records
    assert (ok.correlation_id, ok.mapping, ok.bytes, ok.pages, ok.status) == (
        "log-me", "pt_simon_invoice_v1", len(pdf), truth["pages"], 200)
    assert ok.duration_ms > 0
    assert (refused.correlation_id, refused.status, refused.error) == ("log-me-too", 415, "NOT_PDF")


def test_log_lines_are_json(client, access_records):
    client.get("/healthz", headers={"X-Correlation-ID": "json-line"})
    formatter = logging.getLogger("gateway").handlers[0].formatter
    line = json.loads(formatter.format(access_records[0]))
    assert (line["correlation_id"], line["status"], line["path"]) == ("json-line", 200, "/healthz")


# -- a parse that raises is the document's answer; a parser that cannot start is the gateway's (issue 27) ------


@pytest.fixture
def gateway_records():
    """Every record the gateway's loggers write (access lines and errors alike)."""
    yield from records_of("gateway")


def in_the_child(monkeypatch, fault):
    """Have the gateway send each parse's child the fault (tests/support/gwfaults.py) instead of zygote.convert."""
    from gateway import zygote
    from tests.support import gwfaults
    monkeypatch.setattr(zygote, "convert", getattr(gwfaults, fault))


@pytest.mark.parametrize("fault, exception", [("raise_in_pdfium", "PdfiumError"), ("raise_in_reading", "IndexError"),
                                              ("raise_in_rendering", "ValueError")])
def test_a_parse_that_raises_is_the_documents_final_422_with_its_traceback_logged(
        monkeypatch, convert, small_pdf, gateway_records, fault, exception):
    in_the_child(monkeypatch, fault)
    response = convert(small_pdf, headers={"X-Correlation-ID": "raises"})
    assert_error(response, 422, "PARSE_FAILED")
    assert exception in response.get_json()["error"]["message"]
    assert_traceback_logged(gateway_records, "raises", exception, (422, "PARSE_FAILED"))


def test_a_mapping_whose_data_makes_its_code_raise_is_422_parse_failed(tmp_path, small_pdf, gateway_records):
    """No injection: a check summing a text column (which the mapping's validation lets through) raises
    decimal.InvalidOperation inside the child, as the next mapping bug would."""
    from gateway.mappings import DEFAULT_DIR
    spec = json.loads((DEFAULT_DIR / "pt_simon_invoice_v1.json").read_text(encoding="utf-8"))
    spec["checks"]["DescriptionsSum"] = {"sum": "tables.lines.rows.Description", "equals": "fields.NetTotal"}
    (tmp_path / "sums_text_v1.json").write_text(json.dumps(spec), encoding="utf-8")
    client = create_app({"MAPPINGS_DIR": str(tmp_path), "PARSE_TIMEOUT_S": 20}).test_client()
    response = client.post("/process", headers={"X-Correlation-ID": "sums-text"}, data={
        "file": (io.BytesIO(small_pdf), "a.pdf", "application/pdf"), "mapping": "sums_text_v1"})
    assert_error(response, 422, "PARSE_FAILED")
    assert_traceback_logged(gateway_records, "sums-text", "InvalidOperation", (422, "PARSE_FAILED"))


def limits_it_cannot_set(monkeypatch, app):
    """The child cannot confine itself: an address-space cap past what setrlimit takes (a hard limit below ours
    on a real box)."""
    monkeypatch.setitem(app.config, "PARSE_MEMORY_MB", 1 << 60)
    return 502, "GATEWAY_ERROR", "_set_limits"


def box_fails_mid_parse(monkeypatch, app):
    in_the_child(monkeypatch, "the_box_fails_mid_parse")
    return 502, "GATEWAY_ERROR", "OSError"


def memory_runs_out(monkeypatch, app):
    in_the_child(monkeypatch, "memory_runs_out_mid_parse")
    return 503, "OVER_LIMITS", None


# A zygote that cannot fork or start answers 503 OVERLOADED: tests/gateway/test_gw_zygote.py.
@pytest.mark.parametrize("inject", [limits_it_cannot_set, box_fails_mid_parse, memory_runs_out])
def test_a_parser_that_cannot_start_or_run_stays_a_5xx(monkeypatch, app, convert, small_pdf, gateway_records,
                                                       inject):
    """Not the document's doing, so not its final answer: the worker retries a 5xx, and counts it toward its
    breaker; one the gateway did not expect is logged with its traceback."""
    status, code, in_traceback = inject(monkeypatch, app)
    assert_error(convert(small_pdf, headers={"X-Correlation-ID": "no-parser"}), status, code)
    if in_traceback:
        assert_traceback_logged(gateway_records, "no-parser", in_traceback, (status, code))


def assert_traceback_logged(records, correlation_id, text, answer):
    """One error line with the request's correlation id and the child's traceback, and the access line."""
    mine = [record for record in records if getattr(record, "correlation_id", None) == correlation_id]
    errors = [record for record in mine if record.levelno == logging.ERROR]
    assert len(errors) == 1, [record.getMessage() for record in mine]
    trace = errors[0].traceback
    assert trace.startswith("Traceback (most recent call last)") and text in trace
    line = json.loads(logging.getLogger("gateway").handlers[0].formatter.format(errors[0]))
    assert (line["level"], line["correlation_id"], line["traceback"]) == ("ERROR", correlation_id, trace)
    (access,) = [record for record in mine if record.name == "gateway.access"]
    assert (access.status, access.error) == answer
