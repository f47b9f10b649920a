"""The Ray engine on an object store: input and output ``s3://`` URIs
on a real S3 server on loopback (moto, the ``store`` fixture), 2 workers, the workers'
checkpoints kept on the local state directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from conftest import API_KEY, write_job

pytest.importorskip("ray")
pytestmark = pytest.mark.ray


def test_ray_reads_and_writes_s3_uris_with_local_checkpoints(
    store: dict[str, Any], tmp_path: Path, emulator: Any
) -> None:
    emu = emulator()
    job = write_job(tmp_path / "job", rows=40)
    bucket, client = store["bucket"], store["client"]
    client.upload_file(str(job.parent / "input.csv"), bucket, "in/input.csv")
    out = f"s3://{bucket}/out/date=2026-11-30/out.parquet"
    done = _ray_run(job, emu, store, f"input.path={f's3://{bucket}/in/'}", f"output.path={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    table = pq.read_table(out.removeprefix("s3://"), filesystem=_s3fs())
    assert table["id"].to_pylist() == [f"r{i:05d}" for i in range(40)]
    assert set(table["status"].to_pylist()) == {"ok"}
    assert table.schema.metadata[b"batchrun.job"] == b"test-job"
    assert emu.ledger()["requests_received"] == 40
    # SQLite stays local: the workers' checkpoints are under the state directory.
    state = Path(store["env"]["XDG_STATE_HOME"]) / "batchrun"
    assert list(state.glob("out-*/ckpt.sqlite.ray/worker-*.sqlite"))


def _ray_run(
    job: Path, emu: Any, store: dict[str, Any], *sets: str
) -> subprocess.CompletedProcess[str]:
    options = [f'api.base_url="{emu.base_url}"', *sets]
    command = [sys.executable, "-m", "batchrun", "run", job.name, "--engine", "ray"]
    command += ["--ray-workers", "2", "--quiet", *(a for s in options for a in ("--set", s))]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")}
    return subprocess.run(
        command,
        cwd=job.parent,
        env={**env, **store["env"], "MODELSTREAM_API_KEY": API_KEY},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _s3fs() -> pafs.S3FileSystem:
    return pafs.S3FileSystem(
        endpoint_override=os.environ["AWS_ENDPOINT_URL"].removeprefix("http://"),
        scheme="http",
        region="us-east-1",
    )
