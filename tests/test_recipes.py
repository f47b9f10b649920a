"""The scheduler recipes of the "Running nightly" page, run as written against the emulator:
each command line is read from the page here, so the recipes and what is tested cannot
drift apart.

Deployment paths map to a copy of the repository's job and sample data in a temporary
directory; the only addition to each command is ``--set api.base_url=<emulator>``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import API_KEY
from prometheus_client.parser import text_string_to_metric_families

from batchrun.emulator import EmulatorProcess
from batchrun.engines.local import COMMIT_GRACE_S, SIGNAL_GRACE_S

ROOT = Path(__file__).resolve().parent.parent
HOME = "/srv/batchrun"
TEXTFILE = "/var/lib/node_exporter/textfile"


def recipe(language: str) -> str:
    """The page's fenced block in ``language`` within "Scheduled jobs"."""
    readme = (ROOT / "docs" / "nightly.md").read_text(encoding="utf-8")
    section = readme.split("\n## Scheduled jobs\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)
    return block


def command_line(language: str) -> str:
    """The shell command of a recipe, unescaped as its scheduler would."""
    block = recipe(language)
    if language == "cron":
        (line,) = [line for line in block.splitlines() if line and not line.startswith("#")]
        return line.split(None, 5)[5].replace("\\%", "%")
    if language == "ini":
        (line,) = re.findall(r"^ExecStart=/bin/sh -c '(.*)'$", block, flags=re.M)
        return line.replace("%%", "%")
    if language == "yaml":
        (line,) = re.findall(r"^\s+- (batchrun run .*)$", block, flags=re.M)
        return line
    (literal,) = re.findall(r"^\s+return (\".*\")$", block, flags=re.M)
    return str(ast.literal_eval(literal)).replace("{{ ds }}", "2026-12-07")


def workdir(tmp_path: Path) -> Path:
    """What the recipes' /srv/batchrun holds: the job, its input and the state volume."""
    home = tmp_path / "srv"
    shutil.copytree(ROOT / "jobs", home / "jobs")
    shutil.copytree(ROOT / "sample_data", home / "sample_data")
    (home / "out").mkdir()
    return home


def run_recipe(
    language: str, tmp_path: Path, emu: EmulatorProcess
) -> tuple[subprocess.CompletedProcess[str], Path]:
    home = workdir(tmp_path)
    line = command_line(language)
    assert line.count("batchrun run ") == 1, line
    line = line.replace(HOME, str(home)).replace(TEXTFILE, str(tmp_path / "textfile"))
    line = line.replace("batchrun run ", f"batchrun run --set 'api.base_url=\"{emu.base_url}\"' ")
    (tmp_path / "textfile").mkdir()
    env = {**os.environ, "MODELSTREAM_API_KEY": API_KEY}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run(
        ["/bin/sh", "-c", line], cwd=home, env=env, capture_output=True, text=True, timeout=120
    )
    return done, home


def summary(home: Path, name: str = "summary.json") -> dict[str, object]:
    found: dict[str, object] = json.loads((home / "out" / name).read_text())
    assert found["exit_code"] == 0 and found["exit_reason"] == "exit 0: all 300 rows done"
    return found


def exit_code_metric(path: Path) -> float:
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            if sample.name == "batchrun_exit_code":
                return float(sample.value)
    raise AssertionError(f"no batchrun_exit_code in {path}")


@pytest.mark.parametrize("language", ["cron", "ini"])
def test_the_cron_and_systemd_recipes_exit_0_with_a_summary_metrics_and_one_line(
    tmp_path: Path, emulator, language: str
) -> None:
    done, home = run_recipe(language, tmp_path, emulator())

    assert done.returncode == 0, done.stderr
    summary(home)
    assert exit_code_metric(tmp_path / "textfile" / "batchrun_nightly.prom") == 0
    log = (home / "out" / "nightly.log").read_text() if language == "cron" else done.stderr
    assert log.splitlines()[-1].endswith("batchrun: info: exit 0: all 300 rows done"), log


def test_the_systemd_unit_waits_longer_than_a_stopped_run_takes() -> None:
    (timeout,) = re.findall(r"^TimeoutStopSec=(\d+)$", recipe("ini"), flags=re.M)
    assert int(timeout) > SIGNAL_GRACE_S + COMMIT_GRACE_S


def test_the_kubernetes_recipe_exits_0_with_json_lines_and_a_grace_above_the_runs(
    tmp_path: Path, emulator
) -> None:
    (grace,) = re.findall(r"terminationGracePeriodSeconds: (\d+)", recipe("yaml"))
    assert int(grace) > SIGNAL_GRACE_S + COMMIT_GRACE_S

    done, home = run_recipe("yaml", tmp_path, emulator())

    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert lines[-1]["event"] == "run_finished" and lines[-1]["exit_code"] == 0
    summary(home)


def test_the_airflow_task_prints_the_summary_as_its_last_stdout_line_for_xcom(
    tmp_path: Path, emulator
) -> None:
    done, home = run_recipe("python", tmp_path, emulator())

    assert done.returncode == 0, done.stderr
    xcom = json.loads(done.stdout.splitlines()[-1])
    assert xcom == summary(home, "summary-2026-12-07.json")
