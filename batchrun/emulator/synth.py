"""Deterministic synthetic answers: a pure function of the seed and the request.

The answer key hashes the canonical JSON of the body without ``stream`` and
``stream_options``, so a streamed and a non-streamed request get the same text.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from batchrun.emulator.labels import LabelSettings, declared_schema, label_answer
from batchrun.emulator.schema import CHARS_PER_TOKEN, ChatRequest

# Reasoning tokens drawn per effort: (low, high) inclusive.
REASONING_RANGES = {"low": (0, 64), "medium": (64, 256), "high": (256, 1024), "xhigh": (1024, 4096)}

_POSITIVE = frozenset(
    {"good", "great", "love", "loved", "excellent", "happy", "amazing", "best", "wonderful",
     "fantastic", "like", "liked", "awesome", "perfect", "pleased", "recommend", "delightful",
     "superb", "enjoy", "enjoyed", "nice"}
)  # fmt: skip
_NEGATIVE = frozenset(
    {"bad", "terrible", "hate", "hated", "awful", "worst", "poor", "disappointing",
     "disappointed", "horrible", "broken", "refund", "angry", "useless", "slow", "rude",
     "waste", "failed", "fails", "annoying"}
)  # fmt: skip
_WORD = re.compile(r"[a-z']+")

_SUBJECTS = ("The request", "This input", "The text", "The main point", "The context", "It")
_VERBS = ("suggests", "describes", "indicates", "emphasises", "outlines", "implies")
_OBJECTS = (
    "a clear and direct answer",
    "several practical considerations",
    "a balanced view of the trade-offs",
    "the most relevant details",
    "a plausible next step",
    "a short summary of the situation",
)
_TAILS = ("", " in a few words", " for the reader", " with some caveats", " overall")


@dataclass(frozen=True, slots=True)
class Completion:
    """The synthetic answer after max_completion_tokens was applied."""

    content: str
    reasoning_content: str | None
    reasoning_tokens: int
    text_tokens: int
    finish_reason: str

    @property
    def completion_tokens(self) -> int:
        return self.reasoning_tokens + self.text_tokens


class Draws:
    """Deterministic choices read off a digest; far cheaper than seeding a Random."""

    def __init__(self, key: bytes) -> None:
        self._pool = hashlib.blake2b(key, digest_size=64).digest()
        self._at = 0

    def _take(self) -> int:
        if self._at + 2 > len(self._pool):
            self._pool, self._at = hashlib.blake2b(self._pool, digest_size=64).digest(), 0
        value = int.from_bytes(self._pool[self._at : self._at + 2])
        self._at += 2
        return value

    def choice(self, options: Sequence[str]) -> str:
        return options[self._take() % len(options)]

    def randint(self, low: int, high: int) -> int:
        return low + self._take() % (high - low + 1)

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self._take() / 65535


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> bytes:
    """The canonical form batchrun fingerprints: sorted keys, no spaces, UTF-8."""
    return _CANONICAL.encode(value).encode()


def body_digests(seed: int, body: dict[str, Any]) -> tuple[bytes, str]:
    """(answer key, billing fingerprint) of a body.

    The fingerprint is ``"v1:" + sha256(canonical JSON)``, batchrun's request
    fingerprint; the answer key leaves out the transport-only fields and mixes
    in the seed.
    """
    canonical = canonical_json(body)
    fingerprint = "v1:" + hashlib.sha256(canonical).hexdigest()
    if "stream" in body or "stream_options" in body:
        answer_body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        canonical = canonical_json(answer_body)
    key = hashlib.blake2b(canonical, key=str(seed).encode(), digest_size=16).digest()
    return key, fingerprint


_NO_LABELS = LabelSettings()


def synthesize(request: ChatRequest, key: bytes, labels: LabelSettings = _NO_LABELS) -> Completion:
    """The answer for a validated request whose answer key is ``key``; a request whose
    system message declares a JSON schema gets a labeling answer (``emulator.labels``)."""
    rng = Draws(key)
    schema = declared_schema(request.messages)
    if schema is not None:
        content = label_answer(schema, request.messages, request.model, labels, rng)
    elif request.json_mode:
        content = _json_answer(request.user_text, rng)
    else:
        content = _prose(request, rng)
    reasoning_content, reasoning_tokens = None, 0
    if request.reasoning_effort is not None:
        low, high = REASONING_RANGES[request.reasoning_effort]
        reasoning_tokens = rng.randint(low, high)
        reasoning_content = _reasoning_summary(request.user_text)
    return _apply_limit(content, reasoning_content, reasoning_tokens, request.max_completion_tokens)


def _prose(request: ChatRequest, rng: Draws) -> str:
    count = rng.randint(1, 2) if request.verbosity == "low" else rng.randint(3, 5)
    sentences = [
        f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_TAILS)}."
        for _ in range(count)
    ]
    return " ".join(sentences)


def sentiment(text: str, rng: Draws) -> tuple[str, float]:
    """Keyword vote with a hash fallback, so labels look plausible and stay stable."""
    words = _WORD.findall(text.lower())
    score = sum(w in _POSITIVE for w in words) - sum(w in _NEGATIVE for w in words)
    if score > 0:
        return "positive", round(rng.uniform(0.7, 0.99), 2)
    if score < 0:
        return "negative", round(rng.uniform(0.7, 0.99), 2)
    return rng.choice(("neutral", "neutral", "positive", "negative")), round(
        rng.uniform(0.5, 0.8), 2
    )


def _json_answer(user_text: str, rng: Draws) -> str:
    label, confidence = sentiment(user_text, rng)
    return f'{{"label": "{label}", "confidence": {confidence}}}'


def _reasoning_summary(user_text: str) -> str:
    topic = " ".join(user_text.split()[:6])
    return f"The user asks about: {topic}. Identify the key points, then answer concisely."


def _apply_limit(
    content: str, reasoning: str | None, reasoning_tokens: int, limit: int | None
) -> Completion:
    # Reasoning is spent first and counts against the limit, as with real models.
    text_tokens = math.ceil(len(content) / CHARS_PER_TOKEN)
    if limit is None or reasoning_tokens + text_tokens <= limit:
        return Completion(content, reasoning, reasoning_tokens, text_tokens, "stop")
    if reasoning_tokens >= limit:
        return Completion("", reasoning, limit, 0, "length")
    room = limit - reasoning_tokens
    return Completion(
        content[: room * CHARS_PER_TOKEN], reasoning, reasoning_tokens, room, "length"
    )
