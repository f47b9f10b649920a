"""The figures a plan rests on: one counting pass over the input, and the pilot.

The counting pass streams the input once against the checkpoint. Memory: it keeps
12 bytes per row to send (a 64-bit slice of its fingerprint plus its token estimate)
to count the requests dedupe merges, so 100 million rows to send need about 1.2 GB;
a run itself needs none of that.

The pilot sends the rows that sit at the centres of N equal slices of the rows to
send, not the first N: inputs are often sorted (by date, product, length), and the
first rows would speak for one corner of the table only. It sends them through the
run's own ``Pipeline`` into the run's checkpoint, so the run does not pay for them again.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from batchrun._types import Answer, Request, Result
from batchrun.engines.base import budget_for, learned_limits_kept
from batchrun.engines.loop import run_async
from batchrun.engines.pipeline import Pipeline
from batchrun.io.input import InputTable
from batchrun.job.config import Job
from batchrun.output.check import answer_check
from batchrun.output.empty import count_nulls
from batchrun.output.parse import parse_response
from batchrun.output.table import Lookup
from batchrun.send.budget import result_cost
from batchrun.send.dispatch import Dispatcher, DispatchOutcome
from batchrun.send.requests import RequestBuilder, built_batches
from batchrun.store.jobstore import JobStore

__all__ = ["INVALID_SHOWN", "Counts", "Pilot", "count_rows", "run_pilot", "sample_rows"]

log = logging.getLogger("batchrun")

INVALID_SHOWN = 5
"""How many invalid rows' reasons a plan quotes."""


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
    null_counts: dict[str, int] = field(default_factory=dict)  # parsed column -> null ok rows

    @property
    def prompt_estimate_error(self) -> float | None:
        """(estimated - real) / real prompt tokens over the pilot's ok answers."""
        if not self.prompt_tokens:
            return None
        return (self.est_prompt_tokens - self.prompt_tokens) / self.prompt_tokens


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


def count_rows(table: InputTable, builder: RequestBuilder, lookup: Lookup | None) -> Counts:
    tally = _Tally()
    for items in _items(table, builder):
        tally.add(items, lookup)
    return tally.counts()


# ---------------------------------------------------------------- the pilot


def run_pilot(
    job: Job,
    ckpt: JobStore,
    sample: list[Request],
    base_url: str | None,
    api_key: str,
    synthetic: bool,
) -> Pilot:
    """Send ``sample`` (see ``sample_rows``) and sum up what its answers showed."""
    _announce(job, len(sample), base_url, synthetic)
    stopped = _send(job, ckpt, sample, base_url, api_key)
    return _pilot_result(job, sample, ckpt.lookup(_fingerprints(sample)), stopped, synthetic)


def sample_rows(
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
        log.warning(
            "PILOT: every row is answered or invalid already; nothing sent",
            extra={"event": "pilot_nothing_to_send"},
        )
        return
    where = base_url or job.api.base_url
    if synthetic:
        log.warning(
            "PILOT on the built-in emulator (%s): sending %d requests; answers are SYNTHETIC"
            " and are kept in the checkpoint %s",
            where,
            count,
            job.output.checkpoint_path,
            extra={"event": "pilot_emulated"},
        )
    else:
        log.warning(
            "PILOT: sending %d REAL, BILLED requests to %s; answers are kept in the"
            " checkpoint %s, so the run will not pay for them again",
            count,
            where,
            job.output.checkpoint_path,
            extra={"event": "pilot_real"},
        )


def _send(
    job: Job, ckpt: JobStore, sample: list[Request], base_url: str | None, api_key: str
) -> str | None:
    """Answer ``sample`` through the run's own pipeline; returns why it stopped, if it did."""
    if not sample:
        return None
    budget = budget_for(job, ckpt.spent_usd())
    dispatcher = Dispatcher(
        job, api_key=api_key, base_url=base_url, budget=budget, check=answer_check(job)
    )
    batches: list[list[Request | Result]] = [list(sample)]

    async def answer() -> DispatchOutcome:
        # Built inside the event loop: the pipeline may hold loop-bound state.
        return await Pipeline(job, ckpt, dispatcher).run(batches)

    with learned_limits_kept(ckpt, dispatcher):
        outcome = run_async(answer)
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
        null_counts=_null_counts(job, [result for _, result in ok]),
    )


def _null_counts(job: Job, results: Sequence[Result]) -> dict[str, int]:
    """Nulls per parsed column over the ok answers (a pilot's answers are parsed here)."""
    counts: Counter[str] = Counter()
    if job.output.parse != "json" or not job.output.columns:
        return {}
    for result in results:
        parsed = parse_response(result.response, job.output.columns, job.output.rules)
        if parsed.values is not None:
            count_nulls(counts, job.output.columns, parsed.values)
    return dict(counts)


def _p95(ordered: Sequence[int]) -> int | None:
    """Nearest-rank 95th percentile of sorted values."""
    if not ordered:
        return None
    return ordered[math.ceil(0.95 * len(ordered)) - 1]
