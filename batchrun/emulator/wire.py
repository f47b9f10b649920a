"""Bytes on the wire: completion bodies, SSE chunks, error bodies, the model list."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from batchrun.emulator.schema import CHARS_PER_TOKEN, MODELS, ApiError, ChatRequest
from batchrun.emulator.synth import Completion

_MODELS_CREATED = 1_767_225_600  # 2026-01-01, fixed so /v1/models is stable
# Split between whitespace and a following word, so the pieces join back exactly.
_WORD_START = re.compile(r"(?<=\s)(?=\S)")
_WORDS_PER_CHUNK = 3
_USAGE = (
    b'{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d,'
    b'"prompt_tokens_details":{"cached_tokens":%d,"text_tokens":%d,"audio_tokens":0,'
    b'"image_tokens":%d},"completion_tokens_details":{"text_tokens":%d,"audio_tokens":0,'
    b'"reasoning_tokens":%d}}'
)


@dataclass(frozen=True, slots=True)
class Answer:
    """Everything about one billed answer that the wire format needs."""

    id: str
    created: int
    fingerprint: str  # system_fingerprint
    request: ChatRequest
    completion: Completion
    cached_tokens: int

    def usage_json(self) -> bytes:
        """``usage()`` serialised without json.dumps, which dominates the hot path."""
        request, completion = self.request, self.completion
        prompt, done = request.prompt_tokens, completion.completion_tokens
        return _USAGE % (
            prompt,
            done,
            prompt + done,
            self.cached_tokens,
            request.text_tokens,
            request.image_tokens,
            completion.text_tokens,
            completion.reasoning_tokens,
        )

    def usage(self) -> dict[str, Any]:
        request, completion = self.request, self.completion
        prompt = request.prompt_tokens
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": prompt + completion.completion_tokens,
            "prompt_tokens_details": {
                "cached_tokens": self.cached_tokens,
                "text_tokens": request.text_tokens,
                "audio_tokens": 0,
                "image_tokens": request.image_tokens,
            },
            "completion_tokens_details": {
                "text_tokens": completion.text_tokens,
                "audio_tokens": 0,
                "reasoning_tokens": completion.reasoning_tokens,
            },
        }

    def ledger_tokens(self) -> dict[str, int]:
        return {
            "prompt": self.request.prompt_tokens,
            "cached": self.cached_tokens,
            "completion": self.completion.completion_tokens,
            "reasoning": self.completion.reasoning_tokens,
            "image": self.request.image_tokens,
        }


# One encoder for all: json.dumps with options builds a new encoder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_quote = json.encoder.encode_basestring  # the C string quoter behind the encoder


def dumps(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()


def error_body(error: ApiError) -> bytes:
    fields = {
        "message": error.message,
        "type": error.type,
        "param": error.param,
        "code": error.code,
    }
    return dumps({"error": fields})


def models_body() -> bytes:
    data = [
        {"id": model, "object": "model", "created": _MODELS_CREATED, "owned_by": owner}
        for model, owner in MODELS
    ]
    return dumps({"object": "list", "data": data})


def model_body(model: str) -> bytes:
    owner = dict(MODELS)[model]
    return dumps({"id": model, "object": "model", "created": _MODELS_CREATED, "owned_by": owner})


def completion_body(answer: Answer, *, usage: bool = True) -> bytes:
    completion = answer.completion
    message: dict[str, Any] = {"role": "assistant", "content": completion.content}
    if completion.reasoning_content is not None:
        message["reasoning_content"] = completion.reasoning_content
    head = {
        "id": answer.id,
        "object": "chat.completion",
        "created": answer.created,
        "model": answer.request.model,
    }
    choice = b'{"index":0,"message":' + dumps(message) + b',"logprobs":null,"finish_reason":'
    choice += dumps(completion.finish_reason) + b"}"
    tail = b',"system_fingerprint":' + dumps(answer.fingerprint) + b"}"
    usage_part = b',"usage":' + answer.usage_json() if usage else b""
    return dumps(head)[:-1] + b',"choices":[' + choice + b"]" + usage_part + tail


def sse_events(answer: Answer, *, usage: bool = True) -> list[tuple[bytes, int]]:
    """The stream as (event bytes, tokens it carries) pairs, ``[DONE]`` last.

    Chunks follow OpenAI's order: role delta, reasoning deltas, content deltas,
    a finish chunk, then a usage chunk with empty choices when asked for (and not
    stripped: ``usage=False``).
    """
    # Every chunk shares this prefix: the object minus its closing brace.
    head = dumps(
        {
            "id": answer.id,
            "object": "chat.completion.chunk",
            "created": answer.created,
            "model": answer.request.model,
            "system_fingerprint": answer.fingerprint,
        }
    )[:-1]
    usage_null = b',"usage":null' if answer.request.include_usage else b""

    open_ = b"data: " + head + b',"choices":[{"index":0,"delta":'
    close = b',"logprobs":null,"finish_reason":null}]' + usage_null + b"}\n\n"

    def delta(field: bytes, text: str) -> bytes:
        return open_ + b'{"' + field + b'":' + _quote(text).encode() + b"}" + close

    completion = answer.completion
    events = [(open_ + b'{"role":"assistant","content":""}' + close, 0)]
    for piece in _pieces(completion.reasoning_content or ""):
        events.append((delta(b"reasoning_content", piece), _tokens(piece)))
    for piece in _pieces(completion.content):
        events.append((delta(b"content", piece), _tokens(piece)))
    finish = b',"logprobs":null,"finish_reason":' + dumps(completion.finish_reason) + b"}]"
    events.append((open_ + b"{}" + finish + usage_null + b"}\n\n", 0))
    if answer.request.include_usage and usage:
        usage_part = b',"usage":' + answer.usage_json()
        events.append((b"data: " + head + b',"choices":[]' + usage_part + b"}\n\n", 0))
    events.append((b"data: [DONE]\n\n", 0))
    return events


def malformed(body: bytes) -> bytes:
    """A body that starts like the real one and stops being JSON half way."""
    return body[: len(body) // 2] + b"\x00<upstream error>"


def _pieces(text: str) -> list[str]:
    if not text:
        return []
    words = _WORD_START.split(text)
    return [
        "".join(words[i : i + _WORDS_PER_CHUNK]) for i in range(0, len(words), _WORDS_PER_CHUNK)
    ]


def _tokens(piece: str) -> int:
    return math.ceil(len(piece) / CHARS_PER_TOKEN)
