"""Object stores with auth enforced: denied objects and wrong credentials, one line each.

A moto server of its own (a subprocess, so its IAM enforcement cannot leak into the shared
``endpoint`` server of test_cloud.py) on 127.0.0.1. The bucket, an IAM user, its access key
and a policy that denies ``s3:GetObject`` under ``secret/`` are made while moto still lets
anything through; then ``/moto-api/reset-auth`` with 0 makes every later request be signed
by a known key and allowed by its policy, as on S3. Nothing here mocks pyarrow.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import API_KEY, write_job

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

BUCKET = "auth-bucket"
DENY_SECRET_READS = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/secret/*"},
    ],
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_up(endpoint: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the moto server did not start")


def _enforce_auth(endpoint: str) -> None:
    # The body is the number of requests still let through unchecked (text: werkzeug
    # would eat a form body).
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=b"0",
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    urllib.request.urlopen(request, timeout=10).close()


def _seed(endpoint: str, tmp: Path) -> dict[str, str]:
    """The bucket, two copies of one Parquet file (one denied) and the user's key."""
    admin = {"aws_access_key_id": "admin", "aws_secret_access_key": "admin-secret"}
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **admin)
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", **admin)
    s3.create_bucket(Bucket=BUCKET)
    data = tmp / "input.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["x", "y"]}), data)
    for prefix in ("open", "secret"):
        s3.upload_file(str(data), BUCKET, f"{prefix}/input.parquet")
    iam.create_user(UserName="reader")
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    iam.put_user_policy(
        UserName="reader", PolicyName="no-secret", PolicyDocument=json.dumps(DENY_SECRET_READS)
    )
    return {
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
    }


@pytest.fixture(scope="module")
def auth_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An S3 server on loopback that checks signatures and IAM policies."""
    port = _free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(endpoint, proc)
        tmp = tmp_path_factory.mktemp("auth")
        keys = _seed(endpoint, tmp)
        _enforce_auth(endpoint)
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
            "XDG_STATE_HOME": str(tmp / "state"),
            **keys,
        }
        yield {"endpoint": endpoint, "env": env}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def batchrun(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run(
        [sys.executable, "-m", "batchrun", *args],
        cwd=cwd,
        env={**clean, **env, "MODELSTREAM_API_KEY": API_KEY},
        capture_output=True,
        text=True,
        timeout=90,
    )


def one_line(done: subprocess.CompletedProcess[str], secret: str) -> str:
    """The single stderr line of a refused command, with no secret in any output."""
    assert done.returncode == 2, done.stderr
    assert secret not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    return line


def run_on(
    tmp_path: Path, env: dict[str, str], emu: Any, *sets: str
) -> subprocess.CompletedProcess[str]:
    job = write_job(tmp_path, rows=5)
    base = f'--set=api.base_url="{emu.base_url}"'
    return batchrun(tmp_path, env, "run", job.name, base, *(f"--set={s}" for s in sets))


def test_the_user_can_read_what_the_policy_allows(
    auth_store: dict[str, Any], tmp_path: Path
) -> None:
    # The fixture is sound: the same key reads the open prefix (so the denials below are
    # the policy's and the signature check's, not a broken setup).
    done = batchrun(tmp_path, auth_store["env"], "report", f"s3://{BUCKET}/open/input.parquet")
    # (it is input, not output: report reads its footer, then says so)
    assert "not a batchrun output" in done.stderr, done.stderr


def test_a_denied_input_object_exits_2_before_sending(
    auth_store: dict[str, Any], tmp_path: Path, emulator: Any
) -> None:
    emu = emulator()
    env = auth_store["env"]
    uri = f"s3://{BUCKET}/secret/input.parquet"
    line = one_line(run_on(tmp_path, env, emu, f"input.path={uri}"), env["AWS_SECRET_ACCESS_KEY"])
    assert uri in line and "access denied" in line
    assert emu.ledger()["requests_received"] == 0


@pytest.mark.parametrize("wrong", ["secret", "key id"])
def test_wrong_credentials_exit_2_in_one_line(
    auth_store: dict[str, Any], tmp_path: Path, emulator: Any, wrong: str
) -> None:
    emu = emulator()
    env = dict(auth_store["env"])
    if wrong == "secret":
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-right-secret-value"
    else:
        env["AWS_ACCESS_KEY_ID"] = "AKIANOSUCHKEY0000000"
    uri = f"s3://{BUCKET}/open/input.parquet"
    line = one_line(run_on(tmp_path, env, emu, f"input.path={uri}"), env["AWS_SECRET_ACCESS_KEY"])
    assert uri in line and "credentials" in line
    assert emu.ledger()["requests_received"] == 0


def test_a_denied_output_prefix_exits_2_naming_it(
    auth_store: dict[str, Any], tmp_path: Path, emulator: Any
) -> None:
    emu = emulator()
    env = dict(auth_store["env"], AWS_SECRET_ACCESS_KEY="not-the-right-secret-value")
    out = f"s3://{BUCKET}/open/out.parquet"
    line = one_line(run_on(tmp_path, env, emu, f"output.path={out}"), env["AWS_SECRET_ACCESS_KEY"])
    assert out in line and "credentials" in line


def test_report_on_a_denied_prefix_exits_2_in_one_line(
    auth_store: dict[str, Any], tmp_path: Path
) -> None:
    env = auth_store["env"]
    prefix = f"s3://{BUCKET}/secret/"
    line = one_line(batchrun(tmp_path, env, "report", prefix), env["AWS_SECRET_ACCESS_KEY"])
    assert "access denied" in line and f"s3://{BUCKET}/secret/" in line


def test_no_credentials_at_all_exit_2_in_one_line(
    auth_store: dict[str, Any], tmp_path: Path
) -> None:
    env = {
        k: v
        for k, v in auth_store["env"].items()
        if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    prefix = f"s3://{BUCKET}/open/"
    line = one_line(
        batchrun(tmp_path, env, "report", prefix), auth_store["env"]["AWS_SECRET_ACCESS_KEY"]
    )
    assert prefix in line and "credentials" in line


@pytest.mark.parametrize(
    ("variable", "value"),
    [("AWS_SECRET_ACCESS_KEY", "not-the-right-secret-value"), ("AWS_ACCESS_KEY_ID", "AKIANONE")],
)
def test_report_on_a_glob_with_wrong_credentials_names_them(
    auth_store: dict[str, Any], tmp_path: Path, variable: str, value: str
) -> None:
    # A glob lists (ListObjectsV2), whose answer has a body that says which check failed.
    env = dict(auth_store["env"], **{variable: value})
    glob = f"s3://{BUCKET}/open/*.parquet"
    line = one_line(
        batchrun(tmp_path, env, "report", glob), auth_store["env"]["AWS_SECRET_ACCESS_KEY"]
    )
    assert glob in line and "credentials rejected" in line and "Request ID" not in line
