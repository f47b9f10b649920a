"""The emulator's settings as one frozen value, built from the command line."""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from batchrun.emulator.faults import FaultRates
from batchrun.emulator.labels import LabelSettings

DEFAULT_PORT = 8000
DEFAULT_STALL_S = 30.0
READY_PREFIX = "batchrun emulator listening on "  # first stdout line, before the URL


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """What the server does; every default is a fast, fault-free, unlimited server."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    rpm: int | None = None
    tpm: int | None = None
    terse_limits: bool = False  # LiteLLM-proxy-like: fixed windows, bare 429s, no resets
    window_s: float = 60.0  # the terse mode's fixed window (limits stay per minute)
    vendor_retry_after: bool = False  # terse 429s carry llm_provider-retry-after
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    faults: FaultRates = field(default_factory=FaultRates)
    header_values: tuple[tuple[bytes, bytes], ...] = ()  # sent literally on every answer
    stall_s: float = DEFAULT_STALL_S
    seed: int = 0
    tokens_per_second: float | None = None
    context_tokens: int | None = None  # longer prompts get a 400, as a model's context window
    api_keys: tuple[str, ...] = ()  # empty: any key starting "sk-"
    allow_remote: bool = False
    echo_key: bool = False  # streamed answers are an error chunk quoting the API key
    parent_watch: bool = False  # exit when stdin reaches EOF (parent died)
    labels: LabelSettings = field(default_factory=LabelSettings)

    def accepts_key(self, key: str) -> bool:
        return key in self.api_keys if self.api_keys else key.startswith("sk-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchrun emulator",
        description="Local ModelStream chat-completions stand-in for tests and benchmarks.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="bind address (loopback only unless --allow-remote)")
    add("--port", type=int, default=DEFAULT_PORT, help="bind port; 0 picks a free one")
    add("--allow-remote", action="store_true", help="allow a non-loopback --host")
    add(
        "--api-key", action="append", default=[], help="accepted key (repeatable); default any sk-*"
    )
    add("--seed", type=int, default=0, help="seed of answers, faults and jitter")
    add("--rpm", type=_positive_int, help="requests per rolling minute (default unlimited)")
    add("--tpm", type=_positive_int, help="tokens per rolling minute (default unlimited)")
    add(
        "--terse-limits",
        action="store_true",
        help="limit like the LiteLLM proxy: fixed windows counting refusals, no reset headers, "
        "429s without Retry-After or x-ratelimit headers",
    )
    add("--window-s", type=_positive, default=60.0, help="--terse-limits window (default 60)")
    add(
        "--vendor-retry-after",
        action="store_true",
        help="--terse-limits 429s carry llm_provider-retry-after (the window, in seconds)",
    )
    add("--latency-ms", type=_non_negative, default=0.0, help="delay before each answer")
    add("--jitter-ms", type=_non_negative, default=0.0, help="uniform +/- jitter on the delay")
    add("--tokens-per-second", type=_positive, help="stream pace (default unpaced)")
    add("--context-tokens", type=_positive_int, help="400 for longer prompts (default none)")
    add("--stall-s", type=_non_negative, default=DEFAULT_STALL_S, help="how long a stall lasts")
    for name in ("fail", "drop", "stall", "truncate", "malformed"):
        add(f"--{name}-rate", type=_rate, default=0.0, help=f"fraction of {name} faults")
    add(
        "--no-usage-rate",
        type=_rate,
        default=0.0,
        help="fraction of answers sent without usage (plain and streamed), still billed",
    )
    add(
        "--label-accuracy",
        action="append",
        default=[],
        type=_accuracy,
        metavar="[MODEL=]A",
        help="labeling answers: share of enum labels equal to the hidden truth, for MODEL "
        "(or every model); repeatable",
    )
    add(
        "--label-break-rate",
        type=_rate,
        default=0.0,
        help="labeling answers: share of first answers that break a column rule",
    )
    add(
        "--label-omit",
        action="append",
        default=[],
        metavar="COLUMN",
        help="labeling answers: leave this column out (a model ignoring it); repeatable",
    )
    add(
        "--header-value",
        type=_header_value,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="every chat answer (429s too) carries this header literally, in place of any "
        "of that name (e.g. retry-after=NaN); repeatable",
    )
    add(
        "--echo-key",
        action="store_true",
        help="answer every streamed request with an SSE error chunk that quotes its "
        "Authorization header (a proxy that leaks the key)",
    )
    add("--parent-watch", action="store_true", help=argparse.SUPPRESS)
    return parser


def parse_config(argv: Sequence[str]) -> EmulatorConfig:
    """Parse and check the arguments; argparse exits with status 2 on a bad one."""
    parser = build_parser()
    args = parser.parse_args(list(argv))
    faults = FaultRates(
        args.fail_rate,
        args.drop_rate,
        args.stall_rate,
        args.truncate_rate,
        args.malformed_rate,
        args.no_usage_rate,
    )
    if sum(faults.as_tuple()) > 1.0:
        parser.error("the fault rates add up to more than 1")
    if not args.allow_remote and not is_loopback(args.host):
        parser.error(f"--host {args.host} is not a loopback address; pass --allow-remote")
    return EmulatorConfig(
        host=args.host,
        port=args.port,
        rpm=args.rpm,
        tpm=args.tpm,
        terse_limits=args.terse_limits,
        window_s=args.window_s,
        vendor_retry_after=args.vendor_retry_after,
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        faults=faults,
        header_values=tuple(args.header_value),
        stall_s=args.stall_s,
        seed=args.seed,
        tokens_per_second=args.tokens_per_second,
        context_tokens=args.context_tokens,
        api_keys=tuple(args.api_key),
        allow_remote=args.allow_remote,
        echo_key=args.echo_key,
        parent_watch=args.parent_watch,
        labels=LabelSettings(
            dict(args.label_accuracy), args.label_break_rate, frozenset(args.label_omit)
        ),
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _accuracy(text: str) -> tuple[str, float]:
    model, _, value = text.rpartition("=")
    return model or "*", _rate(value)


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _header_value(text: str) -> tuple[bytes, bytes]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError("must be NAME=VALUE")
    return name.strip().lower().encode("latin-1"), value.encode("latin-1")
