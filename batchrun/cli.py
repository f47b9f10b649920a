"""The ``batchrun`` command: parse options, call one library function, render.

Only this module touches tqdm, stderr rendering and exit codes.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from batchrun._errors import BatchrunError, JobError

log = logging.getLogger("batchrun")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns (and exits with) the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["emulator"]:
        # The emulator parses its own flags (argparse's REMAINDER would reject `--help`).
        from batchrun.emulator import main as emulator_main

        sys.exit(emulator_main(argv[1:]))
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "quiet", False))
    try:
        code = args.handler(args)
    except BatchrunError as exc:
        print(f"batchrun: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("batchrun: interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:
        # `batchrun report ... | head`: the reader left; not an error of ours.
        sys.stderr.close()
        code = 0
    sys.exit(code)


def _setup_logging(quiet: bool) -> None:
    # Only batchrun's own lines: httpx logs every request at INFO.
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s batchrun: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    log.setLevel(logging.WARNING if quiet else logging.INFO)


class _Parser(argparse.ArgumentParser):
    """argparse, but bad arguments exit 2 with one line and no usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"batchrun: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="batchrun",
        description="Run large batches of LLM chat completions reliably and cheaply.",
    )
    parser.add_argument("--version", action="version", version=f"batchrun {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_run(sub)
    _add_plan(sub)
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
        "--variant", metavar="NAME", help="run only this one of the job's [[variants]]"
    )
    cmd.add_argument(
        "--retry-failed", action="store_true", help="re-send rows whose last attempt failed"
    )
    cmd.add_argument("--limit", type=_positive_int, metavar="N", help="only the first N rows")
    cmd.add_argument("--shard", type=_shard, metavar="I/N", help="only shard I of N (0-based)")
    cmd.add_argument("--summary-json", metavar="PATH", help="write the run summary as JSON")
    cmd.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
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
    cmd.set_defaults(handler=_cmd_plan)


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
        "--format", choices=("table", "csv", "json", "markdown", "html"), default="table"
    )
    cmd.add_argument("--output", metavar="FILE", help="write the report here, not to stdout")
    cmd.add_argument(
        "--pricing", metavar="FILE.toml", help='re-price every row with [pricing."MODEL"] tables'
    )
    cmd.add_argument("--since", metavar="DATE", help="first day to include (ISO date, UTC)")
    cmd.add_argument("--until", metavar="DATE", help="last day to include (ISO date, UTC)")
    cmd.set_defaults(handler=_cmd_report)


def _add_compare(sub: Any) -> None:
    cmd = sub.add_parser(
        "compare", help="score variants' labels against gold or a reference, with their cost"
    )
    cmd.add_argument("paths", nargs="+", metavar="OUTPUT", help="output Parquet files of one job")
    truth = cmd.add_mutually_exclusive_group(required=True)
    truth.add_argument("--gold", metavar="COLUMN", help="the column holding the right labels")
    truth.add_argument("--reference", metavar="VARIANT", help="the variant others are held to")
    cmd.add_argument("--columns", metavar="C,...", help="the label columns to compare")
    cmd.add_argument(
        "--within",
        type=float,
        default=2.0,
        metavar="POINTS",
        help="recommend the cheapest variant this many points of the best (default 2)",
    )
    cmd.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    cmd.add_argument("--output", metavar="PATH", help="write the comparison here, not to stdout")
    cmd.add_argument(
        "--disagreements",
        metavar="PATH",
        help="write rows where variants (or gold) disagree, labels side by side (.parquet/.csv)",
    )
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
    from batchrun._runner import RunOptions, run_job_file

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
    )
    progress = None if args.quiet else _ProgressDisplay()
    with _sigterm_as_ctrl_c(), _logs_above_the_bar(progress):
        summary = run_job_file(
            args.job, sets=args.sets, variables=args.var, options=options, progress=progress
        )
    if progress is not None:
        progress.close()
    if args.summary_json:
        _write_json(Path(args.summary_json), summary.to_dict())
    if not args.quiet:
        print(summary.render(), file=sys.stderr)
    return summary.exit_code


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


def _logs_above_the_bar(progress: _ProgressDisplay | None) -> AbstractContextManager[Any]:
    """On a TTY, log lines (a signal's, a retry's) go through ``tqdm.write``: printed on
    a line of their own above the bar, not into the middle of the bar's line."""
    if progress is None or not progress.tty:
        return nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


def _cmd_plan(args: argparse.Namespace) -> int:
    _arrow_without_pandas()
    from batchrun.plan.planner import plan_job_file

    plan = plan_job_file(
        args.job, sets=args.sets, variables=args.var, pilot=args.pilot, emulate=args.emulate
    )
    print(json.dumps(plan.to_dict(), indent=2) if args.format == "json" else plan.render())
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from batchrun.report.aggregate import render, report
    from batchrun.report.selection import DayRange, load_pricing, parse_day

    by = [col.strip() for col in args.by.split(",") if col.strip()]
    days = DayRange(parse_day(args.since, "--since"), parse_day(args.until, "--until"))
    pricing = load_pricing(args.pricing) if args.pricing else None
    result = report(args.paths, by=by, days=days, pricing=pricing)
    for skipped in result.skipped:
        print(f"batchrun: skipped {skipped}", file=sys.stderr)
    if args.format == "html":
        from batchrun.report.page import render_html

        text = render_html(result)
    else:
        text = render(result.table, args.format)
    if args.output:
        _write_text(Path(args.output), text)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from batchrun.compare.compute import compare
    from batchrun.compare.render import render

    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    comparison = compare(
        args.paths,
        gold=args.gold,
        reference=args.reference,
        columns=columns,
        within=args.within,
        disagreements=args.disagreements,
    )
    text = render(comparison, args.format)
    if args.output:
        _write_text(Path(args.output), text)
    else:
        sys.stdout.write(text)
    return 0


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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


# --- progress -------------------------------------------------------------------


class _ProgressDisplay:
    """A tqdm bar on a TTY; a log line every few seconds otherwise."""

    LOG_EVERY_S = 5.0
    DRAW_EVERY_S = 0.2
    RATE_WINDOW_S = 30.0

    def __init__(self) -> None:
        self._bar: Any = None
        self._last_log = 0.0
        self._last_draw = 0.0
        self._last: Any = None
        self.tty = sys.stderr.isatty()
        self._sent: deque[tuple[float, int]] = deque()

    def __call__(self, counters: Any) -> None:
        # Called for every finished row: render at most a few times a second.
        now = time.monotonic()
        self._last = counters
        if now - self._last_draw < self.DRAW_EVERY_S:
            return
        self._last_draw = now
        counters.rate_use = self._rate_use(counters)
        if self.tty:
            self._update_bar(counters)
        elif now - self._last_log >= self.LOG_EVERY_S:
            self._last_log = now
            log.info("%s", _progress_line(counters))

    def _update_bar(self, counters: Any) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=counters.total or None, unit="row", dynamic_ncols=True)
        self._bar.n = counters.finished
        self._bar.set_postfix_str(_postfix(counters), refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._update_bar(self._last)  # the last rows may have come between draws
            self._bar.close()

    def _rate_use(self, counters: Any) -> float | None:
        """Requests sent over the last few seconds, as a share of the RPM limit in use.

        The window opens at the first answer: the rate bucket's initial burst (half a
        second's worth, sent at once) has gone out by then and is left out, or the
        first half minute would read over 100%."""
        if not counters.dispatch.rows_sent:
            return None
        now = time.monotonic()
        self._sent.append((now, counters.sent))
        while now - self._sent[0][0] > self.RATE_WINDOW_S:
            self._sent.popleft()
        elapsed = now - self._sent[0][0]
        # Judge the pace only once a few seconds are in.
        if not counters.rpm_limit or elapsed < 3.0:
            return None
        per_minute = (counters.sent - self._sent[0][1]) * 60.0 / elapsed
        return float(per_minute / counters.rpm_limit)


def _postfix(counters: Any) -> str:
    parts = [f"err={counters.failed}", f"429={counters.rate_limited}"]
    parts.append(f"${counters.cost_usd:.4f}")
    if getattr(counters, "rate_use", None) is not None:
        parts.append(f"limit use={counters.rate_use:.0%}")
    return " ".join(parts)


def _progress_line(counters: Any) -> str:
    total = counters.total or "?"
    return f"{counters.finished}/{total} rows, {_postfix(counters)}"


if __name__ == "__main__":  # pragma: no cover
    main()
