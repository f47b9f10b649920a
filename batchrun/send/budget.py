"""The spending cap: every request in flight reserves its worst case, answers settle for real.

Spend can then never exceed ``max_cost_usd``: a request is only sent when
``spent + reserved + its worst case`` still fits. An answer with usage settles at its
real cost; an attempt whose usage never came back (no ``usage``, or an answer lost
after the API did the work) keeps its whole reservation as spent.

The worst case needs an upper bound on the prompt, and ``ceil(chars / 4)`` is not one
(a real tokenizer gives up to one token per CJK character, about one per three
characters of code). So the budget learns the highest real-to-estimated prompt ratio
per kind of text from the answers and reserves that ratio plus ``PROMPT_MARGIN``;
before the first answer of a kind it assumes ``PRIOR_FACTORS``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import anyio

from batchrun._types import Request, Result
from batchrun.job.config import Price

PROMPT_MARGIN = 1.25
"""Reserve this much above the highest real/estimated prompt ratio seen so far."""
PRIOR_FACTORS: dict[str, float] = {"ascii": 1.5, "mixed": 2.0, "wide": 4.0}
"""Prompt ratio assumed before any answer of that kind of text has come back:
ASCII (English ~1.0, code ~1.35 on real tokenizers), mixed (accented Latin, some
symbols: under a quarter more bytes than characters), wide (CJK and other multi-byte
scripts: at most about one token per character, i.e. 4x the chars/4 estimate)."""


class Budget:
    """``max_cost_usd`` for one job, counting what earlier runs already spent.

    >>> budget = Budget(0.01, Price(input=1.0, output=10.0))
    >>> budget.try_reserve(Request("k", {}, "v1:x", 1000, 100))
    0.0025
    """

    def __init__(self, max_cost_usd: float, price: Price, spent_before: float = 0.0) -> None:
        self.max_cost_usd = max_cost_usd
        self.price = price
        self.spent_usd = spent_before
        self.reserved_usd = 0.0
        self.in_flight = 0  # reservations not yet settled
        self.seen_ratio: dict[str, float] = {}  # highest real/estimated prompt per text kind
        self._settled: anyio.Event | None = None  # made in the event loop, on first wait

    def prompt_factor(self, request: Request) -> float:
        """What the estimated prompt is multiplied by for this request's worst case."""
        kind = text_kind(request)
        seen = self.seen_ratio.get(kind)
        return PRIOR_FACTORS[kind] if seen is None else seen * PROMPT_MARGIN

    def worst_case(self, request: Request) -> float:
        """The most one attempt can cost: the bounded prompt, every completion token."""
        prompt = math.ceil(request.est_prompt_tokens * self.prompt_factor(request))
        return self.price.cost(prompt, 0, request.max_completion_tokens)

    def try_reserve(self, request: Request) -> float | None:
        """Reserve the request's worst case; None when that would cross the cap."""
        amount = self.worst_case(request)
        if self.spent_usd + self.reserved_usd + amount > self.max_cost_usd:
            return None
        self.reserved_usd += amount
        self.in_flight += 1
        return amount

    async def reserve(self, request: Request) -> float | None:
        """Reserve, waiting for requests in flight to settle while it does not fit;
        None only when it does not fit with nothing left in flight (stop on money)."""
        while (amount := self.try_reserve(request)) is None:
            if self.in_flight == 0:
                return None
            if self._settled is None:
                self._settled = anyio.Event()
            await self._settled.wait()
        return amount

    def learn(self, request: Request, prompt_tokens: int | None) -> None:
        """Take an answer's real prompt tokens into the bound for its kind of text."""
        if prompt_tokens is None or request.est_prompt_tokens <= 0:
            return
        kind = text_kind(request)
        ratio = prompt_tokens / request.est_prompt_tokens
        self.seen_ratio[kind] = max(self.seen_ratio.get(kind, 0.0), ratio)

    def settle(self, reserved: float, cost: float) -> None:
        """Swap a reservation for what the attempt really cost (0.0 when nothing was billed)."""
        self.reserved_usd = max(self.reserved_usd - reserved, 0.0)
        self.in_flight = max(self.in_flight - 1, 0)
        self.spent_usd += cost
        if self._settled is not None:
            self._settled.set()  # every waiter tries again
            self._settled = None


def text_kind(request: Request) -> str:
    """``ascii``, ``mixed`` or ``wide``: how far the prompt's text is from plain ASCII
    (the request builder records it; worked out here for a request built by hand)."""
    return request.text_kind or texts_kind(_texts(request.body))


def texts_kind(texts: Iterable[str]) -> str:
    """``text_kind`` of these texts: UTF-8 bytes per character tell the script apart."""
    chars = size = 0
    for text in texts:
        chars += len(text)
        size += len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    if size == chars:
        return "ascii"
    return "mixed" if size <= 1.25 * chars else "wide"


def _texts(body: dict[str, object]) -> list[str]:
    texts: list[str] = []
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(p["text"] for p in content if isinstance(p, dict) and "text" in p)
    return texts


def result_cost(price: Price | None, result: Result) -> float | None:
    """The cost of an answer from its usage; None without a price or usage."""
    if price is None or result.prompt_tokens is None:
        return None
    return price.cost(
        result.prompt_tokens, result.cached_tokens or 0, result.completion_tokens or 0
    )
