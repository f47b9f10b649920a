"""Prompt templates: ``{column}`` names an input column, ``{{`` and ``}}`` are
literal braces, and nothing else is evaluated (no attribute or index access,
no conversions, no format specs)."""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_FORMATTER = string.Formatter()


@dataclass(frozen=True)
class Template:
    """A parsed template: literal text and column names, alternating.

    >>> t = Template.parse("Label {text} as {{json}}")
    >>> t.columns
    ('text',)
    >>> t.render({"text": "great"})
    'Label great as {json}'
    """

    parts: tuple[tuple[str, str | None], ...]

    @classmethod
    def parse(cls, text: str) -> Template:
        """Parse ``text``; raises ``ValueError`` saying what is not allowed."""
        try:
            parsed = list(_FORMATTER.parse(text))
        except ValueError as exc:
            raise ValueError(f"{exc} (use {{{{ and }}}} for literal braces)") from None
        parts = []
        for literal, name, spec, conversion in parsed:
            if name is not None:
                _check_field(name, spec, conversion)
            parts.append((literal, name))
        return cls(tuple(parts))

    @property
    def columns(self) -> tuple[str, ...]:
        """The input columns the template names, each once, in order of first use."""
        return tuple(dict.fromkeys(name for _, name in self.parts if name is not None))

    def render(self, values: Mapping[str, Any]) -> str:
        """Fill the template; a null value renders as an empty string."""
        out = []
        for literal, name in self.parts:
            out.append(literal)
            if name is not None:
                value = values[name]
                out.append("" if value is None else str(value))
        return "".join(out)


def _check_field(name: str, spec: str | None, conversion: str | None) -> None:
    if not name:
        raise ValueError("'{}' names no column (use {{ and }} for literal braces)")
    if not name.isidentifier() and not _plain_name(name):
        raise ValueError(f"'{{{name}}}' is not a plain column name (no attribute or index access)")
    if spec or conversion:
        raise ValueError(f"'{{{name}}}' has a format spec or conversion; only {{column}} allowed")


def _plain_name(name: str) -> bool:
    # Column names may hold spaces or dashes, but never the characters that
    # str.format would evaluate as attribute or index access.
    return not any(ch in name for ch in ".[]!:{}")
