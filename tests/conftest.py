"""Shared test parts: an emulator factory, a job writer, and `batchrun run` as a subprocess.

def test_x(tmp_path, emulator):
    emu = emulator("--latency-ms", "50")
    job = write_job(tmp_path, rows=200, limits={"concurrency": 8})
    assert run_batchrun(job, emu).returncode == 0
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from batchrun.emulator import EmulatorProcess
from batchrun.job.load import toml_literal

API_KEY = "sk-test"
PRICE = {"input": 1.25, "cached_input": 0.125, "output": 10.0}


class EmulatorPool:
    """Running emulators by flags, shared by the session: a test gets one reset, not restarted
    (a reset empties the ledger, prompt cache, rate windows and fault sequence)."""

    def __init__(self) -> None:
        self._running: dict[tuple[str, ...], EmulatorProcess] = {}

    def get(self, *flags: str) -> EmulatorProcess:
        emu = self._running.get(flags)
        if emu is None:
            emu = self._running[flags] = EmulatorProcess(list(flags), quiet=True).start()
        else:
            emu.reset()
        return emu

    def stop(self) -> None:
        for emu in self._running.values():
            emu.stop()


@pytest.fixture(scope="session")
def emulators() -> Iterator[EmulatorPool]:
    pool = EmulatorPool()
    yield pool
    pool.stop()


@pytest.fixture
def emulator(emulators: EmulatorPool) -> Iterator[Callable[..., EmulatorProcess]]:
    """``emulator(*flags)``: an emulator on a free loopback port, with an empty ledger.

    The same flags asked for twice in one test give two separate emulators.
    """
    handed_out: set[tuple[str, ...]] = set()
    private: list[EmulatorProcess] = []

    def get(*flags: str) -> EmulatorProcess:
        if flags not in handed_out:
            handed_out.add(flags)
            return emulators.get(*flags)
        private.append(EmulatorProcess(list(flags), quiet=True).start())
        return private[-1]

    yield get
    for emu in private:
        emu.stop()


def wait_for_requests(emu: EmulatorProcess, at_least: int, timeout: float = 20.0) -> int:
    """Block until the emulator has received ``at_least`` requests in all."""
    deadline = time.monotonic() + timeout
    while (received := emu.ledger()["requests_received"]) < at_least:
        assert time.monotonic() < deadline, f"only {received} requests after {timeout} s"
        time.sleep(0.01)
    return received


def billed_usd(ledger: Mapping[str, Any]) -> float:
    """What the emulator billed, at the job's prices (its ``prompt`` includes ``cached``)."""
    tokens = ledger["tokens"]
    micro = (
        (tokens["prompt"] - tokens["cached"]) * PRICE["input"]
        + tokens["cached"] * PRICE["cached_input"]
        + tokens["completion"] * PRICE["output"]
    )
    return micro / 1_000_000


# --- job files -----------------------------------------------------------------------


def review_rows(count: int) -> list[dict[str, str]]:
    """``count`` distinct, real-looking rows with an ``id`` and a ``text`` column."""
    moods = ("great value", "arrived broken", "fine, nothing special", "slow delivery")
    return [{"id": f"r{i:05d}", "text": f"Review {i}: {moods[i % 4]}."} for i in range(count)]


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_job(
    tmp_path: Path, *, rows: int | Sequence[Mapping[str, Any]] = 200, **overrides: Any
) -> Path:
    """A job file over a CSV input in ``tmp_path``; ``overrides`` merge into its sections.

    Paths in it are relative (``input.csv``, ``out.parquet``): runs start in ``tmp_path``,
    so a copy of the directory is a copy of the job, its output and its checkpoint.

    ``write_job(tmp_path, rows=50, limits={"max_attempts": 1})``
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = review_rows(rows) if isinstance(rows, int) else rows
    source = write_csv(tmp_path / "input.csv", data)
    job: dict[str, dict[str, Any]] = {
        "job": {"name": "test-job"},
        "input": {"path": source.name, "id_column": "id"},
        "request": {"model": "gpt-5.5", "prompt": "Label: {text}", "max_completion_tokens": 16},
        "limits": {"concurrency": 16, "max_attempts": 3},
        "output": {"path": "out.parquet"},
        'pricing."gpt-5.5"': dict(PRICE),
    }
    for section, values in overrides.items():
        job.setdefault(section, {}).update(values)
    path = tmp_path / "job.toml"
    path.write_text(job_toml(job), encoding="utf-8")
    return path


def job_toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """A job file's text from ``{section: {key: value}}`` (values as ``--set`` writes them)."""
    return "".join(
        f"[{name}]\n" + "".join(f"{key} = {toml_literal(value)}\n" for key, value in values.items())
        for name, values in sections.items()
    )


# --- batchrun run as a subprocess ----------------------------------------------------


def batchrun_command(job: Path, emu: EmulatorProcess, *args: str, moved: bool = True) -> list[str]:
    """``moved``: pass ``--endpoint-moved``, as most tests move a job between emulators
    (a new port each) to count what each run sends; tests of endpoints pass False."""
    base_url = f'api.base_url="{emu.base_url}"'
    flags = ["--endpoint-moved"] if moved and "--emulate" not in args else []
    return [sys.executable, "-m", "batchrun", "run", job.name, "--set", base_url, *flags, *args]


def batchrun_env(key: str = API_KEY) -> dict[str, str]:
    return {**os.environ, "MODELSTREAM_API_KEY": key}


def run_batchrun(
    job: Path,
    emu: EmulatorProcess,
    *args: str,
    key: str = API_KEY,
    timeout: float = 60,
    moved: bool = True,
) -> subprocess.CompletedProcess[str]:
    """``batchrun run JOB --set api.base_url=<emulator> ARGS...`` in the job's directory."""
    return subprocess.run(
        batchrun_command(job, emu, *args, moved=moved),
        cwd=job.parent,
        env=batchrun_env(key),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_batchrun(
    job: Path, emu: EmulatorProcess, *args: str, key: str = API_KEY
) -> subprocess.Popen[str]:
    """The same command in the background (stderr captured), for signals and locks."""
    return subprocess.Popen(
        batchrun_command(job, emu, *args),
        cwd=job.parent,
        env=batchrun_env(key),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


# --- an S3 server on loopback (object stores) ------------------------------------------


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """A real S3 server (moto in server mode) on loopback, for the module."""
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def store(
    endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """A fresh bucket; the environment (here and for subprocesses) points at the server."""
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-value",
        "AWS_REGION": "us-east-1",
        # Never ask a cloud metadata service (a non-loopback address) for anything.
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bucket = f"b-{os.getpid()}-{len(list(tmp_path.parent.iterdir()))}"
    boto3 = pytest.importorskip("boto3")
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=bucket)
    yield {"bucket": bucket, "client": client, "env": env}
