"""The event loop every pipeline run uses (local engine, Ray worker, plan's pilot)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.util import find_spec
from typing import TypeVar, TypeVarTuple

import anyio

from batchrun._errors import FatalApiError, JobError

T = TypeVar("T")
Args = TypeVarTuple("Args")

# For ``anyio.run``: uvloop (a dependency everywhere but Windows) takes
# about 6% off the dispatcher's CPU per request (8 paired rounds, 3,000 requests each).
EVENT_LOOP: dict[str, bool] = {"use_uvloop": find_spec("uvloop") is not None}


def run_async(fn: Callable[[*Args], Awaitable[T]], *args: *Args) -> T:
    """``anyio.run`` on ``EVENT_LOOP``; a task group's error surfaces as the first of
    batchrun's own (``FatalApiError``, ``JobError``) it holds, not as a group."""
    try:
        return anyio.run(fn, *args, backend_options=EVENT_LOOP)
    except BaseExceptionGroup as group:
        raise first_batchrun_error(group) from None


def first_batchrun_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Task groups wrap errors; a run surfaces the first one of ours (or the group)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_batchrun_error(exc)
        if isinstance(exc, FatalApiError | JobError):
            return exc
    return group
