"""Few-shot examples (``request.examples``): a small CSV or Parquet file, read once,
whose rows become user/assistant turns before every row's prompt.

Each example's user turn is ``request.prompt`` filled from the example's own columns;
its assistant turn is the text of its answer column, sent as it is written. The turns
are the same for every row, so a provider's prompt cache can serve them.

Every problem is a ``JobError`` of one line naming ``request.examples``.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from batchrun._errors import JobError
from batchrun.job.config import MAX_EXAMPLES, ExamplesConfig
from batchrun.job.template import Template

__all__ = ["example_turns"]

KEY = "request.examples"


def example_turns(
    examples: ExamplesConfig, prompt: str, delimiter: str = ","
) -> tuple[tuple[str, str], ...]:
    """The (user, assistant) texts of each example, in file order.

    ``prompt`` is the job's ``request.prompt``; a CSV file is read with the input's
    ``delimiter``, every value as text. The file is read once while it is unchanged
    (its size and modification time), however often a run asks.
    """
    path = Path(examples.path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise JobError(f"{KEY}: {path} does not exist") from None
    except OSError as exc:
        raise JobError(f"{KEY}: cannot read {path}: {exc.strerror}") from None
    return _turns(examples, prompt, delimiter, (stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=16)
def _turns(
    examples: ExamplesConfig, prompt: str, delimiter: str, version: tuple[int, int]
) -> tuple[tuple[str, str], ...]:
    template = Template.parse(prompt)
    rows = _read(Path(examples.path), delimiter)
    if not rows:
        raise JobError(f"{KEY}: {examples.path} has no examples; give 1 to {MAX_EXAMPLES} rows")
    if len(rows) > MAX_EXAMPLES:
        raise JobError(
            f"{KEY}: {examples.path} has {len(rows)} examples; at most {MAX_EXAMPLES} are allowed"
        )
    names = rows[0].keys()
    for name in (*template.columns, examples.answer):
        if name not in names:
            what = "the answer column" if name == examples.answer else "request.prompt names"
            raise JobError(
                f"{KEY}: {examples.path} has no column {name!r} ({what}; "
                f"columns: {', '.join(map(str, names))})"
            )
    turns = []
    for number, row in enumerate(rows, start=1):
        user = template.render({name: _text(row[name]) for name in template.columns})
        answer = _text(row[examples.answer])
        if not user.strip():
            raise JobError(f"{KEY}: example {number} of {examples.path} has an empty prompt")
        if not answer.strip():
            raise JobError(
                f"{KEY}: example {number} of {examples.path} has an empty "
                f"{examples.answer!r}; every example needs an answer"
            )
        turns.append((user, answer))
    return tuple(turns)


def _read(path: Path, delimiter: str) -> list[dict[str, Any]]:
    try:
        if path.suffix.lower() == ".parquet":
            return pq.read_table(path).to_pylist()
        with path.open(encoding="utf-8-sig", newline="") as file:
            return list(csv.DictReader(file, delimiter=delimiter))
    except FileNotFoundError:
        raise JobError(f"{KEY}: {path} does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise JobError(f"{KEY}: cannot read {path} as CSV or Parquet: {detail}") from None


def _text(value: Any) -> str:
    return "" if value is None else str(value)
