"""Input batches the checkpoint has every answer for, so a resume skips them unbuilt.

A resume used to render and hash every row to learn that its answer was stored (about
14 s per million rows before its first new request). When the output pass finds every
request of an input batch answered, the batch's digest is recorded; a later run that
meets a batch with a recorded digest counts its rows as reused without building them.

The digest covers what a row's request is made of: the job's ``[request]`` section and
``input.id_column`` (``request_key``; not the API URL, limits or output, which a resume
may change), the batchrun version (how requests are built), the batch's position (row
keys may be positions) and schema, and every Arrow buffer of its columns.
An edited row, template or model changes it, and the batch is built row by row again,
so exactly the rows whose request changed are sent. A different batching of the same
rows only misses (rows are then checked one by one, as before), never skips wrongly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from batchrun._version import __version__
from batchrun.job.config import Job
from batchrun.job.examples import example_turns

__all__ = [
    "WRITTEN_FROM_KEY",
    "DoneBatch",
    "batch_digest",
    "m005_done_batches",
    "output_state",
    "request_key",
]


@dataclass(frozen=True, slots=True)
class DoneBatch:
    """A batch with every request answered: what a skip adds to the run's counts."""

    digest: bytes
    requests: int
    invalid: int
    errors: bool  # some answer is an error: --retry-failed builds the batch again


def request_key(job: Job) -> str:
    """What of ``job`` its requests and row keys are built from, as text."""
    what: dict[str, Any] = {
        "request": dataclasses.asdict(job.request),
        "id_column": job.input.id_column,
    }
    if job.request.examples is not None:  # the turns, so a changed file counts as a change
        what["examples"] = example_turns(
            job.request.examples, job.request.prompt, job.input.delimiter
        )
    return json.dumps(what, sort_keys=True, default=repr)


def batch_digest(batch: pa.RecordBatch, start: int, request_key: str) -> bytes:
    """32 bytes naming the rows of ``batch`` (first row at ``start``) under this job
    (``request_key(job)``)."""
    digest = hashlib.blake2b(digest_size=32)
    for text in (__version__, request_key):
        digest.update(text.encode() + b"\0")
    digest.update(start.to_bytes(8, "little") + batch.num_rows.to_bytes(8, "little"))
    digest.update(batch.schema.serialize())
    for column in batch.columns:
        _feed(digest, column)
    return digest.digest()


def _feed(digest: Any, array: pa.Array[Any]) -> None:
    # Whole buffers with the offset: a slice hashes more bytes than its own, which only
    # makes two layouts of the same rows differ (a miss), never two different rows agree.
    digest.update(array.offset.to_bytes(8, "little"))
    for buffer in array.buffers():
        if buffer is None:
            digest.update(b"-")
        else:
            digest.update(len(buffer).to_bytes(8, "little"))
            digest.update(buffer)
    if isinstance(array, pa.DictionaryArray):  # buffers() holds only the indices
        _feed(digest, array.dictionary)


def m005_done_batches(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE done_batches (digest BLOB PRIMARY KEY, requests INTEGER NOT NULL,"
        " invalid INTEGER NOT NULL, errors INTEGER NOT NULL) WITHOUT ROWID"
    )


WRITTEN_FROM_KEY = "batchrun.written_from"
"""The output's metadata key naming the state it was written from (``output_state``)."""


def output_state(job: Job, digests: Iterable[bytes], *, synthetic: bool, commits: int) -> str:
    """Hex digest of what an output holds when every input batch was done: the done
    batches' digests in order, the checkpoint's count of answer commits (an answer
    replaced after the output was written, say by a ``--retry-failed`` killed before its
    output pass, leaves every batch done but changes the count), and what turns answers
    into the output's columns (the
    config hash covers template, model, pricing, output columns and prefix; both are
    named again so a change of hashing never hides them). A rerun that skipped every
    batch computes the same value only if nothing the output depends on changed."""
    digest = hashlib.blake2b(digest_size=32)
    pricing = {model: dataclasses.asdict(price) for model, price in job.pricing.items()}
    what = [__version__, job.name, job.config_hash, job.output.prefix, synthetic, pricing, commits]
    digest.update(json.dumps(what, sort_keys=True, default=repr).encode() + b"\0")
    for done in digests:
        digest.update(done)
    return digest.hexdigest()
