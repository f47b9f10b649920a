"""The spending cap: every request in flight reserves its worst case, answers settle for real.

Spend (priced from the answers' usage) can then never exceed ``max_cost_usd``: a
request is only sent when ``spent + reserved + its worst case`` still fits.
"""

from __future__ import annotations

from batchrun._config import Price
from batchrun._types import Request, Result


class Budget:
    """``max_cost_usd`` for one job, counting what earlier runs already spent.

    >>> budget = Budget(0.01, Price(input=1.0, output=10.0))
    >>> budget.try_reserve(Request("k", {}, "v1:x", 1000, 100))
    0.002
    """

    def __init__(self, max_cost_usd: float, price: Price, spent_before: float = 0.0) -> None:
        self.max_cost_usd = max_cost_usd
        self.price = price
        self.spent_usd = spent_before
        self.reserved_usd = 0.0

    def worst_case(self, request: Request) -> float:
        """The most one attempt at ``request`` can cost: full prompt, every completion token."""
        return self.price.cost(request.est_prompt_tokens, 0, request.max_completion_tokens)

    def try_reserve(self, request: Request) -> float | None:
        """Reserve the request's worst case; None when that would cross the cap."""
        amount = self.worst_case(request)
        if self.spent_usd + self.reserved_usd + amount > self.max_cost_usd:
            return None
        self.reserved_usd += amount
        return amount

    def settle(self, reserved: float, cost: float) -> None:
        """Swap a reservation for what the answer really cost (0.0 when nothing was billed)."""
        self.reserved_usd = max(self.reserved_usd - reserved, 0.0)
        self.spent_usd += cost


def result_cost(price: Price | None, result: Result) -> float | None:
    """The SPEC's cost of an answer from its usage; None without a price or usage."""
    if price is None or result.prompt_tokens is None:
        return None
    return price.cost(
        result.prompt_tokens, result.cached_tokens or 0, result.completion_tokens or 0
    )
