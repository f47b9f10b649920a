"""The checkpoint's write-ahead record (``store.intents``) on a real SQLite file."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from batchrun._types import Charge, Request, RequestResult, Result
from batchrun.store.checkpoint import Checkpoint
from batchrun.store.intents import IntentLog, WriterClosedError

WORST, REAL = 0.5, 0.125


def _request(key: str) -> Request:
    return Request(key, {}, f"v1:{key}", 10, 10)


def _open(tmp_path: Path) -> Checkpoint:
    return Checkpoint.open(tmp_path / "ckpt.sqlite", job_name="intents")


async def _with_writer(ckpt: Checkpoint, body) -> None:  # type: ignore[no-untyped-def]
    send, receive = anyio.create_memory_object_stream[RequestResult](16)
    intents = IntentLog()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ckpt.write_results, receive, None, intents)
        async with send:
            await body(intents, send)


def test_an_attempt_counts_at_its_worst_case_from_before_it_is_sent_until_it_settles(
    tmp_path: Path,
) -> None:
    seen: list[float] = []

    async def body(intents: IntentLog, send) -> None:  # type: ignore[no-untyped-def]
        intent = await intents.hold("v1:a", WORST, 1.0)
        seen.append(ckpt.spent_usd())  # committed before hold returned: before the send
        answer = Result("ok", charges=(Charge(REAL, True, 2.0, intent.id),))
        await send.send((_request("a"), answer))

    with _open(tmp_path) as ckpt:
        anyio.run(_with_writer, ckpt, body)
        assert seen == [WORST]
        assert ckpt.spent_usd() == REAL  # the answer's commit replaced the intent


def test_an_unsettled_attempt_counts_at_its_worst_case_in_the_next_run(tmp_path: Path) -> None:
    async def body(intents: IntentLog, send) -> None:  # type: ignore[no-untyped-def]
        await intents.hold("v1:a", WORST, 1.0)  # sent, never answered (the run stops)
        unbilled = await intents.hold("v1:b", WORST, 1.0)
        intents.release(unbilled)  # a 429: nothing billed

    with _open(tmp_path) as ckpt:
        anyio.run(_with_writer, ckpt, body)
    with _open(tmp_path) as ckpt:
        assert ckpt.spent_usd() == WORST


def test_a_hold_cancelled_before_its_commit_leaves_nothing(tmp_path: Path) -> None:
    async def body(intents: IntentLog, send) -> None:  # type: ignore[no-untyped-def]
        with anyio.CancelScope() as scope:
            scope.cancel()
            await intents.hold("v1:a", WORST, 1.0)
        await intents.hold("v1:b", 0.0, 1.0)  # one more commit: the release is written

    with _open(tmp_path) as ckpt:
        anyio.run(_with_writer, ckpt, body)
        assert ckpt.spent_usd() == 0.0


def test_nothing_is_held_once_the_writer_has_ended() -> None:
    async def main() -> None:
        intents = IntentLog()
        intents.close()
        with pytest.raises(WriterClosedError):
            await intents.hold("v1:a", WORST, 1.0)

    anyio.run(main)
