"""Responses to typed columns (``output.parse = "json"``).

The response must be one JSON object (a single surrounding Markdown code fence,
as models sometimes add, is tolerated). Each declared column takes the value
under its name:

- a missing key or a JSON ``null`` is a null value (the model may omit a field);
- a value of the wrong type is a parse error naming the column: ``string`` takes
  JSON strings only; ``double``/``float`` take numbers; ``int64``/``int32`` take
  integers (or integral numbers like ``3.0``) within range; ``bool``/``boolean``
  take ``true``/``false`` only;
- ``list<T>`` takes a JSON array whose items each take ``T``;
- keys that are not declared are ignored.

A value that converts but breaks its column's rule (``enum``, ``min``/``max``,
``required``) makes the answer invalid (``error_type = invalid_answer``), with a
message naming the column, the value and the rule.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from batchrun.job.columns import LIST_TYPES, ColumnRule, describe, item_type

ARROW_TYPES: Mapping[str, pa.DataType] = {
    "string": pa.string(),
    "double": pa.float64(),
    "float": pa.float32(),
    "int64": pa.int64(),
    "int32": pa.int32(),
    "bool": pa.bool_(),
    "boolean": pa.bool_(),
}
ARROW_TYPES = {
    **ARROW_TYPES,
    **{kind: pa.list_(ARROW_TYPES[item_type(kind)]) for kind in LIST_TYPES},
}


class _WrongType(ValueError):
    pass


@dataclass(frozen=True)
class Parsed:
    """Either ``values`` (one per declared column) or an ``error`` message and its
    ``error_type`` (``parse_error``, or ``invalid_answer`` when a rule is broken)."""

    values: dict[str, Any] | None
    error: str | None = None
    error_type: str = "parse_error"


def parse_response(
    text: str | None,
    columns: Mapping[str, str],
    rules: Mapping[str, ColumnRule] | None = None,
) -> Parsed:
    """Parse ``text`` into the declared ``columns`` (name -> type name), checked
    against ``rules`` (name -> rule) where given.

    >>> parse_response('{"label": "pos", "score": 1}', {"label": "string", "score": "double"})
    Parsed(values={'label': 'pos', 'score': 1.0}, error=None)
    >>> parse_response('{"score": "high"}', {"score": "double"}).error
    "column 'score' (double): got a string: 'high'"
    """
    obj, error = _load_object(text)
    if obj is None:
        return Parsed(None, error)
    values: dict[str, Any] = {}
    for name, kind in columns.items():
        raw = obj.get(name)
        try:
            values[name] = None if raw is None else _CONVERTERS[kind](raw)
        except _WrongType as exc:
            return Parsed(None, f"column {name!r} ({kind}): {exc}")
    for name, rule in (rules or {}).items():
        broken = _broken(values[name], rule)
        if broken is not None:
            allowed = describe(columns[name], rule)
            message = f"column {name!r}: {broken}; allowed: {allowed}"
            return Parsed(None, message, "invalid_answer")
    return Parsed(values)


def _broken(value: Any, rule: ColumnRule) -> str | None:
    """What is wrong with a converted value, or None when it keeps the rule."""
    if value is None:
        return "no value, and the column is required" if rule.required else None
    for item in value if isinstance(value, list) else [value]:
        if rule.enum is not None and item not in rule.enum:
            return f"{item!r} is not in the enum"
        if rule.min is not None and item < rule.min:
            return f"{item!r} is below the minimum"
        if rule.max is not None and item > rule.max:
            return f"{item!r} is above the maximum"
    return None


def _load_object(text: str | None) -> tuple[dict[str, Any] | None, str | None]:
    if text is None or not text.strip():
        return None, "response is empty, not a JSON object"
    try:
        obj = json.loads(_strip_fence(text))
    except json.JSONDecodeError as exc:
        return None, f"response is not JSON ({exc})"
    if not isinstance(obj, dict):
        return None, f"response is JSON but not an object (got {_json_kind(obj)})"
    return obj, None


def _strip_fence(text: str) -> str:
    body = text.strip()
    if body.startswith("```") and body.endswith("```") and len(body) >= 6:
        body = body[3:-3]
        first_line, _, rest = body.partition("\n")
        # The fence's info string ("json") sits on the first line.
        return rest if first_line.strip().isalpha() or not first_line.strip() else body
    return body


def _json_kind(value: Any) -> str:
    names = {bool: "a boolean", str: "a string", list: "an array", dict: "an object"}
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    return "a number" if isinstance(value, int | float) else type(value).__name__


def _wrong(value: Any) -> _WrongType:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:60] + "..."
    return _WrongType(f"got {_json_kind(value)}: {shown}")


def _to_string(value: Any) -> str:
    if not isinstance(value, str):
        raise _wrong(value)
    return value


def _to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong(value)
    return float(value)


def _to_int(bits: int) -> Callable[[Any], int]:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _wrong(value)
        if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
            raise _WrongType(f"got {value}, not an integer")
        if not low <= int(value) <= high:
            raise _WrongType(f"{int(value)} is out of range for int{bits}")
        return int(value)

    return convert


def _to_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _wrong(value)
    return value


def _to_list(convert: Callable[[Any], Any]) -> Callable[[Any], list[Any]]:
    def convert_list(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise _wrong(value)
        items = []
        for index, item in enumerate(value):
            if item is None:
                raise _WrongType(f"item {index} is null")
            try:
                items.append(convert(item))
            except _WrongType as exc:
                raise _WrongType(f"item {index}: {exc}") from None
        return items

    return convert_list


_SCALAR_CONVERTERS: Mapping[str, Callable[[Any], Any]] = {
    "string": _to_string,
    "double": _to_float,
    "float": _to_float,
    "int64": _to_int(64),
    "int32": _to_int(32),
    "bool": _to_bool,
    "boolean": _to_bool,
}
_CONVERTERS: Mapping[str, Callable[[Any], Any]] = {
    **_SCALAR_CONVERTERS,
    **{kind: _to_list(_SCALAR_CONVERTERS[item_type(kind)]) for kind in LIST_TYPES},
}
