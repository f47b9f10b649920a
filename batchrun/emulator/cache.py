"""Prompt-prefix caching, modelled on OpenAI's: a prefix of at least 1024 tokens
that this server has seen before is billed as cached, in steps of 128 tokens.

Positions are counted in message text characters (4 per token, as in the
prompt-token approximation); roles and image references enter the hash but not
the count, so two prompts share a prefix only if they agree on all of it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from batchrun.emulator.schema import CHARS_PER_TOKEN

MIN_CACHED_TOKENS = 1024
CACHE_STEP_TOKENS = 128
_FIRST = MIN_CACHED_TOKENS * CHARS_PER_TOKEN
_STEP = CACHE_STEP_TOKENS * CHARS_PER_TOKEN
# Bounded so a long benchmark cannot grow the server without limit.
_MAX_ENTRIES = 500_000


class PrefixCache:
    """Remembers prefix digests and answers how much of a prompt was cached."""

    def __init__(self) -> None:
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def clear(self) -> None:
        self._seen.clear()

    def cached_tokens(self, model: str, messages: list[dict[str, Any]], text_chars: int) -> int:
        """Tokens of the longest previously seen prefix; remembers this prompt's prefixes."""
        if text_chars < _FIRST:
            return 0
        digests = list(_prefix_digests(model, messages))
        cached = 0
        for boundary, digest in reversed(digests):
            if digest in self._seen:
                cached = boundary // CHARS_PER_TOKEN
                break
        for _, digest in digests:
            self._remember(digest)
        return cached

    def _remember(self, digest: bytes) -> None:
        self._seen[digest] = None
        self._seen.move_to_end(digest)
        if len(self._seen) > _MAX_ENTRIES:
            self._seen.popitem(last=False)


def _segments(messages: list[dict[str, Any]]) -> Iterator[tuple[bool, str]]:
    """(counts_as_text, piece) in prompt order."""
    for message in messages:
        yield False, f"\x1e{message.get('role')}\x1f"
        content = message.get("content")
        if isinstance(content, str):
            yield True, content
            continue
        for part in content or ():
            if part.get("type") == "text":
                yield True, part["text"]
            else:
                image = part["image_url"]
                yield False, f"\x1d{image['url']}\x1d{image.get('detail', 'auto')}"


def _prefix_digests(model: str, messages: list[dict[str, Any]]) -> Iterator[tuple[int, bytes]]:
    """(boundary in text chars, digest of everything before it) at each cache step."""
    hasher = hashlib.blake2b(model.encode(), digest_size=16)
    position, boundary = 0, _FIRST
    for is_text, piece in _segments(messages):
        if not is_text:
            hasher.update(piece.encode())
            continue
        start = 0
        while position + len(piece) - start >= boundary:
            cut = start + boundary - position
            hasher.update(piece[start:cut].encode())
            position, start = boundary, cut
            yield boundary, hasher.copy().digest()
            boundary += _STEP
        hasher.update(piece[start:].encode())
        position += len(piece) - start
