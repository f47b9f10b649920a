"""Load a job file, ``--set`` overrides and ``--var`` values into one validated ``Job``.

    load_job(path, sets=..., variables=...)
      read_toml         file -> raw dict (JobError with TOML's line and column)  [job.document]
      apply_set         each ``--set a.b=value`` onto the raw dict, tables made as needed
      substitute        ``${NAME}`` in every string value (``$${`` is a literal ``${``)
      _build_job        every key checked against ``SCHEMA`` -> frozen value objects
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
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from batchrun._errors import JobError
from batchrun.job.columns import raw_columns
from batchrun.job.config import (
    ApiConfig,
    InputConfig,
    Job,
    Limits,
    OutputConfig,
    Price,
    RequestConfig,
    Variant,
)
from batchrun.job.document import (
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
from batchrun.job.keys import SCHEMA, fail, price, show
from batchrun.job.paths import inside_input

__all__ = ["load_job", "toml_literal", "validate_job"]

# Names people reach for when they try to put the key itself in the file.
_SECRET_KEYS = frozenset({"api_key", "key", "apikey", "token", "api_token", "secret"})


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
    section = SCHEMA.get(path[0], {})
    return len(path) == 2 and path[1] in section and section[path[1]].text


# --- building the Job ------------------------------------------------------------------


def _build_job(raw: Mapping[str, Any]) -> Job:
    """Every section checked key by key; defaults are the dataclasses' own."""
    _check_sections(raw)
    given = {name: _section(raw, name) for name in SCHEMA}
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
        fail("variants", "must be [[variants]] tables, each with a name and request.* keys")
    names: set[str] = set()
    variants = []
    for index, table in enumerate(tables):
        where = f"variants[{index}]"
        for key in table:
            if key not in ("name", "request"):
                homes = "request." + key if key in SCHEMA["request"] else "request.<key>"
                fail(f"{where}.{dotted(key)}", f"a variant takes name and {homes} keys")
        name = table.get("name")
        if not isinstance(name, str) or not _VARIANT_NAME.fullmatch(name):
            fail(f"{where}.name", f"missing or not a name like 'glm-5.2' ({show(name)})")
        if name in names:
            fail(f"{where}.name", f"{name!r} names another variant too; names must be unique")
        names.add(name)
        overrides = table.get("request", {})
        if not isinstance(overrides, dict):
            fail(f"{where}.request", f"must be a table of request keys, got {show(overrides)}")
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
    known = [*SCHEMA, "pricing"]
    for name, value in raw.items():
        if name == "variants":
            continue  # an array of tables: _variants checks it
        if name in known:
            if not isinstance(value, dict):
                fail(name, f"must be a table [{name}], got {show(value)}")
            continue
        if isinstance(value, dict):
            hint = _did_you_mean(name, known, lambda s: f"[{s}]")
            hint = hint or f" (sections: {', '.join(known)})"
            raise InvalidKey(name, f"unknown section [{name}]{hint}")
        homes = [f"{section}.{name}" for section, keys in SCHEMA.items() if name in keys]
        hint = f" (did you mean {homes[0]}?)" if homes else f" (sections: {', '.join(known)})"
        raise InvalidKey(name, f"unknown key {name}{hint}")


def _section(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    """One section's checked values, only those given (so defaults stay the dataclass's)."""
    table, schema = raw.get(name, {}), SCHEMA[name]
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
            fail(dotted, "missing; it is required")
    return clean


def _unknown_key(section: str, key: str, allowed: list[str]) -> NoReturn:
    """``section`` is already a dotted key; suggest the closest allowed key."""
    full_key = f"{section}.{dotted(key)}"
    if section == "api" and key.lower() in _SECRET_KEYS:
        fail(
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
        fail(key, f"must be a table of {', '.join(PRICE_KEYS)}, got {show(entry)}")
    for name in entry:
        if name not in PRICE_KEYS:
            _unknown_key(key, name, list(PRICE_KEYS))
    for name in ("input", "output"):
        if name not in entry:
            fail(f"{key}.{name}", "missing; it is required")
    return Price(**{name: price(f"{key}.{name}", value) for name, value in entry.items()})


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
        fail(
            "output.columns", 'needs output.parse = "json" (columns are parsed from a JSON answer)'
        )
    if job.request.reask and not (out.parse == "json" and out.columns):
        fail(
            "request.reask",
            f'{job.request.reask} needs output.parse = "json" and output.columns '
            "(an answer is asked again when it does not parse into them or breaks a rule)",
        )
    if Path(out.path) == Path(job.input.path):
        fail("output.path", f"{show(out.path)} is the input file; the output would replace it")
    for key, written in (("output.path", out.path), ("output.checkpoint", out.checkpoint)):
        if written and inside_input(written, job.input.path):
            fail(
                key,
                f"{show(written)} is inside input.path {show(job.input.path)}, so a later "
                "run would read it as input; write it elsewhere",
            )


def _check_limits(job: Job) -> None:
    limits, model = job.limits, job.request.model
    if limits.max_cost_usd is not None and job.price is None:
        # Without a price the budget cannot be enforced, and a budget that silently
        # does nothing is worse than none.
        fail(
            "limits.max_cost_usd",
            f"needs a price for model {model!r}: add "
            f"[{dotted('pricing', model)}] with input and output (USD per million tokens)",
        )
    worst = job.request.worst_case_completion_tokens
    if limits.tokens_per_minute is not None and limits.tokens_per_minute < worst:
        fail(
            "limits.tokens_per_minute",
            f"{limits.tokens_per_minute} is below one request's "
            f"{worst} completion tokens, so nothing could be sent; "
            "lower request.max_completion_tokens or raise the limit",
        )


def _check_cut_off(request: RequestConfig) -> None:
    longer, limit = request.cut_off_retry_tokens, request.max_completion_tokens
    if longer is not None and (limit is None or longer <= limit):
        fail(
            "request.cut_off_retry_tokens",
            f"{longer} must be above request.max_completion_tokens ({limit or 'unset'}):"
            " a cut-off answer is retried once with this larger limit",
        )


def _check_extra(request: RequestConfig) -> None:
    """An extra key that duplicates a [request] key the file also sets is ambiguous."""
    for name in request.extra:
        if name in SCHEMA["request"] and getattr(request, name) is not None:
            fail(f"request.extra.{name}", f"duplicates request.{name}; set only one of them")


# --- identity ------------------------------------------------------------------------


def _config_hash(job: Job) -> str:
    """Versioned so a change of canonical form is detectable (``v1:`` + sha256 hex)."""
    data = asdict(job)
    del data["config_hash"]
    if data["input"]["delimiter"] == ",":  # a key added later: at its default, hashes stay
        del data["input"]["delimiter"]
    if not job.output.rules:  # jobs without rules or re-asks keep the hash they had
        del data["output"]["rules"]
    for key, unset in (("reask", 0), ("cut_off_retry_tokens", None), ("examples", None)):
        if getattr(job.request, key) == unset:
            del data["request"][key]
    if not job.variants:
        del data["variants"]
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "v1:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
