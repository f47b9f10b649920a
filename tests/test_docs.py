"""The docs: a short README with a virtual environment in its set-up, every code block of
the README and the getting-started page run as written, the job-file reference made from
the code's own keys, the site built strict, and no internal notes anywhere."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from batchrun.job.document import PRICE_KEYS
from batchrun.job.keys import SCHEMA
from batchrun.job.reference import SECTIONS, refresh

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
GETTING_STARTED = ROOT / "docs" / "getting-started.md"
# What an installed project's set-up does; CI's own fresh environment runs these steps.
SET_UP = ("python3 -m venv", ". .venv/bin/activate", "pip install", "pytest")
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks(path: Path) -> list[tuple[str, str]]:
    return BLOCK.findall(path.read_text(encoding="utf-8"))


def test_the_readme_is_short_and_sets_up_a_virtual_environment() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    shell = "\n".join(code for lang, code in blocks(README) if lang == "bash")
    assert "python3 -m venv .venv" in shell and ". .venv/bin/activate" in shell


def _internal_notes(prose: bool = True) -> re.Pattern[str]:
    """What only the project's history means: built from parts, so this file is clean. In
    prose a short hex word is a commit; code has hex data of its own."""
    words = [
        r"\b" + "SP" + r"EC\b",
        r"\b[Ss]ess" + r"ion \d",
        r"\b[Ii]ss" + r"ues? #?\d",
        r"\.\./" + "shared",
        r"\bthis " + r"branch\b",
    ]
    if prose:
        words.append(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,8}\b")
    return re.compile("|".join(words))


def _shipped_text() -> list[Path]:
    found = [README, ROOT / "mkdocs.yml", *sorted((ROOT / "docs").glob("*.md"))]
    for folder in ("batchrun", "tests", "bench", "jobs", "sample_data"):
        found += sorted(p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".toml"))
    return found


def test_no_internal_notes_in_the_docs_code_or_tests() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {match.group(0)}"
        for path in _shipped_text()
        for pattern in [_internal_notes(prose=path.suffix in (".md", ".yml"))]
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if (match := pattern.search(line))
    ]
    assert offenders == []


def test_the_notes_pattern_finds_what_it_looks_for() -> None:
    pattern = _internal_notes()
    notes = ("as the SP" + "EC says", "Sess" + "ion 5 figures", "iss" + "ue 16", "at " + "ad87b23")
    for note in notes:
        assert pattern.search(note), note
    assert not pattern.search("v1:3f2a9c01b7de4a5b")


def test_the_job_file_reference_is_made_from_the_code() -> None:
    page = (ROOT / "docs" / "job-file.md").read_text(encoding="utf-8")
    assert refresh(page) == page, "run: python -m batchrun.job.reference docs/job-file.md"
    named = set(re.findall(r"^\| `([\w.]+)` \|", page, flags=re.M))
    accepted = {key for section in SCHEMA.values() for key in section}
    assert accepted <= named
    assert set(PRICE_KEYS) <= named
    assert [s for s in SECTIONS if f"<!-- keys:{s} -->" not in page] == []


def test_a_key_the_page_misses_is_found() -> None:
    page = (ROOT / "docs" / "job-file.md").read_text(encoding="utf-8")
    stale = page.replace("| `reask` |", "| `re_ask` |")
    assert refresh(stale) != stale


def test_the_docs_site_builds_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "job-file" / "index.html").exists()


def _workdir(tmp_path: Path) -> Path:
    for folder in ("jobs", "sample_data"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    return tmp_path


def _run_blocks(path: Path, workdir: Path) -> list[str]:
    """Every block in order: shell lines (not the set-up's), Python, TOML compared with the
    job file it shows. Returns the commands run."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MODELSTREAM_API_KEY", None)
    ran = []
    for lang, code in blocks(path):
        if lang == "toml":
            shown = tomllib.loads(code)
            assert shown == tomllib.loads((ROOT / "jobs" / "label.toml").read_text())
        elif lang == "python":
            done = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env,
                                  capture_output=True, text=True, timeout=120)  # fmt: skip
            assert done.returncode == 0, done.stderr
            ran.append("python")
        elif lang == "bash":
            for line in code.splitlines():
                if not line.strip() or line.startswith(SET_UP):
                    continue
                done = subprocess.run(line, shell=True, cwd=workdir, env=env,
                                      capture_output=True, text=True, timeout=300)  # fmt: skip
                assert done.returncode == 0, f"{line}: {done.stderr}"
                ran.append(line)
    return ran


@pytest.mark.slow
def test_every_block_of_the_readme_runs(tmp_path: Path) -> None:
    ran = _run_blocks(README, _workdir(tmp_path))
    assert "batchrun run jobs/demo.toml --emulate" in ran and "python" in ran
    assert (tmp_path / "out" / "labels.parquet").exists()


@pytest.mark.slow
def test_every_block_of_getting_started_runs(tmp_path: Path) -> None:
    ran = _run_blocks(GETTING_STARTED, _workdir(tmp_path))
    assert any(line.startswith("batchrun compare") for line in ran)
    assert (tmp_path / "out" / "report.html").exists()
