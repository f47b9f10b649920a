"""Whether a path the job writes lies inside what ``input.path`` reads.

``input.path`` is a file, a directory (searched recursively, skipping names that start
with ``.`` or ``_``) or a glob (``*`` stays in one directory and skips hidden names,
``**`` spans directories), local or on an object store. A file written there would be
read as input by the next run. Decided from the paths alone: nothing is opened.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence

from batchrun.job.config import is_store_uri

_GLOB_CHARS = frozenset("*?[")
_SKIPPED = (".", "_")


def inside_input(location: str, spec: str) -> bool:
    """Whether ``location`` (a file to write) is among or below what ``spec`` matches."""
    if is_store_uri(location) != is_store_uri(spec):
        return False
    target, pattern = _parts(location), _parts(spec)
    fixed = next((i for i, p in enumerate(pattern) if _GLOB_CHARS.intersection(p)), None)
    if fixed is None:  # a file or a directory: the location itself, or below it
        below = target[len(pattern) :]
        return target[: len(pattern)] == pattern and not any(p.startswith(_SKIPPED) for p in below)
    return _matches(target, pattern)


def _parts(location: str) -> list[str]:
    if is_store_uri(location):
        scheme, _, rest = location.partition("://")
        return [scheme.lower() + ":", *[p for p in rest.split("/") if p]]
    return [p for p in os.path.abspath(os.path.expanduser(location)).split(os.sep) if p]


def _matches(target: Sequence[str], pattern: Sequence[str]) -> bool:
    """Glob matching part by part, as ``io.files`` finds files for a glob."""
    if not pattern:
        return not target
    part, rest = pattern[0], pattern[1:]
    if part == "**":
        return any(
            _matches(target[i:], rest)
            for i in range(len(target) + 1)
            if not any(p.startswith(".") for p in target[:i])
        )
    if not target:
        return False
    name = target[0]
    if name.startswith(".") and not part.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, part) and _matches(target[1:], rest)
