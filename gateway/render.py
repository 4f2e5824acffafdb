"""Serialise an output tree: XML through ElementTree, or the same data as JSON."""

import json
import re
import xml.etree.ElementTree as ET

# Everything XML 1.0 cannot carry: C0 controls but tab/newline/CR, DEL and C1 controls, surrogates, U+FFFE/F.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def clean(text):
    """Strip characters that XML cannot hold."""
    return _NOT_XML.sub("", text)


def _element(node):
    element = ET.Element(node.tag, {name: clean(value) for name, value in node.attrs.items()})
    if node.text is not None:
        element.text = clean(node.text)
    element.extend(_element(child) for child in node.children)
    return element


def to_xml(node, pretty=False):
    """Return UTF-8 XML bytes with a declaration."""
    root = _element(node)
    if pretty:
        ET.indent(root, space="  ")
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True).replace(
        b"<?xml version='1.0' encoding='UTF-8'?>", b'<?xml version="1.0" encoding="UTF-8"?>', 1) + b"\n"


def _json_value(node):
    if not node.attrs and not node.children:
        return clean(node.text) if node.text is not None else ""
    value = {f"@{name}": clean(text) for name, text in node.attrs.items()}
    if node.text is not None:
        value["#text"] = clean(node.text)
    for child in node.children:
        if child.repeated:
            value.setdefault(child.tag, []).append(_json_value(child))
        else:
            value[child.tag] = _json_value(child)
    return value


def to_json(node, pretty=False):
    """Return UTF-8 JSON bytes: {"Root": {"@attr": "...", "Child": "text", "Repeated": [...]}}."""
    return json.dumps({node.tag: _json_value(node)}, ensure_ascii=False,
                      indent=2 if pretty else None).encode("utf-8") + b"\n"
