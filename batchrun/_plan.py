"""``batchrun plan``: what a job will send, cost and take, before anything is sent.

    job -> prepare (run's own checks) -> stream the input once, read-only checkpoint
        -> counts and estimated prompt tokens -> cost range (pricing), time (limits)
    --pilot N -> N sampled requests through the real Pipeline (run lock, checkpoint)
        -> real completion tokens -> expected cost inside the range

Without ``--pilot`` nothing is sent and no API key is needed: the checkpoint is
read without the run lock (a live run may be writing it), and no checkpoint or
output is created.

Memory: the one pass keeps 12 bytes per row to send (a 64-bit slice of its
fingerprint plus its token estimate) to count the requests dedupe merges, so
100 million rows to send need about 1.2 GB; a run itself needs none of that.

The pilot sends the rows that sit at the centres of N equal slices of the rows
to send, not the first N: inputs are often sorted (by date, product, length),
and the first rows would speak for one corner of the table only.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from batchrun._advice import duration, lowest, reservation_note, wall_time
from batchrun._budget import PRIOR_FACTORS, PROMPT_MARGIN, Budget, result_cost
from batchrun._checkpoint import Checkpoint
from batchrun._config import Job, Price
from batchrun._dispatch import EVENT_LOOP, Dispatcher, DispatchOutcome
from batchrun._errors import JobError
from batchrun._input import InputTable
from batchrun._jobfile import load_job
from batchrun._keptlimits import KeptLimits
from batchrun._requests import RequestBuilder, built_batches
from batchrun._runner import (
    EMULATOR_KEY,
    Pipeline,
    _first_batchrun_error,
    emulated_job,
    prepare,
)
from batchrun._store import JobStore, local_store, read_only_store
from batchrun._types import Answer, Request, Result

__all__ = ["Counts", "Pilot", "Plan", "plan_job", "plan_job_file"]

log = logging.getLogger("batchrun")

INVALID_SHOWN = 5
"""How many invalid rows' reasons a plan quotes."""
_MILLION = 1_000_000

Lookup = Callable[[Sequence[str]], Mapping[str, Answer]]


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Counts:
    """What one pass over the input found.

    ``done`` rows already have an answer for their current request (``done_failed``
    of them a failed one, which a run re-sends only with ``--retry-failed``);
    ``to_send`` rows need one; ``requests`` is how many distinct requests those
    are (dedupe sends identical requests once); ``prompt_tokens`` is the estimate
    summed over those requests.
    """

    rows: int = 0
    done: int = 0
    done_failed: int = 0
    invalid: int = 0
    invalid_reasons: tuple[str, ...] = ()
    to_send: int = 0
    requests: int = 0
    prompt_tokens: int = 0

    @property
    def duplicates(self) -> int:
        """Rows to send that share another row's request (answered once, paid once)."""
        return self.to_send - self.requests


@dataclass(frozen=True)
class Pilot:
    """What the pilot's real answers showed."""

    sent: int
    ok: int
    mean_completion_tokens: float | None
    p95_completion_tokens: int | None
    prompt_tokens: int
    est_prompt_tokens: int
    mean_latency_ms: float | None
    cost_usd: float | None
    stopped: str | None
    synthetic: bool

    @property
    def prompt_estimate_error(self) -> float | None:
        """(estimated - real) / real prompt tokens over the pilot's ok answers."""
        if not self.prompt_tokens:
            return None
        return (self.est_prompt_tokens - self.prompt_tokens) / self.prompt_tokens


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


def plan_job_file(
    path: str | Path,
    *,
    sets: Sequence[str] = (),
    variables: Sequence[str] = (),
    pilot: int | None = None,
    emulate: bool = False,
) -> Plan:
    """Load a job file and plan it (``batchrun plan``)."""
    job = load_job(path, sets=sets, variables=variables)
    return plan_job(job, pilot=pilot, emulate=emulate)


def plan_job(
    job: Job,
    *,
    pilot: int | None = None,
    emulate: bool = False,
    base_url: str | None = None,
    api_key: str | None = None,
) -> Plan:
    """Count, estimate and price ``job`` without sending; ``pilot=N`` sends N sampled rows.

    Raises what ``run`` raises before sending (``JobError``, ``InputError``);
    with a pilot also ``LockedError`` (a run is going) and ``FatalApiError``.

    >>> plan = plan_job(load_job("jobs/demo.toml"))  # doctest: +SKIP
    >>> plan.counts.requests, plan.cost_high  # doctest: +SKIP
    (297, 0.80...)
    """
    table, builder = prepare(job)
    if pilot is None:
        return _dry_plan(job, table, builder)
    if emulate:
        from batchrun._emulator import EmulatorProcess

        job = emulated_job(job)
        with EmulatorProcess([]) as emu:
            return _pilot_plan(job, table, builder, pilot, emu.base_url, EMULATOR_KEY, True)
    key = api_key or _api_key(job)
    return _pilot_plan(job, table, builder, pilot, base_url, key, False)


def _dry_plan(job: Job, table: InputTable, builder: RequestBuilder) -> Plan:
    # Both engines' files: the local checkpoint and the Ray workers' (batchrun._store).
    with read_only_store(job) as store:
        if not store.exists:
            return Plan(job, _count(table, builder, None), 0.0, checkpoint_exists=False)
        counts = _count(table, builder, store.lookup)
        spent, learned = store.spent_usd(), store.learned_limits()
        return Plan(job, counts, spent, checkpoint_exists=True, learned=learned)


def _pilot_plan(
    job: Job,
    table: InputTable,
    builder: RequestBuilder,
    size: int,
    base_url: str | None,
    api_key: str,
    synthetic: bool,
) -> Plan:
    # The run lock, as a run takes it: the pilot's answers are the run's to reuse.
    with (
        Checkpoint.open(job.output.checkpoint_path, job_name=job.name) as own,
        local_store(own, job) as ckpt,
    ):
        counts = _count(table, builder, ckpt.lookup)
        spent = ckpt.spent_usd()
        sample = _sample(table, builder, ckpt.lookup, counts.to_send, size)
        _announce(job, len(sample), base_url, synthetic)
        stopped = _send(job, ckpt, sample, base_url, api_key)
        result = _pilot_result(job, sample, ckpt.lookup(_fingerprints(sample)), stopped, synthetic)
        learned = ckpt.learned_limits()
    return Plan(job, counts, spent, checkpoint_exists=True, pilot=result, learned=learned)


def _api_key(job: Job) -> str:
    name = job.api.api_key_env
    key = os.environ.get(name, "").strip()
    if not key:
        raise JobError(
            f"api.api_key_env: environment variable {name} is not set or empty"
            " (a pilot sends real requests; plan without --pilot needs no key)"
        )
    return key


# ---------------------------------------------------------------- the counting pass


def _items(table: InputTable, builder: RequestBuilder) -> Iterator[list[Request | Result]]:
    for _, items in built_batches(table, builder):
        yield items


class _Tally:
    """Running counts over batches; distinct requests found once at the end."""

    def __init__(self) -> None:
        self.rows = self.done = self.done_failed = self.invalid = 0
        self.reasons: list[str] = []
        self.hashes: list[np.ndarray] = []
        self.tokens: list[np.ndarray] = []

    def add(self, items: list[Request | Result], lookup: Lookup | None) -> None:
        self.rows += len(items)
        requests = [item for item in items if isinstance(item, Request)]
        self._add_invalid([item for item in items if isinstance(item, Result)])
        done = lookup([r.fingerprint for r in requests]) if lookup and requests else {}
        fresh = [r for r in requests if r.fingerprint not in done]
        self.done += len(requests) - len(fresh)
        self.done_failed += sum(
            done[r.fingerprint].result.status != "ok" for r in requests if r.fingerprint in done
        )
        # 64 bits of a sha256 tell requests apart: at 100M rows a collision is ~3e-4 likely.
        self.hashes.append(np.array([int(r.fingerprint[3:19], 16) for r in fresh], np.uint64))
        self.tokens.append(np.array([r.est_prompt_tokens for r in fresh], np.int32))

    def _add_invalid(self, invalid: list[Result]) -> None:
        self.invalid += len(invalid)
        room = INVALID_SHOWN - len(self.reasons)
        self.reasons += [r.error_message or "invalid" for r in invalid[:room]]

    def counts(self) -> Counts:
        hashes = np.concatenate(self.hashes) if self.hashes else np.empty(0, np.uint64)
        tokens = np.concatenate(self.tokens) if self.tokens else np.empty(0, np.int32)
        _, first = np.unique(hashes, return_index=True)
        return Counts(
            rows=self.rows,
            done=self.done,
            done_failed=self.done_failed,
            invalid=self.invalid,
            invalid_reasons=tuple(self.reasons),
            to_send=len(hashes),
            requests=len(first),
            prompt_tokens=int(tokens[first].sum(dtype=np.int64)),
        )


def _count(table: InputTable, builder: RequestBuilder, lookup: Lookup | None) -> Counts:
    tally = _Tally()
    for items in _items(table, builder):
        tally.add(items, lookup)
    return tally.counts()


# ---------------------------------------------------------------- the pilot


def _sample(
    table: InputTable,
    builder: RequestBuilder,
    lookup: Lookup,
    to_send: int,
    size: int,
) -> list[Request]:
    """The rows to send at the centres of ``size`` equal slices of them, in input order."""
    size = min(size, to_send)
    wanted = {(2 * j + 1) * to_send // (2 * size) for j in range(size)}
    picked: dict[str, Request] = {}  # by fingerprint: a duplicate is one request
    ordinal = 0
    for items in _items(table, builder):
        requests = [item for item in items if isinstance(item, Request)]
        done = lookup([r.fingerprint for r in requests]) if requests else {}
        for request in requests:
            if request.fingerprint in done:
                continue
            if ordinal in wanted:
                picked.setdefault(request.fingerprint, request)
            ordinal += 1
        if ordinal > max(wanted, default=-1):
            break
    return list(picked.values())


def _announce(job: Job, count: int, base_url: str | None, synthetic: bool) -> None:
    if not count:
        log.warning("PILOT: every row is answered or invalid already; nothing sent")
        return
    where = base_url or job.api.base_url
    if synthetic:
        log.warning(
            "PILOT on the built-in emulator (%s): sending %d requests; answers are SYNTHETIC"
            " and are kept in the checkpoint %s",
            where,
            count,
            job.output.checkpoint_path,
        )
    else:
        log.warning(
            "PILOT: sending %d REAL, BILLED requests to %s; answers are kept in the"
            " checkpoint %s, so the run will not pay for them again",
            count,
            where,
            job.output.checkpoint_path,
        )


def _send(
    job: Job, ckpt: JobStore, sample: list[Request], base_url: str | None, api_key: str
) -> str | None:
    """Answer ``sample`` through the run's own pipeline; returns why it stopped, if it did."""
    if not sample:
        return None
    budget = None
    if job.limits.max_cost_usd is not None and job.price is not None:
        budget = Budget(job.limits.max_cost_usd, job.price, ckpt.spent_usd())
    dispatcher = Dispatcher(job, api_key=api_key, base_url=base_url, budget=budget)
    kept = ckpt.learned_limits()
    dispatcher.learned.rpm, dispatcher.learned.tpm = kept.rpm, kept.tpm
    batches: list[list[Request | Result]] = [list(sample)]

    async def answer() -> DispatchOutcome:
        # Built inside the event loop: the pipeline may hold loop-bound state.
        return await Pipeline(job, ckpt, dispatcher).run(batches)

    try:
        outcome = anyio.run(answer, backend_options=EVENT_LOOP)
    except BaseExceptionGroup as group:
        raise _first_batchrun_error(group) from None
    finally:
        ckpt.keep_learned_limits(dispatcher.learned.rpm, dispatcher.learned.tpm)
    return outcome.stopped


def _fingerprints(requests: Sequence[Request]) -> list[str]:
    return [r.fingerprint for r in requests]


def _pilot_result(
    job: Job,
    sample: list[Request],
    answers: Mapping[str, Answer],
    stopped: str | None,
    synthetic: bool,
) -> Pilot:
    ok = [(r, answers[r.fingerprint].result) for r in sample if r.fingerprint in answers]
    ok = [(r, result) for r, result in ok if result.status == "ok"]
    completions = sorted(result.completion_tokens or 0 for _, result in ok)
    latencies = [result.latency_ms for _, result in ok if result.latency_ms is not None]
    costs = [result_cost(job.price, result) for _, result in ok]
    return Pilot(
        sent=len(sample),
        ok=len(ok),
        mean_completion_tokens=sum(completions) / len(ok) if ok else None,
        p95_completion_tokens=_p95(completions),
        prompt_tokens=sum(result.prompt_tokens or 0 for _, result in ok),
        est_prompt_tokens=sum(r.est_prompt_tokens for r, _ in ok),
        mean_latency_ms=sum(latencies) / len(latencies) if latencies else None,
        cost_usd=None if job.price is None else sum(c or 0.0 for c in costs),
        stopped=stopped,
        synthetic=synthetic,
    )


def _p95(ordered: Sequence[int]) -> int | None:
    """Nearest-rank 95th percentile of sorted values."""
    if not ordered:
        return None
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


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
    return rows


def _usd(amount: float | None) -> str:
    return "unpriced" if amount is None else f"${amount:,.4f}"
