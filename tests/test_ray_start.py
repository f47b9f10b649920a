"""Starting Ray (no traceback at start): a long ``TMPDIR`` does not kill
``--engine ray``; a ``RAY_TMPDIR`` too long for Ray's sockets is one line, exit 2."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import API_KEY, batchrun_command, write_job

from batchrun._errors import JobError
from batchrun.engines.ray.start import local_temp_dir

pytest.importorskip("ray")
pytestmark = pytest.mark.ray


def _long_dir(tmp_path: Path) -> Path:
    long = tmp_path / ("t" * 60) / ("m" * 60)
    long.mkdir(parents=True)
    assert len(str(long)) > 120
    return long


def _run(job: Path, emu: Any, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = batchrun_command(job, emu, "--engine", "ray", "--ray-workers", "1", "--quiet")
    return subprocess.run(
        command,
        cwd=job.parent,
        env={**_base_env(), "MODELSTREAM_API_KEY": API_KEY, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_long_tmpdir_starts_ray_under_a_short_temp_dir(tmp_path: Path, emulator: Any) -> None:
    job = write_job(tmp_path / "job", rows=5)
    done = _run(job, emulator(), {"TMPDIR": str(_long_dir(tmp_path))})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert pq.read_table(job.parent / "out.parquet")["status"].to_pylist() == ["ok"] * 5


def test_a_ray_tmpdir_too_long_is_one_line_and_exit_2(tmp_path: Path, emulator: Any) -> None:
    emu = emulator()
    job = write_job(tmp_path / "job", rows=5)
    done = _run(job, emu, {"RAY_TMPDIR": str(_long_dir(tmp_path))})
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "RAY_TMPDIR" in lines[0] and "Traceback" not in done.stderr
    assert emu.ledger()["requests_received"] == 0


def test_the_temp_dir_chosen_for_ray() -> None:
    assert local_temp_dir({"TMPDIR": "/tmp"}) == {}
    assert local_temp_dir({}) == {}
    assert local_temp_dir({"TMPDIR": "/x" * 40}) == {"_temp_dir": "/tmp/ray"}
    assert local_temp_dir({"TMPDIR": "/x" * 40, "RAY_TMPDIR": "/tmp/r"}) == {}
    with pytest.raises(JobError, match="RAY_TMPDIR"):
        local_temp_dir({"RAY_TMPDIR": "/x" * 40})


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("RAY_TMPDIR", "RAY_ADDRESS")}


def test_a_local_ray_is_a_new_instance_even_with_another_running(monkeypatch: Any) -> None:
    # Without an address, ray.init joins the instance /tmp/ray/ray_current_cluster names
    # (another user's, or a test cluster's) and dies on num_cpus ("When connecting to an
    # existing cluster, num_cpus ... must not be provided"). Starting a second real
    # instance here would be that machine-wide file's business, so ray.init is recorded.
    import ray

    from batchrun.engines.ray.start import ray_session

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with ray_session(None):
        pass
    assert calls[0]["address"] == "local"
