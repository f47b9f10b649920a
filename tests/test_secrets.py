"""No secret leaves batchrun: the API key, URL credentials and cloud credentials never
appear in an error message, a log line, an output cell or a checkpoint row."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import API_KEY, run_batchrun, write_job

from batchrun._errors import InputError, RetryableError, add_secret, redact

KEY = "sk-leaky-proxy-key-0123456789"


def _batchrun(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchrun", *args],
        cwd=cwd,
        env={**os.environ, "MODELSTREAM_API_KEY": API_KEY, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    return line


def test_redact_hides_keys_userinfo_and_cloud_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    add_secret(KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws/secret+value")
    text = redact(
        f"Bearer {KEY} at https://bob:pw@host:99999 and s3://AKIA:a/b+c@bucket/in.csv "
        "signed with aws/secret+value"
    )
    assert text == (
        "Bearer *** at https://***@host:99999 and s3://***@bucket/in.csv signed with ***"
    )
    assert (
        redact("https://host/path and s3://bucket/key") == "https://host/path and s3://bucket/key"
    )


def test_every_error_and_log_line_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    add_secret(KEY)
    assert KEY not in str(InputError(f"input.path: {KEY}"))
    assert KEY not in str(RetryableError("stream_error", f"echo {KEY}"))
    assert KEY not in RetryableError("stream_error", f"echo {KEY}").message
    with caplog.at_level(logging.INFO, logger="batchrun"):
        logging.getLogger("batchrun").warning("endpoint %s, key %s", "s3://u:p@b/k", KEY)
    assert caplog.messages == ["endpoint s3://***@b/k, key ***"]


def test_a_stream_error_echoing_the_key_is_stored_redacted(tmp_path: Path, emulator: Any) -> None:
    emu = emulator("--echo-key")
    job = write_job(tmp_path, rows=3, request={"stream": True}, limits={"max_attempts": 1})
    done = run_batchrun(job, emu, "--quiet", key=KEY)
    assert done.returncode != 0 and emu.ledger()["requests_received"] == 3
    messages = pq.read_table(tmp_path / "out.parquet").column("error_message").to_pylist()
    assert all("authorization: Bearer ***" in m for m in messages), messages
    assert KEY not in done.stderr + done.stdout
    for stored in tmp_path.glob("out.parquet*"):  # the output, the checkpoint and its WAL
        assert KEY.encode() not in stored.read_bytes(), stored.name


@pytest.mark.parametrize(
    "url",
    ["https://bob:pw-secret@host:99999", "https://bob:pw-secret@[::1", "http://bob:pw-secret@x"],
)
def test_a_base_url_with_credentials_is_refused_without_echoing_them(
    tmp_path: Path, url: str
) -> None:
    job = write_job(tmp_path, rows=2)
    line = _one_line(_batchrun(tmp_path, "run", job.name, f'--set=api.base_url="{url}"'))
    assert "api.base_url" in line and "credentials" in line and "pw-secret" not in line


def test_a_bad_base_url_is_one_line(tmp_path: Path) -> None:
    job = write_job(tmp_path, rows=2)
    line = _one_line(_batchrun(tmp_path, "run", job.name, '--set=api.base_url="https://[::1"'))
    assert "api.base_url: 'https://[::1' is not a valid URL" in line


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("s3://KEY:SECRET-VALUE@bucket/in.csv", "must not carry credentials"),
        ("s3://SECRET-VALUE@bucket/in.csv", "must not carry credentials"),
        ("s3://bucket:99/in.csv", "not a valid object-store URI"),
        ("gs:///in.csv", "not a valid object-store URI"),
    ],
)
def test_a_malformed_store_uri_is_one_line_without_its_secret(
    tmp_path: Path, uri: str, problem: str
) -> None:
    job = write_job(tmp_path, rows=2)
    for key in ("input.path", "output.checkpoint"):
        line = _one_line(_batchrun(tmp_path, "plan", job.name, f"--set={key}={uri}"))
        assert f"error: {key}: " in line and problem in line, line
        assert "SECRET-VALUE" not in line
    # A report names its files on the command line, not in a job file: the same check.
    line = _one_line(_batchrun(tmp_path, "report", uri))
    assert problem in line and "SECRET-VALUE" not in line


def test_an_unreachable_endpoint_is_named_without_its_credentials(tmp_path: Path) -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://user:endpoint-secret@127.0.0.1:9",  # nothing listens
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-value",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    line = _one_line(_batchrun(tmp_path, "report", "s3://bucket/out/", **env))
    assert "endpoint unreachable (http://***@127.0.0.1:9)" in line, line
    assert "endpoint-secret" not in line
