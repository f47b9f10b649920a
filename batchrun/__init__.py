"""batchrun: run large batches of LLM chat completions reliably and cheaply.

>>> import batchrun
>>> summary = batchrun.run("jobs/demo.toml", emulate=True)          # doctest: +SKIP
>>> df = batchrun.complete(reviews, prompt="Label: {text}", model="gpt-5.5")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchrun._errors import (
    BatchrunError,
    FatalApiError,
    InputError,
    JobError,
    LockedError,
)
from batchrun._version import __version__
from batchrun.job.config import (
    ApiConfig,
    InputConfig,
    Job,
    Limits,
    OutputConfig,
    Price,
    RequestConfig,
)

if TYPE_CHECKING:
    import pandas as pd

    from batchrun._runner import RunSummary


__all__ = [
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


def load_job(path: str | Path, *, sets: Sequence[str] = (), variables: Sequence[str] = ()) -> Job:
    """Load and validate a job file; raises ``JobError`` naming the bad key."""
    from batchrun.job.load import load_job as _load

    return _load(path, sets=sets, variables=variables)


def run(
    job_or_path: Job | str | Path,
    *,
    sets: Mapping[str, Any] | Sequence[str] = (),
    variables: Mapping[str, str] | Sequence[str] = (),
    **options: Any,
) -> RunSummary:
    """Run a job and return its summary (``summary.exit_code`` as the CLI would exit).

    ``options`` are the CLI's run flags: ``fresh``, ``retry_failed``, ``limit``,
    ``shard=(i, n)``, ``emulate``, ``overwrite``, ``endpoint_moved``. ``sets`` overrides job keys
    (``{"request.model": "glm-5.2"}``) and ``variables`` fills ``${NAME}``.

    >>> summary = batchrun.run("jobs/demo.toml", emulate=True, limit=10)  # doctest: +SKIP
    >>> summary.by_status                                                  # doctest: +SKIP
    {'ok': 10}
    """
    from batchrun._runner import RunOptions, run_job

    if isinstance(job_or_path, Job):
        if sets or variables:
            raise JobError("sets/variables apply to a job file; pass a path, not a Job")
        job = job_or_path
    else:
        job = load_job(job_or_path, sets=_pairs(sets, toml=True), variables=_pairs(variables))
    return run_job(job, _run_options(RunOptions, options))


def complete(
    df: pd.DataFrame,
    *,
    prompt: str,
    model: str,
    checkpoint: str | Path | None = None,
    emulate: bool = False,
    pricing: Mapping[str, Mapping[str, float]] | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Answer one prompt per DataFrame row; returns the input with the output columns.

    ``options`` are ``[request]``, ``[limits]``, ``[api]`` or ``[output]`` keys
    (``max_completion_tokens=64``, ``concurrency=16``, ``parse="json"``, ...).
    Answers are checkpointed (by default under the system temp directory, keyed
    by the request settings), so running the same cell again pays for nothing.

    >>> out = batchrun.complete(df, prompt="Sentiment of: {text}", model="gpt-5.5",
    ...                         max_completion_tokens=16, emulate=True)  # doctest: +SKIP
    """
    import pandas as pd

    from batchrun._runner import RunOptions, run_job

    # The input copy and the output live only for this call (the checkpoint stays).
    with tempfile.TemporaryDirectory(prefix="batchrun-complete-") as workdir:
        source = Path(workdir) / "input.parquet"
        df.to_parquet(source, index=False)
        job = _notebook_job(source, prompt, model, checkpoint, pricing or {}, options, emulate)
        summary = run_job(job, RunOptions(emulate=emulate))
        if summary.stopped == "fatal":
            raise FatalApiError(summary.error or "the API refused the job")
        if summary.stopped == "interrupted":
            raise KeyboardInterrupt("batchrun.complete: interrupted; call again to continue")
        result = pd.read_parquet(summary.output_path)
    result.index = df.index
    return result


def _notebook_job(
    source: Path,
    prompt: str,
    model: str,
    checkpoint: str | Path | None,
    pricing: Mapping[str, Mapping[str, float]],
    options: Mapping[str, Any],
    synthetic: bool = False,
) -> Job:
    sections = {
        "request": RequestConfig,
        "limits": Limits,
        "api": ApiConfig,
        "output": OutputConfig,
    }
    picked: dict[str, dict[str, Any]] = {name: {} for name in sections}
    for key, value in options.items():
        section = next((n for n, cls in sections.items() if key in _field_names(cls)), None)
        if section is None or key in ("prompt", "model", "path"):
            raise JobError(f"complete(): unknown option {key!r}")
        picked[section][key] = value
    request = RequestConfig(model=model, prompt=prompt, **picked["request"])
    # Emulated answers and answers from another endpoint must never be reused as real ones.
    settings = (request, sorted(picked["output"].items()), sorted(picked["api"].items()))
    digest = hashlib.sha256(repr((*settings, synthetic)).encode()).hexdigest()
    default_ckpt = Path(tempfile.gettempdir()) / "batchrun" / f"complete-{digest[:16]}.sqlite"
    output = OutputConfig(
        path=str(source.with_name("output.parquet")),
        checkpoint=str(checkpoint or default_ckpt),
        **picked["output"],
    )
    job = Job(
        name="complete",
        input=InputConfig(path=str(source)),
        request=request,
        output=output,
        api=ApiConfig(**picked["api"]),
        limits=Limits(**picked["limits"]),
        pricing={name: Price(**price) for name, price in pricing.items()},
    )
    from batchrun.job.load import validate_job

    return validate_job(job)


def _field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _pairs(values: Mapping[str, Any] | Sequence[str], *, toml: bool = False) -> list[str]:
    if not isinstance(values, Mapping):
        return list(values)
    if not toml:
        return [f"{name}={value}" for name, value in values.items()]
    from batchrun.job.document import toml_literal

    return [f"{name}={toml_literal(value)}" for name, value in values.items()]


def _run_options(cls: Any, options: Mapping[str, Any]) -> Any:
    allowed = _field_names(cls) - {"base_url", "api_key"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        allowed_text = ", ".join(sorted(allowed))
        raise JobError(f"run(): unknown option {unknown[0]!r}; allowed: {allowed_text}")
    return cls(**options)
