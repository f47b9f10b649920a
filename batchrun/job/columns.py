"""``[output.columns]``: each parsed column's type and, optionally, its label rules.

An entry is a type (``label = "string"``) or an inline table with rules::

    label = {type = "string", enum = ["positive", "negative", "neutral"]}
    confidence = {type = "double", min = 0, max = 1}
    tags = {type = "list<string>", enum = ["shipping", "price", "quality"]}

``enum`` fits strings and integers (and lists of them: every item must be in it);
``min``/``max`` fit numbers; ``required`` (default true for enum columns) makes a
missing value a broken rule. The same rules describe the JSON batchrun asks for
(``json_schema``) and say what is allowed when a value breaks one (``describe``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from batchrun._types import EXTRA_COLUMNS, RESULT_COLUMNS
from batchrun.job.document import InvalidKey, dotted

SCALAR_TYPES = ("string", "double", "float", "int64", "int32", "bool", "boolean")
LIST_TYPES = tuple(f"list<{kind}>" for kind in ("string", "double", "int64"))
COLUMN_TYPES = SCALAR_TYPES + LIST_TYPES
_NUMBERS = ("double", "float", "int64", "int32")
_ENUM_TYPES = ("string", "int64", "int32")
_RULE_KEYS = ("type", "enum", "min", "max", "required")


@dataclass(frozen=True)
class ColumnRule:
    """What a column's value must be, beyond its type."""

    enum: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    required: bool = False


def item_type(kind: str) -> str:
    """The type of a column's values (a list's items for ``list<T>``)."""
    return kind[5:-1] if kind.startswith("list<") else kind


def parse_columns(key: str, value: Any) -> tuple[dict[str, str], dict[str, ColumnRule]]:
    """``[output.columns]`` -> (name -> type, name -> rule for the columns that have one)."""
    if not isinstance(value, dict):
        _fail(key, f"must be a table of column = type, got {_show(value)}")
    types: dict[str, str] = {}
    rules: dict[str, ColumnRule] = {}
    for name, entry in value.items():
        where = f"{key}.{dotted(name)}"
        if name in RESULT_COLUMNS or name in EXTRA_COLUMNS:
            _fail(where, "clashes with batchrun's own column of that name")
        if isinstance(entry, dict):
            types[name], rule = _entry(where, entry)
            if rule != ColumnRule():
                rules[name] = rule
        else:
            types[name] = _type(where, entry)
    return types, rules


def raw_columns(types: Mapping[str, str], rules: Mapping[str, ColumnRule]) -> dict[str, Any]:
    """The inverse of ``parse_columns``: the table a job file would hold."""
    raw: dict[str, Any] = {}
    for name, kind in types.items():
        rule = rules.get(name)
        if rule is None:
            raw[name] = kind
            continue
        entry: dict[str, Any] = {"type": kind, "required": rule.required}
        if rule.enum is not None:
            entry["enum"] = list(rule.enum)
        entry |= {k: v for k, v in (("min", rule.min), ("max", rule.max)) if v is not None}
        raw[name] = entry
    return raw


def _entry(where: str, entry: Mapping[str, Any]) -> tuple[str, ColumnRule]:
    for name in entry:
        if name not in _RULE_KEYS:
            _fail(f"{where}.{dotted(name)}", f"unknown rule (rules: {', '.join(_RULE_KEYS)})")
    if "type" not in entry:
        _fail(f"{where}.type", f"missing; one of {', '.join(COLUMN_TYPES)}")
    kind = _type(f"{where}.type", entry["type"])
    enum = _enum(f"{where}.enum", kind, entry["enum"]) if "enum" in entry else None
    low, high = (_bound(f"{where}.{b}", kind, entry.get(b)) for b in ("min", "max"))
    if low is not None and high is not None and low > high:
        _fail(f"{where}.min", f"{_num(low)} is above max {_num(high)}")
    required = entry.get("required", enum is not None)
    if not isinstance(required, bool):
        _fail(f"{where}.required", f"must be true or false, got {_show(required)}")
    return kind, ColumnRule(enum, low, high, required)


def _type(where: str, kind: Any) -> str:
    if kind not in COLUMN_TYPES:
        _fail(where, f"{_show(kind)} is not one of {', '.join(COLUMN_TYPES)}")
    return str(kind)


def _enum(where: str, kind: str, values: Any) -> tuple[Any, ...]:
    item = item_type(kind)
    if item not in _ENUM_TYPES:
        _fail(where, f"does not fit a {kind} column (enum fits string, int64, int32 and lists)")
    if not isinstance(values, list) or not values:
        _fail(where, f"must be a non-empty array of allowed values, got {_show(values)}")
    want = str if item == "string" else int
    for value in values:
        if not isinstance(value, want) or isinstance(value, bool):
            _fail(where, f"mixes types: {_show(value)} is not a {item} like the column")
    if len(set(values)) != len(values):
        _fail(where, f"lists a value twice: {_show(values)}")
    return tuple(values)


def _bound(where: str, kind: str, value: Any) -> float | None:
    if value is None:
        return None
    if item_type(kind) not in _NUMBERS:
        _fail(where, f"does not fit a {kind} column (min and max fit numbers)")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        _fail(where, f"must be a number, got {_show(value)}")
    return value


# --- what the model is asked for, and told when it breaks a rule --------------------

_SCHEMA_TYPES = {"string": "string", "bool": "boolean", "boolean": "boolean"}


def json_schema(types: Mapping[str, str], rules: Mapping[str, ColumnRule]) -> dict[str, Any]:
    """The JSON schema of the object the columns are parsed from."""
    properties = {name: _property(kind, rules.get(name)) for name, kind in types.items()}
    required = [name for name in types if (rule := rules.get(name)) and rule.required]
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    return schema | ({"required": required} if required else {})


def _property(kind: str, rule: ColumnRule | None) -> dict[str, Any]:
    item = item_type(kind)
    prop: dict[str, Any] = {"type": _SCHEMA_TYPES.get(item, "integer")}
    if item in ("double", "float"):
        prop["type"] = "number"
    if rule is not None:
        if rule.enum is not None:
            prop["enum"] = list(rule.enum)
        if rule.min is not None:
            prop["minimum"] = rule.min
        if rule.max is not None:
            prop["maximum"] = rule.max
    return {"type": "array", "items": prop} if kind != item else prop


SCHEMA_MARK = "Answer with one JSON object matching this JSON schema: "


def instruction(types: Mapping[str, str], rules: Mapping[str, ColumnRule]) -> str:
    """The line batchrun adds to the system message when columns are parsed from JSON."""
    text = json.dumps(json_schema(types, rules), separators=(", ", ": "), ensure_ascii=False)
    return SCHEMA_MARK + text


def describe(kind: str, rule: ColumnRule | None) -> str:
    """What a column allows, in words: ``one of 'a', 'b'``, ``a double from 0 to 1``."""
    if rule is None:
        return f"a {kind}"
    parts = [f"a {kind}"]
    if rule.enum is not None:
        shown = ", ".join(repr(v) for v in rule.enum)
        parts = [f"{'items' if kind.startswith('list<') else 'one'} of {shown}"]
    if rule.min is not None and rule.max is not None:
        parts.append(f"from {_num(rule.min)} to {_num(rule.max)}")
    elif rule.min is not None:
        parts.append(f"at least {_num(rule.min)}")
    elif rule.max is not None:
        parts.append(f"at most {_num(rule.max)}")
    return " ".join(parts)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:56] + "...'"


def _fail(key: str, detail: str) -> NoReturn:
    raise InvalidKey(key, f"{key}: {detail}")
