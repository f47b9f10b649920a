"""Reading the input from an S3-compatible store on loopback vs the same file locally.

    python bench/bench_store_read.py [--rows 1000000]

Writes a Parquet input (the rows of ``bench_input_memory.py``: id, ~130-character text,
an image URL on every tenth row; 50,000-row row groups), starts moto's S3 server on
127.0.0.1, uploads the file, then streams every row through ``open_input(job).batches()``
in a fresh subprocess per case, so each peak RSS (``VmHWM``) is that case's alone. The
store is reached as users do, through ``AWS_ENDPOINT_URL`` and dummy credentials.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_input_memory import bench_job, make_input, peak_rss_mb

from batchrun.io.input import open_input


def child(location: str) -> None:
    started = time.perf_counter()
    rows = sum(batch.num_rows for batch in open_input(bench_job(location)).batches())
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_mb": peak_rss_mb()}))


def measure(location: str, env: dict[str, str]) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", location]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout.splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_EC2_METADATA_DISABLED="true"
    )
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    try:
        with tempfile.TemporaryDirectory() as workdir:
            local = Path(workdir) / "input.parquet"
            make_input(local, args.rows)
            client = boto3.client(
                "s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1"
            )
            client.create_bucket(Bucket="bench")
            client.upload_file(str(local), "bench", "input.parquet")
            size_mb = local.stat().st_size / 1e6
            print(f"{args.rows:,} rows, {size_mb:.0f} MB Parquet")
            print(f"{'case':<28}{'seconds':>9}{'rows/s':>12}{'peak RSS MB':>13}")
            for name, location in (
                ("local file", str(local)),
                ("s3:// (moto, loopback)", "s3://bench/input.parquet"),
            ):
                figures = measure(location, env)
                rate = figures["rows"] / figures["seconds"]
                print(
                    f"{name:<28}{figures['seconds']:>9.2f}{rate:>12,.0f}{figures['peak_mb']:>13.0f}"
                )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
