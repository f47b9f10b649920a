"""``batchrun compare``'s arguments and the text it prints (the CLI writes it and exits).

Light to import: every ``batchrun`` command builds its parser, so pandas, pyarrow.compute
and the rest of ``compare`` are imported only when ``compare`` runs.
"""

from __future__ import annotations

import argparse

FORMATS = ("table", "json", "markdown", "html")


def add_arguments(cmd: argparse.ArgumentParser) -> None:
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
    cmd.add_argument(
        "--format",
        choices=FORMATS,
        help="table, json, markdown or html (default: --output's extension, else table)",
    )
    cmd.add_argument("--output", metavar="PATH", help="write the comparison here, not to stdout")
    cmd.add_argument(
        "--disagreements",
        metavar="PATH",
        help="write rows where variants (or gold) disagree, labels side by side (.parquet/.csv)",
    )


def compare_text(args: argparse.Namespace) -> str:
    """Compare as the arguments say; the comparison in the format asked for."""
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
    if args.format == "html":
        from batchrun.compare.page import render_html

        return render_html(comparison)
    return render(comparison, args.format)
