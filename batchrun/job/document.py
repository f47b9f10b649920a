"""The job file as a raw TOML document, before any key is checked: reading it,
``--set KEY=VALUE`` overrides, ``--var NAME=VALUE`` and ``${NAME}`` substitution, and
``toml_literal`` (a Python value written so that ``--set`` reads it back).

``job.load`` turns the document into a validated ``Job``.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from batchrun._errors import JobError

__all__ = [
    "NAME",
    "PRICE_KEYS",
    "InvalidKey",
    "annotate",
    "apply_set",
    "dotted",
    "read_toml",
    "read_variables",
    "substitute",
    "toml_literal",
]

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""A variable or environment variable name."""
PRICE_KEYS = ("input", "cached_input", "output")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_VAR_REF = re.compile(r"\$(\$?)\{([^{}]*)\}")

TextKey = Callable[[tuple[str, ...]], bool]
"""Whether a key takes text (so ``--set job.name=2026`` means the name "2026")."""


class InvalidKey(JobError):
    """A violation at one dotted key; ``load_job`` re-raises it as a plain JobError."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def toml_literal(value: Any) -> str:
    """``value`` written so that ``--set key=<literal>`` reads it back unchanged.

    >>> toml_literal({"temperature": 0.2, "stop": ["END"]})
    '{temperature = 0.2, stop = ["END"]}'
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # TOML spells inf, -inf and nan as Python does
    if isinstance(value, str):
        # JSON strings are TOML basic strings, except that TOML also escapes DEL.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, Mapping):
        return (
            "{" + ", ".join(f"{dotted(str(k))} = {toml_literal(v)}" for k, v in value.items()) + "}"
        )
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    raise JobError(f"{value!r} has no TOML form (TOML has no null; leave the key out instead)")


# --- reading, --set and --var ----------------------------------------------------


def read_toml(path: Path) -> dict[str, Any]:
    """The file's TOML as a dict; any failure is a JobError naming the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise JobError(f"job file not found: {path}") from None
    except OSError as exc:
        raise JobError(f"{path}: cannot read job file: {exc.strerror}") from None
    try:
        # utf-8-sig: editors on Windows like to start files with a BOM.
        return tomllib.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise JobError(f"{path}: not UTF-8 text (a TOML file must be UTF-8)") from None
    except tomllib.TOMLDecodeError as exc:
        raise JobError(f"{path}: invalid TOML: {exc}") from None


def read_variables(assignments: Sequence[str], now: datetime) -> dict[str, str]:
    """Built-in dates, then ``NAME=VALUE`` assignments (which may override them)."""
    today = now.astimezone(UTC).date()
    values = {"today": today.isoformat(), "yesterday": (today - timedelta(days=1)).isoformat()}
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep or not NAME.fullmatch(name.strip()):
            raise JobError(f"--var {item!r}: expected NAME=VALUE (NAME: letters, digits, _)")
        values[name.strip()] = value
    return values


def apply_set(raw: dict[str, Any], item: str, text_key: TextKey) -> str:
    """Put one ``KEY=VALUE`` into the raw dict; returns the dotted key it set."""
    key, sep, text = item.partition("=")
    if not sep:
        raise JobError(f"--set {item!r}: expected KEY=VALUE, e.g. request.model=glm-5.2")
    path = _set_path(key.strip())
    node = raw
    for depth, part in enumerate(path[:-1], start=1):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise JobError(f"--set {key.strip()}: {dotted(*path[:depth])} is not a table")
    node[path[-1]] = _set_value(path, text, text_key)
    return dotted(*path)


def _set_path(key: str) -> tuple[str, ...]:
    """A dotted key in TOML syntax (quoted parts allowed) as its parts."""
    try:
        node: Any = tomllib.loads(f"{key} = 0")
    except tomllib.TOMLDecodeError:
        node = None
    parts: list[str] = []
    while isinstance(node, dict) and len(node) == 1:
        (part, node), *_ = node.items()
        parts.append(part)
    if not parts or node != 0:
        raise JobError(f"--set {key!r}: not a dotted key such as request.model")
    if parts[0] == "pricing" and len(parts) > 2:
        parts = _pricing_path(parts)
    return tuple(parts)


def _pricing_path(parts: list[str]) -> list[str]:
    """Model names hold dots (``pricing.gpt-5.5.input``): rejoin what lies between."""
    if parts[-1] in PRICE_KEYS and len(parts) > 3:
        return ["pricing", ".".join(parts[1:-1]), parts[-1]]
    if parts[-1] not in PRICE_KEYS:
        return ["pricing", ".".join(parts[1:])]
    return parts


def _set_value(path: tuple[str, ...], text: str, text_key: TextKey) -> Any:
    """The value typed by TOML syntax; bare words, dates and text keys stay strings."""
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text
    value = parsed.get("v")
    if len(parsed) != 1 or isinstance(value, date | time):
        return text  # no key takes a date, and `2026-11-25` as a name should stay as typed
    if text_key(path) and not isinstance(value, str | dict | list):
        return text  # `--set job.name=2026` means the name "2026"
    return value


def substitute(node: Any, values: Mapping[str, str], path: tuple[str, ...]) -> Any:
    """``node`` with ``${NAME}`` filled in every string, at any depth."""
    if isinstance(node, str):
        return _fill(node, values, dotted(*path))
    if isinstance(node, dict):
        return {k: substitute(v, values, (*path, k)) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute(v, values, (*path[:-1], f"{path[-1]}[{i}]")) for i, v in enumerate(node)]
    return node


def _fill(text: str, values: Mapping[str, str], key: str) -> str:
    """One string with its variables filled; unknown or malformed references fail."""

    def one(match: re.Match[str]) -> str:
        escaped, name = match.group(1), match.group(2)
        if escaped:
            return "${" + name + "}"
        if not NAME.fullmatch(name):
            raise InvalidKey(key, f"{key}: '${{{name}}}' is not a variable (write $${{ for ${{)")
        if name not in values:
            raise InvalidKey(
                key, f"{key}: variable ${{{name}}} is not defined; pass --var {name}=..."
            )
        return values[name]

    return _VAR_REF.sub(one, text)


def annotate(exc: InvalidKey, set_keys: Sequence[str]) -> str:
    """Say so when the offending value came from ``--set`` rather than the file."""
    if any(exc.key == key or exc.key.startswith(key + ".") for key in set_keys):
        return f"{exc} (from --set)"
    return str(exc)


def dotted(*parts: str) -> str:
    """A TOML dotted key, quoting parts that are not bare keys (``pricing."gpt-5.5"``)."""
    return ".".join(p if _BARE_KEY.fullmatch(p) else json.dumps(p) for p in parts)
