"""Mappings: JSON files in one folder, loaded and checked once, looked up by name.

A mapping file holds plain data (see README.md in this package for the format); nothing in it is executed,
and names from requests are only ever looked up in the loaded dict, never joined into a path.
"""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import values

DEFAULT_DIR = Path(__file__).with_name("mappings")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_ALIGNS = {"left", "right", "center"}
_PAGES = {"first", "last", "all"}


class MappingError(ValueError):
    """A mapping file is not valid."""


@dataclass(slots=True)
class Field:
    name: str
    type: str
    label: re.Pattern | None = None
    pattern: re.Pattern | None = None
    region: tuple | None = None
    pages: str = "all"
    before: re.Pattern | None = None
    after: re.Pattern | None = None


@dataclass(slots=True)
class Column:
    name: str
    header: re.Pattern
    align: str
    type: str
    wraps: bool = False


@dataclass(slots=True)
class Table:
    name: str
    columns: list
    row_starts_with: list
    end: list
    wrap_distance: float


@dataclass(slots=True)
class Mapping:
    name: str
    description: str
    fields: list = field(default_factory=list)
    tables: list = field(default_factory=list)
    checks: dict = field(default_factory=dict)
    require_any: list = field(default_factory=list)
    output: dict = field(default_factory=dict)
    reading: dict = field(default_factory=dict)


def normalise_name(name):
    """Return the mapping name without a .json suffix, or None when it cannot be a mapping name."""
    name = name.strip().removesuffix(".json")
    return name if _NAME.match(name) else None


def load_all(folder=DEFAULT_DIR):
    """Load every *.json mapping in folder; a broken file stops the start, naming the file."""
    mappings = {}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            mappings[path.stem] = parse(path.stem, json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError, re.error) as exc:
            raise MappingError(f"{path}: {exc}") from exc
    return mappings


def _regex(text, where):
    if not isinstance(text, str):
        raise MappingError(f"{where}: expected a regular expression string")
    return re.compile(text)


def _type(name, where):
    if name not in values.TYPES:
        raise MappingError(f"{where}: unknown type {name!r}, expected one of {sorted(values.TYPES)}")
    return name


def _known_keys(spec, allowed, where):
    unknown = set(spec) - set(allowed)
    if unknown:
        raise MappingError(f"{where}: unknown keys {sorted(unknown)}")


def _field(name, spec):
    where = f"fields.{name}"
    _known_keys(spec, {"label", "pattern", "region", "type", "pages", "before", "after"}, where)
    if ("label" in spec) == ("region" in spec):
        raise MappingError(f"{where}: give exactly one of label or region")
    region = spec.get("region")
    if region is not None and (len(region) != 4 or not all(0 <= float(v) <= 1 for v in region)):
        raise MappingError(f"{where}: region is [left, top, right, bottom] as page fractions")
    if spec.get("pages", "all") not in _PAGES:
        raise MappingError(f"{where}: pages must be one of {sorted(_PAGES)}")
    return Field(
        name=name,
        type=_type(spec.get("type", "text"), where),
        label=_regex(spec["label"], where) if "label" in spec else None,
        pattern=_regex(spec["pattern"], where) if "pattern" in spec else None,
        region=tuple(float(v) for v in region) if region else None,
        pages=spec.get("pages", "all"),
        before=_regex(spec["before"], where) if "before" in spec else None,
        after=_regex(spec["after"], where) if "after" in spec else None,
    )


def _table(name, spec):
    where = f"tables.{name}"
    _known_keys(spec, {"columns", "row_starts_with", "end", "wrap_distance"}, where)
    columns = []
    for column in spec["columns"]:
        _known_keys(column, {"name", "header", "align", "type", "wraps"}, f"{where}.columns")
        if column.get("align", "left") not in _ALIGNS:
            raise MappingError(f"{where}.{column['name']}: align must be one of {sorted(_ALIGNS)}")
        columns.append(Column(
            name=column["name"],
            header=_regex(column["header"], where),
            align=column.get("align", "left"),
            type=_type(column.get("type", "text"), where),
            wraps=bool(column.get("wraps", False)),
        ))
    names = {column.name for column in columns}
    starts = spec.get("row_starts_with", [columns[0].name])
    if not set(starts) <= names:
        raise MappingError(f"{where}: row_starts_with names unknown columns {sorted(set(starts) - names)}")
    return Table(name=name, columns=columns, row_starts_with=starts,
                 end=[_regex(text, where) for text in spec.get("end", [])],
                 wrap_distance=float(spec.get("wrap_distance", 1.6)))


def parse(name, spec):
    """Check a mapping's data and compile its regular expressions."""
    _known_keys(spec, {"description", "fields", "tables", "checks", "require_any", "output", "reading"}, name)
    if not isinstance(spec.get("output"), dict) or "tag" not in spec["output"]:
        raise MappingError("output must be an element with a tag")
    _known_keys(spec.get("reading", {}), {"word_gap", "cell_gap"}, "reading")
    for check, rule in spec.get("checks", {}).items():
        _known_keys(rule, {"sum", "equals"}, f"checks.{check}")
        if "sum" not in rule or "equals" not in rule:
            raise MappingError(f"checks.{check}: needs sum and equals")
    return Mapping(
        name=name,
        description=spec.get("description", ""),
        fields=[_field(field_name, field_spec) for field_name, field_spec in spec.get("fields", {}).items()],
        tables=[_table(table_name, table_spec) for table_name, table_spec in spec.get("tables", {}).items()],
        checks=spec.get("checks", {}),
        require_any=list(spec.get("require_any", [])),
        output=spec["output"],
        reading={key: float(value) for key, value in spec.get("reading", {}).items()},
    )
