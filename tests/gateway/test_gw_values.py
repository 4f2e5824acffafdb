"""Value types and serialisation: the small pieces every mapping leans on."""

import json
import xml.etree.ElementTree as ET

import pytest

from gateway import values
from gateway.engine import Node
from gateway.render import to_json, to_xml


@pytest.mark.parametrize("raw, want", [
    ("12.345,67", "12345.67"), ("0,5", "0.50"), ("7", "7.00"), ("-1.000,005", "-1000.01"), ("49,59 €", "49.59"),
    ("12,345.67", None), ("1.23", None), ("abc", None), ("", None),
])
def test_amount(raw, want):
    assert values.amount(raw) == want


@pytest.mark.parametrize("raw, want", [
    ("12", "12"), ("2,5", "2.5"), ("5,00", "5"), ("0,00", "0"), ("1.250", "1250"), ("100", "100"),
    ("12,50", "12.5"), ("x", None),
])
def test_decimal(raw, want):
    assert values.decimal(raw) == want


@pytest.mark.parametrize("raw, want", [
    ("20-11-2026", "2026-11-20"), ("1/2/2025", "2025-02-01"), ("31-02-2026", None), ("2026-11-20", None),
])
def test_date(raw, want):
    assert values.iso_date(raw) == want


@pytest.mark.parametrize("raw, want", [
    ("PT503456789", "PT503456789"), ("pt 503 456 789", "PT503456789"), ("509.876.543", "509876543"),
    ("n/a", None),
])
def test_tax_id(raw, want):
    assert values.tax_id(raw) == want


def test_text_collapses_whitespace():
    assert values.text("  Tomada \t schuko  16A ") == "Tomada schuko 16A"
    assert values.text("   ") is None


def tree(text):
    return Node("Doc", {"note": text}, children=[Node("Item", text=text, repeated=True)])


def test_xml_escapes_and_strips_control_characters():
    nasty = 'a & b < c > "d" \x00\x01\x0b\x1f\x7f\ufffe ç'
    body = to_xml(tree(nasty))
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(body)
    assert root.get("note") == root.find("Item").text == 'a & b < c > "d"  ç'


def test_json_lists_repeated_elements_and_strips_control_characters():
    assert json.loads(to_json(tree("x\x01y"))) == {"Doc": {"@note": "xy", "Item": ["xy"]}}
