"""The output Parquet: schema, answers, cost, parsing, prefix and atomic replacement."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchrun._errors import JobError
from batchrun._types import Answer, Request, Result
from batchrun.io.input import open_input
from batchrun.job.config import InputConfig, Job, OutputConfig, Price, RequestConfig
from batchrun.output.owners import Owners
from batchrun.output.parse import parse_response
from batchrun.output.table import OutputStats, check_columns, parse_status, write_output
from batchrun.send.requests import RequestBuilder

PRICE = Price(input=1.25, cached_input=0.125, output=10.0)
DONE = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

RESULT_SCHEMA = [
    ("response", pa.string()),
    ("reasoning_content", pa.string()),
    ("tool_calls", pa.string()),
    ("finish_reason", pa.string()),
    ("model", pa.string()),
    ("response_id", pa.string()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("total_tokens", pa.int64()),
    ("cached_tokens", pa.int64()),
    ("reasoning_tokens", pa.int64()),
    ("cost_usd", pa.float64()),
    ("status", pa.string()),
    ("error_type", pa.string()),
    ("error_message", pa.string()),
    ("attempts", pa.int32()),
    ("latency_ms", pa.float64()),
    ("completed_at", pa.timestamp("us", tz="UTC")),
    ("reasks", pa.int32()),  # follow-up turns (request.reask), after the result columns
    ("cut_off_retried", pa.bool_()),  # sent again with request.cut_off_retry_tokens
    ("shared", pa.bool_()),  # after the result columns (and after parsed ones)
    ("synthetic", pa.bool_()),
]


def make_job(input_path: Path, out: Path, **output: Any) -> Job:
    return Job(
        name="t",
        input=InputConfig(path=str(input_path), id_column="id"),
        request=RequestConfig(model="gpt-5.5", prompt="Label: {text}"),
        output=OutputConfig(path=str(out), **output),
        pricing={"gpt-5.5": PRICE},
    )


def ok(response: str = "fine", **usage: Any) -> Result:
    fields = {"prompt_tokens": 1000, "completion_tokens": 100, "cached_tokens": 200}
    fields.update(usage)
    total = fields["prompt_tokens"] + fields["completion_tokens"]
    # Priced as the dispatcher prices it when the answer arrives; the output only reads it.
    cost = PRICE.cost(fields["prompt_tokens"], fields["cached_tokens"], fields["completion_tokens"])
    return Result(
        cost_usd=cost,
        status="ok",
        response=response,
        finish_reason="stop",
        model="gpt-5.5-2026",
        response_id="resp-1",
        total_tokens=total,
        reasoning_tokens=10,
        attempts=2,
        latency_ms=812.5,
        completed_at=DONE,
        **fields,
    )


class Answers:
    """A stand-in for the checkpoint: answers by row key, served by fingerprint."""

    def __init__(self, job: Job, by_key: Mapping[str, Answer]) -> None:
        table = open_input(job)
        builder = RequestBuilder(job, table.schema)
        self.by_fp: dict[str, Answer] = {}
        for batch in table.batches():
            for item in builder.build(batch, 0):
                if isinstance(item, Request) and item.key in by_key:
                    self.by_fp[item.fingerprint] = by_key[item.key]

    def __call__(self, fingerprints: Sequence[str]) -> dict[str, Answer]:
        return {fp: self.by_fp[fp] for fp in fingerprints if fp in self.by_fp}


def run(job: Job, answers: Mapping[str, Answer], **kwargs: Any) -> tuple[pa.Table, OutputStats]:
    table = open_input(job)
    builder = RequestBuilder(job, table.schema)
    metadata = {"batchrun.job": job.name}
    stats = write_output(job, table, builder, Answers(job, answers), metadata, **kwargs)
    return pq.read_table(job.output.path), stats


@pytest.fixture
def csv_input(tmp_path: Path) -> Path:
    path = tmp_path / "in.csv"
    path.write_text("id,text\na,good\nb,\nc,bad\nd,good\n")
    return path


def test_csv_round_trip_schema_column_by_column(csv_input: Path, tmp_path: Path) -> None:
    job = make_job(csv_input, tmp_path / "out" / "o.parquet")
    table, _ = run(job, {"a": Answer("a", ok())})
    expected = [("id", pa.string()), ("text", pa.string()), *RESULT_SCHEMA]
    assert [(f.name, f.type) for f in table.schema] == expected
    assert table.column("text").to_pylist() == ["good", None, "bad", "good"]


def test_parquet_round_trip_keeps_input_types(tmp_path: Path) -> None:
    source = pa.table(
        {
            "score": pa.array([0.5], pa.float32()),
            "id": pa.array([7], pa.int64()),
            "tags": pa.array([["x", "y"]], pa.list_(pa.string())),
            "text": ["hi"],
        }
    )
    pq.write_table(source, tmp_path / "in.parquet")
    job = make_job(tmp_path / "in.parquet", tmp_path / "o.parquet")
    table, _ = run(job, {})
    assert table.schema.names[:4] == ["score", "id", "tags", "text"]
    assert [f.type for f in table.schema][:4] == [f.type for f in source.schema]
    assert [(f.name, f.type) for f in table.schema][4:] == RESULT_SCHEMA
    assert table.slice(0, 1).select([0, 1, 2, 3]).to_pylist() == source.to_pylist()


def test_answers_pending_and_invalid_rows(csv_input: Path, tmp_path: Path) -> None:
    job = make_job(csv_input, tmp_path / "o.parquet")
    table, stats = run(job, {"c": Answer("c", ok())})
    rows = table.to_pylist()
    assert [r["status"] for r in rows] == ["pending", "invalid", "ok", "pending"]
    assert rows[1]["error_type"] == "invalid_row"
    assert rows[1]["error_message"] == "row 'b': prompt has no content (text is null)"
    ok_row = rows[2]
    assert ok_row["response"] == "fine" and ok_row["model"] == "gpt-5.5-2026"
    assert (ok_row["prompt_tokens"], ok_row["cached_tokens"], ok_row["completion_tokens"]) == (
        1000,
        200,
        100,
    )
    assert ok_row["attempts"] == 2 and ok_row["latency_ms"] == 812.5
    assert ok_row["completed_at"] == DONE
    assert stats.by_status == {"pending": 2, "invalid": 1, "ok": 1}


def test_cost_matches_hand_computed_value(csv_input: Path, tmp_path: Path) -> None:
    job = make_job(csv_input, tmp_path / "o.parquet")
    table, stats = run(job, {"c": Answer("c", ok())})
    # (1000 - 200) * 1.25 + 200 * 0.125 + 100 * 10 = 2025 micro-dollars
    assert table.column("cost_usd").to_pylist()[2] == pytest.approx(0.002025)
    assert stats.cost_usd == pytest.approx(0.002025)
    assert table.column("cost_usd").to_pylist()[:2] == [None, None]  # pending, invalid


def test_unpriced_model_has_null_cost(csv_input: Path, tmp_path: Path) -> None:
    job = dataclasses.replace(make_job(csv_input, tmp_path / "o.parquet"), pricing={})
    assert job.price is None
    table, stats = run(job, {"c": Answer("c", ok())})
    assert table.column("cost_usd").to_pylist() == [None] * 4
    assert stats.cost_usd is None


def test_shared_answer_has_no_attempts_and_no_cost(csv_input: Path, tmp_path: Path) -> None:
    job = make_job(csv_input, tmp_path / "o.parquet")
    shared = Answer("a", ok())
    table, stats = run(job, {"a": shared, "d": shared})  # a and d send the same body
    a, d = table.to_pylist()[0], table.to_pylist()[3]
    assert (a["attempts"], a["cost_usd"]) == (2, pytest.approx(0.002025))
    assert (d["attempts"], d["cost_usd"]) == (0, 0.0)
    assert d["response"] == a["response"] and d["prompt_tokens"] == a["prompt_tokens"] == 1000
    assert stats.shared_rows == 1 and stats.prompt_tokens == 1000


def test_error_answer_is_written_as_is(csv_input: Path, tmp_path: Path) -> None:
    failed = Result(
        status="error", error_type="http_400", error_message="bad", attempts=1, cost_usd=0.0
    )
    table, _ = run(make_job(csv_input, tmp_path / "o.parquet"), {"a": Answer("a", failed)})
    row = table.to_pylist()[0]
    assert (row["status"], row["error_type"], row["error_message"]) == ("error", "http_400", "bad")
    assert row["cost_usd"] == 0.0


# --- parsed columns ----------------------------------------------------------------


def parse_job(csv_input: Path, tmp_path: Path, **output: Any) -> Job:
    columns = {"label": "string", "confidence": "double", "n": "int32", "flag": "bool"}
    return make_job(csv_input, tmp_path / "o.parquet", parse="json", columns=columns, **output)


def test_parsed_columns_are_typed_and_filled(csv_input: Path, tmp_path: Path) -> None:
    job = parse_job(csv_input, tmp_path)
    answer = ok('{"label": "pos", "confidence": 1, "n": 3, "flag": true, "extra": 1}')
    table, _ = run(job, {"a": Answer("a", answer)})
    assert [(f.name, f.type) for f in table.schema][-6:-2] == [
        ("label", pa.string()),
        ("confidence", pa.float64()),
        ("n", pa.int32()),
        ("flag", pa.bool_()),
    ]
    row = table.to_pylist()[0]
    assert (row["label"], row["confidence"], row["n"], row["flag"]) == ("pos", 1.0, 3, True)
    assert row["status"] == "ok"


def test_parse_failure_becomes_parse_error(csv_input: Path, tmp_path: Path) -> None:
    job = parse_job(csv_input, tmp_path)
    table, stats = run(job, {"a": Answer("a", ok('{"label": "pos", "confidence": "high"}'))})
    row = table.to_pylist()[0]
    assert (row["status"], row["error_type"]) == ("error", "parse_error")
    assert row["error_message"] == "column 'confidence' (double): got a string: 'high'"
    assert row["label"] is None and row["cost_usd"] == pytest.approx(0.002025)
    assert stats.by_status["error"] == 2  # a, and d which shares a's answer


def test_parse_status_applies_the_same_rule(csv_input: Path, tmp_path: Path) -> None:
    job = parse_job(csv_input, tmp_path)
    assert parse_status(job, ok('{"label": "x"}')).status == "ok"
    failed = parse_status(job, ok("not json"))
    assert (failed.status, failed.error_type) == ("error", "parse_error")
    assert failed.error_message is not None and failed.error_message.startswith(
        "response is not JSON"
    )
    plain = make_job(csv_input, tmp_path / "o.parquet")
    assert parse_status(plain, ok("not json")).status == "ok"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[1, 2]", "response is JSON but not an object (got an array)"),
        ('{"n": 1.5}', "column 'n' (int32): got 1.5, not an integer"),
        ('{"n": 3000000000}', "column 'n' (int32): 3000000000 is out of range for int32"),
        ('{"flag": 1}', "column 'flag' (bool): got a number: 1"),
        ('{"label": 5}', "column 'label' (string): got a number: 5"),
        ("", "response is empty, not a JSON object"),
    ],
)
def test_parse_errors_name_the_problem(text: str, error: str) -> None:
    columns = {"label": "string", "n": "int32", "flag": "bool"}
    assert parse_response(text, columns).error == error


def test_missing_keys_parse_as_null_and_fences_are_tolerated() -> None:
    parsed = parse_response('```json\n{"label": "a"}\n```', {"label": "string", "n": "int64"})
    assert parsed.values == {"label": "a", "n": None}


# --- prefix and clashes ----------------------------------------------------------------


def test_prefix_renames_every_added_column(csv_input: Path, tmp_path: Path) -> None:
    job = parse_job(csv_input, tmp_path, prefix="llm_")
    table, _ = run(job, {})
    added = table.schema.names[2:]
    assert added == [f"llm_{name}" for name, _ in RESULT_SCHEMA[:-2]] + [
        "llm_label",
        "llm_confidence",
        "llm_n",
        "llm_flag",
        "llm_shared",
        "llm_synthetic",
    ]


def test_clash_with_input_column_names_output_prefix(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,text,status\na,x,new\n")
    job = make_job(path, tmp_path / "o.parquet")
    with pytest.raises(JobError, match=r"^output.prefix: output column\(s\) status clash"):
        check_columns(job, open_input(job).schema)
    check_columns(
        dataclasses.replace(job, output=OutputConfig(str(tmp_path), prefix="llm_")),
        open_input(job).schema,
    )


def test_parsed_column_named_like_a_result_column(csv_input: Path, tmp_path: Path) -> None:
    job = make_job(csv_input, tmp_path / "o.parquet", parse="json", columns={"status": "string"})
    with pytest.raises(JobError, match=r"^output.columns: status clash"):
        check_columns(job, open_input(job).schema)


# --- file-level -------------------------------------------------------------------


def test_metadata_and_stats_are_recorded(csv_input: Path, tmp_path: Path) -> None:
    job = make_job(csv_input, tmp_path / "o.parquet")
    _, stats = run(job, {"a": Answer("a", ok())})
    meta = pq.read_metadata(job.output.path).metadata
    assert meta[b"batchrun.job"] == b"t"
    assert json.loads(meta[b"batchrun.output_stats"])["by_status"] == {
        "ok": 2,  # a, and d which shares a's answer
        "invalid": 1,
        "pending": 1,
    }
    assert stats.path == Path(job.output.path) and stats.rows == 4


def test_write_leaves_no_temp_file(csv_input: Path, tmp_path: Path) -> None:
    out = tmp_path / "deep" / "dir" / "o.parquet"
    run(make_job(csv_input, out), {})
    assert sorted(p.name for p in out.parent.iterdir()) == ["o.parquet"]


def test_failure_mid_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,text\n" + "".join(f"{i},t{i}\n" for i in range(100)))
    job = make_job(path, tmp_path / "o.parquet")
    run(job, {})
    before = (tmp_path / "o.parquet").read_bytes()
    calls = 0

    def failing_lookup(fingerprints: Sequence[str]) -> dict[str, Answer]:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("checkpoint went away")
        return {}

    table = open_input(job)
    with pytest.raises(RuntimeError, match="checkpoint went away"):
        write_output(
            job, table, RequestBuilder(job, table.schema), failing_lookup, {}, batch_size=10
        )
    assert (tmp_path / "o.parquet").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "o.parquet"]


def test_many_batches_make_few_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,text\n" + "".join(f"{i},t{i}\n" for i in range(3000)))
    job = make_job(path, tmp_path / "o.parquet")
    table, stats = run(job, {}, batch_size=100)
    assert table.num_rows == stats.rows == 3000
    assert pq.ParquetFile(job.output.path).metadata.num_row_groups == 1


def test_completed_at_keeps_microseconds_and_reads_naive_as_utc(
    csv_input: Path, tmp_path: Path
) -> None:
    aware = datetime(2026, 11, 25, 23, 59, 59, 123456, tzinfo=UTC)
    naive = datetime(2026, 1, 2, 3, 4, 5, 6)
    answers = {
        "a": Answer("a", dataclasses.replace(ok(), completed_at=aware)),
        "c": Answer("c", dataclasses.replace(ok("other"), completed_at=naive)),
    }
    table, _ = run(make_job(csv_input, tmp_path / "o.parquet"), answers)
    values = table.column("completed_at").to_pylist()
    assert values[0] == aware and values[2] == naive.replace(tzinfo=UTC) and values[1] is None


def test_shared_rows_report_what_dedupe_saved(csv_input: Path, tmp_path: Path) -> None:
    shared = Answer("a", ok())
    _, stats = run(make_job(csv_input, tmp_path / "o.parquet"), {"a": shared, "d": shared})
    assert stats.shared_cost_usd == pytest.approx(0.002025)
    assert stats.cost_usd == pytest.approx(0.002025)


def test_select_leaves_out_unselected_rows(csv_input: Path, tmp_path: Path) -> None:
    job = make_job(csv_input, tmp_path / "o.parquet")
    seen: list[list[str]] = []

    def odd_keys(keys: list[str]) -> list[bool]:
        seen.append(keys)
        return [key in ("b", "c") for key in keys]

    table, stats = run(job, {"c": Answer("c", ok())}, select=odd_keys)
    assert seen == [["a", "b", "c", "d"]]
    assert table.column("id").to_pylist() == ["b", "c"]
    assert table.column("status").to_pylist() == ["invalid", "ok"]
    assert stats.rows == 2


def test_parse_error_of_a_cut_answer_says_so(csv_input: Path, tmp_path: Path) -> None:
    cut = dataclasses.replace(ok('{"label": "pos'), finish_reason="length")
    failed = parse_status(parse_job(csv_input, tmp_path), cut)
    assert failed.error_message is not None
    assert failed.error_message.endswith("finish_reason=length; raise max_completion_tokens)")


# --- which row owns an answer ------------------------------------------------------------


# Distinct, several with one 8-byte prefix (the set searches by it), some not v1 at all.
FINGERPRINTS = [
    *("v1:" + f"{i:02x}" * 32 for i in range(40)),
    *("v1:" + "ab" * 8 + f"{i:02x}" * 24 for i in range(40)),
    "x",
    "y",
]


@given(
    st.lists(
        st.lists(st.sampled_from(FINGERPRINTS)),
        max_size=30,
    )
)
def test_the_first_row_with_a_request_owns_it_and_every_later_one_shares_it(
    batches: list[list[str]],
) -> None:
    owners, seen = Owners(), set()
    for batch in batches:
        expected = []
        for fingerprint in batch:
            expected.append(fingerprint in seen)
            seen.add(fingerprint)
        assert owners.shared(batch) == expected


def test_without_dedupe_no_row_shares() -> None:
    assert Owners(dedupe=False).shared(["v1:" + "ab" * 32] * 3) == [False] * 3
