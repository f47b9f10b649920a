"""Few-shot examples (``request.examples``): user/assistant turns before every row's
prompt, the same for every row, checked up front and part of each row's fingerprint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import billed_usd, run_batchrun, write_csv, write_job

from batchrun._errors import JobError
from batchrun._types import Request
from batchrun.emulator.labels import REASK_MARK, true_label
from batchrun.engines.variants import variant_job
from batchrun.job.load import load_job
from batchrun.send.budget import texts_kind
from batchrun.send.reask import correction
from batchrun.send.requests import RequestBuilder, canonical_json, estimate_prompt_tokens

SENTIMENTS = ["positive", "negative", "neutral"]
COLUMNS = {"sentiment": {"type": "string", "enum": SENTIMENTS}}
EXAMPLES = [
    {"text": "Arrived broken, never again.", "answer": '{"sentiment": "negative"}'},
    {"text": "Does what it says.", "answer": '{"sentiment": "positive"}'},
]


def _job(
    tmp_path: Path,
    examples: Any = None,
    rows: int = 40,
    examples_table: str | None = None,
    **request: Any,
) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_csv(tmp_path / "examples.csv", EXAMPLES if examples is None else examples)
    return write_job(
        tmp_path,
        rows=rows,
        request={
            "max_completion_tokens": 100,
            "response_format": "json_object",
            "examples": (
                {"path": "examples.csv"}
                if examples_table is None
                else {"path": examples_table, "answer": "label"}
            ),
            **request,
        },
        output={"parse": "json", "columns": COLUMNS},
        limits={"max_failed_rows": rows},
    )


def _requests(job_path: Path, texts: list[str]) -> list[Request]:
    job = load_job(job_path)
    batch = pa.RecordBatch.from_pylist([{"id": f"r{i}", "text": t} for i, t in enumerate(texts)])
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(job_path.parent)  # the examples path is relative to the working directory
        built = RequestBuilder(job, batch.schema).build(batch, 0)
    assert all(isinstance(item, Request) for item in built)
    return built  # type: ignore[return-value]


def test_example_turns_come_before_each_rows_prompt_the_same_for_every_row(
    tmp_path: Path,
) -> None:
    first, second = _requests(_job(tmp_path), ["Great value.", "Slow delivery, sadly."])
    turns = [
        {"role": "user", "content": "Label: Arrived broken, never again."},
        {"role": "assistant", "content": '{"sentiment": "negative"}'},
        {"role": "user", "content": "Label: Does what it says."},
        {"role": "assistant", "content": '{"sentiment": "positive"}'},
    ]
    for request, text in ((first, "Great value."), (second, "Slow delivery, sadly.")):
        system, *rest = request.body["messages"]
        assert system["role"] == "developer"
        assert rest == [*turns, {"role": "user", "content": f"Label: {text}"}]
        # The pre-encoded wire, the estimate and the text kind agree with the body.
        assert request.wire == canonical_json(request.body).encode()
        assert request.est_prompt_tokens == estimate_prompt_tokens(request.body)
        assert request.text_kind == texts_kind(m["content"] for m in request.body["messages"])
    # Everything before the row's prompt is the same bytes, so a prompt cache can serve it.
    assert first.body["messages"][:-1] == second.body["messages"][:-1]


def test_the_token_estimate_counts_the_examples(tmp_path: Path) -> None:
    long = [{"text": "x" * 4000, "answer": '{"sentiment": "neutral"}'}]
    with_examples = _requests(_job(tmp_path / "a", long), ["Fine."])[0]
    plain = write_job(tmp_path / "b", rows=3, request={"max_completion_tokens": 100})
    without = _requests(plain, ["Fine."])[0]
    assert with_examples.est_prompt_tokens >= without.est_prompt_tokens + 1000


@pytest.mark.parametrize(
    ("examples", "path", "message"),
    [
        (EXAMPLES, "missing.csv", "request.examples: missing.csv does not exist"),
        ([{"body": "x", "answer": "y"}], None, "has no column 'text' (request.prompt names"),
        ([{"text": "x", "label": "y"}], None, "has no column 'answer' (the answer column"),
        ([{"text": "x", "answer": " "}], None, "example 1 of examples.csv has an empty 'answer'"),
        ([{"text": "x", "answer": "y"}] * 51, None, "has 51 examples; at most 50"),
    ],
)
def test_bad_examples_are_a_job_error_naming_the_key(
    tmp_path: Path, examples: Any, path: str | None, message: str
) -> None:
    job = _job(tmp_path, examples)
    if path is not None:
        text = job.read_text(encoding="utf-8").replace('"examples.csv"', f'"{path}"')
        job.write_text(text, encoding="utf-8")
    with pytest.raises(JobError) as caught:
        _requests(job, ["Fine."])
    assert str(caught.value).startswith("request.examples: ")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_an_unknown_examples_key_is_a_job_error(tmp_path: Path) -> None:
    job = _job(tmp_path)
    text = job.read_text(encoding="utf-8").replace('path = "examples.csv"', 'file = "x.csv"')
    job.write_text(text, encoding="utf-8")
    with pytest.raises(JobError, match=r"^request\.examples: must be a table like"):
        load_job(job)


def test_a_run_with_bad_examples_exits_2_with_one_line_and_sends_nothing(
    tmp_path: Path, emulator
) -> None:
    emu = emulator()
    job = _job(tmp_path, [{"text": "x", "answer": ""}])
    run = run_batchrun(job, emu)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "request.examples: example 1" in lines[0], run.stderr
    assert emu.ledger()["requests_billed"] == 0


def test_the_emulator_labels_each_row_by_its_own_text(tmp_path: Path, emulator) -> None:
    job = _job(tmp_path, rows=60)
    run = run_batchrun(job, emulator("--label-accuracy", "gpt-5.5=1.0"))
    assert run.returncode == 0, run.stderr
    rows = pq.read_table(job.parent / "out.parquet", columns=["text", "sentiment"]).to_pylist()
    assert [r["sentiment"] for r in rows] == [
        true_label("Label: " + r["text"], SENTIMENTS) for r in rows
    ]
    assert len({r["sentiment"] for r in rows}) == 3


def test_the_emulator_knows_a_re_ask_from_a_row() -> None:
    assert correction("bad").startswith(REASK_MARK)


def test_a_changed_examples_file_sends_every_row_again(tmp_path: Path, emulator) -> None:
    emu = emulator()
    job = _job(tmp_path, rows=20)
    assert run_batchrun(job, emu).returncode == 0
    assert run_batchrun(job, emu).returncode == 0  # unchanged: nothing sent again
    assert emu.ledger()["requests_billed"] == 20
    write_csv(job.parent / "examples.csv", [*EXAMPLES, {"text": "Meh.", "answer": "{}"}])
    run = run_batchrun(job, emu)
    assert run.returncode == 0, run.stderr
    assert emu.ledger()["requests_billed"] == 40
    sent = pq.read_table(job.parent / "out.parquet", columns=["status"]).column("status")
    assert set(sent.to_pylist()) == {"ok"}


def test_a_long_shared_prefix_is_reported_as_cached_and_priced(tmp_path: Path, emulator) -> None:
    emu = emulator()
    long = [
        {"text": f"Example {i}: " + "The parcel came late but intact. " * 40, "answer": a}
        for i, a in enumerate(['{"sentiment": "neutral"}', '{"sentiment": "negative"}'] * 2)
    ]
    job = _job(tmp_path, long, rows=30)
    text = job.read_text(encoding="utf-8").replace("concurrency = 16", "concurrency = 1")
    job.write_text(text, encoding="utf-8")  # one at a time: the first row fills the cache
    run = run_batchrun(job, emu)
    assert run.returncode == 0, run.stderr
    rows = pq.read_table(job.parent / "out.parquet").to_pylist()
    cached = sorted(r["cached_tokens"] for r in rows)
    assert cached[0] == 0 and all(c >= 1024 for c in cached[1:]), cached
    ledger = emu.ledger()
    assert ledger["tokens"]["cached"] == sum(cached)
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(billed_usd(ledger), rel=1e-9)


def test_a_parquet_file_and_another_answer_column(tmp_path: Path) -> None:
    tmp_path.mkdir(parents=True, exist_ok=True)
    shots = [{"text": "Nice.", "stars": 5, "label": '{"sentiment": "positive"}'}]
    pq.write_table(pa.Table.from_pylist(shots), tmp_path / "shots.parquet")
    job = _job(tmp_path, prompt="Label ({text}):", examples_table="shots.parquet")
    request = _requests(job, ["Fine."])[0]
    assert request.body["messages"][1:3] == [
        {"role": "user", "content": "Label (Nice.):"},
        {"role": "assistant", "content": '{"sentiment": "positive"}'},
    ]


def test_a_variant_fills_the_examples_into_its_own_prompt(tmp_path: Path) -> None:
    job = _job(tmp_path)
    text = job.read_text(encoding="utf-8")
    text += '\n[[variants]]\nname = "terse"\nrequest.prompt = "Sentiment of: {text}"\n'
    job.write_text(text, encoding="utf-8")
    loaded = load_job(job)
    terse = variant_job(loaded, loaded.variants[0])
    batch = pa.RecordBatch.from_pylist([{"id": "a", "text": "Fine."}])
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        request = RequestBuilder(terse, batch.schema).build(batch, 0)[0]
    assert isinstance(request, Request)
    contents = [m["content"] for m in request.body["messages"][1:]]
    assert contents[0] == "Sentiment of: Arrived broken, never again."
    assert contents[-1] == "Sentiment of: Fine."
