"""Apply a mapping to the lines read from a PDF: labelled fields, tables, checks, then the output tree."""

from dataclasses import dataclass, field
from decimal import Decimal

from . import values


class NothingFound(Exception):
    """None of the things the mapping requires could be found."""


@dataclass(slots=True)
class Node:
    """One output element; repeated marks elements produced by "each" (a list in JSON even when single)."""

    tag: str
    attrs: dict = field(default_factory=dict)
    text: str | None = None
    children: list = field(default_factory=list)
    repeated: bool = False


def apply_mapping(mapping, document):
    """Return the root Node of the output for a read Document."""
    claimed = set()  # (page number, line index) of lines that belong to a table
    tables = {}
    for table in mapping.tables:
        rows = _read_table(table, document.pages, claimed)
        for number, row in enumerate(rows, start=1):
            row["number"] = str(number)
        tables[table.name] = {"rows": rows, "count": str(len(rows))}
    free = [(page, [(index, line) for index, line in enumerate(page.lines) if (page.number, index) not in claimed])
            for page in document.pages]
    context = {
        "mapping": mapping.name,
        "meta": {key: str(value) for key, value in document.meta.items()},
        "fields": {},
        "tables": tables,
        "pages": [{"number": str(page.number), "lines": [{"text": line.text} for line in page.lines]}
                  for page in document.pages],
    }
    for spec in mapping.fields:
        value = _find_field(spec, free)
        if value is not None:
            context["fields"][spec.name] = value
    context["checks"] = {name: _check(rule, context) for name, rule in mapping.checks.items()}
    if mapping.require_any and not any(_lookup(context, path) for path in mapping.require_any):
        raise NothingFound(f"none of {', '.join(mapping.require_any)} was found")
    return _build(mapping.output, context, None)[0]


# --- labelled fields -------------------------------------------------------------------------------------

def _candidate_lines(spec, free):
    pages = {"first": free[:1], "last": free[-1:], "all": free}[spec.pages]
    lines = [(page, line) for page, page_lines in pages for _, line in page_lines]
    if spec.after is not None:
        start = _first_match(spec.after, lines)
        lines = [] if start is None else lines[start + 1:]
    if spec.before is not None:
        end = _first_match(spec.before, lines)
        lines = lines if end is None else lines[:end]
    return lines


def _first_match(regex, lines):
    for position, (_, line) in enumerate(lines):
        if any(regex.search(segment.text) for segment in line.segments):
            return position
    return None


def _find_field(spec, free):
    convert_value = values.TYPES[spec.type]
    for page, line in _candidate_lines(spec, free):
        for position, segment in enumerate(line.segments):
            raw = _raw_value(spec, page, line, position, segment)
            if raw is None:
                continue
            if spec.pattern is not None:
                match = spec.pattern.search(raw)
                if not match:
                    continue
                raw = match.group(1) if match.groups() else raw
            value = convert_value(raw)
            if value is not None:
                return value
    return None


def _raw_value(spec, page, line, position, segment):
    """The text a field would take from this segment: after its label, or the segment itself in its region."""
    if spec.region is not None:
        # A segment belongs to the region it starts in: a long name begun at the left margin may run on past
        # the region's right edge (the middle of the page, say) and is still the text there, not the line below.
        left, top, right, bottom = spec.region
        inside = (left * page.width <= segment.x0 < right * page.width
                  and line.top <= (1 - top) * page.height and line.bottom >= (1 - bottom) * page.height)
        return segment.text if inside else None
    match = spec.label.search(segment.text)
    if not match:
        return None
    if "value" in spec.label.groupindex:
        return match.group("value")
    rest = segment.text[match.end():].strip()
    if rest:
        return rest
    following = line.segments[position + 1:position + 2]
    return following[0].text if following else None


# --- tables ----------------------------------------------------------------------------------------------

def _read_table(table, pages, claimed):
    """Rows of a table over all pages; each page's columns come from that page's header row."""
    rows = []
    for page in pages:
        anchors, last_line = None, None
        for index, line in enumerate(page.lines):
            if any(regex.search(segment.text) for regex in table.end for segment in line.segments):
                anchors = None
                continue
            header = _header_anchors(table, line)
            if header is not None:
                anchors, last_line = header, line
                claimed.add((page.number, index))
                continue
            if anchors is None:
                continue
            cells = _cells(table, anchors, line)
            if all(cells.get(name) for name in table.row_starts_with):
                rows.append(cells)
            elif rows and _continues(table, cells, last_line, line):
                # a wrapped cell; right under a header it continues the row the last page broke off
                for name, text in cells.items():
                    rows[-1][name] = f"{rows[-1].get(name, '')} {text}".strip()
            else:
                continue  # not part of the table: left for the fields
            last_line = line
            claimed.add((page.number, index))
    return [_typed_row(table, row) for row in rows]


def _header_anchors(table, line):
    """Map each column to its header segment's x position, if every column's header is on this line."""
    anchors, used = {}, set()
    for column in table.columns:
        for position, segment in enumerate(line.segments):
            if position not in used and column.header.search(segment.text):
                used.add(position)
                anchors[column.name] = _anchor(column.align, segment.x0, segment.x1)
                break
        else:
            return None
    return anchors


def _anchor(align, x0, x1):
    return {"left": x0, "right": x1, "center": (x0 + x1) / 2}[align]


def _cells(table, anchors, line):
    """Assign each segment of a row line to the column whose header it lines up with best."""
    cells = {}
    for segment in line.segments:
        column = min(table.columns,
                     key=lambda c: abs(_anchor(c.align, segment.x0, segment.x1) - anchors[c.name]))
        cells[column.name] = f"{cells[column.name]} {segment.text}" if column.name in cells else segment.text
    return cells


def _continues(table, cells, previous, line):
    """A line holding only wrapping columns, close under the previous one, continues its row."""
    wrapping = {column.name for column in table.columns if column.wraps}
    close = previous.bottom - line.top <= table.wrap_distance * (line.top - line.bottom)
    return bool(cells) and set(cells) <= wrapping and close


def _typed_row(table, row):
    typed = {}
    for column in table.columns:
        if column.name in row:
            value = values.TYPES[column.type](row[column.name])
            if value is not None:
                typed[column.name] = value
    return typed


# --- checks and output -----------------------------------------------------------------------------------

def _lookup(context, path):
    """Follow a dotted path through dicts; a path ending at a list of dicts collects that key from each."""
    value = context
    for key in path.split("."):
        if isinstance(value, list):
            value = [item.get(key) for item in value]
        elif isinstance(value, dict):
            value = value.get(key)
        else:
            return None
    return value


def _check(rule, context):
    """"true" when the sum of a column equals a field (to the cent), else "false"."""
    items, expected = _lookup(context, rule["sum"]), _lookup(context, rule["equals"])
    if not items or expected is None or any(item is None for item in items):
        return "false"
    return "true" if sum(Decimal(item) for item in items) == Decimal(expected) else "false"


def _build(spec, context, item):
    """Build the Node(s) for one output spec: one node, or one per item of its "each" collection."""
    if "each" in spec:
        collection = _resolve(spec["each"], context, item) or []
        nodes = []
        for element in collection:
            nodes.extend(_build({k: v for k, v in spec.items() if k != "each"}, context, element))
        for node in nodes:
            node.repeated = True
        return nodes
    node = Node(tag=spec["tag"])
    for name, path in spec.get("attrs", {}).items():
        value = _resolve(path, context, item)
        if value is not None:
            node.attrs[name] = str(value)
    if "value" in spec:
        value = _resolve(spec["value"], context, item)
        if value is None:
            return []  # a field that cannot be found is left out
        node.text = str(value)
    for child in spec.get("children", []):
        node.children.extend(_build(child, context, item))
    return [node]


def _resolve(path, context, item):
    if path == "item" or path.startswith("item."):
        return item if path == "item" else _lookup(item, path[len("item."):])
    return _lookup(context, path)
