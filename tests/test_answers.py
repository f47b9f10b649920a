"""The compact answers layout (m006): answers keep their own known charges, the index holds
8-byte key prefixes. Spend, row costs and unpriced usage stay what the old layout gave."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from batchrun._types import Charge, Request, Result
from batchrun.store.checkpoint import MIGRATIONS, Checkpoint, CheckpointReader
from batchrun.store.schema import now_iso

Item = tuple[Request, Result]
SAME_PREFIX = ["v1:" + "00" * 8 + tail * 48 for tail in "abc"]  # 3 keys, one index prefix


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def request(fingerprint: str) -> Request:
    return Request(fingerprint[-6:], {"messages": []}, fingerprint, 10, 5)


def answer(status: str, *charges: tuple[float, bool], cost: float | None = None) -> Result:
    paid = tuple(Charge(usd, known, at=1.0) for usd, known in charges)
    known = [usd for usd, is_known in charges if is_known]
    if cost is None and known:
        cost = sum(known)  # as the dispatcher prices a row: this run's known charges
    return Result(status=status, prompt_tokens=10, cost_usd=cost, attempts=len(paid), charges=paid)  # type: ignore[arg-type]


async def write(ckpt: Checkpoint, items: Sequence[Item]) -> None:
    send, receive = anyio.create_memory_object_stream[Item](16)
    async with anyio.create_task_group() as tg:
        tg.start_soon(ckpt.write_results, receive)
        async with send:
            for item in items:
                await send.send(item)


@pytest.mark.anyio
async def test_spend_after_retries_is_every_charge_and_row_cost_every_known_one(
    tmp_path: Path,
) -> None:
    a, b, c, d = (f"v1:{k}" for k in "abcd")
    with Checkpoint.open(tmp_path / "c.sqlite", job_name="j") as ckpt:
        await write(
            ckpt,
            [
                (request(a), answer("error", (0.5, True), (0.25, False))),
                (request(b), answer("ok", (1.0, True))),
                (request(c), answer("pending", (2.0, True), (4.0, False))),
                (request(d), answer("error", (8.0, False))),
            ],
        )
        # --retry-failed: a and d again; c answered at last; a once more in one commit
        await write(
            ckpt,
            [
                (request(a), answer("error", (16.0, True))),
                (request(c), answer("ok", (32.0, True))),
                (request(d), answer("ok", (64.0, True))),
                (request(a), answer("ok", (128.0, True))),
            ],
        )
        assert ckpt.spent_usd() == 255.75  # every charge once, exact in binary
        costs = {fp: ans.result.cost_usd for fp, ans in ckpt.lookup([a, b, c, d]).items()}
        assert ckpt.lookup([a])[a].result.status == "ok"
    # a: its known charges over all runs; c: first answered now (this run's, as before m006)
    assert costs == {a: 0.5 + 16.0 + 128.0, b: 1.0, c: 32.0, d: 64.0}
    assert sqlite3.connect(tmp_path / "c.sqlite").execute(
        "SELECT COUNT(*) FROM answers"
    ).fetchone() == (4,)


@pytest.mark.anyio
async def test_keys_sharing_an_index_prefix_are_told_apart(tmp_path: Path) -> None:
    first, second, never = SAME_PREFIX
    with Checkpoint.open(tmp_path / "c.sqlite", job_name="j") as ckpt:
        await write(ckpt, [(request(first), answer("error", (1.0, True)))])
        await write(ckpt, [(request(second), answer("ok", (2.0, True)))])
        await write(ckpt, [(request(first), answer("ok", (4.0, True)))])  # replaces first only
        found = ckpt.lookup(SAME_PREFIX)
        assert ckpt.answered(SAME_PREFIX) == {first, second}
        assert ckpt.answered(SAME_PREFIX, include_failed=False) == {first, second}
        assert ckpt.spent_usd() == 7.0
    assert {fp: a.owner_key for fp, a in found.items()} == {first: first[-6:], second: second[-6:]}
    assert found[first].result.cost_usd == 5.0 and found[second].result.cost_usd == 2.0
    with CheckpointReader.open(tmp_path / "c.sqlite", job_name="j") as reader:
        assert set(reader.lookup([never, second])) == {second}


# ---------------------------------------------------------------- an m005 file


def m005_file(path: Path) -> None:
    """A checkpoint as batchrun wrote it before m006: every charge a row of the table."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    for fn in MIGRATIONS[:5]:
        fn(conn)
        conn.execute("INSERT INTO _migrations VALUES (?, ?)", (fn.__name__, now_iso()))
    assert [fn.__name__ for fn in MIGRATIONS[:5]][-1] == "m005_done_batches"
    conn.execute("INSERT INTO meta VALUES ('job_name', 'j')")
    answers = [  # (key, status, cost_usd, prompt_tokens)
        (b"a", "ok", 0.75, 10),  # retried: two known charges
        (b"b", "error", None, 10),  # no usage came back: a worst-case charge
        (b"u", "ok", None, 7),  # stored while the model had no price
    ]
    conn.executemany(
        "INSERT INTO answers (fingerprint, owner_key, status, cost_usd, prompt_tokens, attempts)"
        " VALUES (?, ?, ?, ?, ?, 1)",
        [(k, k.decode(), s, c, p) for k, s, c, p in answers],
    )
    charges = [(b"a", 0.25, 1), (b"a", 0.5, 1), (b"b", 2.0, 0), (b"p", 4.0, 1)]  # p: pending
    conn.executemany("INSERT INTO charges VALUES (?, ?, ?, 0)", charges)
    conn.close()


@pytest.mark.anyio
async def test_an_m005_checkpoint_keeps_its_spend_costs_and_usage_when_migrated(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite"
    m005_file(path)
    fps = ["a", "b", "u", "p"]
    with CheckpointReader.open(path, job_name="j") as reader:  # plan, before any run
        before = (reader.spent_usd(), reader.unpriced_usage(), reader.lookup(fps))
    assert before[0] == 6.75 and before[1] == (7, 0, 0) and set(before[2]) == {"a", "b", "u"}

    with Checkpoint.open(path, job_name="j") as ckpt:
        assert (ckpt.spent_usd(), ckpt.unpriced_usage(), ckpt.lookup(fps)) == before
        await write(ckpt, [(request("a"), answer("ok", (1.0, True)))])  # a retry after it
        assert ckpt.spent_usd() == 7.75
        assert ckpt.lookup(["a"])["a"].result.cost_usd == 1.75  # 0.25 + 0.5 + 1.0
    applied = sqlite3.connect(path).execute("SELECT name FROM _migrations ORDER BY rowid")
    names = [name for (name,) in applied]
    assert "m006_compact_answers" in names and "m008_synthetic_answers" in names
    assert names[-1] == "m009_reasks"
