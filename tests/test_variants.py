"""``[[variants]]``: every row through every variant into one output with a ``variant``
column; checkpoint, resume, budget and ``compare`` across variants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import PRICE, billed_usd, run_batchrun, write_job

from batchrun._errors import JobError
from batchrun.compare.compute import compare
from batchrun.emulator.labels import true_label
from batchrun.job.load import load_job

SENTIMENTS = ["positive", "negative", "neutral"]
COMPARE = ("--gold", "gold", "--columns", "sentiment", "--format", "json")
VARIANTS = """
[[variants]]
name = "big"
request.model = "gpt-5.5"

[[variants]]
name = "small"
request.model = "glm-5.2"
request.prompt = "Sentiment of: {text}"
"""


def _rows(count: int) -> list[dict[str, str]]:
    rows = [{"id": f"r{i:03d}", "text": f"Review {i}: it was {i % 7}/7."} for i in range(count)]
    for row in rows:
        row["gold"] = true_label("Label: " + row["text"], SENTIMENTS)
    return rows


def _job(tmp_path: Path, rows: int = 40, variants: str = VARIANTS, **sections: Any) -> Path:
    job = write_job(
        tmp_path,
        rows=_rows(rows),
        **(
            {
                "request": {"max_completion_tokens": 100, "response_format": "json_object"},
                "output": {
                    "parse": "json",
                    "columns": {"sentiment": {"type": "string", "enum": SENTIMENTS}},
                },
                'pricing."glm-5.2"': dict(PRICE),
            }
            | sections
        ),
    )
    job.write_text(job.read_text() + variants)
    return job


def _out(job: Path) -> list[dict[str, Any]]:
    return pq.read_table(job.parent / "out.parquet").to_pylist()


def test_every_row_goes_through_every_variant_into_one_output(tmp_path: Path, emulator) -> None:
    emu = emulator()
    job = _job(tmp_path)
    run = run_batchrun(job, emu)
    assert run.returncode == 0, run.stderr
    table = pq.read_table(job.parent / "out.parquet")
    assert table.column_names[:5] == ["id", "text", "gold", "variant", "response"]
    rows = table.to_pylist()
    assert [(r["id"], r["variant"]) for r in rows] == [
        (f"r{i:03d}", v) for i in range(40) for v in ("big", "small")
    ]
    assert {r["model"] for r in rows if r["variant"] == "small"} == {"glm-5.2"}
    assert {r["status"] for r in rows} == {"ok"}
    ledger = emu.ledger()
    assert ledger["requests_billed"] == 80
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(billed_usd(ledger), rel=1e-9)
    assert "80 rows" in run.stderr


def test_a_second_run_sends_nothing_and_writes_the_same_output(tmp_path: Path, emulator) -> None:
    emu = emulator()
    job = _job(tmp_path)
    assert run_batchrun(job, emu).returncode == 0
    first = _out(job)
    assert run_batchrun(job, emu).returncode == 0
    assert emu.ledger()["requests_billed"] == 80
    assert [(r["variant"], r["response"]) for r in _out(job)] == [
        (r["variant"], r["response"]) for r in first
    ]


def test_run_variant_runs_one_and_the_next_run_only_the_rest(tmp_path: Path, emulator) -> None:
    emu = emulator()
    job = _job(tmp_path)
    run = run_batchrun(job, emu, "--variant", "small")
    assert run.returncode == 0, run.stderr
    assert emu.ledger()["requests_billed"] == 40
    assert not (job.parent / "out.parquet").exists()  # not every variant has run
    assert run_batchrun(job, emu).returncode == 0
    assert emu.ledger()["requests_billed"] == 80
    assert len(_out(job)) == 80
    unknown = run_batchrun(job, emu, "--variant", "huge")
    assert unknown.returncode == 2 and "--variant: no variant 'huge'" in unknown.stderr


def test_the_budget_holds_across_variants(tmp_path: Path, emulator) -> None:
    emu = emulator()
    job = _job(tmp_path, rows=40, limits={"max_cost_usd": 0.008, "concurrency": 4})
    run = run_batchrun(job, emu)
    assert run.returncode == 3, run.stderr
    assert billed_usd(emu.ledger()) <= 0.008
    assert 40 < emu.ledger()["requests_billed"] < 80  # into the second variant, not past the cap


def test_compare_reads_the_variant_column(tmp_path: Path, emulator) -> None:
    emu = emulator("--label-accuracy", "gpt-5.5=0.9", "--label-accuracy", "glm-5.2=0.5")
    job = _job(tmp_path, rows=60)
    assert run_batchrun(job, emu).returncode == 0
    result = compare([str(job.parent / "out.parquet")], gold="gold", columns=["sentiment"])
    records = {r["variant"]: r for r in result.to_list()}
    rows = _out(job)
    for name in ("big", "small"):
        mine = [r for r in rows if r["variant"] == name]
        right = sum(r["sentiment"] == r["gold"] for r in mine)
        assert records[name]["accuracy"] == pytest.approx(right / 60)
    assert records["big"]["accuracy"] > records["small"]["accuracy"]


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ('[[variants]]\nrequest.model = "glm-5.2"\n', "variants[0].name: missing"),
        (
            '[[variants]]\nname = "a"\n[[variants]]\nname = "a"\n',
            "variants[1].name: 'a' names another variant too",
        ),
        ('[[variants]]\nname = "a"\nmodel = "glm-5.2"\n', "variants[0].model: a variant takes"),
        (
            '[[variants]]\nname = "a"\nrequest.temperature = 1\n',
            "unknown key variants[0].request.temperature (keys of [request]: model,",
        ),
        (
            '[[variants]]\nname = "a"\nrequest.max_completion_tokens = 0\n',
            "variants[0].request.max_completion_tokens: 0 is out of range",
        ),
    ],
)
def test_bad_variants_fail_with_one_line(tmp_path: Path, variants: str, message: str) -> None:
    with pytest.raises(JobError) as caught:
        load_job(_job(tmp_path, variants=variants))
    assert str(caught.value).startswith(message), str(caught.value)


def test_a_budget_needs_every_variants_price(tmp_path: Path) -> None:
    variants = '[[variants]]\nname = "a"\nrequest.model = "deepseek-v4.1"\n'
    job = _job(tmp_path, variants=variants, limits={"max_cost_usd": 1.0})
    with pytest.raises(JobError, match=r"variants\[0\] \(a\): limits.max_cost_usd: needs a price"):
        load_job(job)


def test_plan_counts_and_prices_each_variant(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    job = _job(tmp_path, rows=30, **{'pricing."glm-5.2"': {"input": 0.1, "output": 0.5}})
    done = subprocess.run(
        [sys.executable, "-m", "batchrun", "plan", job.name, "--format", "json"],
        cwd=job.parent,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    plans = json.loads(done.stdout)["variants"]
    assert [p["variant"] for p in plans] == ["big", "small"]
    assert [p["model"] for p in plans] == ["gpt-5.5", "glm-5.2"]
    assert all(p["rows"]["requests"] == 30 for p in plans)
    assert plans[0]["cost_usd"]["high"] > plans[1]["cost_usd"]["high"]
    text = subprocess.run(
        [sys.executable, "-m", "batchrun", "plan", job.name],
        cwd=job.parent,
        capture_output=True,
        text=True,
    )
    assert "variant big:" in text.stdout and "variant small:" in text.stdout


def test_two_model_variants_with_re_asks_compare_as_recomputed(tmp_path: Path, emulator) -> None:
    """The whole labeling loop: two models, first answers breaking the label set, reask = 2,
    then compare --gold --format json against the figures recomputed from the output."""
    import json
    import subprocess
    import sys

    from sklearn.metrics import accuracy_score, cohen_kappa_score

    emu = emulator(
        "--label-accuracy", "gpt-5.5=0.9", "--label-accuracy", "glm-5.2=0.7",
        "--label-break-rate", "0.3",
    )  # fmt: skip
    request = {"reask": 2, "max_completion_tokens": 100, "response_format": "json_object"}
    job = _job(tmp_path, rows=80, request=request)
    run = run_batchrun(job, emu)
    assert run.returncode == 0, run.stderr
    rows = _out(job)
    assert {r["status"] for r in rows} == {"ok"}
    assert 0 < sum(r["reasks"] for r in rows) < 80
    done = subprocess.run(
        [sys.executable, "-m", "batchrun", "compare", "out.parquet", *COMPARE],
        cwd=job.parent,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    for record in json.loads(done.stdout):
        mine = [r for r in rows if r["variant"] == record["variant"]]
        gold = [r["gold"] for r in mine]
        labels = [r["sentiment"] for r in mine]
        assert record["accuracy"] == pytest.approx(accuracy_score(gold, labels))
        assert record["kappa"] == pytest.approx(cohen_kappa_score(gold, labels))
        assert record["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in mine))
    assert billed_usd(emu.ledger()) == pytest.approx(sum(r["cost_usd"] for r in rows), rel=1e-9)
