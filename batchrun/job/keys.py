"""The job file's keys: for each, the check its value must pass, its type, default,
allowed values and what it does. ``job.load`` builds a ``Job`` from them;
``job.reference`` renders them as the job-file reference, so the docs cannot drift.

Each check takes the dotted key and the raw value and returns the clean value, or raises
``InvalidKey`` with one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, time
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from batchrun._errors import redact
from batchrun.job.columns import COLUMN_TYPES, parse_columns
from batchrun.job.config import (
    IMAGE_DETAILS,
    MAX_COMPLETION_TOKENS_LIMIT,
    MAX_EXAMPLES,
    MAX_REASKS,
    PARSE_MODES,
    REASONING_EFFORTS,
    RESPONSE_FORMATS,
    SYSTEM_ROLES,
    VERBOSITIES,
    ExamplesConfig,
    is_store_uri,
    store_uri_problem,
)
from batchrun.job.document import NAME, InvalidKey, dotted
from batchrun.job.template import Template

__all__ = ["SCHEMA", "Check", "Key", "fail", "price", "show"]

# Body fields batchrun builds itself; letting ``extra`` replace them would
# silently break streaming assembly, the row's prompt or one-answer-per-row.
_RESERVED_EXTRA = {
    "model": "use request.model",
    "messages": "batchrun builds them from request.prompt and request.system_prompt",
    "stream": "use request.stream",
    "stream_options": "batchrun sets it when request.stream = true",
    "n": "batchrun keeps one answer per row",
}

Check = Callable[[str, Any], Any]


def fail(key: str, detail: str) -> NoReturn:
    raise InvalidKey(key, f"{key}: {detail}")


def show(value: Any) -> str:
    """A value as the user wrote it, cut short so the message stays one line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, date | time):
        return f"{value.isoformat()} (a TOML date/time; quote it)"
    text = repr(value)
    return text if len(text) <= 60 else text[:56] + "...'"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        fail(key, f"must be a string, got {show(value)}")
    if not value.strip():
        fail(key, "must not be empty")
    return value


def _prefix(key: str, value: Any) -> str:
    """Any string, empty included: the prefix of the columns batchrun adds."""
    if not isinstance(value, str):
        fail(key, f"must be a string, got {show(value)}")
    return value


def _optional_text(key: str, value: Any) -> str | None:
    """An optional string; ``""`` leaves it unset (how ``--set key=`` clears one)."""
    return None if value == "" else _text(key, value)


def _path(key: str, value: Any) -> str:
    text = _text(key, value)
    problem = store_uri_problem(text) if is_store_uri(text) else None
    if problem:
        fail(key, f"{show(redact(text))} {problem}")
    return str(Path(text).expanduser()) if text.startswith("~") else text


def _optional_path(key: str, value: Any) -> str | None:
    return None if value == "" else _path(key, value)


def _parquet_path(key: str, value: Any) -> str:
    text = _path(key, value)
    if not text.lower().endswith(".parquet"):
        fail(key, f"{show(text)} must end in .parquet")
    return text


def _delimiter(key: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) != 1 or value in '"\r\n':
        fail(key, f"{show(value)} must be one character other than a quote or newline, e.g. ';'")
    return value


def _enum(choices: Sequence[str], *, optional: bool = True) -> Check:
    def check(key: str, value: Any) -> str | None:
        if optional and value == "":
            return None
        if not isinstance(value, str) or value not in choices:
            fail(key, f"{show(value)} is not one of {', '.join(choices)}")
        return value

    return check


def _int_range(low: int, high: int) -> Check:
    def check(key: str, value: Any) -> int:
        if not _is_int(value):
            fail(key, f"must be an integer in {low}..{high}, got {show(value)}")
        if not low <= value <= high:
            fail(key, f"{value} is out of range {low}..{high}")
        return int(value)

    return check


def _positive_int(key: str, value: Any) -> int:
    if not _is_int(value) or value < 1:
        fail(key, f"must be a positive integer, got {show(value)}")
    return int(value)


def _count(key: str, value: Any) -> int:
    if not _is_int(value) or value < 0:
        fail(key, f"must be an integer >= 0, got {show(value)}")
    return int(value)


def _positive_number(key: str, value: Any) -> float:
    if not _is_number(value) or value <= 0:
        fail(key, f"must be a number > 0, got {show(value)}")
    return float(value)


def price(key: str, value: Any) -> float:
    if not _is_number(value) or value < 0:
        fail(key, f"must be a number >= 0 (USD per million tokens), got {show(value)}")
    return float(value)


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        fail(key, f"must be true or false, got {show(value)}")
    return value


def _template(key: str, value: Any) -> str:
    text = _text(key, value)
    try:
        Template.parse(text)
    except ValueError as exc:
        fail(key, str(exc))
    return text


def _optional_template(key: str, value: Any) -> str | None:
    """The system prompt is a template too (the request builder renders it per row)."""
    return None if value == "" else _template(key, value)


def _env_name(key: str, value: Any) -> str:
    # The value is not shown: people paste the key itself here.
    if not isinstance(value, str) or not NAME.fullmatch(value):
        fail(
            key,
            "must be the NAME of an environment variable (letters, digits, _), e.g. "
            "'MODELSTREAM_API_KEY'; the value given is not shown in case it is a key",
        )
    return value


def _base_url(key: str, value: Any) -> str:
    text = _text(key, value)
    if "@" in text.split("://", 1)[-1].split("/", 1)[0]:  # first: no message may echo it
        fail(
            key, "must not carry credentials; the key comes from the variable api.api_key_env names"
        )
    try:
        url = urlsplit(text)
        url.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        fail(key, f"{show(redact(text))} is not a valid URL")
    if url.scheme not in ("http", "https") or not url.hostname:
        fail(key, f"{show(text)} is not an http:// or https:// URL")
    if url.scheme == "http" and not _is_loopback(url.hostname):
        fail(
            key,
            f"{show(text)}: plain http:// is allowed only for localhost, 127.0.0.0/8 "
            "and ::1; use https://",
        )
    return text.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _extra(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        fail(key, f"must be a table (sent verbatim in the request body), got {show(value)}")
    for name in value:
        if name in _RESERVED_EXTRA:
            fail(f"{key}.{name}", f"is set by batchrun; {_RESERVED_EXTRA[name]}")
    _json_only(key, value)
    return value


def _examples(key: str, value: Any) -> ExamplesConfig:
    if not isinstance(value, dict) or "path" not in value:
        fail(key, f'must be a table like {{path = "examples.csv"}}, got {show(value)}')
    for name in value:
        if name not in ("path", "answer"):
            fail(f"{key}.{dotted(name)}", "unknown key; request.examples takes path and answer")
    answer = _text(f"{key}.answer", value.get("answer", "answer"))
    return ExamplesConfig(_path(f"{key}.path", value["path"]), answer)


def _json_only(key: str, value: Any) -> None:
    """TOML dates and times have no JSON form, so they cannot go in a request body."""
    if isinstance(value, date | time):
        fail(key, f"{show(value)} cannot be sent as JSON")
    if isinstance(value, dict):
        for name, item in value.items():
            _json_only(f"{key}.{dotted(name)}", item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _json_only(f"{key}[{index}]", item)


def _columns(key: str, value: Any) -> tuple[dict[str, str], dict[str, Any]]:
    return parse_columns(key, value)


@dataclass(frozen=True)
class Key:
    """One job-file key: its check, and what the reference says of it."""

    check: Check
    kind: str  # the type, as the reference names it
    help: str  # what it does, what is allowed
    default: str = ""  # shown as the default; "" for a required key
    required: bool = False
    text: bool = False  # a --set value for this key stays the text typed


def _choices(values: Sequence[str]) -> str:
    return ", ".join(f"`{v}`" for v in values)


_MCT = MAX_COMPLETION_TOKENS_LIMIT
SCHEMA: dict[str, dict[str, Key]] = {
    "job": {
        "name": Key(
            _text,
            "string",
            "the job's name; a checkpoint belongs to one job",
            required=True,
            text=True,
        ),
    },
    "input": {
        "path": Key(
            _path,
            "string",
            "a `.csv` or `.parquet` file, a directory or a glob; local or `s3://`/`gs://`",
            required=True,
            text=True,
        ),
        "id_column": Key(
            _optional_text,
            "string",
            "a string or integer column naming each row",
            "the row's position",
            text=True,
        ),
        "delimiter": Key(
            _delimiter,
            "string",
            'the one character between a CSV\'s fields, e.g. `;`, a tab (`"\\t"`) or `|`;'
            " not a quote or newline",
            "`,`",
            text=True,
        ),
    },
    "api": {
        "base_url": Key(
            _base_url,
            "string",
            "`https://...`; plain `http://` only for localhost, 127.0.0.0/8 and ::1; no"
            " `user:pass@`",
            "`https://api.modelstream.ai`",
            text=True,
        ),
        "api_key_env": Key(
            _env_name,
            "string",
            "the environment variable holding the API key (the key itself never goes in the file)",
            "`MODELSTREAM_API_KEY`",
            text=True,
        ),
    },
    "request": {
        "model": Key(_text, "string", "the model every row is sent to", required=True, text=True),
        "prompt": Key(
            _template,
            "template",
            "the user message: `{column}` names an input column, `{{`/`}}` are literal braces",
            required=True,
            text=True,
        ),
        "system_prompt": Key(
            _optional_template,
            "template",
            "the system message, a template like `prompt`",
            "none",
            text=True,
        ),
        "system_role": Key(
            _enum(SYSTEM_ROLES, optional=False),
            "string",
            f"the system message's role: {_choices(SYSTEM_ROLES)}",
            "`developer`",
        ),
        "image_urls_column": Key(
            _optional_text,
            "string",
            "a `list<string>` column of image URLs, or in CSV a JSON array or one URL",
            "none",
            text=True,
        ),
        "image_detail": Key(
            _enum(IMAGE_DETAILS), "string", _choices(IMAGE_DETAILS), "the API's default"
        ),
        "reasoning_effort": Key(
            _enum(REASONING_EFFORTS), "string", _choices(REASONING_EFFORTS), "the API's default"
        ),
        "verbosity": Key(_enum(VERBOSITIES), "string", _choices(VERBOSITIES), "the API's default"),
        "max_completion_tokens": Key(
            _int_range(1, _MCT),
            "integer",
            f"1..{_MCT}; also what the budget and `tokens_per_minute` count per request",
            f"the API's cap ({_MCT} counted)",
        ),
        "response_format": Key(
            _enum(RESPONSE_FORMATS), "string", _choices(RESPONSE_FORMATS), "the API's default"
        ),
        "stream": Key(_bool, "bool", "receive answers as server-sent events", "`false`"),
        "dedupe": Key(
            _bool, "bool", "identical requests are sent once; `false` sends each row", "`true`"
        ),
        "extra": Key(
            _extra,
            "table",
            "sent verbatim in the request body; not `model`, `messages`, `stream`,"
            " `stream_options`, `n`, nor a key also set in `[request]`",
            "`{}`",
        ),
        "reask": Key(
            _int_range(0, MAX_REASKS),
            "integer",
            f"0..{MAX_REASKS}: an answer that does not parse or breaks a column rule is asked"
            ' again, up to N times (needs `output.parse = "json"` and `output.columns`)',
            "`0`",
        ),
        "cut_off_retry_tokens": Key(
            _int_range(1, _MCT),
            "integer",
            "above `max_completion_tokens`: an answer cut off at `max_completion_tokens`"
            " is sent once more with this larger limit",
            "none",
        ),
        "examples": Key(
            _examples,
            "table",
            'few-shot examples: `{path = "examples.csv"}`, a CSV or Parquet file with the'
            ' columns `prompt` names and an `answer` column (or `answer = "COLUMN"`);'
            f" each row, up to {MAX_EXAMPLES}, is sent as a user turn (the prompt filled from"
            " it) and an assistant turn (its answer) before every row's prompt",
            "none",
        ),
    },
    "limits": {
        "concurrency": Key(_positive_int, "integer", "requests in flight at most; ≥ 1", "`64`"),
        "requests_per_minute": Key(
            _positive_int,
            "integer",
            "≥ 1; no rolling 60 s window holds more sends",
            "learned from the API's headers",
        ),
        "tokens_per_minute": Key(
            _positive_int,
            "integer",
            "≥ 1 and at least `max_completion_tokens`; prompt plus `max_completion_tokens`"
            " counted per request",
            "learned from the API's headers",
        ),
        "max_attempts": Key(
            _positive_int, "integer", "sends per row at most; ≥ 1; 429s do not count", "`6`"
        ),
        "timeout_s": Key(
            _positive_number,
            "number",
            "seconds for a whole answer (a stream: each gap); > 0",
            "`120`",
        ),
        "max_cost_usd": Key(
            _positive_number,
            "number",
            "the budget over every run of the job; > 0; needs `[pricing]` for the model",
            "no budget",
        ),
        "max_failed_rows": Key(
            _count, "integer", "failed rows a run may end with and still exit 0; ≥ 0", "`0`"
        ),
    },
    "output": {
        "path": Key(
            _parquet_path,
            "string",
            "ends in `.parquet`; local or `s3://`/`gs://`; not inside what `input.path` matches",
            required=True,
            text=True,
        ),
        "parse": Key(
            _enum(PARSE_MODES),
            "string",
            f"{_choices(PARSE_MODES)}: the answer is a JSON object read into `columns`",
            "none",
        ),
        "columns": Key(
            _columns,
            "table",
            'only with `parse = "json"`: name = type'
            f" ({_choices(COLUMN_TYPES)}) or an inline table of rules (`type`, `enum`,"
            " `min`, `max`, `required`)",
            "`{}`",
        ),
        "prefix": Key(
            _prefix,
            "string",
            "put before every column batchrun adds (when they clash with input columns)",
            '`""`',
            text=True,
        ),
        "checkpoint": Key(
            _optional_path,
            "string",
            "where answers are checkpointed, on a local or mounted filesystem",
            "`<output.path>.ckpt.sqlite` (for an object-store output, under"
            " `$XDG_STATE_HOME/batchrun/`)",
            text=True,
        ),
    },
}
