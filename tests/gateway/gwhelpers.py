"""Read the gateway's answers back into the shape of invoicegen's truth."""

import json
import xml.etree.ElementTree as ET

SECTIONS = ["Header", "Supplier", "Customer", "Totals", "Checks"]


def invoice_from_xml(body):
    """Read an Invoice document back into the shape of invoicegen's truth (without "pages")."""
    root = ET.fromstring(body)
    found = {name: {child.tag: child.text for child in root.find(name)} for name in SECTIONS}
    lines = root.find("Lines")
    found["Lines"] = [{child.tag: child.text for child in line} for line in lines]
    assert lines.get("count") == str(len(found["Lines"]))
    assert [line.get("number") for line in lines] == [str(n) for n in range(1, len(found["Lines"]) + 1)]
    return found


def invoice_from_json(body):
    """Read the JSON form of an Invoice into the same shape as invoice_from_xml."""
    invoice = json.loads(body)["Invoice"]
    found = {name: invoice.get(name) or {} for name in SECTIONS}
    lines = invoice["Lines"].get("Line", [])
    assert invoice["Lines"]["@count"] == str(len(lines))
    found["Lines"] = [{k: v for k, v in line.items() if not k.startswith("@")} for line in lines]
    return found


def expected(truth):
    return {key: value for key, value in truth.items() if key != "pages"}
