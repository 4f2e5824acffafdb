"""Generated invoices through pt_simon_invoice_v1 and generic_v1, checked field by field against the truth."""

import io
import json
import shutil
import xml.etree.ElementTree as ET

import pytest
from gwhelpers import expected, invoice_from_json, invoice_from_xml
from tests.support.invoicegen import make_invoice, make_text_pdf

from gateway import create_app
from gateway.mappings import DEFAULT_DIR, MappingError


@pytest.mark.parametrize("seed, n_lines", [(1, 1), (2, 7), (3, 50), (4, 130), (5, 510), (6, 600)])
def test_invoice_every_field(convert, seed, n_lines):
    pdf, truth = make_invoice(n_lines=n_lines, seed=seed)
    response = convert(pdf)
    assert response.status_code == 200
    assert response.content_type == "application/xml; charset=utf-8"
    assert response.data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    found = invoice_from_xml(response.data)
    want = expected(truth)
    for section in ("Header", "Supplier", "Customer", "Totals", "Checks"):
        assert found[section] == want[section], section
    assert len(found["Lines"]) == n_lines
    for number, (got, line) in enumerate(zip(found["Lines"], want["Lines"]), start=1):
        assert got == line, f"line {number}"


def test_long_supplier_and_customer_names_and_addresses_every_field(convert):
    """Names past the middle of the page once made the street line (or the NIF) the supplier's name."""
    right = total = 0
    wrong = []
    for seed in range(8):
        pdf, truth = make_invoice(n_lines=4, seed=seed, long_names=True)
        response = convert(pdf)
        assert response.status_code == 200
        found, want = invoice_from_xml(response.data), expected(truth)
        pairs = [(f"{section}.{name}", found[section].get(name), value)
                 for section in ("Header", "Supplier", "Customer", "Totals", "Checks")
                 for name, value in want[section].items()]
        pairs += [(f"line {n}.{name}", got.get(name), value)
                  for n, (got, line) in enumerate(zip(found["Lines"], want["Lines"]), 1) for name, value in line.items()]
        total += len(pairs)
        right += sum(got == value for _, got, value in pairs)
        wrong += [(seed, where, got, value) for where, got, value in pairs if got != value]
    assert (right, wrong) == (total, []), f"{right}/{total} fields right"


def test_the_long_name_invoices_are_as_long_as_meant():
    from reportlab.pdfbase.pdfmetrics import stringWidth
    from tests.support.invoicegen import LONG_SUPPLIERS, PAGE_W
    assert all(40 + stringWidth(name, "Helvetica-Bold", 12) > PAGE_W / 2 for name in LONG_SUPPLIERS)
    _, truth = make_invoice(n_lines=1, seed=1, long_names=True)
    assert len(truth["Customer"]["Name"]) > 80 and truth["Supplier"]["Name"] in LONG_SUPPLIERS


def test_invoice_covers_the_layout_features():
    """The generator really produces what the field checks are meant to exercise."""
    _, truth = make_invoice(n_lines=600, seed=6)
    lines = truth["Lines"]
    descriptions = " ".join(line["Description"] for line in lines)
    assert truth["pages"] >= 10
    assert {line["VATPercent"] for line in lines} == {"6", "13", "23"}
    assert any("." in line["Quantity"] for line in lines)
    assert any(line["DiscountPercent"] not in ("0",) for line in lines)
    assert all(mark in descriptions for mark in ['"', "%", "/", ",", "ç", "ã"])
    assert truth["Checks"]["LinesSumMatchesNetTotal"] == "true"


def test_invoice_element_order_and_root(convert):
    pdf, _ = make_invoice(n_lines=2, seed=9)
    root = ET.fromstring(convert(pdf).data)
    assert root.tag == "Invoice" and root.attrib == {"mapping": "pt_simon_invoice_v1"}
    assert [child.tag for child in root] == ["Header", "Supplier", "Customer", "Lines", "Totals", "Checks"]
    assert [child.tag for child in root.find("Header")] == ["InvoiceNumber", "IssueDate", "DueDate", "Currency"]
    assert [child.tag for child in root.find("Lines/Line")] == [
        "Reference", "Description", "Quantity", "Unit", "UnitPrice", "DiscountPercent", "VATPercent", "LineTotal"]


def test_wrapped_descriptions_are_joined(convert):
    pdf, truth = make_invoice(n_lines=40, seed=11)
    long_ones = [line["Description"] for line in truth["Lines"] if len(line["Description"]) > 50]
    assert long_ones, "the seed should produce wrapped descriptions"
    found = invoice_from_xml(convert(pdf).data)
    assert [line["Description"] for line in found["Lines"]] == [line["Description"] for line in truth["Lines"]]


@pytest.mark.parametrize("omit", [{"DueDate"}, {"InvoiceNumber", "IssueDate"}, {"Customer"}, {"Totals"}])
def test_missing_fields_are_left_out(convert, omit):
    pdf, truth = make_invoice(n_lines=5, seed=21, omit=omit)
    response = convert(pdf)
    assert response.status_code == 200
    assert invoice_from_xml(response.data) == expected(truth)


def test_lines_sum_check_fails_when_net_total_differs(convert):
    pdf, truth = make_invoice(n_lines=12, seed=4, net_total_delta="0.01")
    found = invoice_from_xml(convert(pdf).data)
    assert truth["Checks"]["LinesSumMatchesNetTotal"] == "false"
    assert found["Checks"] == {"LinesSumMatchesNetTotal": "false"}
    assert found["Totals"] == truth["Totals"]


def test_json_is_the_same_data(convert):
    pdf, truth = make_invoice(n_lines=30, seed=13)
    response = convert(pdf, headers={"Accept": "application/json"})
    assert response.status_code == 200
    assert response.content_type == "application/json"
    assert invoice_from_json(response.data) == expected(truth)


def test_pretty_indents_same_document(convert):
    pdf, truth = make_invoice(n_lines=3, seed=2)
    plain, pretty = convert(pdf).data, convert(pdf, pretty="1").data
    assert b"\n  <Header>" in pretty and b"\n  <Header>" not in plain
    assert invoice_from_xml(pretty) == invoice_from_xml(plain) == expected(truth)


def test_generic_reads_every_page(convert):
    pages = [[f"Página {n} linha {i}: ação, «citação» & 50% / x" for i in range(1, 4 + n)] for n in range(1, 8)]
    pdf = make_text_pdf(pages, title="Relatório anual", author="Ana Conceição")
    response = convert(pdf, mapping="generic_v1")
    assert response.status_code == 200
    root = ET.fromstring(response.data)
    assert root.tag == "Document"
    meta = root.find("Meta")
    assert meta.get("title") == "Relatório anual" and meta.get("author") == "Ana Conceição"
    assert meta.get("pages") == "7" and "ReportLab" in meta.get("producer")
    found = [[line.text for line in page.findall("Line")] for page in root.findall("Page")]
    assert [page.get("number") for page in root.findall("Page")] == [str(n) for n in range(1, 8)]
    assert found == pages


def test_generic_json_lists_pages_and_lines(convert):
    pdf = make_text_pdf([["only line"], ["one", "two"]])
    document = json.loads(convert(pdf, mapping="generic_v1.json", headers={"Accept": "application/json"}).data)
    pages = document["Document"]["Page"]
    assert [page["Line"] for page in pages] == [["only line"], ["one", "two"]]
    assert document["Document"]["Meta"]["@pages"] == "2"


def test_generic_on_a_long_invoice_gets_every_page(convert):
    pdf, truth = make_invoice(n_lines=300, seed=8)
    root = ET.fromstring(convert(pdf, mapping="generic_v1").data)
    pages = root.findall("Page")
    assert len(pages) == truth["pages"] > 5
    for number, page in enumerate(pages, start=1):
        assert page.findall("Line")[-1].text == f"Página {number} de {truth['pages']}"


def test_a_new_layout_is_a_new_file(tmp_path):
    shutil.copy(DEFAULT_DIR / "pt_simon_invoice_v1.json", tmp_path / "acme_invoice_v2.json")
    client = create_app({"MAPPINGS_DIR": str(tmp_path)}).test_client()
    assert client.get("/healthz").json["mappings"] == ["acme_invoice_v2"]
    pdf, truth = make_invoice(n_lines=4, seed=3)
    response = client.post("/process", data={"file": (io.BytesIO(pdf), "a.pdf"), "mapping": "acme_invoice_v2"})
    assert ET.fromstring(response.data).get("mapping") == "acme_invoice_v2"
    assert invoice_from_xml(response.data) == expected(truth)


def test_a_broken_mapping_stops_the_start(tmp_path):
    spec = json.loads((DEFAULT_DIR / "pt_simon_invoice_v1.json").read_text())
    spec["fields"]["IssueDate"]["type"] = "datetime"
    (tmp_path / "broken.json").write_text(json.dumps(spec))
    with pytest.raises(MappingError, match="broken.json.*datetime"):
        create_app({"MAPPINGS_DIR": str(tmp_path)})
