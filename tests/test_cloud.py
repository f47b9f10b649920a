"""Object stores: s3:// input, output and report against a real S3 server on loopback.

moto runs in server mode on 127.0.0.1 (a real HTTP server speaking S3); batchrun reaches
it only through the standard environment (``AWS_ENDPOINT_URL`` and dummy credentials),
in this process and in the ``batchrun`` subprocesses alike. Nothing here mocks pyarrow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from conftest import API_KEY, review_rows, wait_for_requests, write_csv, write_job

from batchrun.emulator import EmulatorProcess
from batchrun.report.aggregate import report

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "jobs" / "demo.toml"


def s3fs() -> pafs.S3FileSystem:
    return pafs.S3FileSystem(
        endpoint_override=os.environ["AWS_ENDPOINT_URL"].removeprefix("http://"),
        scheme="http",
        region="us-east-1",
    )


def keys(store: dict[str, Any]) -> list[str]:
    """The bucket's objects, less the empty ``prefix/`` markers pyarrow.fs leaves when it
    deletes an object (a "directory" to every S3 tool; readers skip them)."""
    listed = store["client"].list_objects_v2(Bucket=store["bucket"])
    return sorted(o["Key"] for o in listed.get("Contents", []) if not o["Key"].endswith("/"))


def upload(store: dict[str, Any], key: str, path: Path) -> str:
    store["client"].upload_file(str(path), store["bucket"], key)
    return f"s3://{store['bucket']}/{key}"


def batchrun(
    cwd: Path, store: dict[str, Any], *args: str, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **store["env"], "MODELSTREAM_API_KEY": API_KEY}
    return subprocess.run(
        [sys.executable, "-m", "batchrun", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_output(uri: str) -> pa.Table:
    return pq.read_table(uri.removeprefix("s3://"), filesystem=s3fs())


# --- the demo job, input and output in the bucket ----------------------------------------


def test_demo_job_reads_and_writes_the_bucket(
    store: dict[str, Any], tmp_path: Path, emulator: Any
) -> None:
    emu = emulator()
    source = upload(store, "in/reviews.csv", REPO / "sample_data" / "reviews.csv")
    out = f"s3://{store['bucket']}/out/date=2026-11-25/reviews.parquet"
    sets = [f"input.path={source}", f"output.path={out}", f'api.base_url="{emu.base_url}"']
    done = batchrun(tmp_path, store, "run", str(DEMO), "--quiet", *_sets(sets, rpm=60000))
    assert done.returncode == 0, done.stderr
    table = read_output(out)
    assert table.num_rows == 300 and set(table["status"].to_pylist()) == {"ok"}
    assert table.schema.metadata[b"batchrun.job"] == b"reviews-sentiment"
    # Nothing but the input and the output in the bucket: no temp object left.
    assert keys(store) == ["in/reviews.csv", "out/date=2026-11-25/reviews.parquet"]
    # The checkpoint went to the local state directory, not beside the object.
    assert list((tmp_path / "state" / "batchrun").glob("reviews-*/ckpt.sqlite"))
    listed = report([f"s3://{store['bucket']}/out/"], by=["date"])
    assert list(listed.table["rows"]) == [300, 300]


def test_only_the_output_object_appears_under_the_output_prefix(
    store: dict[str, Any], tmp_path: Path, emulator: Any
) -> None:
    emu = emulator()
    job = write_job(tmp_path, rows=50)
    out = f"s3://{store['bucket']}/out/date=2026-11-25/reviews.parquet"
    args = [job.name, f"--set=output.path={out}", f'--set=api.base_url="{emu.base_url}"']
    for extra in ([], ["--retry-failed"], ["--fresh"]):  # written, kept, written again
        done = batchrun(tmp_path, store, "run", *args, "--quiet", *extra)
        assert done.returncode == 0, done.stderr
        listed = store["client"].list_objects_v2(Bucket=store["bucket"])
        assert [o["Key"] for o in listed["Contents"]] == ["out/date=2026-11-25/reviews.parquet"]
    assert read_output(out).num_rows == 50


def _sets(sets: list[str], *, rpm: int) -> list[str]:
    args = [f"--set={item}" for item in sets]
    return [*args, f"--set=limits.requests_per_minute={rpm}"]


def test_plan_and_shards_work_on_uris(store: dict[str, Any], tmp_path: Path, emulator: Any) -> None:
    emu = emulator()
    job = write_job(tmp_path, rows=40)
    source = upload(store, "in/input.csv", tmp_path / "input.csv")
    out = f"s3://{store['bucket']}/out/o.parquet"
    sets = [f"--set=input.path={source}", f"--set=output.path={out}"]
    plan = batchrun(tmp_path, store, "plan", job.name, *sets, "--format", "json")
    assert plan.returncode == 0 and '"rows": 40' in plan.stdout, plan.stderr + plan.stdout
    base = f'--set=api.base_url="{emu.base_url}"'
    for shard in ("0/2", "1/2"):
        done = batchrun(tmp_path, store, "run", job.name, *sets, base, "--shard", shard, "--quiet")
        assert done.returncode == 0, done.stderr
    assert keys(store) == [
        "in/input.csv",
        "out/o.shard-0-of-2.parquet",
        "out/o.shard-1-of-2.parquet",
    ]
    total = report([f"s3://{store['bucket']}/out/o.shard-*.parquet"]).table
    assert int(total["rows"].iloc[-1]) == 40


# --- report over a hive-partitioned prefix -----------------------------------------------


def test_report_over_a_hive_prefix_types_the_keys(store: dict[str, Any], tmp_path: Path) -> None:
    from test_report import output_table

    for hour in (2, 10):
        local = tmp_path / f"{hour}.parquet"
        pq.write_table(output_table(10, hour), local)
        upload(store, f"out/hour={hour}/part.parquet", local)
    upload(store, "out/hour=2/_SUCCESS", tmp_path / "2.parquet")  # a marker: skipped
    prefix = f"s3://{store['bucket']}/out/"
    assert list(report([prefix], by=["hour"]).table["hour"]) == [2, 10, "TOTAL"]
    args = ["report", f"{prefix}hour=*/", "--by", "hour", "--format", "csv"]
    done = batchrun(tmp_path, store, *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].startswith("group,2,10,")


# --- errors: one line naming the URI and the cause, exit 2, nothing sent ----------------


@pytest.mark.parametrize(
    ("path", "cause"),
    [
        ("s3://no-such-bucket-here/in.csv", "no such bucket"),
        ("s3://{bucket}/missing.csv", "no such key"),
        ("s3://{bucket}/in/*.parquet", "no .csv or .parquet files match"),
    ],
)
def test_a_missing_input_exits_2_naming_the_uri_before_sending(
    store: dict[str, Any], tmp_path: Path, emulator: Any, path: str, cause: str
) -> None:
    emu = emulator()
    job = write_job(tmp_path, rows=5)
    uri = path.format(bucket=store["bucket"])
    base = f'--set=api.base_url="{emu.base_url}"'
    done = batchrun(tmp_path, store, "run", job.name, f"--set=input.path={uri}", base)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert uri in line and cause in line
    assert "testing-secret-value" not in done.stderr
    assert emu.ledger()["requests_received"] == 0


def test_an_unreachable_endpoint_exits_2(
    store: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store["env"]["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"  # discard port: nothing listens
    done = batchrun(tmp_path, store, "report", f"s3://{store['bucket']}/out/")
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert f"s3://{store['bucket']}/out/" in line and "endpoint unreachable" in line


# --- atomic replacement, a killed run ------------------------------------------------------


def test_a_reader_sees_the_old_output_or_the_new_never_part(
    store: dict[str, Any], tmp_path: Path, emulator: Any
) -> None:
    emu = emulator()
    job = write_job(tmp_path, rows=3000)
    out = f"s3://{store['bucket']}/out/o.parquet"
    args = [job.name, f"--set=output.path={out}", f'--set=api.base_url="{emu.base_url}"']
    write_csv(tmp_path / "first.csv", review_rows(100))  # a first output of 100 rows
    first = [*args, "--set=input.path=first.csv", "--quiet"]
    assert batchrun(tmp_path, store, "run", *first).returncode == 0
    seen: set[int] = set()
    errors: list[Exception] = []
    stop = threading.Event()

    def read_repeatedly() -> None:
        # Each read is one GET of the whole object, held while the writer swaps: it must
        # be the old object or the new one, whole (a part of one would not parse).
        while not stop.is_set():
            try:
                # boto3: one GET. pyarrow's stream reads by ranges sized from a HEAD, and
                # ranges across a swap mix two objects on any S3 (see the object stores page).
                got = store["client"].get_object(Bucket=store["bucket"], Key="out/o.parquet")
                data = got["Body"].read()
                seen.add(pq.read_table(pa.BufferReader(data)).num_rows)
            except Exception as exc:
                errors.append(exc)
                return

    reader = threading.Thread(target=read_repeatedly)
    reader.start()
    try:
        done = batchrun(tmp_path, store, "run", *args, "--quiet")
    finally:
        stop.set()
        reader.join()
    assert done.returncode == 0, done.stderr
    assert not errors and seen <= {100, 3000} and 100 in seen
    assert read_output(out).num_rows == 3000
    assert keys(store) == ["out/o.parquet"]


def test_a_killed_run_resumes_and_leaves_no_temp_object(
    store: dict[str, Any], tmp_path: Path, emulators: Any
) -> None:
    emu: EmulatorProcess = emulators.get("--latency-ms", "300")
    job = write_job(tmp_path, rows=200, limits={"concurrency": 8})
    out = f"s3://{store['bucket']}/out/o.parquet"
    args = [job.name, f"--set=output.path={out}", f'--set=api.base_url="{emu.base_url}"']
    # What a run killed while writing leaves: a dot-named temp object beside the output.
    store["client"].put_object(Bucket=store["bucket"], Key="out/.o.parquet.4242-0a1b2c3d.tmp")
    env = {**os.environ, **store["env"], "MODELSTREAM_API_KEY": API_KEY}
    command = [sys.executable, "-m", "batchrun", "run", *args, "--quiet"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    wait_for_requests(emu, 40)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert "out/o.parquet" not in keys(store)
    done = batchrun(tmp_path, store, "run", *args, "--quiet")
    assert done.returncode == 0, done.stderr
    table = read_output(out)
    assert table.num_rows == 200 and set(table["status"].to_pylist()) == {"ok"}
    assert emu.ledger()["requests_received"] < 200 + 40  # the first run's answers were kept
    assert keys(store) == ["out/o.parquet"]


# --- never replace someone else's file ------------------------------------------------------


def test_someone_elses_object_is_not_replaced(
    store: dict[str, Any], tmp_path: Path, emulator: Any
) -> None:
    emu = emulator()
    job = write_job(tmp_path, rows=5)
    precious = tmp_path / "precious.parquet"
    pq.write_table(pa.table({"x": list(range(300))}), precious)
    out = upload(store, "data/precious.parquet", precious)
    args = [job.name, f"--set=output.path={out}", f'--set=api.base_url="{emu.base_url}"']
    done = batchrun(tmp_path, store, "run", *args)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert out in line and "--overwrite" in line
    assert read_output(out).num_rows == 300 and emu.ledger()["requests_received"] == 0
    assert batchrun(tmp_path, store, "run", *args, "--overwrite", "--quiet").returncode == 0
    assert read_output(out).num_rows == 5


def test_an_object_written_at_the_output_uri_during_the_run_is_not_replaced(
    store: dict[str, Any], tmp_path: Path, emulator: Any
) -> None:
    emu = emulator("--latency-ms", "300")
    job = write_job(tmp_path, rows=8, limits={"concurrency": 2})
    out = f"s3://{store['bucket']}/mid/out.parquet"
    args = [job.name, f"--set=output.path={out}", f'--set=api.base_url="{emu.base_url}"']
    env = {**os.environ, **store["env"], "MODELSTREAM_API_KEY": API_KEY}
    command = [sys.executable, "-m", "batchrun", "run", *args, "--quiet"]
    run = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    wait_for_requests(emu, 1)
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"x": list(range(300))}), foreign)
    upload(store, "mid/out.parquet", foreign)

    _, stderr = run.communicate(timeout=90)

    assert run.returncode == 2, stderr
    (kept,) = [k for k in keys(store) if k.startswith("mid/out.") and k != "mid/out.parquet"]
    (line,) = [x for x in stderr.splitlines() if "output.path" in x]
    assert out in line and kept in line
    assert read_output(out).num_rows == 300
    assert read_output(f"s3://{store['bucket']}/{kept}").num_rows == 8


def test_a_local_data_file_is_not_replaced(tmp_path: Path, emulator: Any) -> None:
    emu = emulator()
    job = write_job(tmp_path, rows=5)
    write_csv(tmp_path / "other.csv", [{"id": "a", "text": "b"}])
    precious = tmp_path / "precious.parquet"
    pq.write_table(pa.table({"x": list(range(300))}), precious)
    before = precious.read_bytes()
    args = ["--set=output.path=precious.parquet", f'--set=api.base_url="{emu.base_url}"']
    done = batchrun(tmp_path, {"env": {}}, "run", job.name, *args)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "precious.parquet exists and is not a batchrun output" in line
    assert precious.read_bytes() == before
    # The job's own earlier output is replaced as before.
    again = ["--set=output.path=mine.parquet", f'--set=api.base_url="{emu.base_url}"']
    assert batchrun(tmp_path, {"env": {}}, "run", job.name, *again, "--quiet").returncode == 0
    assert batchrun(tmp_path, {"env": {}}, "run", job.name, *again, "--quiet").returncode == 0
