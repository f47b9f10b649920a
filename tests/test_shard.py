"""``batchrun run --shard I/N``: N shards answer every row exactly once, each into its own file.

Shards are real ``batchrun run`` subprocesses, started together against one emulator
(so they also prove that concurrent shards never share a checkpoint lock).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import job_toml

from batchrun._runner import RunOptions, run_job, shard_of, shard_output_path
from batchrun.emulator import EmulatorProcess
from batchrun.job.load import load_job
from batchrun.report.aggregate import report

KEY_ENV = "BATCHRUN_SHARD_TEST_KEY"
SHARDS = 4
ROWS = 400
REPO = Path(__file__).resolve().parents[1]
BATCHRUN = (sys.executable, "-m", "batchrun")


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    with EmulatorProcess([], quiet=True) as emulator:
        yield emulator


def write_job(tmp_path: Path, base_url: str, output: str, **sections: Mapping[str, Any]) -> Path:
    """A job over ``ROWS`` distinct reviews (so no dedupe crosses a shard boundary)."""
    source = tmp_path / "input.csv"
    if not source.exists():
        with source.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "text"])
            writer.writerows((f"r{i:05d}", f"Review {i}: works as described.") for i in range(ROWS))
    job: dict[str, dict[str, Any]] = {
        "job": {"name": "shard-test"},
        "input": {"path": str(source), "id_column": "id"},
        "api": {"base_url": base_url, "api_key_env": KEY_ENV},
        "request": {"model": "gpt-5.5", "prompt": "Label: {text}", "max_completion_tokens": 24},
        "limits": {"concurrency": 32, "max_cost_usd": 5.0},
        "output": {"path": output},
        'pricing."gpt-5.5"': {"input": 1.25, "cached_input": 0.125, "output": 10.0},
    }
    for name, values in sections.items():
        job.setdefault(name, {}).update(values)
    text = job_toml(job)
    path = tmp_path / "job.toml"
    path.write_text(text, encoding="utf-8")
    return path


def run_shards(job: Path, extra: Sequence[str] = ()) -> list[subprocess.CompletedProcess[str]]:
    """Every shard of ``job`` as its own ``batchrun run`` process, all at once."""
    env = os.environ | {KEY_ENV: "sk-test"}
    procs = [
        subprocess.Popen(
            [*BATCHRUN, "run", str(job), "--shard", f"{i}/{SHARDS}", "--quiet", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        for i in range(SHARDS)
    ]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=90)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


@pytest.fixture(scope="module")
def sharded(emu: EmulatorProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same job run whole, then as 4 concurrent shards; their outputs and ledgers."""
    root = tmp_path_factory.mktemp("shards")
    whole = write_job(root, emu.base_url, str(root / "whole" / "labels.parquet"))
    emu.reset()
    summary = run_job(load_job(whole), RunOptions(base_url=emu.base_url, api_key="sk-test"))
    whole_billed = emu.ledger()["requests_billed"]
    job = write_job(root, emu.base_url, str(root / "shards" / "labels.parquet"))
    emu.reset()
    procs = run_shards(job)
    return {
        "root": root,
        "job": job,
        "whole": Path(summary.output_path),
        "whole_billed": whole_billed,
        "procs": procs,
        "ledger": emu.ledger(),
    }


def test_every_shard_exits_0(sharded: dict[str, Any]) -> None:
    for proc in sharded["procs"]:
        assert proc.returncode == 0, proc.stderr


def test_each_shard_writes_its_own_output_and_checkpoint(sharded: dict[str, Any]) -> None:
    names = sorted(p.name for p in (sharded["root"] / "shards").iterdir())

    outputs = [f"labels.shard-{i}-of-{SHARDS}.parquet" for i in range(SHARDS)]
    assert [n for n in names if n.endswith(".parquet")] == outputs
    assert [n for n in names if n.endswith(".ckpt.sqlite")] == [f"{o}.ckpt.sqlite" for o in outputs]
    assert "labels.parquet" not in names


def test_shards_cover_every_row_exactly_once(sharded: dict[str, Any]) -> None:
    shard_ids = [_ids(path) for path in _shard_outputs(sharded)]

    union = set().union(*shard_ids)
    assert sum(len(ids) for ids in shard_ids) == len(union) == ROWS  # no overlap, none missing
    assert union == set(_ids(sharded["whole"]))
    assert all(ids for ids in shard_ids)


def test_each_shard_holds_the_rows_whose_key_hashes_to_it(sharded: dict[str, Any]) -> None:
    for index, path in enumerate(_shard_outputs(sharded)):
        assert {shard_of(key, SHARDS) for key in _ids(path)} == {index}


def test_shards_send_each_request_once(sharded: dict[str, Any]) -> None:
    ledger = sharded["ledger"]

    assert ledger["requests_billed"] == sharded["whole_billed"] == ROWS
    assert ledger["duplicates_billed"] == 0


def test_report_over_the_shards_adds_up_to_the_whole_run(sharded: dict[str, Any]) -> None:
    columns = ["rows", "prompt_tokens", "completion_tokens", "cost_usd"]

    shards = report([str(p) for p in _shard_outputs(sharded)], by=["status"]).table
    whole = report([str(sharded["whole"])], by=["status"]).table

    shard_total, whole_total = shards.iloc[-1], whole.iloc[-1]
    assert shard_total["rows"] == whole_total["rows"] == ROWS
    for column in columns:
        assert shard_total[column] == pytest.approx(whole_total[column]), column


def test_a_shard_run_again_sends_nothing(sharded: dict[str, Any], emu: EmulatorProcess) -> None:
    before = emu.ledger()["requests_billed"]

    procs = run_shards(sharded["job"])

    assert [p.returncode for p in procs] == [0] * SHARDS
    assert emu.ledger()["requests_billed"] == before


def _shard_outputs(sharded: dict[str, Any]) -> list[Path]:
    folder = sharded["root"] / "shards"
    return [folder / f"labels.shard-{i}-of-{SHARDS}.parquet" for i in range(SHARDS)]


def _ids(path: Path) -> list[str]:
    return pd.read_parquet(path, columns=["id"])["id"].tolist()


# ---------------------------------------------------------------- naming


def test_shard_output_path_inserts_the_shard_before_the_suffix() -> None:
    assert shard_output_path("out/x.parquet", (0, 4)) == "out/x.shard-0-of-4.parquet"
    assert shard_output_path("out/d=1/x.v2.parquet", (3, 8)) == "out/d=1/x.v2.shard-3-of-8.parquet"


def test_a_shard_variable_fills_the_output_path(tmp_path: Path) -> None:
    # For layouts that want the shard in a directory name: --var shard=I with ${shard}.
    path = write_job(tmp_path, "http://127.0.0.1:9", "out/shard=${shard}/labels.parquet")

    job = load_job(path, variables=["shard=2"])

    assert job.output.path == "out/shard=2/labels.parquet"
    assert job.output.checkpoint_path == Path("out/shard=2/labels.parquet.ckpt.sqlite")


def test_shard_ids_are_stable_and_spread() -> None:
    counts = [0] * SHARDS
    for i in range(4000):
        counts[shard_of(f"r{i:05d}", SHARDS)] += 1

    assert shard_of("r00042", SHARDS) == shard_of("r00042", SHARDS)
    assert min(counts) > 850  # within ~15% of an even 1000
