"""The review page and what it reads: an invoice's checks, the source PDF, the job's history (job_events)."""
import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import defusedxml.ElementTree as SafeET
import pytest
from babel.numbers import format_currency
from sqlalchemy import event, text

from core.coordination import Coordination
from core import operations
from gateway.convert import convert_pdf
from gateway.mappings import load_all
from tests.support.app import ApiClient, claim, load, pdf_bytes, run, upload
from tests.support.invoicegen import make_invoice, make_text_pdf
from webapp import pages
from webapp import review
from core.clock import utcnow
from core.db import db
from core.jobs.history import EventKind, JobEvent
from core.jobs.model import Job

MAPPINGS = load_all()


def converted(pdf, mapping="pt_simon_invoice_v1"):
    """The XML our gateway makes of pdf (in this process: the same code the sandboxed child runs)."""
    return convert_pdf(pdf, MAPPINGS[mapping], "xml", False, 100)[1]


def invoice_xml(lines, net="", vat="", grand="", header=True):
    """A pt_simon_invoice_v1 result with these lines ((quantity, price, discount, total), a None left out)."""
    names = ("Quantity", "UnitPrice", "DiscountPercent", "LineTotal")
    body = "".join(
        f'<Line number="{n}"><Reference>R{n}</Reference>'
        + "".join(f"<{name}>{value}</{name}>" for name, value in zip(names, line) if value is not None)
        + "</Line>" for n, line in enumerate(lines, start=1))
    totals = "".join(f"<{name}>{value}</{name}>" for name, value in
                     (("NetTotal", net), ("VATTotal", vat), ("GrandTotal", grand)) if value)
    head = "<Header><InvoiceNumber>FT 1/1</InvoiceNumber><IssueDate>2026-11-20</IssueDate></Header>" if header else ""
    return (f'<Invoice mapping="pt_simon_invoice_v1">{head}<Supplier><Name>S</Name></Supplier>'
            f"<Lines>{body}</Lines><Totals>{totals}</Totals></Invoice>")


def read(xml):
    return review.read("pt_simon_invoice_v1", SafeET.fromstring(xml))


# -- the checks, in Decimal arithmetic -----------------------------------------------------------------------


def test_a_right_invoice_passes_every_check():
    invoice = read(invoice_xml([("12", "4.35", "5", "49.59"), ("2.5", "10.00", "0", "25.00")],
                               net="74.59", vat="17.16", grand="91.75"))
    assert [check.ok for check in invoice.checks] == [True, True, True]
    assert [line.expected for line in invoice.lines] == [Decimal("49.59"), Decimal("25.00")]


def test_lines_that_do_not_add_up_fail_the_sum_and_a_wrong_line_is_named():
    invoice = read(invoice_xml([("12", "4.35", "5", "49.60"), ("1", "1.00", "0", "1.00")],
                               net="50.59", vat="1.00", grand="52.00"))
    lines_sum, grand_total, each_line = invoice.checks
    assert lines_sum.ok is False and "50.60" in lines_sum.detail and "50.59" in lines_sum.detail
    assert grand_total.ok is False and "51.59" in grand_total.detail
    assert each_line.ok is False and "line 1" in each_line.detail
    assert [line.ok for line in invoice.lines] == [False, True] and invoice.failing_lines[0].number == "1"
    assert invoice.lines[0].expected == Decimal("49.59")


def test_line_totals_round_half_up_to_cents():
    # 1 × 0.05 × 0.5 = 0.025: half up makes 0.03 (the spec's invoices), where banker's rounding would say 0.02.
    invoice = read(invoice_xml([("1", "0.05", "50", "0.03")], net="0.03", vat="0.00", grand="0.03"))
    assert invoice.lines[0].expected == Decimal("0.03") and [c.ok for c in invoice.checks] == [True, True, True]
    assert read(invoice_xml([("1", "0.05", "50", "0.02")])).lines[0].ok is False


def test_a_missing_value_makes_a_check_unknown_not_passed_or_failed():
    invoice = read(invoice_xml([("12", "4.35", None, "49.59"), ("1", "abc", "0", "1.00")], net="50.59", vat="1"))
    assert [line.ok for line in invoice.lines] == [None, None]
    assert invoice.lines[0].fields["DiscountPercent"] is None
    assert [check.ok for check in invoice.checks] == [True, None, None]
    assert invoice.header["DueDate"] is None and invoice.customer == {"Name": None, "TaxID": None}
    empty = read(invoice_xml([], header=False))
    assert [check.ok for check in empty.checks] == [None, None, None]


def test_the_generators_slipped_line_fails_after_a_real_conversion():
    pdf, truth = make_invoice(n_lines=6, seed=11, line_total_deltas={2: "0.10"})
    invoice = read(converted(pdf))
    assert truth["Checks"]["LinesSumMatchesNetTotal"] == "false"
    assert invoice.header["InvoiceNumber"] == truth["Header"]["InvoiceNumber"]
    assert [line.number for line in invoice.failing_lines] == ["3"]
    assert [check.ok for check in invoice.checks] == [False, True, False]
    right = read(converted(make_invoice(n_lines=6, seed=11)[0]))
    assert [check.ok for check in right.checks] == [True, True, True]


def test_a_generic_document_reads_as_pages_of_lines():
    xml = converted(make_text_pdf([["first line", "second line"], ["page two"]], title="T"), "generic_v1")
    document = review.read("generic_v1", SafeET.fromstring(xml))
    assert document.pages == [("1", ["first line", "second line"]), ("2", ["page two"])]
    assert document.meta["title"] == "T"
    assert review.read("pt_simon_invoice_v1", SafeET.fromstring(xml)) is None  # not an invoice: raw XML only
    assert review.read("some_other_v1", SafeET.fromstring(xml)) is None


# -- the history: written by the transitions ---------------------------------------------------------------


@pytest.fixture
def job_id(app):
    with app.app_context():
        return Job.create(owner="o", filename="a.pdf", mapping="m", bytes=1, sha256="0" * 64,
                          upload_path="uploads/x.pdf").id


def history(app, job_id):
    with app.app_context():
        return [event.to_dict() for event in JobEvent.of(job_id)]


def test_each_transition_writes_one_event(app, job_id):
    with app.app_context():
        assert claim(job_id, "w", 30, capacity=4)
        assert Job.renew_lease(job_id, "w", 30, progress=50)  # bookkeeping, not history
        assert Job.retry_later(job_id, "w", "GW_5XX", "gateway said 502", 5)
        assert Job.hold(job_id, "the gateway is down")
        assert not Job.hold(job_id, "the gateway is down")  # once
        assert claim(job_id, "w", 30, capacity=4) is None  # not due yet: no event either
        db.session.execute(text("UPDATE jobs SET next_attempt_at = NULL, queue_key = created_at"))  # due now
        db.session.commit()
        assert claim(job_id, "w", 30, capacity=4)
        assert Job.release(job_id, "w", "CIRCUIT_OPEN", "held")
        assert claim(job_id, "w", 30, capacity=4)
        assert Job.release(job_id, "w")
        assert claim(job_id, "w", 30, capacity=4)
        assert Job.fail(job_id, "w", "GW_4XX", "refused", dead_letter=False)
        assert Job.requeue(job_id)
        assert Job.run_next(job_id)  # an admin moved it to the front (fair share)
        assert claim(job_id, "w", 30, capacity=4)
        assert Job.complete(job_id, "w", "results/x.xml")
        assert Job.expire_result(job_id)
        assert Job.forget_upload(job_id)
    events = history(app, job_id)
    assert [(e["kind"], e["status"], e["attempt"], e["error_code"]) for e in events] == [
        ("created", "queued", 0, None),
        ("attempt", "processing", 1, None),
        ("retry_scheduled", "queued", 1, "GW_5XX"),
        ("held", "queued", 1, "CIRCUIT_OPEN"),
        ("attempt", "processing", 2, None),
        ("held", "queued", 2, "CIRCUIT_OPEN"),  # the attempt given back, still named
        ("attempt", "processing", 2, None),
        ("released", "queued", 2, None),
        ("attempt", "processing", 2, None),
        ("failed", "failed", 2, "GW_4XX"),
        ("requeued", "queued", 0, None),
        ("run_next", "queued", 0, None),
        ("attempt", "processing", 1, None),
        ("complete", "complete", 1, None),
        ("result_expired", "complete", 1, None),
        ("upload_expired", "complete", 1, None),
    ]
    ends = {"retry_scheduled", "released", "failed", "complete"}
    for e in events:
        # an attempt's end has its duration; the breaker's hold of a queued job has none, of a running one it has
        assert (e["duration_ms"] is not None) == (e["kind"] in ends or (e["kind"] == "held" and e["attempt"] == 2))
    assert events[2]["message"] == "gateway said 502" and events[2]["due_at"] is not None
    assert all(e["due_at"] is None for e in events if e["kind"] != "retry_scheduled")
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    with app.app_context():
        lines = [pages.describe_event(e) for e in JobEvent.of(job_id)]
    assert set(EventKind) <= {e["kind"] for e in events}  # every kind was written above, and each reads as words
    assert not any(line in set(EventKind) for line in lines), lines
    assert lines[5] == "Attempt 2 held by the breaker: the gateway is down (the attempt is not counted)"


def test_a_transition_is_one_update_and_one_insert_with_no_extra_read(app, job_id):
    statements = []

    def seen(conn, cursor, statement, *args):
        words = statement.upper().split()
        # The claim's UPDATE begins with the CTE of its fair choice (WITH RECURSIVE …), which only reads.
        statements.append(next((w for w in ("UPDATE", "INSERT", "DELETE") if w in words), "SELECT")
                          if words[0] == "WITH" else words[0])

    with app.app_context():
        event.listen(db.engine, "before_cursor_execute", seen)
        try:
            assert claim(job_id, "w", 30, capacity=4)
            claimed, statements[:] = list(statements), []
            assert Job.complete(job_id, "w", "results/x.xml")
        finally:
            event.remove(db.engine, "before_cursor_execute", seen)
    for done in (claimed, statements):
        assert [s for s in done if s in ("SELECT", "UPDATE", "INSERT", "DELETE")] == ["UPDATE", "INSERT"], done


def test_events_go_with_their_job(app, job_id):
    with app.app_context():
        other = Job.create(owner="o", filename="b.pdf", mapping="m", bytes=2, sha256="0" * 64).id
        claim(job_id, "w", 30, capacity=4)
        assert Job.remove(job_id)
        assert db.session.execute(text("SELECT count(*) FROM job_events WHERE job_id = :id"), {"id": job_id}).scalar() == 0
        assert len(JobEvent.of(other)) == 1


def test_a_job_run_by_the_worker_has_its_attempts_errors_and_durations(worker_app, api, fake):
    job = upload(api, "hist")
    fake.status = 502  # transient: retried
    run(worker_app, job["id"])
    fake.status = 200
    run(worker_app, job["id"])
    assert load(worker_app, job["id"]).status == "complete"
    events = api.get(f"/api/jobs/{job['id']}/events").get_json()["events"]
    assert [(e["kind"], e["attempt"]) for e in events] == [
        ("created", 0), ("attempt", 1), ("retry_scheduled", 1), ("attempt", 2), ("complete", 2)]
    assert events[2]["error_code"] == "GW_5XX" and "502" in events[2]["message"]
    assert all(isinstance(events[i]["duration_ms"], int) and events[i]["duration_ms"] >= 0 for i in (2, 4))
    assert set(events[0]) == {"at", "kind", "status", "attempt", "error_code", "message", "duration_ms", "due_at"}


def test_the_breakers_hold_is_in_the_history(worker_app, api, fake):
    from worker import breaker
    job = upload(api, "held")
    with worker_app.app_context():
        Coordination.put(breaker.NAME, state=breaker.OPEN, due_at=utcnow() + timedelta(minutes=5))
        assert breaker.state() == breaker.OPEN  # this process's cached look too
        db.session.remove()
    try:
        run(worker_app, job["id"])
    finally:
        with worker_app.app_context():
            breaker.reset()
            db.session.remove()
    kinds = [(e["kind"], e["error_code"]) for e in api.get(f"/api/jobs/{job['id']}/events").get_json()["events"]]
    assert kinds == [("created", None), ("held", "CIRCUIT_OPEN")]


# -- the API: events and the source PDF, owner-scoped ---------------------------------------------------------


def test_events_and_pdf_are_the_owners_and_the_admins_only(app, client, other_client):
    job = upload(client, "mine")
    admin = ApiClient(app.test_client(), admin=True)
    for path in (f"/api/jobs/{job['id']}/events", f"/api/jobs/{job['id']}/pdf"):
        assert client.get(path).status_code == 200
        assert admin.get(path).status_code == 200
        answer = other_client.get(path)
        assert answer.status_code == 404 and answer.get_json()["error"]["code"] == "NOT_FOUND"
        assert app.test_client().get(path).status_code == 401
    assert client.get("/api/jobs/nope/pdf").status_code == 404


def test_the_pdf_is_served_inline_as_a_pdf(client):
    job = upload(client, "inline")
    answer = client.get(f"/api/jobs/{job['id']}/pdf")
    assert answer.data == pdf_bytes("inline")
    assert answer.mimetype == "application/pdf" and answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Content-Disposition"].startswith("inline;") and "inline.pdf" in answer.headers["Content-Disposition"]
    assert "private" in answer.headers["Cache-Control"]
    policy = answer.headers["Content-Security-Policy"]  # the browser's own viewer may show it; no script may run
    assert "object-src 'self'" in policy and "default-src 'none'" in policy and "script-src" not in policy
    ranged = client.get(f"/api/jobs/{job['id']}/pdf", headers={"Range": "bytes=0-4"})
    assert ranged.status_code == 206 and ranged.data == b"%PDF-"


def test_a_suffix_range_longer_than_the_pdf_gets_all_of_it(client):
    """Schemathesis: `Range: bytes=-3309` on a smaller file was a 416; RFC 9110 14.1.2 says it means the whole file."""
    job = upload(client, "suffix")
    size = len(pdf_bytes("suffix"))
    whole = client.get(f"/api/jobs/{job['id']}/pdf", headers={"Range": f"bytes=-{size + 1000}"})
    assert whole.status_code == 206 and whole.data == pdf_bytes("suffix")
    assert whole.headers["Content-Range"] == f"bytes 0-{size - 1}/{size}"
    tail = client.get(f"/api/jobs/{job['id']}/pdf", headers={"Range": "bytes=-5"})
    assert tail.status_code == 206 and tail.data == pdf_bytes("suffix")[-5:]
    beyond = client.get(f"/api/jobs/{job['id']}/pdf", headers={"Range": f"bytes={size + 10}-"})
    assert beyond.status_code == 416 and beyond.get_json()["error"]["code"] == "RANGE_NOT_SATISFIABLE"
    assert beyond.headers["Content-Range"] == f"bytes */{size}"


def test_the_pdf_is_gone_after_retention(app, client):
    job = upload(client, "old")
    with app.app_context():
        assert claim(job["id"], "w", 30, capacity=4)
        assert Job.fail(job["id"], "w", "GW_4XX", "refused")
        removed = operations.apply_retention(now=utcnow() + timedelta(days=app.config["RETENTION_PDF_DAYS"] + 1))
    assert removed["pdf"] == 1
    answer = client.get(f"/api/jobs/{job['id']}/pdf")
    assert answer.status_code == 410 and answer.get_json()["error"]["code"] == "EXPIRED"
    kinds = [e["kind"] for e in client.get(f"/api/jobs/{job['id']}/events").get_json()["events"]]
    assert kinds[-1] == "upload_expired"
    html = client.get(f"/review/{job['id']}").get_data(as_text=True)
    assert "The PDF was removed by retention." in html and 'id="pdf-viewer"' not in html


def test_events_of_a_deleted_job_are_gone_with_it(client):
    job = upload(client, "gone")
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 204
    assert client.get(f"/api/jobs/{job['id']}/events").status_code == 404


# -- the page -------------------------------------------------------------------------------------------------


def complete_with(app, job_id, xml):
    with app.app_context():
        assert claim(job_id, "w", 30, capacity=4)
        Path(app.config["RESULT_DIR"], f"{job_id}.xml").write_bytes(xml if isinstance(xml, bytes) else xml.encode())
        assert Job.complete(job_id, "w", f"results/{job_id}.xml")


def test_the_review_page_reads_the_invoice_and_marks_what_fails(app, client):
    pdf, truth = make_invoice(n_lines=4, seed=5, line_total_deltas={1: "-0.01"}, omit=("DueDate",))
    job = upload(client, "slip")
    complete_with(app, job["id"], converted(pdf))
    html = client.get(f"/review/{job['id']}").get_data(as_text=True)
    assert f'<dd id="invoice-number">{truth["Header"]["InvoiceNumber"]}</dd>' in html
    assert '<dd id="invoice-due"><span class="missing">missing</span></dd>' in html
    assert truth["Supplier"]["TaxID"] in html and truth["Customer"]["TaxID"] in html
    grand = format_currency(Decimal(str(truth["Totals"]["GrandTotal"])), "EUR", locale="en")  # €1,234.56
    assert f'<dd id="grand-total">{grand}</dd>' in html
    rows = re.findall(r'<tr class="line( line-bad)?" data-line="(\d+)" data-ok="(\w+)"', html)
    assert rows == [("", "1", "true"), (" line-bad", "2", "false"), ("", "3", "true"), ("", "4", "true")]
    checks = re.findall(r'<li class="check-row check-(\w+)">', html)
    assert checks == ["bad", "ok", "bad"]
    assert '<details class="raw-xml">' in html and "&lt;InvoiceNumber&gt;" in html
    assert f'data-src="/api/jobs/{job["id"]}/pdf"' in html and "js/review.js" in html
    assert 'data-kind="complete"' in html and "Attempt 1 converted it" in html


def test_the_review_page_of_a_text_document_lists_its_pages_lines(app, client):
    job = upload(client, "text")
    complete_with(app, job["id"], converted(make_text_pdf([["Olá, mundo", "linha 2"]]), "generic_v1"))
    with app.app_context():
        db.session.execute(text("UPDATE jobs SET mapping = 'generic_v1'"))
        db.session.commit()
    html = client.get(f"/review/{job['id']}").get_data(as_text=True)
    assert '<ol class="text-lines"><li>Olá, mundo</li><li>linha 2</li></ol>' in html


def test_previous_and_next_follow_the_queues_filter(app, client):
    jobs = [upload(client, f"n{n}") for n in range(4)]  # newest last; the queue lists newest first
    with app.app_context():
        for job in jobs:  # claimed in upload order; the first and the third fail
            claim(job["id"], "w", 30, capacity=4)
        for index in (0, 2):
            Job.fail(jobs[index]["id"], "w", "GW_4XX", "refused")

    def steps(job, query=""):
        html = client.get(f"/review/{job['id']}{query}").get_data(as_text=True)
        found = dict(re.findall(r'id="(previous-job|next-job)" href="/review/([^"?]+)', html))
        return found.get("previous-job"), found.get("next-job"), html

    assert steps(jobs[2])[:2] == (jobs[3]["id"], jobs[1]["id"])
    previous, following, html = steps(jobs[2], "?status=failed")
    assert (previous, following) == (None, jobs[0]["id"])
    assert f'href="/review/{jobs[0]["id"]}?status=failed"' in html and 'href="/queue?status=failed"' in html
    assert steps(jobs[0], "?status=failed")[:2] == (jobs[2]["id"], None)
    assert 'aria-keyshortcuts="j"' in html
    assert steps(jobs[1], "?q=N")[:2] == (jobs[2]["id"], jobs[0]["id"])  # the queue's search, ignoring case
    assert steps(jobs[1], "?q=n1")[:2] == (None, None)
    queue = client.get("/queue?status=failed").get_data(as_text=True)
    assert f'href="/review/{jobs[2]["id"]}?status=failed"' in queue


def test_migration_0009_job_events_adds_and_removes_job_events(tmp_path):
    from flask_migrate import downgrade, upgrade
    from sqlalchemy import inspect

    from webapp import create_app
    app = create_app({"DATA_DIR": str(tmp_path), "TESTING": True, "SECRET_KEY": "test-secret-key-0123456789abcdefghijklmnop",
                      "HUEY_MEMORY": True})
    with app.app_context():
        upgrade(directory=app.config["MIGRATIONS_DIR"])
        assert "job_events" in inspect(db.engine).get_table_names()
        job_id = Job.create(owner="o", filename="a.pdf", mapping="m", bytes=1, sha256="0" * 64).id
        assert [e.kind for e in JobEvent.of(job_id)] == [EventKind.CREATED]
        db.session.remove()
        downgrade(directory=app.config["MIGRATIONS_DIR"], revision="0009_webhooks")
        assert "job_events" not in inspect(db.engine).get_table_names()
        assert db.session.execute(text("SELECT count(*) FROM jobs")).scalar() == 1
        db.session.remove()
        db.engine.dispose()
