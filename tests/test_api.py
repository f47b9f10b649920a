"""The Python API: ``batchrun.run`` (a job file) and ``batchrun.complete`` (a DataFrame)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import job_toml

import batchrun
from batchrun.emulator import EmulatorProcess

KEY_ENV = "BATCHRUN_API_TEST_KEY"


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorProcess]:
    with EmulatorProcess([], quiet=True) as emu:
        yield emu


@pytest.fixture
def emu(emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch) -> EmulatorProcess:
    """The module's emulator with an empty ledger and a test key in the environment."""
    emulator.reset()
    monkeypatch.setenv(KEY_ENV, "sk-test")
    return emulator


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """complete()'s default checkpoints go to this test's own cache directory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def reviews() -> pd.DataFrame:
    texts = ["Great value.", "Arrived broken.", "Fine, nothing special.", "Slow delivery."]
    return pd.DataFrame(
        {"text": texts, "stars": [5, 1, 3, 2]}, index=pd.Index([40, 10, 30, 20], name="row")
    )


def write_job(tmp_path: Path, rows: int = 30) -> Path:
    source = tmp_path / "input.csv"
    lines = ["id,text", *(f"r{i:03d},Review {i} is short." for i in range(rows))]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tables: dict[str, dict[str, Any]] = {
        "job": {"name": "api-test"},
        "input": {"path": str(source), "id_column": "id"},
        "request": {"model": "gpt-5.5", "prompt": "Label: {text}", "max_completion_tokens": 16},
        "output": {"path": str(tmp_path / "out.parquet")},
    }
    text = job_toml(tables)
    path = tmp_path / "job.toml"
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- run


def test_run_with_emulate_and_limit_returns_a_summary(tmp_path: Path) -> None:
    summary = batchrun.run(write_job(tmp_path), emulate=True, limit=10)

    assert summary.exit_code == 0
    assert summary.synthetic
    assert summary.by_status.get("ok") == 10
    assert summary.sent == 10
    assert Path(summary.output_path).is_file()


def test_run_takes_sets_and_variables_as_mappings(tmp_path: Path) -> None:
    summary = batchrun.run(
        write_job(tmp_path, rows=3),
        sets={"request.max_completion_tokens": 8, "output.path": str(tmp_path / "o-${v}.parquet")},
        variables={"v": "x"},
        emulate=True,
    )

    assert summary.exit_code == 0
    assert summary.output_path.endswith("o-x.parquet")


def test_run_rejects_an_unknown_option(tmp_path: Path) -> None:
    with pytest.raises(batchrun.JobError, match="unknown option 'shards'"):
        batchrun.run(write_job(tmp_path), shards=(0, 2))


# ---------------------------------------------------------------- complete


def test_complete_returns_the_input_with_output_columns_and_its_index(
    tmp_path: Path, reviews: pd.DataFrame
) -> None:
    out = batchrun.complete(
        reviews,
        prompt="Sentiment of: {text}",
        model="gpt-5.5",
        emulate=True,
        max_completion_tokens=64,
        checkpoint=tmp_path / "ckpt.sqlite",
    )

    assert list(out.columns[:2]) == ["text", "stars"]
    assert {"response", "status", "prompt_tokens", "cost_usd"} <= set(out.columns)
    assert out.index.equals(reviews.index)
    assert out["text"].tolist() == reviews["text"].tolist()
    assert (out["status"] == "ok").all()


def test_complete_twice_sends_nothing_the_second_time(
    tmp_path: Path, reviews: pd.DataFrame, emu: EmulatorProcess
) -> None:
    def call() -> pd.DataFrame:
        return batchrun.complete(
            reviews,
            prompt="Sentiment of: {text}",
            model="gpt-5.5",
            max_completion_tokens=64,
            checkpoint=tmp_path / "ckpt.sqlite",
            base_url=emu.base_url,
            api_key_env=KEY_ENV,
        )

    first = call()
    billed = emu.ledger()["requests_billed"]
    second = call()

    assert billed == len(reviews)
    assert emu.ledger()["requests_billed"] == billed
    pd.testing.assert_series_equal(first["response"], second["response"])


def test_complete_parses_json_into_typed_columns(tmp_path: Path, reviews: pd.DataFrame) -> None:
    out = batchrun.complete(
        reviews,
        prompt='Reply as JSON {{"label": ..., "confidence": ...}} for: {text}',
        model="gpt-5.5",
        emulate=True,
        max_completion_tokens=64,
        response_format="json_object",
        parse="json",
        columns={"label": "string", "confidence": "double"},
        checkpoint=tmp_path / "ckpt.sqlite",
    )

    assert (out["status"] == "ok").all()
    assert out["label"].notna().all()
    assert out["confidence"].dtype == "float64"


def test_complete_prices_rows_when_given_pricing(tmp_path: Path, reviews: pd.DataFrame) -> None:
    out = batchrun.complete(
        reviews,
        prompt="Label: {text}",
        model="gpt-5.5",
        emulate=True,
        max_completion_tokens=16,
        pricing={"gpt-5.5": {"input": 1.25, "output": 10.0}},
        checkpoint=tmp_path / "ckpt.sqlite",
    )

    assert (out["cost_usd"] > 0).all()


def test_complete_rejects_an_unknown_option(reviews: pd.DataFrame) -> None:
    with pytest.raises(batchrun.JobError, match="unknown option 'temperature'"):
        batchrun.complete(reviews, prompt="{text}", model="gpt-5.5", temperature=0)


def test_complete_validates_like_a_job_file(reviews: pd.DataFrame) -> None:
    with pytest.raises(batchrun.JobError, match=r"request\.reasoning_effort"):
        batchrun.complete(reviews, prompt="{text}", model="gpt-5.5", reasoning_effort="max")


def test_complete_keeps_emulated_answers_apart_from_real_ones(tmp_path: Path) -> None:
    from batchrun import _notebook_job

    def default_checkpoint(synthetic: bool) -> str | None:
        job = _notebook_job(tmp_path / "in.parquet", "{text}", "gpt-5.5", None, {}, {}, synthetic)
        return job.output.checkpoint

    assert default_checkpoint(True) != default_checkpoint(False)
    assert default_checkpoint(False) == default_checkpoint(False)


def test_complete_keeps_its_default_checkpoint_private(
    cache_home: Path, reviews: pd.DataFrame, emu: EmulatorProcess
) -> None:
    def call() -> pd.DataFrame:
        return batchrun.complete(
            reviews, prompt="{text}", model="gpt-5.5", base_url=emu.base_url, api_key_env=KEY_ENV
        )

    call()
    directory = cache_home / "batchrun"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = sorted(directory.iterdir())
    assert [f.name.split(".", 1)[1] for f in files] == ["sqlite", "sqlite.lock"]
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o600}
    # The answers are this user's alone; a second call pays for nothing.
    billed = emu.ledger()["requests_billed"]
    call()
    assert billed == len(reviews) and emu.ledger()["requests_billed"] == billed


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_complete_refuses_a_cache_directory_another_user_owns(
    cache_home: Path, reviews: pd.DataFrame, emu: EmulatorProcess
) -> None:
    planted = cache_home / "batchrun"
    planted.mkdir(parents=True)
    planted.chmod(0o777)
    os.chown(planted, 4242, 4242)
    with pytest.raises(batchrun.JobError, match=r"belongs to another user \(uid 4242\)"):
        batchrun.complete(
            reviews, prompt="{text}", model="gpt-5.5", base_url=emu.base_url, api_key_env=KEY_ENV
        )
    assert emu.ledger()["requests_received"] == 0 and not list(planted.iterdir())
