"""The public surface: what `import batchrun` offers and what the CLI documents."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import batchrun
from batchrun.cli import _parser

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("run", "plan", "report", "emulator")


def test_the_facade_exports_exactly_these_names() -> None:
    assert sorted(batchrun.__all__) == sorted(
        [
            "ApiConfig",
            "BatchrunError",
            "FatalApiError",
            "InputConfig",
            "InputError",
            "Job",
            "JobError",
            "Limits",
            "LockedError",
            "OutputConfig",
            "Price",
            "RequestConfig",
            "__version__",
            "complete",
            "load_job",
            "run",
        ]
    )
    for name in batchrun.__all__:
        assert hasattr(batchrun, name), name


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_and_a_readme_entry(command: str) -> None:
    sub = next(a for a in _parser()._actions if a.dest == "command")
    assert sub.choices is not None and command in sub.choices
    assert any(c.dest == command and c.help for c in sub._choices_actions), command
    assert f"batchrun {command}" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_of_every_command_is_on_the_commands_page(command: str) -> None:
    sub = next(a for a in _parser()._actions if a.dest == "command")
    options = [
        flag
        for action in sub.choices[command]._actions
        for flag in action.option_strings
        if flag.startswith("--") and flag not in ("--help", "--version")
    ]
    page = (ROOT / "docs" / "commands.md").read_text()
    assert [flag for flag in options if flag not in page] == []


@pytest.mark.parametrize(
    ("args", "named"),
    [(["--shard", "5/4"], "--shard"), (["--ray-workers", "2"], "--engine ray")],
)
def test_bad_arguments_exit_2_with_one_line_and_no_usage_dump(args: list[str], named: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "batchrun", "run", "jobs/demo.toml", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in done.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_answers_help(command: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "batchrun", command, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: batchrun {command}")
