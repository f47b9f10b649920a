"""The job-file reference's tables, made from the keys' own definitions (``job.keys``).

``python -m batchrun.job.reference docs/job-file.md`` rewrites each block between
``<!-- keys:SECTION -->`` and ``<!-- /keys -->`` in that page; a test checks the page is
up to date, so the reference cannot drift from what the code accepts.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from batchrun.job.keys import SCHEMA

__all__ = ["SECTIONS", "refresh", "table"]

_PRICING = {
    "input": ("number", "USD per million prompt tokens; ≥ 0", ""),
    "output": ("number", "USD per million completion tokens (reasoning included); ≥ 0", ""),
    "cached_input": ("number", "USD per million cached prompt tokens; ≥ 0", "`input`"),
}
_VARIANTS = {
    "name": ("string", "unique among the variants: letters, digits, `.`, `_`, `-`", ""),
    "request.KEY": ("as in `[request]`", "any `[request]` key, overriding the job's", "the job's"),
}
SECTIONS = (*SCHEMA, "pricing", "variants")
_BLOCK = re.compile(r"(<!-- keys:(\w+) -->\n).*?(<!-- /keys -->)", re.S)


def _rows(section: str) -> list[tuple[str, str, str, str]]:
    """(key, type, default, what it does) for every key the section accepts."""
    if section == "pricing":
        return [(k, kind, d or "**required**", h) for k, (kind, h, d) in _PRICING.items()]
    if section == "variants":
        return [(k, kind, d or "**required**", h) for k, (kind, h, d) in _VARIANTS.items()]
    return [
        (name, key.kind, "**required**" if key.required else key.default, key.help)
        for name, key in SCHEMA[section].items()
    ]


def table(section: str) -> str:
    """One section's keys as a Markdown table."""
    lines = ["| key | type | default | allowed, and what it does |", "|---|---|---|---|"]
    for name, kind, default, what in _rows(section):
        cells = (f"`{name}`", kind, default, what.replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def refresh(page: str) -> str:
    """``page`` with every keys block made anew from the code."""
    return _BLOCK.sub(lambda m: m[1] + table(m[2]) + m[3], page)


def main(argv: list[str]) -> int:
    (path,) = argv
    page = Path(path)
    page.write_text(refresh(page.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
