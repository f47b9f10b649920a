"""Re-asks (``request.reask``): an answer that fails the parse or a column rule is asked
again as a follow-up turn of the same conversation; and a cut-off answer
(``request.cut_off_retry_tokens``) sent once more with a larger ``max_completion_tokens``.

The follow-up is the row's request with two more messages: the model's own answer (as
the assistant) and a user message saying what was wrong and what is allowed. It keeps
the row's key and fingerprint, so the checkpoint stores the row under the same key
whatever turn answered it; the dispatcher paces, reserves, bills and counts it as any
attempt.
"""

from __future__ import annotations

from collections.abc import Callable

from batchrun._types import Request, Result
from batchrun.send.requests import canonical_json, estimate_prompt_tokens

Check = Callable[[Result], str | None]
"""What is wrong with an ok answer (a one-line message), or None when it is good."""


def correction(problem: str) -> str:
    """The user turn after a failed answer: ``Your answer was not valid: <problem>.``
    then the request to answer again."""
    return f"Your answer was not valid: {problem}. {_AGAIN}"


_AGAIN = "Answer again with only the corrected JSON object."


def follow_up(request: Request, answer: str | None, problem: str) -> Request:
    """``request`` asked again: its messages, the answer, then the correction."""
    messages = [
        *request.body["messages"],
        {"role": "assistant", "content": answer or ""},
        {"role": "user", "content": correction(problem)},
    ]
    body = {**request.body, "messages": messages}
    return Request(
        key=request.key,
        body=body,
        fingerprint=request.fingerprint,
        est_prompt_tokens=estimate_prompt_tokens(body),
        max_completion_tokens=request.max_completion_tokens,
        wire=canonical_json(body).encode(),
    )


def longer(request: Request, tokens: int) -> Request:
    """``request`` with ``max_completion_tokens = tokens`` (same key and fingerprint)."""
    body = {**request.body, "max_completion_tokens": tokens}
    return Request(
        key=request.key,
        body=body,
        fingerprint=request.fingerprint,
        est_prompt_tokens=request.est_prompt_tokens,
        max_completion_tokens=tokens,
        text_kind=request.text_kind,
        wire=canonical_json(body).encode(),
    )
