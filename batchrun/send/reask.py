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
from dataclasses import dataclass

from batchrun._types import Request, Result
from batchrun.job.config import RequestConfig
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


@dataclass(frozen=True, slots=True)
class FollowUps:
    """What a job sends again after an ok answer: ``check`` finds a fault to re-ask about
    (up to ``reask`` times), ``cut_off_tokens`` the limit a cut-off answer is retried with."""

    check: Check | None = None
    reask: int = 0
    cut_off_tokens: int | None = None

    @classmethod
    def of(cls, request: RequestConfig, check: Check | None) -> FollowUps:
        return cls(check if request.reask else None, request.reask, request.cut_off_retry_tokens)

    def start(self) -> Turns:
        return Turns(self)


@dataclass(slots=True)
class Turns:
    """One row's follow-ups so far."""

    rules: FollowUps
    reasks: int = 0
    cut_off: bool = False

    def next(self, request: Request, result: Result) -> Request | None:
        """The request to send after ``result``, or None: the row is done."""
        rules = self.rules
        if result.status != "ok":
            return None
        if rules.cut_off_tokens and not self.cut_off and result.finish_reason == "length":
            self.cut_off = True
            return longer(request, rules.cut_off_tokens)
        if rules.check is None or self.reasks >= rules.reask:
            return None
        problem = rules.check(result)
        if problem is None:
            return None
        self.reasks += 1
        return follow_up(request, result.response, problem)

    def stamp(self, result: Result) -> Result:
        result.reasks, result.cut_off_retried = self.reasks, self.cut_off
        return result
