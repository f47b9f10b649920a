"""Labeling answers: a JSON object with the columns the request's system message declares.

batchrun's system message carries the JSON schema of the object it parses (after
``SCHEMA_MARK``). The emulator answers with every property: enum values from the
enum, numbers inside ``minimum``/``maximum``, arrays of allowed items.

Enum labels agree with a hidden truth, ``true_label(row text, enum)``, at the
model's ``--label-accuracy`` (else they are drawn at random). The row text is the
last user message that is not a re-ask's correction (``REASK_MARK``), so few-shot
example turns before it do not count; with ``--label-break-rate`` a first answer
(the last user message is not a correction) breaks a rule at that rate, so that
re-asks have something to mend.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

SCHEMA_MARK = "Answer with one JSON object matching this JSON schema: "
OUT_OF_ENUM = "unsure"
REASK_MARK = "Your answer was not valid: "
"""How batchrun's re-ask correction begins (``send.reask.correction``)."""
_WORDS = ("short", "clear", "mixed", "plain", "direct", "vague")


class Rng(Protocol):
    def choice(self, options: Sequence[str]) -> str: ...
    def randint(self, low: int, high: int) -> int: ...
    def uniform(self, low: float, high: float) -> float: ...


@dataclass(frozen=True, slots=True)
class LabelSettings:
    """``accuracy``: model -> the share of enum labels that equal the truth ("*": any
    model); ``break_rate``: the share of first answers that break a rule; ``omit``:
    columns never answered."""

    accuracy: Mapping[str, float] = field(default_factory=dict)
    break_rate: float = 0.0
    omit: frozenset[str] = frozenset()  # columns left out, as a model that ignores them

    def accuracy_of(self, model: str) -> float | None:
        return self.accuracy.get(model, self.accuracy.get("*"))


def true_label(text: str, choices: Sequence[Any]) -> Any:
    """The hidden truth for a prompt: a stable pick from ``choices`` by the text's hash.

    >>> true_label("Review 1: great value.", ["positive", "negative", "neutral"])
    'neutral'
    """
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return choices[int.from_bytes(digest[:8]) % len(choices)]


def declared_schema(messages: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The JSON schema in a system or developer message, or None."""
    for message in messages:
        content = message.get("content")
        if message.get("role") not in ("system", "developer") or not isinstance(content, str):
            continue
        at = content.find(SCHEMA_MARK)
        if at < 0:
            continue
        try:
            schema, _ = json.JSONDecoder().raw_decode(content, at + len(SCHEMA_MARK))
        except ValueError:
            return None
        if isinstance(schema, dict) and isinstance(schema.get("properties"), dict):
            return schema
    return None


def label_answer(
    schema: Mapping[str, Any],
    messages: Sequence[Mapping[str, Any]],
    model: str,
    settings: LabelSettings,
    rng: Rng,
) -> str:
    """The JSON text of an answer to ``schema``."""
    users = [_text(m) for m in messages if m.get("role") == "user"]
    rows = [text for text in users if not text.startswith(REASK_MARK)]
    labeler = _Labeler(rows[-1] if rows else "", settings.accuracy_of(model), rng)
    properties = schema["properties"]
    answer = {n: labeler.value(p) for n, p in properties.items() if n not in settings.omit}
    first = not users or not users[-1].startswith(REASK_MARK)
    if first and settings.break_rate > 0 and rng.uniform(0.0, 1.0) < settings.break_rate:
        _break_a_rule(answer, properties)
    return json.dumps(answer, ensure_ascii=False)


@dataclass(slots=True)
class _Labeler:
    text: str
    accuracy: float | None
    rng: Rng

    def value(self, prop: Mapping[str, Any]) -> Any:
        kind = prop.get("type")
        if kind == "array":
            item = prop.get("items") or {}
            if item.get("enum"):
                picks = [self.label(item["enum"])]
                others = [v for v in item["enum"] if v != picks[0]]
                if others and self.rng.randint(0, 1):
                    picks.append(others[self.rng.randint(0, len(others) - 1)])
                return picks
            return [self.value(item) for _ in range(self.rng.randint(1, 2))]
        if prop.get("enum"):
            return self.label(prop["enum"])
        return self.scalar(kind, prop.get("minimum"), prop.get("maximum"))

    def label(self, choices: Sequence[Any]) -> Any:
        if self.accuracy is None:
            return choices[self.rng.randint(0, len(choices) - 1)]
        truth = true_label(self.text, choices)
        others = [c for c in choices if c != truth]
        if not others or self.rng.uniform(0.0, 1.0) < self.accuracy:
            return truth
        return others[self.rng.randint(0, len(others) - 1)]

    def scalar(self, kind: Any, low: float | None, high: float | None) -> Any:
        if kind == "number":
            low = 0.0 if low is None else low
            high = low + 1.0 if high is None else high
            return round(min(max(self.rng.uniform(low, high), low), high), 2)
        if kind == "integer":
            first = 0 if low is None else int(-(-low // 1))
            last = first + 10 if high is None else int(high // 1)
            return self.rng.randint(first, max(first, last))
        if kind == "boolean":
            return self.rng.randint(0, 1) == 1
        return self.rng.choice(_WORDS)


def _break_a_rule(answer: dict[str, Any], properties: Mapping[str, Any]) -> None:
    """Put one value outside its enum, or above its maximum."""
    for name, prop in properties.items():
        if prop.get("enum") and prop.get("type") == "string":
            answer[name] = OUT_OF_ENUM
            return
        if prop.get("maximum") is not None:
            answer[name] = prop["maximum"] + 1
            return


def _text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if p.get("type") == "text")
    return ""
