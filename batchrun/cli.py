"""The ``batchrun`` command: parse options, call one library function, render.

Only this module (and its progress display, ``_progress``) touches tqdm, stderr rendering
and exit codes.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from batchrun._errors import BatchrunError, JobError
from batchrun._logs import FINAL_EVENT, LOG_FORMATS, setup_logging
from batchrun._progress import ProgressDisplay

log = logging.getLogger("batchrun")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns (and exits with) the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["emulator"]:
        # The emulator parses its own flags (argparse's REMAINDER would reject `--help`).
        from batchrun.emulator import main as emulator_main

        sys.exit(emulator_main(argv[1:]))
    early = _early_options(argv)
    setup_logging(early.log_format, quiet=early.quiet)
    summary_json = early.summary_json if argv[:1] == ["run"] else None
    try:
        if summary_json:
            Path(summary_json).unlink(missing_ok=True)  # never a stale summary, however we end
        args = _parser().parse_args(argv)
        code = args.handler(args)
    except BatchrunError as exc:
        code = exc.exit_code
        log.error("%s", exc, extra={"event": "error", "exit_code": code})
        _failure_summary(summary_json, code, str(exc))
    except KeyboardInterrupt:
        code = 130
        log.warning("interrupted", extra={"event": FINAL_EVENT, "exit_code": code})
        _failure_summary(summary_json, code, "interrupted")
    except BrokenPipeError:
        # `batchrun report ... | head`: the reader left; not an error of ours.
        sys.stderr.close()
        code = 0
    except Exception as exc:  # a bug of ours: its traceback, in the asked-for format
        code = 1
        log.error("unexpected error: %r", exc, exc_info=True, extra={"event": "crash"})
        _failure_summary(summary_json, code, f"unexpected error: {exc!r}")
    sys.exit(code)


def _early_options(argv: Sequence[str]) -> argparse.Namespace:
    """The options that shape what is written on any exit, read before the full parse
    (whose own errors must be written in the asked-for format too)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--log-format", default="text")
    early.add_argument("--quiet", action="store_true")
    early.add_argument("--summary-json")
    return early.parse_known_args(argv)[0]


def _failure_summary(path: str | None, code: int, message: str) -> None:
    """The summary of a run that ended without one: its exit code and the error."""
    if path:
        reason = f"exit {code}: {message}"
        _write_json(Path(path), {"exit_code": code, "exit_reason": reason, "error": message})


class _Parser(argparse.ArgumentParser):
    """argparse, but bad arguments exit 2 with one line and no usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise JobError(f"{message} (see --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="batchrun",
        description="Run large batches of LLM chat completions reliably and cheaply.",
    )
    parser.add_argument("--version", action="version", version=f"batchrun {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_run(sub)
    _add_plan(sub)
    _add_status(sub)
    _add_report(sub)
    _add_compare(sub)
    _add_emulator(sub)
    return parser


def _version() -> str:
    from batchrun._version import __version__

    return __version__


def _add_job_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("job", help="the job file (TOML)")
    cmd.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="fill ${NAME} in the job file",
    )
    cmd.add_argument(
        "--set",
        action="append",
        default=[],
        dest="sets",
        metavar="KEY=VALUE",
        help="override a job-file key (dotted path, value in TOML syntax)",
    )
    _add_log_format(cmd)


def _add_log_format(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="stderr lines as dated text, or one JSON object a line (ts, level, event, ...)",
    )


def _add_run(sub: Any) -> None:
    cmd = sub.add_parser("run", help="run a job: send every row, write the output Parquet")
    _add_job_options(cmd)
    cmd.add_argument(
        "--emulate", action="store_true", help="run against the built-in emulator (synthetic)"
    )
    cmd.add_argument("--fresh", action="store_true", help="ignore and replace the checkpoint")
    cmd.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a file at output.path even if it is not an output of this job"
        " (without it such a file is left alone and the run exits 2)",
    )
    cmd.add_argument(
        "--endpoint-moved",
        action="store_true",
        help="the checkpoint's answers came from this same API at another address (a proxy"
        " moved): keep them (without it a run against another endpoint exits 2)",
    )
    cmd.add_argument(
        "--variant", metavar="NAME", help="run only this one of the job's [[variants]]"
    )
    cmd.add_argument(
        "--retry-failed", action="store_true", help="re-send rows whose last attempt failed"
    )
    cmd.add_argument("--limit", type=_positive_int, metavar="N", help="only the first N rows")
    cmd.add_argument("--shard", type=_shard, metavar="I/N", help="only shard I of N (0-based)")
    cmd.add_argument(
        "--summary-json",
        metavar="PATH",
        help="write the run summary as JSON on every exit (exit_code, exit_reason, counts)",
    )
    cmd.add_argument(
        "--metrics",
        metavar="PATH",
        help="keep Prometheus metrics of the run in this file (textfile collector format)",
    )
    cmd.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar, progress or info lines: warnings, errors and the exit line",
    )
    cmd.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process; ray: one job across a Ray cluster (batchrun[ray])",
    )
    cmd.add_argument(
        "--ray-address", metavar="ADDR", help="Ray cluster to join (default: start a local one)"
    )
    cmd.add_argument(
        "--ray-workers",
        type=_positive_int,
        metavar="N",
        help="Ray workers sharing the job's limits (default: the cluster's CPUs)",
    )
    cmd.set_defaults(handler=_cmd_run)


def _add_plan(sub: Any) -> None:
    cmd = sub.add_parser("plan", help="dry run: count rows, estimate tokens, cost and time")
    _add_job_options(cmd)
    cmd.add_argument("--format", choices=("table", "json"), default="table")
    cmd.add_argument(
        "--pilot",
        type=_positive_int,
        metavar="N",
        help="send N sampled rows first (real requests) to narrow the estimate",
    )
    cmd.add_argument(
        "--emulate", action="store_true", help="send the pilot to the built-in emulator"
    )
    cmd.add_argument(
        "--endpoint-moved",
        action="store_true",
        help="the checkpoint's answers came from this same API at another address: keep"
        " them for the pilot (as run --endpoint-moved)",
    )
    cmd.set_defaults(handler=_cmd_plan)


def _add_status(sub: Any) -> None:
    cmd = sub.add_parser(
        "status",
        help="how far a job got, from its checkpoint (read-only: safe while it runs)",
    )
    _add_job_options(cmd)
    cmd.add_argument("--format", choices=("table", "json"), default="table")
    cmd.add_argument(
        "--emulate", action="store_true", help="the checkpoint of the job's emulated runs"
    )
    cmd.set_defaults(handler=_cmd_status)


def _add_report(sub: Any) -> None:
    cmd = sub.add_parser("report", help="aggregate usage and cost over output Parquet files")
    cmd.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="files, directories or globs, local or s3://bucket/key, gs://bucket/key",
    )
    cmd.add_argument("--by", default="model,status", help="columns to group by (comma-separated)")
    cmd.add_argument(
        "--format",
        choices=("table", "csv", "json", "markdown", "html"),
        help="default: from the --output extension (.html .csv .json .md), else table",
    )
    cmd.add_argument("--output", metavar="FILE", help="write the report here, not to stdout")
    cmd.add_argument(
        "--pricing", metavar="FILE.toml", help='re-price every row with [pricing."MODEL"] tables'
    )
    cmd.add_argument("--since", metavar="DATE", help="first day to include (ISO date, UTC)")
    cmd.add_argument("--until", metavar="DATE", help="last day to include (ISO date, UTC)")
    _add_log_format(cmd)
    cmd.set_defaults(handler=_cmd_report)


def _add_compare(sub: Any) -> None:
    from batchrun.compare.command import add_arguments

    cmd = sub.add_parser("compare", help="score variants' labels against gold, with their cost")
    add_arguments(cmd)
    cmd.set_defaults(handler=_cmd_compare)


def _add_emulator(sub: Any) -> None:
    cmd = sub.add_parser(
        "emulator",
        help="serve the local ModelStream stand-in (see `batchrun emulator --help`)",
        add_help=False,
    )
    cmd.add_argument("args", nargs=argparse.REMAINDER)
    cmd.set_defaults(handler=_cmd_emulator)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive whole number")
    return value


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form I/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"{text!r}: I must be in 0..N-1 and N >= 1")
    return i, n


# --- commands -----------------------------------------------------------------


# A run makes millions of short-lived objects and few cycles: at Python's default (a
# young collection every 700 allocations) the collector took ~8% of a run's CPU
# (bench/bench_process.py); at 20,000 about 1%.
RUN_GC_THRESHOLD = (20_000, 50, 100)


def _cmd_run(args: argparse.Namespace) -> int:
    gc.set_threshold(*RUN_GC_THRESHOLD)
    if args.engine != "ray":  # Ray Data's driver works with pandas
        _arrow_without_pandas()
    from batchrun._runner import RunOptions, run_job
    from batchrun.job.load import load_job

    if args.engine != "ray" and (args.ray_address or args.ray_workers):
        raise JobError("--ray-address and --ray-workers need --engine ray")
    options = RunOptions(
        fresh=args.fresh,
        retry_failed=args.retry_failed,
        limit=args.limit,
        shard=args.shard,
        emulate=args.emulate,
        engine=args.engine,
        ray_address=args.ray_address,
        ray_workers=args.ray_workers,
        overwrite=args.overwrite,
        variant=args.variant,
        endpoint_moved=args.endpoint_moved,
    )
    job = load_job(args.job, sets=args.sets, variables=args.var)
    bar = not args.quiet and args.log_format == "text" and sys.stderr.isatty()
    # Under --quiet it only measures the limit use (for --metrics), showing nothing.
    display = ProgressDisplay(bar=bar, lines=not args.quiet)
    metrics = _run_metrics(args, job.name)
    try:
        with _sigterm_as_ctrl_c(), _logs_above_the_bar(display):
            summary = run_job(job, options, _Observer(display, metrics))
    except (BatchrunError, KeyboardInterrupt) as exc:
        if metrics is not None:
            metrics.finish(exit_code=getattr(exc, "exit_code", 130))
        raise
    display.close()
    if metrics is not None:
        metrics.finish(summary)
    if args.summary_json:
        _write_json(Path(args.summary_json), summary.to_dict())
    log.info(summary.render(), extra={"event": "run_summary"})
    _log_exit(summary)
    return summary.exit_code


def _run_metrics(args: argparse.Namespace, job_name: str) -> Any:
    if not args.metrics:
        return None
    from batchrun.engines.metrics import RunMetrics

    shard = f"{args.shard[0]}/{args.shard[1]}" if args.shard else ""
    return RunMetrics(Path(args.metrics), job_name, shard)


def _log_exit(summary: Any) -> None:
    """The run's last line, also under --quiet: the exit code and its reason."""
    level = {0: logging.INFO, 130: logging.WARNING}.get(summary.exit_code, logging.ERROR)
    fields = {
        name: getattr(summary, name)
        for name in (
            "exit_code",
            "exit_reason",
            "job",
            "rows",
            "by_status",
            "by_error_type",
            "sent",
            "retries",
            "rate_limited",
            "run_cost_usd",
            "stopped",
            "wall_s",
        )
    }
    log.log(level, "%s", summary.exit_reason, extra={"event": FINAL_EVENT, **fields})


class _Observer:
    """The run's progress callback: the display, and the metrics' view of the run."""

    def __init__(self, display: ProgressDisplay, metrics: Any) -> None:
        self.display = display
        self.metrics = metrics

    def __call__(self, counters: Any) -> None:
        if self.metrics is not None:
            self.metrics.watch(counters)
        self.display(counters)


@contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (kill, cron, Kubernetes) stops a run as Ctrl-C does: exit 130, resumable,
    no temp file left beside the output. During dispatch the runner handles both itself."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _logs_above_the_bar(progress: ProgressDisplay | None) -> AbstractContextManager[Any]:
    """On a TTY, log lines (a signal's, a retry's) go through ``tqdm.write``: printed on
    a line of their own above the bar, not into the middle of the bar's line."""
    if progress is None or not progress.bar:
        return nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


def _cmd_plan(args: argparse.Namespace) -> int:
    _arrow_without_pandas()
    from batchrun.plan.planner import plan_job_file

    plan = plan_job_file(
        args.job,
        sets=args.sets,
        variables=args.var,
        pilot=args.pilot,
        emulate=args.emulate,
        endpoint_moved=args.endpoint_moved,
    )
    print(json.dumps(plan.to_dict(), indent=2) if args.format == "json" else plan.render())
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from batchrun.job.load import load_job
    from batchrun.plan.status import job_status

    job = load_job(args.job, sets=args.sets, variables=args.var)
    if args.emulate:
        from batchrun.engines.base import emulated_job  # the pipeline's imports: only here

        job = emulated_job(job)
    status = job_status(job)
    print(json.dumps(status.to_dict(), indent=2) if args.format == "json" else status.render())
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from batchrun.report.aggregate import render, report
    from batchrun.report.selection import DayRange, load_pricing, parse_day

    fmt = _report_format(args.format, args.output)
    by = [col.strip() for col in args.by.split(",") if col.strip()]
    days = DayRange(parse_day(args.since, "--since"), parse_day(args.until, "--until"))
    pricing = load_pricing(args.pricing) if args.pricing else None
    result = report(args.paths, by=by, days=days, pricing=pricing)
    for skipped in result.skipped:
        log.warning("skipped %s", skipped, extra={"event": "report_skipped", "path": str(skipped)})
    for model in result.unmatched_prices():
        log.warning(
            "--pricing: %r is in no output",
            model,
            extra={"event": "pricing_unmatched", "model": model},
        )
    if fmt == "html":
        from batchrun.report.page import render_html

        name = Path(args.pricing).name if args.pricing else None
        text = render_html(result, pricing_name=name)
    else:
        text = render(result.table, fmt, generated_at=result.generated_at, inputs=result.files)
    if args.output:
        _write_text(Path(args.output), text)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from batchrun.compare.command import FORMATS, compare_text

    args.format = _report_format(args.format, args.output, FORMATS)
    text = compare_text(args)
    if args.output:
        _write_text(Path(args.output), text)
    else:
        sys.stdout.write(text)
    return 0


_FORMAT_OF_SUFFIX = {
    ".html": "html", ".htm": "html", ".csv": "csv", ".json": "json", ".md": "markdown",
    ".markdown": "markdown",
}  # fmt: skip


def _report_format(
    given: str | None, output: str | None, formats: tuple[str, ...] | None = None
) -> str:
    """``--format``, else the one ``--output``'s extension names (of ``formats``, when
    given), else ``table``."""
    suffix = Path(output).suffix.lower() if output else ""
    implied = _FORMAT_OF_SUFFIX.get(suffix)
    if formats is not None and implied not in formats:
        implied = None
    if given and implied and given != implied:
        raise JobError(
            f"--format {given} does not match --output {output} (a {suffix} file is"
            f" {implied}); drop --format or change the file's extension"
        )
    return given or implied or "table"


def _write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise JobError(f"--output: cannot write {path}: {exc.strerror or exc}") from None


def _cmd_emulator(args: argparse.Namespace) -> int:
    from batchrun.emulator import main as emulator_main

    return emulator_main(list(args.args))


def _arrow_without_pandas() -> None:
    """Keep pandas out of a process that never uses it (~0.25 s of CPU, ~45 MB).

    pyarrow's first ``pa.array`` imports pandas, if installed, to recognise pandas
    objects; ``run`` and ``plan`` never hand it one. Let that one look fail, then
    unblock the name: an ``import pandas`` later (a ``to_pandas()``) works as usual.
    """
    if "pandas" in sys.modules:
        return
    import pyarrow as pa

    blocker = _NoPandas()
    sys.meta_path.insert(0, blocker)
    try:
        pa.array([], type=pa.int8())
    finally:
        sys.meta_path.remove(blocker)


class _NoPandas:
    """Finds ``pandas`` missing (``None`` in ``sys.modules`` is not seen by pyarrow)."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name == "pandas":
            raise ModuleNotFoundError("pandas is not used by this command", name=name)
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Written whole or not at all: a scheduler never reads half a summary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(temp, path)


if __name__ == "__main__":  # pragma: no cover
    main()
