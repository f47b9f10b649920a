"""The check behind re-asks: what is wrong with an ok answer, by the job's columns and rules
(the same parse ``output.table.parse_status`` applies to the row's last answer)."""

from __future__ import annotations

from batchrun._types import Result
from batchrun.job.config import Job
from batchrun.output.parse import parse_response
from batchrun.send.reask import Check


def answer_check(job: Job) -> Check | None:
    """None unless the job re-asks (``request.reask``) answers parsed into columns."""
    out = job.output
    if not job.request.reask or out.parse != "json" or not out.columns:
        return None
    columns, rules = out.columns, out.rules

    def check(result: Result) -> str | None:
        return parse_response(result.response, columns, rules).error

    return check
