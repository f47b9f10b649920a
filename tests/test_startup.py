"""Start-up: `batchrun run` loads only what a run uses.

pandas (~0.25 s of CPU and ~45 MB at start) is for ``report`` and ``complete``; uvicorn and
the emulator's server for ``--emulate`` and ``batchrun emulator``; pyarrow.compute (~0.1 s)
for nothing a run does. bench/bench_startup.py measures what this buys.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import batchrun_command, batchrun_env, write_job

# cli.main in this interpreter, then the names of the modules it loaded, even on sys.exit.
_MODULES_AFTER = """\
import json, sys
from batchrun.cli import main
try:
    main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code
json.dump({"code": code, "modules": sorted(sys.modules)}, open(sys.argv[1], "w"))
"""
NOT_FOR_A_RUN = ("pandas", "uvicorn", "pyarrow.compute", "pyarrow.dataset", "tqdm")


def modules_after(args: list[str], cwd: Path, out: Path) -> dict[str, object]:
    command = [sys.executable, "-c", _MODULES_AFTER, str(out), *args]
    done = subprocess.run(command, cwd=cwd, env=batchrun_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(out.read_text())
    return result


def loaded(modules: object, name: str) -> bool:
    assert isinstance(modules, list)
    return any(m == name or m.startswith(name + ".") for m in modules)


def test_a_run_imports_no_pandas_uvicorn_or_compute(tmp_path, emulator):
    emu = emulator()
    job = write_job(tmp_path, rows=1)
    args = batchrun_command(job, emu, "--quiet")[3:]  # after `python -m batchrun`
    seen = modules_after(args, tmp_path, tmp_path / "modules.json")
    assert seen["code"] == 0
    assert (tmp_path / "out.parquet").exists()
    assert [name for name in NOT_FOR_A_RUN if loaded(seen["modules"], name)] == []


def test_pandas_still_works_after_a_run_kept_it_out(tmp_path):
    """The one failed look is pyarrow's; `import pandas` and `to_pandas()` work after it."""
    code = (
        "import sys, pyarrow as pa\n"
        "from batchrun.cli import _arrow_without_pandas\n"
        "_arrow_without_pandas()\n"
        "assert 'pandas' not in sys.modules\n"
        "frame = pa.table({'a': [1, 2]}).to_pandas()\n"
        "import pandas as pd\n"
        "assert isinstance(frame, pd.DataFrame) and list(frame['a']) == [1, 2]\n"
        "assert pa.Table.from_pandas(frame).num_rows == 2\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
