"""``batchrun plan``: what a job will send, cost and take, before anything is sent.

    job -> prepare (run's own checks) -> stream the input once, read-only checkpoint
        -> counts and estimated prompt tokens -> cost range (pricing), time (limits)
    --pilot N -> N sampled requests through the real Pipeline (run lock, checkpoint)
        -> real completion tokens -> expected cost inside the range

Without ``--pilot`` nothing is sent and no API key is needed: the checkpoint is
read without the run lock (a live run may be writing it), and no checkpoint or
output is created. The figures come from ``plan.estimate`` (the counting pass, the
pilot); this module derives the plan from them and renders it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from batchrun.engines.base import (
    EMULATOR_KEY,
    claim_endpoint,
    emulated_job,
    prepare,
    resolve_api_key,
)
from batchrun.engines.variants import variant_job
from batchrun.io.input import InputTable
from batchrun.job.config import Job, Price
from batchrun.job.load import load_job
from batchrun.output.empty import empty_columns
from batchrun.plan.estimate import Counts, Pilot, count_rows, run_pilot, sample_rows
from batchrun.send.advice import duration, lowest, reservation_note, wall_time
from batchrun.send.budget import PRIOR_FACTORS, PROMPT_MARGIN
from batchrun.send.requests import RequestBuilder
from batchrun.store.checkpoint import Checkpoint
from batchrun.store.jobstore import local_store, read_only_store
from batchrun.store.keptlimits import KeptLimits

__all__ = ["Counts", "Pilot", "Plan", "plan_job", "plan_job_file"]

_MILLION = 1_000_000


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """A job's plan; ``render()`` for people, ``to_dict()`` for scripts."""

    job: Job
    counts: Counts
    spent_usd: float
    checkpoint_exists: bool
    pilot: Pilot | None = None
    learned: KeptLimits = field(default_factory=KeptLimits)  # earlier runs learned these

    @property
    def price(self) -> Price | None:
        return self.job.price

    @property
    def max_completion_tokens(self) -> int:
        return self.job.request.worst_case_completion_tokens

    @property
    def completion_tokens_max(self) -> int:
        return self.counts.requests * self.max_completion_tokens

    @property
    def cost_low(self) -> float | None:
        """Every prompt token at the full input price, no completion at all."""
        if self.price is None:
            return None
        return self.counts.prompt_tokens * self.price.input / _MILLION

    @property
    def cost_high(self) -> float | None:
        """The low cost plus every request using ``max_completion_tokens``."""
        if self.price is None or self.cost_low is None:
            return None
        return self.cost_low + self.completion_tokens_max * self.price.output / _MILLION

    @property
    def cost_expected(self) -> float | None:
        """The low cost plus the pilot's mean completion tokens for every request."""
        pilot = self.pilot
        if self.price is None or self.cost_low is None or pilot is None:
            return None
        if pilot.mean_completion_tokens is None:
            return None
        completion = pilot.mean_completion_tokens * self.counts.requests
        return self.cost_low + completion * self.price.output / _MILLION

    @property
    def budget_left(self) -> float | None:
        budget = self.job.limits.max_cost_usd
        return None if budget is None else max(0.0, budget - self.spent_usd)

    @property
    def budget_verdict(self) -> str | None:
        """Whether ``limits.max_cost_usd`` (less what the checkpoint spent) covers the run."""
        left, low, high = self.budget_left, self.cost_low, self.cost_high
        if left is None or low is None or high is None:
            return None
        if high <= left:
            return "covers the worst case"
        if low > left:
            return "too small: even the low estimate exceeds it; the run will stop (exit 3)"
        expected = self.cost_expected
        if expected is not None and expected > left:
            return "likely too small: the expected cost exceeds it; the run may stop (exit 3)"
        return "covers the low estimate, not the worst case: the run may stop (exit 3)"

    @property
    def time(self) -> tuple[float | None, str]:
        """Estimated seconds and what bounds them; None when no limit is known."""
        latency = None if self.pilot is None else self.pilot.mean_latency_ms
        counts = self.counts
        return wall_time(self.job, counts.requests, counts.prompt_tokens, latency, self.learned)

    @property
    def pacing_note(self) -> str | None:
        """Why the run will be slow, when an unset ``max_completion_tokens`` is the reason."""
        limits, learned = self.job.limits, self.learned
        return reservation_note(
            rpm=lowest(limits.requests_per_minute, learned.rpm),
            tpm=lowest(limits.tokens_per_minute, learned.tpm),
            est_prompt_tokens=self.counts.prompt_tokens // max(self.counts.requests, 1),
            max_completion_tokens=self.job.request.max_completion_tokens,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: counts, tokens, cost, budget, time and the pilot."""
        seconds, bound = self.time
        return {
            "job": self.job.name,
            "model": self.job.request.model,
            "input": self.job.input.path,
            "output": self.job.output.path,
            "checkpoint": str(self.job.output.checkpoint_path),
            "checkpoint_exists": self.checkpoint_exists,
            "rows": _counts_dict(self.counts),
            "tokens": {
                "prompt_estimated": self.counts.prompt_tokens,
                "completion_max": self.completion_tokens_max,
                "max_completion_tokens": self.max_completion_tokens,
            },
            "cost_usd": {
                "low": self.cost_low,
                "expected": self.cost_expected,
                "high": self.cost_high,
                "priced": self.price is not None,
            },
            "budget": {
                "max_cost_usd": self.job.limits.max_cost_usd,
                "spent_usd": self.spent_usd,
                "left_usd": self.budget_left,
                "verdict": self.budget_verdict,
                # What each request reserves for its prompt: the estimate times this.
                "prompt_factor": {"before_answers": PRIOR_FACTORS, "margin": PROMPT_MARGIN},
            },
            "time": {
                "seconds": seconds,
                "text": None if seconds is None else duration(seconds),
                "bound_by": bound,
                "note": self.pacing_note,
            },
            "learned_limits": asdict(self.learned) if self.learned.known else None,
            "pilot": None if self.pilot is None else _pilot_dict(self.pilot),
        }

    def render(self) -> str:
        """An aligned table for a terminal."""
        return "\n".join(_render(self))


def _counts_dict(counts: Counts) -> dict[str, Any]:
    data = asdict(counts)
    data["invalid_reasons"] = list(counts.invalid_reasons)
    data["duplicates"] = counts.duplicates
    return data


def _pilot_dict(pilot: Pilot) -> dict[str, Any]:
    return asdict(pilot) | {"prompt_estimate_error": pilot.prompt_estimate_error}


# ---------------------------------------------------------------- entry points


@dataclass(frozen=True)
class VariantPlans:
    """A job with ``[[variants]]``: one plan per variant (requests, tokens, cost each)."""

    plans: tuple[tuple[str, Plan], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"variants": [{"variant": name, **plan.to_dict()} for name, plan in self.plans]}

    def render(self) -> str:
        return "\n\n".join(f"variant {name}:\n{plan.render()}" for name, plan in self.plans)


def plan_job_file(
    path: str | Path,
    *,
    sets: Sequence[str] = (),
    variables: Sequence[str] = (),
    pilot: int | None = None,
    emulate: bool = False,
    endpoint_moved: bool = False,
) -> Plan | VariantPlans:
    """Load a job file and plan it (``batchrun plan``); a plan per variant when it has some."""
    job = load_job(path, sets=sets, variables=variables)
    if job.variants:
        return VariantPlans(
            tuple(
                (
                    v.name,
                    plan_job(
                        variant_job(job, v),
                        pilot=pilot,
                        emulate=emulate,
                        endpoint_moved=endpoint_moved,
                    ),
                )
                for v in job.variants
            )
        )
    return plan_job(job, pilot=pilot, emulate=emulate, endpoint_moved=endpoint_moved)


def plan_job(
    job: Job,
    *,
    pilot: int | None = None,
    emulate: bool = False,
    base_url: str | None = None,
    api_key: str | None = None,
    endpoint_moved: bool = False,
) -> Plan:
    """Count, estimate and price ``job`` without sending; ``pilot=N`` sends N sampled rows
    (``endpoint_moved``: the checkpoint's answers came from this API at another address).

    Raises what ``run`` raises before sending (``JobError``, ``InputError``);
    with a pilot also ``LockedError`` (a run is going) and ``FatalApiError``.

    >>> plan = plan_job(load_job("jobs/demo.toml"))  # doctest: +SKIP
    >>> plan.counts.requests, plan.cost_high  # doctest: +SKIP
    (297, 0.80...)
    """
    table, builder = prepare(job)
    if emulate:  # an emulated run's checkpoint is its own: plan against that one
        job = emulated_job(job)
    if pilot is None:
        return _dry_plan(job, table, builder)
    if emulate:
        from batchrun.emulator import EmulatorProcess

        with EmulatorProcess([]) as emu:
            pilot_api = (emu.base_url, EMULATOR_KEY, True, endpoint_moved)
            return _pilot_plan(job, table, builder, pilot, pilot_api)
    why = " (a pilot sends real requests; plan without --pilot needs no key)"
    key = resolve_api_key(job, api_key, why=why)
    return _pilot_plan(job, table, builder, pilot, (base_url, key, False, endpoint_moved))


def _dry_plan(job: Job, table: InputTable, builder: RequestBuilder) -> Plan:
    # Both engines' files: the local checkpoint and the Ray workers' (batchrun.store.jobstore).
    with read_only_store(job) as store:
        if not store.exists:
            return Plan(job, count_rows(table, builder, None), 0.0, checkpoint_exists=False)
        counts = count_rows(table, builder, store.lookup)
        spent, learned = store.spent_usd(), store.learned_limits()
        return Plan(job, counts, spent, checkpoint_exists=True, learned=learned)


def _pilot_plan(
    job: Job,
    table: InputTable,
    builder: RequestBuilder,
    size: int,
    api: tuple[str | None, str, bool, bool],
) -> Plan:
    base_url, api_key, synthetic, moved = api  # where, the key, emulated, --endpoint-moved
    # The run lock, as a run takes it: the pilot's answers are the run's to reuse.
    with (
        Checkpoint.open(job.output.checkpoint_path, job_name=job.name) as own,
        local_store(own, job) as ckpt,
    ):
        claim_endpoint(own, job, base_url, synthetic, moved)  # the pilot's answers are the run's
        counts = count_rows(table, builder, ckpt.lookup)
        spent = ckpt.spent_usd()
        sample = sample_rows(table, builder, ckpt.lookup, counts.to_send, size)
        result = run_pilot(job, ckpt, sample, base_url, api_key, synthetic)
        learned = ckpt.learned_limits()
    return Plan(job, counts, spent, checkpoint_exists=True, pilot=result, learned=learned)


# ---------------------------------------------------------------- the counting pass


# ---------------------------------------------------------------- rendering


def _render(plan: Plan) -> Iterator[str]:
    sent = "no request sent" if plan.pilot is None else f"{plan.pilot.sent} pilot requests sent"
    yield f"plan for job {plan.job.name!r} ({sent})"
    sections = [_count_rows(plan.counts), _cost_rows(plan)]
    if plan.pilot is not None:
        sections.append(_pilot_rows(plan.pilot))
    # One label and one value width for every section, so the figures line up.
    every = [row for section in [_setup_rows(plan), *sections] for row in section]
    width = max(len(label) for label, _, _ in every)
    value_width = max(len(value) for section in sections for _, value, _ in section)
    for label, value, note in _setup_rows(plan):
        yield f"  {label:<{width}}  {value}  {note}".rstrip()
    for index, section in enumerate(sections):
        yield ""
        for label, value, note in section:
            yield f"  {label:<{width}}  {value:>{value_width}}  {note}".rstrip()
        if index == 0:
            yield from (f"      {reason}" for reason in plan.counts.invalid_reasons)
    if (slow := plan.pacing_note) is not None:
        yield ""
        yield f"  slow: {slow}"


Row = tuple[str, str, str]


def _setup_rows(plan: Plan) -> list[Row]:
    job = plan.job
    ckpt = "" if plan.checkpoint_exists else " (none yet)"
    mct = f"max_completion_tokens {plan.max_completion_tokens}"
    return [
        ("model", job.request.model, mct),
        ("input", job.input.path, ""),
        ("output", job.output.path, ""),
        ("checkpoint", str(job.output.checkpoint_path), ckpt.strip()),
    ]


def _count_rows(counts: Counts) -> list[Row]:
    failed = f"{counts.done_failed} failed: re-sent only with --retry-failed"
    done = "in the checkpoint: not sent again"
    invalid = "never sent" + (f"; first {len(counts.invalid_reasons)}:" if counts.invalid else "")
    return [
        ("rows", f"{counts.rows:,}", ""),
        ("already answered", f"{counts.done:,}", failed if counts.done_failed else done),
        ("to send", f"{counts.to_send:,}", ""),
        ("  merged by dedupe", f"{counts.duplicates:,}", "identical requests, sent once"),
        ("  requests", f"{counts.requests:,}", "what is sent and paid for"),
        ("invalid", f"{counts.invalid:,}", invalid),
    ]


def _cost_rows(plan: Plan) -> list[Row]:
    counts, requests = plan.counts, max(plan.counts.requests, 1)
    seconds, bound = plan.time
    rows: list[Row] = [
        (
            "prompt tokens",
            f"{counts.prompt_tokens:,}",
            f"estimated, ~{counts.prompt_tokens // requests:,} per request",
        ),
        (
            "completion tokens",
            f"<= {plan.completion_tokens_max:,}",
            f"max_completion_tokens x {counts.requests:,} requests",
        ),
        ("cost low", _usd(plan.cost_low), "prompt tokens only, at the input price"),
    ]
    if plan.pilot is not None:
        rows.append(("cost expected", _usd(plan.cost_expected), "low + pilot's mean completion"))
    rows.append(("cost high", _usd(plan.cost_high), "every request uses max_completion_tokens"))
    rows.append(_budget_row(plan))
    if plan.job.limits.max_cost_usd is not None and plan.price is not None:
        rows.append(("budget assumes", _FACTORS, _FACTORS_NOTE))
    rows.append(("time", "unknown" if seconds is None else duration(seconds), _time_note(bound)))
    return rows


_FACTORS = "prompt x" + "/".join(f"{f:g}" for f in PRIOR_FACTORS.values())
_FACTORS_NOTE = (
    "prompt estimate x this for ASCII/mixed/wide (CJK) text until answers arrive,"
    f" then x the highest real/estimated ratio seen x{PROMPT_MARGIN:g}"
)


def _budget_row(plan: Plan) -> Row:
    budget = plan.job.limits.max_cost_usd
    if budget is None:
        return ("budget", "none", "no limits.max_cost_usd: spend is not capped")
    if plan.price is None:
        return ("budget", _usd(budget), "the model has no price")
    spent = f" (${plan.spent_usd:.4f} spent already)" if plan.spent_usd else ""
    return ("budget", _usd(budget), f"{plan.budget_verdict}{spent}")


def _time_note(bound: str) -> str:
    return bound if bound.startswith("unknown") else f"at least; bound by {bound}"


def _pilot_rows(pilot: Pilot) -> list[Row]:
    label = "pilot (SYNTHETIC: emulator)" if pilot.synthetic else "pilot"
    stopped = f"; stopped: {pilot.stopped}" if pilot.stopped else ""
    rows: list[Row] = [
        (label, f"{pilot.ok}/{pilot.sent} ok", f"{_usd(pilot.cost_usd)}{stopped}; checkpointed"),
    ]
    if pilot.mean_completion_tokens is not None:
        p95 = f"p95 {pilot.p95_completion_tokens:,}"
        rows.append(("completion tokens", f"{pilot.mean_completion_tokens:,.1f}", f"mean; {p95}"))
    error = pilot.prompt_estimate_error
    if error is not None:
        rows.append(("prompt estimate", f"{error:+.1%}", "vs the pilot's real prompt tokens"))
    rows.extend(("warning", "", line) for line in empty_columns(pilot.null_counts, pilot.ok))
    return rows


def _usd(amount: float | None) -> str:
    return "unpriced" if amount is None else f"${amount:,.4f}"
