"""The Ray engine on a multi-node cluster: one store on the shared filesystem,
a lost worker node, a lost driver.

A local ``ray.cluster_utils.Cluster`` on loopback: a head node with no CPUs (the driver,
the coordinator and Ray Data's own actors live there) and two worker nodes, where the
worker actors run. One job goes through: a local run, a Ray run whose driver is killed
(-9) mid-run, a Ray run that resumes it and loses a worker node mid-run, and a local
run and ``plan`` after. What each loss may cost is measured from the emulator's ledger
at the moment of the loss: the requests in flight then, plus the answers of the second
before (a worker commits its answers every ``COMMIT_INTERVAL_S`` = 0.5 s).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from conftest import batchrun_command, batchrun_env, write_job  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from batchrun.emulator import EmulatorProcess  # noqa: E402

pytestmark = pytest.mark.ray

ROWS = 400
LOCAL_ROWS = 40
BATCH_ROWS = 25  # 16 batches: every worker has several, so a loss lands mid-batch
WORKERS = 4
CONCURRENCY = 8
LATENCY_MS = 200  # 8 in flight, 200 ms each: about 40 answers a second
FAST_DEATH = {  # a killed node is known dead in about 2 s (Ray's default: 15 s or more)
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 2,
}
LOOPBACK = {"node_ip_address": "127.0.0.1"}
WORKER_CLASS = "MapWorker(MapBatches(_Worker))"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with (
        tempfile.TemporaryDirectory(prefix="brc", dir="/tmp") as temp,
        pytest.MonkeyPatch.context() as env,
    ):
        # Its own temp dir: the cluster's sessions and "current cluster" file stay out of
        # /tmp/ray, where a plain ray.init() elsewhere on the machine would find them.
        env.setenv("RAY_TMPDIR", temp)
        # Drivers take this machine's address as 127.0.0.1 (Ray reads it at import: the
        # nodes here are told theirs).
        env.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        head = {"num_cpus": 0, "include_dashboard": False, "_system_config": FAST_DEATH}
        cluster = Cluster(initialize_head=True, head_node_args=head | LOOPBACK)
        try:
            for _ in range(2):
                cluster.add_node(num_cpus=2, **LOOPBACK)
            cluster.wait_for_nodes()
            nodes = cluster.global_state.node_table()
            assert {node["NodeManagerAddress"] for node in nodes} == {"127.0.0.1"}
            yield cluster
        finally:
            cluster.shutdown()


@dataclass
class LedgerWatch:
    """The emulator's ledger sampled every 50 ms from a thread: (time, answers, in flight)."""

    emu: EmulatorProcess
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.done.is_set():
            ledger = self.emu.ledger()
            answers = ledger["completions"].get("200", 0)
            self.samples.append((time.monotonic(), answers, ledger["in_flight"]))
            time.sleep(0.05)

    def stop(self) -> None:
        self.done.set()
        self.thread.join()

    def loss_bound(self, lost_at: float, gone_at: float) -> int:
        """What a loss between ``lost_at`` and ``gone_at`` (its processes all dead) may
        re-bill: every request in flight meanwhile, plus every answer from a second
        before it until then (all nodes' figures: at least the lost part's own)."""
        in_flight = max(f for t, _, f in self.samples if lost_at - 0.1 <= t <= gone_at + 0.1)
        return in_flight + self._answers_at(gone_at + 0.1) - self._answers_at(lost_at - 1.0)

    def _answers_at(self, moment: float) -> int:
        """Answers by ``moment`` (the sampling starts well before any loss)."""
        return max(a for t, a, _ in self.samples if t <= moment)


# --- the coordinator, without a cluster -----------------------------------------------


def test_a_restarted_worker_frees_what_its_last_life_held() -> None:
    from batchrun.engines.ray.coordinator import Coordinator
    from batchrun.job.config import Limits

    coordinator = Coordinator(2, 1.0, Limits(concurrency=4))
    first = coordinator.join("worker-a")
    assert asyncio.run(coordinator.take_slots("worker-a", 4)) == (4, None)
    assert coordinator.lease("worker-a", 0.5, 0.1, 0.0, False) == 0.5
    # Its node is lost mid-batch; Ray restarts the actor (same id) elsewhere.
    assert coordinator.join("worker-a") != first  # a new life, a new checkpoint file
    assert asyncio.run(coordinator.take_slots("worker-b", 4)) == (4, None)
    assert coordinator.money is not None and not coordinator.money.open
    assert coordinator.state() == (2, None)  # still two workers sharing a pace guessed from a 429


def test_a_batch_run_again_counts_its_rows_once_and_every_send() -> None:
    from batchrun.engines.ray.coordinator import Coordinator

    coordinator = Coordinator(2, None)
    stats = {"rows": 25}
    coordinator.report("a-0", {"sent": 25}, "r00000+25", {"finished": 25, "reused": 0}, stats)
    # Ray runs it again to rebuild its output lost with a node: every answer is stored.
    coordinator.report("b-1", {"sent": 0}, "r00000+25", {"finished": 25, "reused": 25}, stats)
    totals = coordinator.totals()
    assert totals.counters == {"sent": 25, "finished": 25, "reused": 0}
    assert totals.batches == [stats]


# --- the cluster ---------------------------------------------------------------------


@dataclass
class Loss:
    """A loss mid-run: what it may re-bill, and the bodies billed before it was over."""

    bound: int
    billed_before: set[str]


@dataclass
class NodeLoss(Loss):
    run: subprocess.CompletedProcess[str]
    files: dict[str, list[Path]]  # each node's workers' own checkpoint files
    restarted: dict[str, int]  # the lost workers' actor ids: how often Ray restarted them
    then_s: float  # from the loss to the end of the run


@pytest.mark.slow
def test_a_job_survives_a_lost_node_and_a_lost_driver_on_one_shared_store(
    cluster: Cluster, tmp_path: Path
) -> None:
    job = write_job(tmp_path, rows=ROWS, limits={"concurrency": CONCURRENCY})
    with EmulatorProcess(["--latency-ms", str(LATENCY_MS)], quiet=True) as emu:
        # A local run first: the Ray runs must not send its answers again.
        assert _run(job, emu, "--limit", str(LOCAL_ROWS)).returncode == 0
        local_bodies = _billed_bodies(emu)
        watch = LedgerWatch(emu)
        try:
            killed = _ray_run_killed_mid_run(job, emu, cluster, watch)
            lost = _ray_run_losing_a_node(job, emu, cluster, watch)
        finally:
            watch.stop()
        after_ray = emu.ledger()
        local_after = _run(job, emu)  # a local run after: it sends nothing
        plan = _run(job, emu, "--format", "json", command="plan")
        ledger = emu.ledger()
    assert lost.run.returncode == 0, lost.run.stderr[-3000:]
    _assert_every_row_ok_and_counted_once(tmp_path)
    # The lost node's workers wrote answers into the shared store; Ray restarted them.
    assert lost.files["lost"] and lost.files["kept"], lost.files
    # (A worker whose batches were all answered by the killed run writes nothing: any.)
    assert any(_answers_in(path) for path in lost.files["lost"]), lost.files
    assert lost.restarted and min(lost.restarted.values()) >= 1, lost.restarted
    # Re-billed: at most what each loss had on the wire plus a second of answers.
    twice = after_ray["billed_more_than_once"]
    assert not local_bodies & set(twice)  # nothing the local run answered
    by_kill = sum(1 for body in twice if body in killed.billed_before)
    by_node = after_ray["duplicates_billed"] - by_kill
    assert after_ray["requests_billed"] == ROWS + by_kill + by_node
    assert by_kill <= killed.bound, (by_kill, killed.bound)
    assert by_node <= lost.bound, (by_node, lost.bound)
    assert local_after.returncode == 0, local_after.stderr[-2000:]
    assert ledger["requests_billed"] == after_ray["requests_billed"]
    assert plan.returncode == 0, plan.stderr[-2000:]
    counts = json.loads(plan.stdout)["rows"]
    assert (counts["done"], counts["to_send"]) == (ROWS, 0), counts  # plan sees every answer
    print(
        f"{ROWS} rows, {WORKERS} workers on 2 worker nodes, concurrency {CONCURRENCY},"
        f" {LATENCY_MS} ms answers: re-billed {by_kill} after the driver's kill (bound"
        f" {killed.bound}), {by_node} after the node's loss (bound {lost.bound}, the"
        f" {len(lost.restarted)} workers it held restarted, run over {lost.then_s:.1f} s later)"
    )


def _assert_every_row_ok_and_counted_once(workdir: Path) -> None:
    table = pq.read_table(workdir / "out.parquet")
    assert table.num_rows == ROWS
    assert set(table["status"].to_pylist()) == {"ok"}
    # Sent by the last run, or answered before it (a row a lost worker answered in its
    # last batch is "from the checkpoint" when Ray runs the batch again): never both.
    summary = json.loads((workdir / "summary.json").read_text())
    assert (summary["rows"], summary["retries"], summary["dedupe_saved_requests"]) == (ROWS, 0, 0)
    assert summary["sent"] + summary["reused_from_checkpoint"] == ROWS, summary


def _ray_run_killed_mid_run(
    job: Path, emu: EmulatorProcess, cluster: Cluster, watch: LedgerWatch
) -> Loss:
    """A Ray run whose driver is killed (-9) mid-run, its workers with it."""
    driver = _start_ray(job, emu, cluster)
    _wait_billed(emu, LOCAL_ROWS + ROWS // 4, driver)
    workers = [pid for on_node in _workers(cluster).values() for _, pid in on_node]
    killed_at = time.monotonic()
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    gone_at = _wait_gone(workers)  # they die with the driver that owns them
    return Loss(watch.loss_bound(killed_at, gone_at), _billed_bodies(emu))


def _ray_run_losing_a_node(
    job: Path, emu: EmulatorProcess, cluster: Cluster, watch: LedgerWatch
) -> NodeLoss:
    """A Ray run resuming the job that loses the worker node with the most workers."""
    driver = _start_ray(job, emu, cluster)
    _wait_billed(emu, emu.ledger()["requests_billed"] + ROWS // 5, driver)
    workers = _workers(cluster)
    victim = max(cluster.worker_nodes, key=lambda node: len(workers[node.node_id]))
    lost = workers.pop(victim.node_id)
    kept = [pid for on_node in workers.values() for _, pid in on_node]
    files = {"lost": _worker_files([pid for _, pid in lost]), "kept": _worker_files(kept)}
    _wait_answers(files["lost"], driver)
    lost_at = time.monotonic()
    cluster.remove_node(victim, allow_graceful=False)
    gone_at = _wait_gone([pid for _, pid in lost])
    loss = Loss(watch.loss_bound(lost_at, gone_at), _billed_bodies(emu))
    try:
        stdout, stderr = driver.communicate(timeout=180)
    finally:
        driver.kill()
    then_s = time.monotonic() - lost_at
    run = subprocess.CompletedProcess(driver.args, driver.returncode, stdout, stderr)
    actors = cluster.global_state.actor_table(None)
    restarted = {actor: actors[actor]["NumRestarts"] for actor, _ in lost}
    return NodeLoss(loss.bound, loss.billed_before, run, files, restarted, then_s)


def _billed_bodies(emu: EmulatorProcess) -> set[str]:
    return set(emu.ledger(full=True)["billed_by_body_hash"])


def _run(
    job: Path, emu: EmulatorProcess, *args: str, command: str = "run"
) -> subprocess.CompletedProcess[str]:
    """``batchrun run JOB`` (or ``plan``) in the job's directory, local engine."""
    argv = batchrun_command(job, emu, *args)
    argv[3] = command
    if command == "run":
        argv.append("--quiet")
    return subprocess.run(
        argv, cwd=job.parent, env=batchrun_env(), capture_output=True, text=True, timeout=120
    )


def _start_ray(job: Path, emu: EmulatorProcess, cluster: Cluster) -> subprocess.Popen[str]:
    """``batchrun run --engine ray`` joining ``cluster``, with ``BATCH_ROWS``-row batches."""
    command = batchrun_command(
        job, emu, "--engine", "ray", "--ray-address", cluster.address,
        "--ray-workers", str(WORKERS), "--quiet", "--summary-json", "summary.json",
    )  # fmt: skip
    script = (
        f"import sys, batchrun.engines.ray.engine as r; r.BATCH_ROWS = {BATCH_ROWS};"
        " from batchrun.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    command[1:3] = ["-c", script]  # python -m batchrun ..., smaller batches
    return subprocess.Popen(
        command, cwd=job.parent, env=batchrun_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _wait_billed(emu: EmulatorProcess, at_least: int, driver: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while emu.ledger()["requests_billed"] < at_least:
        assert driver.poll() is None, driver.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"fewer than {at_least} billed after 120 s"
        time.sleep(0.05)


def _wait_answers(files: list[Path], driver: subprocess.Popen[str]) -> None:
    """Until one of ``files`` holds a committed answer (a worker commits every 0.5 s)."""
    deadline = time.monotonic() + 60
    while not any(_answers_in(path) for path in files):
        assert driver.poll() is None, driver.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"no answer in {files} after 60 s"
        time.sleep(0.05)


def _workers(cluster: Cluster) -> dict[str, list[tuple[str, int]]]:
    """The live worker actors (actor id, process id), by node id."""
    by_node: dict[str, list[tuple[str, int]]] = {n.node_id: [] for n in cluster.worker_nodes}
    for actor_id, actor in cluster.global_state.actor_table(None).items():
        if actor["ActorClassName"] == WORKER_CLASS and actor["State"] == "ALIVE":
            by_node[actor["Address"]["NodeID"]].append((actor_id, actor["Pid"]))
    return by_node


def _worker_files(pids: list[int]) -> list[Path]:
    """The checkpoint files these worker processes write (the others' they read only)."""
    found = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = Path(os.readlink(fd))
                if target.parent.name.endswith(".ray") and target.suffix == ".sqlite":
                    flags = (fd.parent.parent / "fdinfo" / fd.name).read_text().split()[3]
                    if int(flags, 8) & os.O_ACCMODE == os.O_RDWR:
                        found.add(target)
            except FileNotFoundError:  # closed while we looked (a worker opens and
                continue  # closes the other workers' files as it reads them)
    return sorted(found)


def _wait_gone(pids: list[int]) -> float:
    """When the last of ``pids`` has exited."""
    deadline = time.monotonic() + 60
    while any(_running(pid) for pid in pids):
        assert time.monotonic() < deadline, "worker processes outlived their node by 60 s"
        time.sleep(0.02)
    return time.monotonic()


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie has exited


def _answers_in(path: Path) -> int:
    with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as conn:
        try:
            count: int = conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        except sqlite3.OperationalError:  # its schema is not written yet
            return 0
    return count
