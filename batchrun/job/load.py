"""Load a job file, ``--set`` overrides and ``--var`` values into one validated ``Job``.

    load_job(path, sets=..., variables=...)
      read_toml         file -> raw dict (JobError with TOML's line and column)  [job.document]
      apply_set         each ``--set a.b=value`` onto the raw dict, tables made as needed
      substitute        ``${NAME}`` in every string value (``$${`` is a literal ``${``)
      _build_job        every key checked against ``_SCHEMA`` -> frozen value objects
      _check_job        the rules that span keys
      _config_hash      ``"v1:" + sha256`` of the resolved config's canonical JSON

Every violation is a ``JobError`` of one line naming the dotted key, the bad value
and what is allowed, e.g. ``request.max_completion_tokens: 0 is out of range 1..128000``.
Paths stay as written (relative to the working directory, ``~`` expanded); whether
the input exists is the input module's question.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from batchrun._errors import JobError, redact
from batchrun.job.columns import parse_columns, raw_columns
from batchrun.job.config import (
    IMAGE_DETAILS,
    MAX_COMPLETION_TOKENS_LIMIT,
    MAX_REASKS,
    PARSE_MODES,
    REASONING_EFFORTS,
    RESPONSE_FORMATS,
    SYSTEM_ROLES,
    VERBOSITIES,
    ApiConfig,
    InputConfig,
    Job,
    Limits,
    OutputConfig,
    Price,
    RequestConfig,
    Variant,
    is_store_uri,
    store_uri_problem,
)
from batchrun.job.document import (
    NAME,
    PRICE_KEYS,
    InvalidKey,
    annotate,
    apply_set,
    dotted,
    read_toml,
    read_variables,
    substitute,
    toml_literal,
)
from batchrun.job.paths import inside_input
from batchrun.job.template import Template

__all__ = ["load_job", "toml_literal", "validate_job"]

# Names people reach for when they try to put the key itself in the file.
_SECRET_KEYS = frozenset({"api_key", "key", "apikey", "token", "api_token", "secret"})
# Body fields batchrun builds itself; letting ``extra`` replace them would
# silently break streaming assembly, the row's prompt or one-answer-per-row.
_RESERVED_EXTRA = {
    "model": "use request.model",
    "messages": "batchrun builds them from request.prompt and request.system_prompt",
    "stream": "use request.stream",
    "stream_options": "batchrun sets it when request.stream = true",
    "n": "batchrun keeps one answer per row",
}


def load_job(path: str | Path, *, sets: Sequence[str] = (), variables: Sequence[str] = ()) -> Job:
    """Read, override, fill and validate a job file.

    >>> job = load_job("jobs/demo.toml", sets=["request.model=glm-5.2"])  # doctest: +SKIP
    >>> job.request.model  # doctest: +SKIP
    'glm-5.2'
    """
    raw = read_toml(Path(path))
    values = read_variables(variables, datetime.now(UTC))
    set_keys = [apply_set(raw, item, _is_text_key) for item in sets]
    try:
        job = _build_job(substitute(raw, values, ()))
        _check_job(job)
    except InvalidKey as exc:
        raise JobError(annotate(exc, set_keys)) from None
    return replace(job, config_hash=_config_hash(job))


def validate_job(job: Job) -> Job:
    """Check a ``Job`` built in code by the same rules as a file; returns it normalised, hashed."""
    raw: dict[str, Any] = {
        name: _present(asdict(getattr(job, name))) for name in ("input", "api", "request")
    }
    raw |= {"job": {"name": job.name}, "limits": _present(asdict(job.limits))}
    output = _present(asdict(job.output))
    output["columns"] = raw_columns(job.output.columns, job.output.rules)
    del output["rules"]
    raw |= {"output": output}
    raw["pricing"] = {model: _present(asdict(price)) for model, price in job.pricing.items()}
    raw["variants"] = [
        {"name": v.name, "request": _present(asdict(v.request))} for v in job.variants
    ]
    try:
        checked = _build_job(raw)
        _check_job(checked)
    except InvalidKey as exc:
        raise JobError(str(exc)) from None
    return replace(checked, config_hash=_config_hash(checked))


def _present(table: Mapping[str, Any]) -> dict[str, Any]:
    """A dataclass's fields as a raw table, leaving out the unset (None) ones."""
    return {key: value for key, value in table.items() if value is not None}


def _is_text_key(path: tuple[str, ...]) -> bool:
    section = _SCHEMA.get(path[0], {})
    return len(path) == 2 and path[1] in section and section[path[1]].text


# --- value checks: each takes the dotted key and the raw value, returns the clean value


Check = Callable[[str, Any], Any]


def _fail(key: str, detail: str) -> NoReturn:
    raise InvalidKey(key, f"{key}: {detail}")


def _show(value: Any) -> str:
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
        _fail(key, f"must be a string, got {_show(value)}")
    if not value.strip():
        _fail(key, "must not be empty")
    return value


def _prefix(key: str, value: Any) -> str:
    """Any string, empty included: the prefix of the columns batchrun adds."""
    if not isinstance(value, str):
        _fail(key, f"must be a string, got {_show(value)}")
    return value


def _optional_text(key: str, value: Any) -> str | None:
    """An optional string; ``""`` leaves it unset (how ``--set key=`` clears one)."""
    return None if value == "" else _text(key, value)


def _path(key: str, value: Any) -> str:
    text = _text(key, value)
    problem = store_uri_problem(text) if is_store_uri(text) else None
    if problem:
        _fail(key, f"{_show(redact(text))} {problem}")
    return str(Path(text).expanduser()) if text.startswith("~") else text


def _optional_path(key: str, value: Any) -> str | None:
    return None if value == "" else _path(key, value)


def _parquet_path(key: str, value: Any) -> str:
    text = _path(key, value)
    if not text.lower().endswith(".parquet"):
        _fail(key, f"{_show(text)} must end in .parquet")
    return text


def _delimiter(key: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) != 1 or value in '"\r\n':
        _fail(key, f"{_show(value)} must be one character other than a quote or newline, e.g. ';'")
    return value


def _enum(choices: Sequence[str], *, optional: bool = True) -> Check:
    def check(key: str, value: Any) -> str | None:
        if optional and value == "":
            return None
        if not isinstance(value, str) or value not in choices:
            _fail(key, f"{_show(value)} is not one of {', '.join(choices)}")
        return value

    return check


def _int_range(low: int, high: int) -> Check:
    def check(key: str, value: Any) -> int:
        if not _is_int(value):
            _fail(key, f"must be an integer in {low}..{high}, got {_show(value)}")
        if not low <= value <= high:
            _fail(key, f"{value} is out of range {low}..{high}")
        return int(value)

    return check


def _positive_int(key: str, value: Any) -> int:
    if not _is_int(value) or value < 1:
        _fail(key, f"must be a positive integer, got {_show(value)}")
    return int(value)


def _count(key: str, value: Any) -> int:
    if not _is_int(value) or value < 0:
        _fail(key, f"must be an integer >= 0, got {_show(value)}")
    return int(value)


def _positive_number(key: str, value: Any) -> float:
    if not _is_number(value) or value <= 0:
        _fail(key, f"must be a number > 0, got {_show(value)}")
    return float(value)


def _price(key: str, value: Any) -> float:
    if not _is_number(value) or value < 0:
        _fail(key, f"must be a number >= 0 (USD per million tokens), got {_show(value)}")
    return float(value)


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        _fail(key, f"must be true or false, got {_show(value)}")
    return value


def _template(key: str, value: Any) -> str:
    text = _text(key, value)
    try:
        Template.parse(text)
    except ValueError as exc:
        _fail(key, str(exc))
    return text


def _optional_template(key: str, value: Any) -> str | None:
    """The system prompt is a template too (the request builder renders it per row)."""
    return None if value == "" else _template(key, value)


def _env_name(key: str, value: Any) -> str:
    # The value is not shown: people paste the key itself here.
    if not isinstance(value, str) or not NAME.fullmatch(value):
        _fail(
            key,
            "must be the NAME of an environment variable (letters, digits, _), e.g. "
            "'MODELSTREAM_API_KEY'; the value given is not shown in case it is a key",
        )
    return value


def _base_url(key: str, value: Any) -> str:
    text = _text(key, value)
    if "@" in text.split("://", 1)[-1].split("/", 1)[0]:  # first: no message may echo it
        _fail(
            key, "must not carry credentials; the key comes from the variable api.api_key_env names"
        )
    try:
        url = urlsplit(text)
        url.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        _fail(key, f"{_show(redact(text))} is not a valid URL")
    if url.scheme not in ("http", "https") or not url.hostname:
        _fail(key, f"{_show(text)} is not an http:// or https:// URL")
    if url.scheme == "http" and not _is_loopback(url.hostname):
        _fail(
            key,
            f"{_show(text)}: plain http:// is allowed only for localhost, 127.0.0.0/8 "
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
        _fail(key, f"must be a table (sent verbatim in the request body), got {_show(value)}")
    for name in value:
        if name in _RESERVED_EXTRA:
            _fail(f"{key}.{name}", f"is set by batchrun; {_RESERVED_EXTRA[name]}")
    _json_only(key, value)
    return value


def _json_only(key: str, value: Any) -> None:
    """TOML dates and times have no JSON form, so they cannot go in a request body."""
    if isinstance(value, date | time):
        _fail(key, f"{_show(value)} cannot be sent as JSON")
    if isinstance(value, dict):
        for name, item in value.items():
            _json_only(f"{key}.{dotted(name)}", item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _json_only(f"{key}[{index}]", item)


def _columns(key: str, value: Any) -> tuple[dict[str, str], dict[str, Any]]:
    return parse_columns(key, value)


# --- the schema and building the Job ---------------------------------------------


@dataclass(frozen=True)
class _Key:
    check: Check
    required: bool = False
    text: bool = False  # a --set value for this key stays the text typed


_SCHEMA: dict[str, dict[str, _Key]] = {
    "job": {"name": _Key(_text, required=True, text=True)},
    "input": {
        "path": _Key(_path, required=True, text=True),
        "id_column": _Key(_optional_text, text=True),
        "delimiter": _Key(_delimiter, text=True),
    },
    "api": {
        "base_url": _Key(_base_url, text=True),
        "api_key_env": _Key(_env_name, text=True),
    },
    "request": {
        "model": _Key(_text, required=True, text=True),
        "prompt": _Key(_template, required=True, text=True),
        "system_prompt": _Key(_optional_template, text=True),
        "system_role": _Key(_enum(SYSTEM_ROLES, optional=False)),
        "image_urls_column": _Key(_optional_text, text=True),
        "image_detail": _Key(_enum(IMAGE_DETAILS)),
        "reasoning_effort": _Key(_enum(REASONING_EFFORTS)),
        "verbosity": _Key(_enum(VERBOSITIES)),
        "max_completion_tokens": _Key(_int_range(1, MAX_COMPLETION_TOKENS_LIMIT)),
        "response_format": _Key(_enum(RESPONSE_FORMATS)),
        "stream": _Key(_bool),
        "dedupe": _Key(_bool),
        "extra": _Key(_extra),
        "reask": _Key(_int_range(0, MAX_REASKS)),
        "cut_off_retry_tokens": _Key(_int_range(1, MAX_COMPLETION_TOKENS_LIMIT)),
    },
    "limits": {
        "concurrency": _Key(_positive_int),
        "requests_per_minute": _Key(_positive_int),
        "tokens_per_minute": _Key(_positive_int),
        "max_attempts": _Key(_positive_int),
        "timeout_s": _Key(_positive_number),
        "max_cost_usd": _Key(_positive_number),
        "max_failed_rows": _Key(_count),
    },
    "output": {
        "path": _Key(_parquet_path, required=True, text=True),
        "parse": _Key(_enum(PARSE_MODES)),
        "columns": _Key(_columns),
        "prefix": _Key(_prefix, text=True),
        "checkpoint": _Key(_optional_path, text=True),
    },
}


def _build_job(raw: Mapping[str, Any]) -> Job:
    """Every section checked key by key; defaults are the dataclasses' own."""
    _check_sections(raw)
    given = {name: _section(raw, name) for name in _SCHEMA}
    return Job(
        name=given["job"]["name"],
        input=InputConfig(**given["input"]),
        request=RequestConfig(**given["request"]),
        output=_output(given["output"]),
        api=ApiConfig(**given["api"]),
        limits=Limits(**given["limits"]),
        pricing=pricing_tables(raw.get("pricing", {})),
        variants=_variants(raw.get("variants", []), raw.get("request", {})),
    )


_VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _variants(tables: Any, request: Mapping[str, Any]) -> tuple[Variant, ...]:
    """``[[variants]]``: each a unique ``name`` and ``request.*`` overrides of the job's."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        _fail("variants", "must be [[variants]] tables, each with a name and request.* keys")
    names: set[str] = set()
    variants = []
    for index, table in enumerate(tables):
        where = f"variants[{index}]"
        for key in table:
            if key not in ("name", "request"):
                homes = "request." + key if key in _SCHEMA["request"] else "request.<key>"
                _fail(f"{where}.{dotted(key)}", f"a variant takes name and {homes} keys")
        name = table.get("name")
        if not isinstance(name, str) or not _VARIANT_NAME.fullmatch(name):
            _fail(f"{where}.name", f"missing or not a name like 'glm-5.2' ({_show(name)})")
        if name in names:
            _fail(f"{where}.name", f"{name!r} names another variant too; names must be unique")
        names.add(name)
        overrides = table.get("request", {})
        if not isinstance(overrides, dict):
            _fail(f"{where}.request", f"must be a table of request keys, got {_show(overrides)}")
        try:
            checked = _section({"request": {**request, **overrides}}, "request")
        except InvalidKey as exc:
            key = f"{where}.{exc.key}"
            raise InvalidKey(key, str(exc).replace(exc.key, key, 1)) from None
        variants.append(Variant(name, RequestConfig(**checked)))
    return tuple(variants)


def _output(given: dict[str, Any]) -> OutputConfig:
    """``columns`` holds (types, rules) from ``parse_columns``: two fields of the config."""
    if "columns" in given:
        given["columns"], given["rules"] = given["columns"]
    return OutputConfig(**given)


def _check_sections(raw: Mapping[str, Any]) -> None:
    """Top-level names must be known sections; a stray key gets pointed to its section."""
    known = [*_SCHEMA, "pricing"]
    for name, value in raw.items():
        if name == "variants":
            continue  # an array of tables: _variants checks it
        if name in known:
            if not isinstance(value, dict):
                _fail(name, f"must be a table [{name}], got {_show(value)}")
            continue
        if isinstance(value, dict):
            hint = _did_you_mean(name, known, lambda s: f"[{s}]")
            hint = hint or f" (sections: {', '.join(known)})"
            raise InvalidKey(name, f"unknown section [{name}]{hint}")
        homes = [f"{section}.{name}" for section, keys in _SCHEMA.items() if name in keys]
        hint = f" (did you mean {homes[0]}?)" if homes else f" (sections: {', '.join(known)})"
        raise InvalidKey(name, f"unknown key {name}{hint}")


def _section(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    """One section's checked values, only those given (so defaults stay the dataclass's)."""
    table, schema = raw.get(name, {}), _SCHEMA[name]
    for key in table:
        if key not in schema:
            _unknown_key(name, key, list(schema))
    clean: dict[str, Any] = {}
    for key, spec in schema.items():
        dotted = f"{name}.{key}"
        if key in table:
            value = spec.check(dotted, table[key])
            if value is not None:
                clean[key] = value
        elif spec.required:
            _fail(dotted, "missing; it is required")
    return clean


def _unknown_key(section: str, key: str, allowed: list[str]) -> NoReturn:
    """``section`` is already a dotted key; suggest the closest allowed key."""
    full_key = f"{section}.{dotted(key)}"
    if section == "api" and key.lower() in _SECRET_KEYS:
        _fail(
            full_key,
            "the API key never comes from the job file; export it and name the "
            "variable with api.api_key_env (default MODELSTREAM_API_KEY)",
        )
    hint = _did_you_mean(key, allowed, lambda k: f"{section}.{k}")
    if not hint:
        hint = f" (keys of [{section}]: {', '.join(allowed)})"
    raise InvalidKey(full_key, f"unknown key {full_key}{hint}")


def _did_you_mean(word: str, choices: Sequence[str], show: Callable[[str], str]) -> str:
    match = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {show(match[0])}?)" if match else ""


def pricing_tables(table: Mapping[str, Any]) -> dict[str, Price]:
    """``[pricing."MODEL"]`` tables: input and output required, cached_input optional."""
    return {model: _price_entry(model, entry) for model, entry in table.items()}


def _price_entry(model: str, entry: Any) -> Price:
    key = dotted("pricing", model)
    if not isinstance(entry, dict):
        _fail(key, f"must be a table of {', '.join(PRICE_KEYS)}, got {_show(entry)}")
    for name in entry:
        if name not in PRICE_KEYS:
            _unknown_key(key, name, list(PRICE_KEYS))
    for name in ("input", "output"):
        if name not in entry:
            _fail(f"{key}.{name}", "missing; it is required")
    return Price(**{name: _price(f"{key}.{name}", value) for name, value in entry.items()})


# --- rules that span keys ----------------------------------------------------------


def _check_job(job: Job) -> None:
    _check_output(job)
    _check_limits(job)
    _check_extra(job.request)
    _check_cut_off(job.request)
    for index, variant in enumerate(job.variants):
        try:
            _check_job(replace(job, request=variant.request, variants=()))
        except InvalidKey as exc:
            raise InvalidKey(exc.key, f"variants[{index}] ({variant.name}): {exc}") from None


def _check_output(job: Job) -> None:
    out = job.output
    if out.columns and out.parse != "json":
        _fail(
            "output.columns", 'needs output.parse = "json" (columns are parsed from a JSON answer)'
        )
    if job.request.reask and not (out.parse == "json" and out.columns):
        _fail(
            "request.reask",
            f'{job.request.reask} needs output.parse = "json" and output.columns '
            "(an answer is asked again when it does not parse into them or breaks a rule)",
        )
    if Path(out.path) == Path(job.input.path):
        _fail("output.path", f"{_show(out.path)} is the input file; the output would replace it")
    for key, written in (("output.path", out.path), ("output.checkpoint", out.checkpoint)):
        if written and inside_input(written, job.input.path):
            _fail(
                key,
                f"{_show(written)} is inside input.path {_show(job.input.path)}, so a later "
                "run would read it as input; write it elsewhere",
            )


def _check_limits(job: Job) -> None:
    limits, model = job.limits, job.request.model
    if limits.max_cost_usd is not None and job.price is None:
        # Without a price the budget cannot be enforced, and a budget that silently
        # does nothing is worse than none.
        _fail(
            "limits.max_cost_usd",
            f"needs a price for model {model!r}: add "
            f"[{dotted('pricing', model)}] with input and output (USD per million tokens)",
        )
    worst = job.request.worst_case_completion_tokens
    if limits.tokens_per_minute is not None and limits.tokens_per_minute < worst:
        _fail(
            "limits.tokens_per_minute",
            f"{limits.tokens_per_minute} is below one request's "
            f"{worst} completion tokens, so nothing could be sent; "
            "lower request.max_completion_tokens or raise the limit",
        )


def _check_cut_off(request: RequestConfig) -> None:
    longer, limit = request.cut_off_retry_tokens, request.max_completion_tokens
    if longer is not None and (limit is None or longer <= limit):
        _fail(
            "request.cut_off_retry_tokens",
            f"{longer} must be above request.max_completion_tokens ({limit or 'unset'}):"
            " a cut-off answer is retried once with this larger limit",
        )


def _check_extra(request: RequestConfig) -> None:
    """An extra key that duplicates a [request] key the file also sets is ambiguous."""
    for name in request.extra:
        if name in _SCHEMA["request"] and getattr(request, name) is not None:
            _fail(f"request.extra.{name}", f"duplicates request.{name}; set only one of them")


# --- identity ------------------------------------------------------------------------


def _config_hash(job: Job) -> str:
    """Versioned so a change of canonical form is detectable (``v1:`` + sha256 hex)."""
    data = asdict(job)
    del data["config_hash"]
    if data["input"]["delimiter"] == ",":  # a key added later: at its default, hashes stay
        del data["input"]["delimiter"]
    if not job.output.rules:  # jobs without rules or re-asks keep the hash they had
        del data["output"]["rules"]
    for key, unset in (("reask", 0), ("cut_off_retry_tokens", None)):
        if getattr(job.request, key) == unset:
            del data["request"][key]
    if not job.variants:
        del data["variants"]
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "v1:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
