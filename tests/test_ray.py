"""The Ray engine against the emulator on loopback: same output as the local engine,
the job's limits held across workers, resume after the driver is killed, a global budget.

One local Ray instance serves the module (started the way ``--engine ray`` starts one
without ``--ray-address``); the kill test's driver joins it by address.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from batchrun._runner import RunOptions, RunSummary, run_job  # noqa: E402
from batchrun.emulator import EmulatorProcess  # noqa: E402
from batchrun.engines.ray import data as _raydata  # noqa: E402
from batchrun.job.load import load_job  # noqa: E402
from batchrun.store.batchdone import WRITTEN_FROM_KEY  # noqa: E402
from batchrun.store.charges import spent  # noqa: E402

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-ray"
SEED = "11"
VOLATILE = {"latency_ms", "completed_at"}
BIG_ROWS = 20_000
BIG_RPM = 15_000


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    from batchrun.engines.ray.engine import ray_session

    with ray_session(None):
        yield ray.get_runtime_context().gcs_address


@pytest.fixture(scope="module")
def big_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "items.parquet"
    ids = [f"item-{i:05d}" for i in range(BIG_ROWS)]
    texts = [f"item {i} arrived {'late' if i % 3 else 'on time'}" for i in range(BIG_ROWS)]
    pq.write_table(pa.table({"id": ids, "text": texts}), path, row_group_size=5000)
    return path


@pytest.fixture(scope="module")
def big_reference(big_input: Path, tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    """The local engine's output for the 20,000 rows (an unlimited emulator, same seed)."""
    out = tmp_path_factory.mktemp("local") / "local.parquet"
    # Answers depend on the seed and the request, not the pace: the reference need not wait.
    with EmulatorProcess(["--seed", SEED], quiet=True) as emu:
        summary = _run(_big_job(big_input, out, "limits.requests_per_minute=600000"), emu)
    assert summary.exit_code == 0
    return pq.read_table(out)


def _big_job(source: Path, out: Path, *sets: str, text: str | None = None) -> Any:
    job_file = out.parent / "job.toml"
    job_file.parent.mkdir(parents=True, exist_ok=True)
    job_file.write_text(_BIG_JOB if text is None else text)
    return load_job(job_file, sets=[f'input.path="{source}"', f'output.path="{out}"', *sets])


_BIG_JOB = """\
[job]
name = "ray-big"

[input]
path = "items.parquet"
id_column = "id"

[request]
model = "gpt-5.5"
prompt = "Is this late? {text}"
max_completion_tokens = 16

[limits]
concurrency = 32
requests_per_minute = 15000
max_attempts = 4

[output]
path = "out/items.parquet"

[pricing."gpt-5.5"]
input = 1.25
output = 10.0
"""


def _run(job: Any, emu: EmulatorProcess, **options: Any) -> RunSummary:
    return run_job(job, RunOptions(base_url=emu.base_url, api_key=KEY, **options))


def _assert_same_rows(expected: pa.Table, actual: pa.Table) -> None:
    assert actual.schema.remove_metadata() == expected.schema.remove_metadata()
    assert actual.num_rows == expected.num_rows
    for name in expected.column_names:
        if name not in VOLATILE:
            assert actual[name].to_pylist() == expected[name].to_pylist(), name


@pytest.mark.parametrize("read_by", ["driver", "read tasks"])
def test_demo_job_output_equals_the_local_engines_row_for_row(
    ray_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_by: str
) -> None:
    # One batch: its three duplicate reviews are deduped as the local engine does
    # (across workers too: see test_identical_requests_on_two_workers_are_sent_once).
    # A small input is read by the driver; a larger one by Ray Data's read tasks.
    monkeypatch.chdir(ROOT)
    if read_by == "read tasks":
        monkeypatch.setattr(_raydata, "SMALL_INPUT_BYTES", -1)
    outputs = {}
    for engine in ("local", "ray"):
        out = tmp_path / f"{engine}.parquet"
        job = load_job(ROOT / "jobs" / "demo.toml", sets=[f'output.path="{out}"'])
        with EmulatorProcess(["--seed", SEED], quiet=True) as emu:
            summary = _run(job, emu, engine=engine, ray_workers=2)
        assert summary.exit_code == 0, summary
        outputs[engine] = pq.read_table(out)
    _assert_same_rows(outputs["local"], outputs["ray"])
    # Only the local engine records what its output was written from (to keep an output
    # that nothing changed, `store.batchdone.WRITTEN_FROM_KEY`); every other key is the same.
    local_keys = set(pq.read_metadata(tmp_path / "local.parquet").metadata)
    local_keys.discard(WRITTEN_FROM_KEY.encode())
    assert set(pq.read_metadata(tmp_path / "ray.parquet").metadata) == local_keys


def test_20k_rows_equal_the_local_engine_and_workers_together_keep_the_rpm(
    ray_address: str, big_input: Path, big_reference: pa.Table, tmp_path: Path
) -> None:
    out = tmp_path / "ray.parquet"
    # The API enforces the job's limit too: a worker overshooting it would meet 429s.
    with EmulatorProcess(["--seed", SEED, "--rpm", str(BIG_RPM)], quiet=True) as emu:
        summary = _run(_big_job(big_input, out), emu, engine="ray", ray_workers=2)
        ledger = emu.ledger()
    assert summary.exit_code == 0, summary
    assert ledger["max_requests_in_60s"] <= BIG_RPM
    assert ledger["rate_limited"] == 0
    assert ledger["requests_billed"] == BIG_ROWS
    _assert_same_rows(big_reference, pq.read_table(out))


def test_a_killed_driver_resumes_without_paying_twice_beyond_in_flight(
    ray_address: str, big_input: Path, big_reference: pa.Table, tmp_path: Path
) -> None:
    rows, rpm, concurrency = 1500, 6000, 16
    with EmulatorProcess(["--seed", SEED, "--rpm", str(rpm)], quiet=True) as emu:
        command = _driver_command(
            tmp_path, big_input, emu, ray_address, rows, rpm,
            "--set", f"limits.concurrency={concurrency}",
        )  # fmt: skip
        driver = subprocess.Popen(command, cwd=tmp_path, env=_driver_env(), stderr=subprocess.PIPE)
        _wait_for_answers(_store(tmp_path), at_least=400, driver=driver)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        resumed = subprocess.run(
            command, cwd=tmp_path, env=_driver_env(), capture_output=True, timeout=240
        )
        ledger = emu.ledger()
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    # Re-sent after the kill: at most those in flight plus about a second of answers.
    assert ledger["duplicates_billed"] <= concurrency + rpm / 60
    assert ledger["requests_billed"] == rows + ledger["duplicates_billed"]
    first_rows = big_reference.slice(0, rows)
    resumed_table = pq.read_table(tmp_path / "out" / f"items.limit-{rows}.parquet")
    # Rows re-sent after the kill were paid for twice: their attempts are what differs.
    _assert_same_rows(
        first_rows.drop_columns(["attempts"]), resumed_table.drop_columns(["attempts"])
    )


def test_an_interrupted_driver_writes_what_finished_and_exits_130(
    ray_address: str, big_input: Path, tmp_path: Path
) -> None:
    rows, rpm = 1500, 6000
    with EmulatorProcess(["--seed", SEED, "--rpm", str(rpm)], quiet=True) as emu:
        command = _driver_command(tmp_path, big_input, emu, ray_address, rows, rpm)
        driver = subprocess.Popen(command, cwd=tmp_path, env=_driver_env(), stderr=subprocess.PIPE)
        _wait_for_answers(_store(tmp_path), at_least=300, driver=driver)
        driver.send_signal(signal.SIGINT)
        assert driver.wait(timeout=120) == 130, driver.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        saved = _answers_in(_store(tmp_path))
    table = pq.read_table(tmp_path / "out" / f"items.limit-{rows}.parquet")  # --limit's own
    statuses = Counter(table.column("status").to_pylist())
    assert set(statuses) == {"ok", "pending"}, statuses
    # A worker killed mid-commit may land its last answers just after the output is read.
    assert 300 <= statuses["ok"] <= saved
    assert statuses["ok"] + statuses["pending"] == rows


def _driver_env() -> dict[str, str]:
    # Read when called: starting the module's Ray instance adds to os.environ.
    return {**os.environ, "MODELSTREAM_API_KEY": KEY, "RAY_USAGE_STATS_ENABLED": "0"}


def _driver_command(
    workdir: Path,
    big_input: Path,
    emu: EmulatorProcess,
    ray_address: str,
    rows: int,
    rpm: int,
    *extra: str,
) -> list[str]:
    """``batchrun run`` of the big job's first ``rows`` rows on 2 Ray workers, in ``workdir``."""
    job_file = workdir / "job.toml"
    job_file.write_text(_BIG_JOB)
    shutil.copy(big_input, workdir / "items.parquet")
    return [
        sys.executable, "-m", "batchrun", "run", str(job_file), "--engine", "ray",
        "--ray-address", ray_address, "--ray-workers", "2", "--limit", str(rows),
        "--set", f'api.base_url="{emu.base_url}"', "--set", f"limits.requests_per_minute={rpm}",
        "--quiet", *extra,
    ]  # fmt: skip


def _store(workdir: Path) -> Path:
    """The Ray workers' checkpoint directory of the job ``_driver_command`` writes."""
    return workdir / "out" / "items.parquet.ckpt.sqlite.ray"


def _wait_for_answers(store: Path, *, at_least: int, driver: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        if _answers_in(store) >= at_least:
            return
        time.sleep(0.2)
    raise AssertionError(f"fewer than {at_least} answers in {store} after 120 s")


def _answers_in(store: Path) -> int:
    total = 0
    for path in store.glob("*.sqlite"):
        try:
            with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as conn:
                total += conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        except sqlite3.Error:
            pass  # still being created
    return total


def test_the_budget_holds_across_workers(
    ray_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("batchrun.engines.ray.engine.BATCH_ROWS", 64)
    monkeypatch.chdir(ROOT)
    out = tmp_path / "ray.parquet"
    budget = 0.05  # about a third of what the demo costs
    job = load_job(
        ROOT / "jobs" / "demo.toml",
        sets=[f'output.path="{out}"', f"limits.max_cost_usd={budget}"],
    )
    with EmulatorProcess(["--seed", SEED], quiet=True) as emu:
        summary = _run(job, emu, engine="ray", ray_workers=2)
    assert summary.exit_code == 3
    table = pq.read_table(out)
    assert 0 < sum(c for c in table["cost_usd"].to_pylist() if c) <= budget
    assert "pending" in table["status"].to_pylist()


def test_a_pause_pushed_by_one_worker_holds_back_another(ray_address: str) -> None:
    import anyio

    from batchrun.engines.ray.coordinator import Coordinator
    from batchrun.engines.ray.engine import SharedGate

    coordinator = ray.remote(num_cpus=0)(Coordinator).remote(2, None)
    ray.get(coordinator.resume_time.remote())  # the actor is up: its start is not the pause
    first, second = SharedGate(coordinator), SharedGate(coordinator)
    first.pause_for(1.0)
    time.sleep(0.1)  # the push is one-way; let it land
    started = time.monotonic()
    anyio.run(second.wait)
    assert time.monotonic() - started >= 0.7


def test_without_an_id_column_the_ray_engine_refuses_before_sending(
    ray_address: str, tmp_path: Path
) -> None:
    from batchrun._errors import JobError

    text = _BIG_JOB.replace('id_column = "id"\n', "")
    job = _big_job(tmp_path / "missing.parquet", tmp_path / "o.parquet", text=text)
    with pytest.raises(JobError, match="id_column"):
        run_job(job, RunOptions(engine="ray", api_key=KEY))


# --- global limits, the budget and one store (issues 11, 12, 16) ---------------------


def test_more_workers_than_concurrency_keep_the_jobs_concurrency(
    ray_address: str, big_input: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One row a batch: all four workers have work at once, with two slots between them.
    monkeypatch.setattr("batchrun.engines.ray.engine.BATCH_ROWS", 1)
    out = tmp_path / "ray.parquet"
    job = _big_job(big_input, out, "limits.concurrency=2", "limits.requests_per_minute=600000")
    with EmulatorProcess(["--seed", SEED, "--latency-ms", "1000"], quiet=True) as emu:
        summary = _run(job, emu, engine="ray", ray_workers=4, limit=12)
        ledger = emu.ledger()
    assert summary.exit_code == 0, summary
    assert ledger["requests_billed"] == 12
    assert ledger["max_in_flight"] == 2, ledger["max_in_flight"]  # held, and used
    print(f"4 workers, concurrency 2: max in flight {ledger['max_in_flight']}")


def test_an_rpm_below_the_worker_count_holds_from_the_first_minute(
    ray_address: str, big_input: Path, tmp_path: Path
) -> None:
    rpm = 2  # four workers with a row each: before, each sent one at once
    with EmulatorProcess(["--seed", SEED], quiet=True) as emu:
        command = _driver_command(tmp_path, big_input, emu, ray_address, 4, rpm)
        command[command.index("--ray-workers") + 1] = "4"
        script = (
            "import sys, batchrun.engines.ray.engine as r; r.BATCH_ROWS = 1;"
            " from batchrun.cli import main; sys.exit(main(sys.argv[1:]))"
        )
        command[1:3] = ["-c", script]  # python -m batchrun ... with one row a batch
        driver = subprocess.Popen(command, cwd=tmp_path, env=_driver_env(), stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while emu.ledger()["requests_received"] < 1:
                assert driver.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
            time.sleep(5)  # the first minute allows two, 30 s apart
            driver.send_signal(signal.SIGINT)
            assert driver.wait(timeout=60) == 130, driver.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        finally:
            driver.kill()
        ledger = emu.ledger()
    assert ledger["max_requests_in_60s"] <= rpm, ledger["max_requests_in_60s"]
    print(f"4 workers, RPM {rpm}: max requests in 60 s {ledger['max_requests_in_60s']}")


def test_a_slice_held_by_one_worker_does_not_stop_the_job_early(
    ray_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchrun._types import Request
    from batchrun.io.input import open_input
    from batchrun.send.budget import Budget
    from batchrun.send.requests import RequestBuilder, built_batches

    monkeypatch.setattr("batchrun.engines.ray.engine.BATCH_ROWS", 8)
    monkeypatch.chdir(ROOT)
    out = tmp_path / "ray.parquet"
    budget = 0.05
    job = load_job(
        ROOT / "jobs" / "demo.toml",
        sets=[f'output.path="{out}"', f"limits.max_cost_usd={budget}"],
    )
    with EmulatorProcess(["--seed", SEED], quiet=True) as emu:
        summary = _run(job, emu, engine="ray", ray_workers=4)
        ledger = emu.ledger()
    assert summary.exit_code == 3, summary
    spent = _charges(out.parent / f"{out.name}.ckpt.sqlite.ray")
    table = open_input(job)
    builder = RequestBuilder(job, table.schema)
    worst = max(
        Budget(budget, job.price).worst_case(item)
        for _, items in built_batches(table, builder)
        for item in items
        if isinstance(item, Request)
    )
    # Stopped only when what was left could not pay for one more request.
    assert budget - worst < spent <= budget, (spent, worst)
    assert summary.run_cost_usd == pytest.approx(spent)
    print(
        f"budget ${budget}, spent ${spent:.5f}, worst case ${worst:.5f},"
        f" billed {ledger['requests_billed']} requests"
    )


def _charges(store: Path) -> float:
    total = 0.0
    for path in store.glob("*.sqlite"):
        with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as conn:
            total += spent(conn)  # the charges table and the answers' own (m006)
    return total


def test_local_and_ray_runs_share_one_store(
    ray_address: str, big_input: Path, tmp_path: Path
) -> None:
    from batchrun.plan.planner import plan_job

    out = tmp_path / "items.parquet"
    job = _big_job(big_input, out)
    with EmulatorProcess(["--seed", SEED], quiet=True) as emu:
        local = _run(job, emu, limit=10)
        ray_run = _run(job, emu, engine="ray", ray_workers=2, limit=20)
        after_ray = emu.ledger()["requests_billed"]
        local_again = _run(job, emu, limit=30)
        ledger = emu.ledger()
    assert (local.exit_code, ray_run.exit_code, local_again.exit_code) == (0, 0, 0)
    assert after_ray == 20  # Ray sent only the 10 the local run had not answered
    assert ledger["requests_billed"] == 30  # and the local run only the 10 after those
    assert ray_run.run_cost_usd is not None and ray_run.run_cost_usd > 0
    assert ray_run.run_cost_usd == pytest.approx(_charges(Path(f"{out}.ckpt.sqlite.ray")))
    assert plan_job(job).counts.done == 30  # plan sees both engines' answers
    with EmulatorProcess(["--seed", SEED], quiet=True) as emu:
        fresh = _run(job, emu, engine="ray", ray_workers=2, limit=5, fresh=True)
        assert emu.ledger()["requests_billed"] == 5  # --fresh cleared both stores
    assert fresh.exit_code == 0


# --- dedupe across workers (issue 16) ------------------------------------------------


def test_identical_requests_on_two_workers_are_sent_once(
    ray_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One row a batch, each prompt in two neighbouring rows: the two workers get the
    # two copies at the same moment (1 s answers), so each would send its own.
    monkeypatch.setattr("batchrun.engines.ray.engine.BATCH_ROWS", 1)
    rows = 16
    ids = [f"item-{i:05d}" for i in range(rows)]
    texts = [f"item {i // 2} arrived late" for i in range(rows)]
    source = tmp_path / "dupes.parquet"
    pq.write_table(pa.table({"id": ids, "text": texts}), source)
    out = tmp_path / "ray.parquet"
    job = _big_job(source, out, "limits.requests_per_minute=600000")
    with EmulatorProcess(["--seed", SEED, "--latency-ms", "1000"], quiet=True) as emu:
        summary = _run(job, emu, engine="ray", ray_workers=2)
        ledger = emu.ledger()
    assert summary.exit_code == 0, summary
    assert ledger["duplicates_billed"] == 0, ledger
    assert ledger["requests_billed"] == rows // 2
    table = pq.read_table(out)
    assert set(table["status"].to_pylist()) == {"ok"}
    assert table["response"].to_pylist()[0::2] == table["response"].to_pylist()[1::2]
