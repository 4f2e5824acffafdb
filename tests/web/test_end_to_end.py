"""Web → worker → our real gateway: generated invoices come back as the XML the spec describes."""
import defusedxml.ElementTree as SafeET
import pytest

from tests.support import invoicegen
from worker import run
from gateway.testing import running_gateway
from tests.support.app import ApiClient
from core.db import db


@pytest.fixture(scope="module")
def gateway_url():
    with running_gateway() as url:
        yield url


@pytest.fixture
def e2e(make_app, gateway_url):
    app = make_app(GATEWAY_URL=gateway_url, RETRY_BASE_SECONDS=0, RETRY_JITTER_SECONDS=0)
    return app, ApiClient(app.test_client())


def convert(app, api, pdf, name, mapping=None):
    job = api.upload((pdf, name), mapping=mapping).get_json()["jobs"][0]
    with app.app_context():
        run.run_job(job["id"])
        db.session.remove()
    return api.get(f"/api/jobs/{job['id']}").get_json()


def test_an_invoice_converts_to_the_specified_xml(e2e):
    app, api = e2e
    pdf, truth = invoicegen.make_invoice(n_lines=40, seed=11)
    job = convert(app, api, pdf, "fatura.pdf")
    assert job["status"] == "complete", job
    root = SafeET.fromstring(api.get(job["download_url"]).get_data())
    assert root.tag == "Invoice" and root.get("mapping") == "pt_simon_invoice_v1"
    assert root.findtext("Header/InvoiceNumber") == truth["Header"]["InvoiceNumber"]
    assert root.find("Lines").get("count") == "40" and len(root.findall("Lines/Line")) == 40
    assert root.findtext("Totals/GrandTotal") == truth["Totals"]["GrandTotal"]
    assert root.findtext("Checks/LinesSumMatchesNetTotal") == "true"


def test_generic_mapping_reads_every_page(e2e):
    app, api = e2e
    pdf = invoicegen.make_text_pdf([["first page line"], ["second page line"], ["third page line"]], title="Notes")
    job = convert(app, api, pdf, "notes.pdf", mapping="generic_v1")
    root = SafeET.fromstring(api.get(job["download_url"]).get_data())
    assert [page.findtext("Line") for page in root.findall("Page")] == ["first page line", "second page line", "third page line"]


def test_an_unreadable_pdf_fails_for_good_with_the_gateways_reason(e2e):
    app, api = e2e
    job = convert(app, api, invoicegen.make_encrypted_pdf(), "locked.pdf")
    assert (job["status"], job["error_code"], job["attempts"]) == ("failed", "GW_4XX", 1)
    assert "password" in job["error"].lower()
