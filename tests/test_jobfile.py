"""The job-file loader: what loads, what is refused and how the refusal reads."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from batchrun._errors import JobError
from batchrun.job.config import (
    ApiConfig,
    ExamplesConfig,
    InputConfig,
    Job,
    Limits,
    OutputConfig,
    RequestConfig,
)
from batchrun.job.load import load_job, toml_literal, validate_job

ROOT = Path(__file__).resolve().parent.parent
JOB_VARIABLES = {"nightly.toml": ["date=2026-11-25"]}

# The smallest valid job, as TOML literals by section header.
BASE: dict[str, dict[str, str]] = {
    "job": {"name": '"t"'},
    "input": {"path": '"in.csv"'},
    "request": {"model": '"gpt-5.5"', "prompt": '"Label: {text}"'},
    "output": {"path": '"out/t.parquet"'},
}
PRICED = {
    'pricing."gpt-5.5".input': "1.25",
    'pricing."gpt-5.5".output': "10.0",
}

WriteJob = Callable[..., Path]


def job_text(changes: Mapping[str, str | None]) -> str:
    """BASE with dotted-key changes: a TOML literal sets the key, None removes it."""
    top: list[str] = []
    sections = {header: dict(keys) for header, keys in BASE.items()}
    for dotted, literal in changes.items():
        header, _, key = dotted.rpartition(".")
        if not header:
            top.append(f"{key} = {literal}")
        elif literal is None:
            sections[header].pop(key, None)
        else:
            sections.setdefault(header, {})[key] = literal
    lines = [*top]
    for header, keys in sections.items():
        lines += [f"[{header}]", *(f"{k} = {v}" for k, v in keys.items()), ""]
    return "\n".join(lines)


@pytest.fixture
def write_job(tmp_path: Path) -> WriteJob:
    def write(changes: Mapping[str, str | None] = {}, text: str | None = None) -> Path:
        path = tmp_path / "job.toml"
        path.write_text(job_text(changes) if text is None else text, encoding="utf-8")
        return path

    return write


def load_error(path: Path, **kwargs: object) -> str:
    with pytest.raises(JobError) as info:
        load_job(path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message, "a job error is one line"
    return message


# --- the shipped jobs ---------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((ROOT / "jobs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_job_loads(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    job = load_job(path, variables=JOB_VARIABLES.get(path.name, ()))
    assert job.config_hash.startswith("v1:")
    assert "${" not in job.output.path


def test_demo_job_is_the_documented_sentiment_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    job = load_job("jobs/demo.toml")
    today = datetime.now(UTC).date().isoformat()
    assert job.request.model == "gpt-5.5"
    assert job.request.response_format == "json_object"
    assert job.request.max_completion_tokens == 256
    assert job.request.image_urls_column == "images"
    assert job.output.columns == {"label": "string", "confidence": "double"}
    assert job.output.path == f"out/demo_{today}.parquet"
    assert (job.limits.concurrency, job.limits.requests_per_minute) == (32, 3000)
    assert job.limits.max_cost_usd == 5.0
    assert job.price is not None and job.price.cost(1_000_000, 0, 0) == 1.25


def test_nightly_job_takes_its_date_from_the_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    job = load_job("jobs/nightly.toml", variables=["date=2026-11-25"])
    assert job.output.path == "out/nightly/date=2026-11-25/labels.parquet"
    message = load_error(Path("jobs/nightly.toml"))
    assert "${date} is not defined; pass --var date=..." in message


# --- the catalogue of bad job files -------------------------------------------------

EFFORTS = "low, medium, high, xhigh"
TYPES = (
    "string, double, float, int64, int32, bool, boolean, list<string>, list<double>, list<int64>"
)
BAD_JOBS: list[tuple[str, dict[str, str | None], str]] = [
    # [job]
    ("name-missing", {"job.name": None}, "job.name: missing; it is required"),
    ("name-not-string", {"job.name": "3"}, "job.name: must be a string, got 3"),
    ("name-empty", {"job.name": '""'}, "job.name: must not be empty"),
    ("name-date", {"job.name": "2026-11-25"}, "job.name: must be a string, got 2026-11-25 (a TOML"),
    # [input]
    ("input-path-missing", {"input.path": None}, "input.path: missing; it is required"),
    ("input-path-empty", {"input.path": '""'}, "input.path: must not be empty"),
    ("id-column-type", {"input.id_column": "5"}, "input.id_column: must be a string, got 5"),
    (
        "delimiter-long",
        {"input.delimiter": '";;"'},
        "input.delimiter: ';;' must be one character other than a quote or newline",
    ),
    # [api]
    (
        "base-url-scheme",
        {"api.base_url": '"ftp://x.org"'},
        "api.base_url: 'ftp://x.org' is not an http:// or https:// URL",
    ),
    (
        "base-url-plain-http",
        {"api.base_url": '"http://api.example.com"'},
        "api.base_url: 'http://api.example.com': plain http:// is allowed only for localhost, "
        "127.0.0.0/8 and ::1; use https://",
    ),
    (
        "base-url-garbage",
        {"api.base_url": '"http://[::1"'},
        "api.base_url: 'http://[::1' is not a valid URL",
    ),
    ("base-url-empty", {"api.base_url": '""'}, "api.base_url: must not be empty"),
    (
        "api-key-env-name",
        {"api.api_key_env": '"MY-KEY"'},
        "api.api_key_env: must be the NAME of an environment variable (letters, digits, _)",
    ),
    ("api-key-env-type", {"api.api_key_env": "1"}, "api.api_key_env: must be the NAME"),
    (
        "api-key-in-file",
        {"api.api_key": '"sk-live-123"'},
        "api.api_key: the API key never comes from the job file",
    ),
    ("api-unknown", {"api.base": '"x"'}, "unknown key api.base (did you mean api.base_url?)"),
    # [request]
    ("model-missing", {"request.model": None}, "request.model: missing; it is required"),
    ("model-empty", {"request.model": '" "'}, "request.model: must not be empty"),
    ("prompt-missing", {"request.prompt": None}, "request.prompt: missing; it is required"),
    ("prompt-empty", {"request.prompt": '""'}, "request.prompt: must not be empty"),
    ("prompt-type", {"request.prompt": "['a']"}, "request.prompt: must be a string, got ['a']"),
    (
        "prompt-attribute",
        {"request.prompt": '"{text.upper}"'},
        "request.prompt: '{text.upper}' is not a plain column name",
    ),
    (
        "prompt-brace",
        {"request.prompt": '"JSON: {"'},
        "request.prompt: Single '{' encountered in format string (use {{ and }} for literal",
    ),
    (
        "prompt-conversion",
        {"request.prompt": '"{text!r}"'},
        "request.prompt: '{text}' has a format spec or conversion",
    ),
    (
        "system-prompt-template",
        {"request.system_prompt": '"Reply {"'},
        "request.system_prompt: Single '{'",
    ),
    (
        "system-role",
        {"request.system_role": '"user"'},
        "request.system_role: 'user' is not one of developer, system",
    ),
    (
        "system-role-empty",
        {"request.system_role": '""'},
        "request.system_role: '' is not one of developer, system",
    ),
    (
        "images-column",
        {"request.image_urls_column": "[]"},
        "request.image_urls_column: must be a string, got []",
    ),
    (
        "image-detail",
        {"request.image_detail": '"medium"'},
        "request.image_detail: 'medium' is not one of auto, low, high",
    ),
    (
        "effort",
        {"request.reasoning_effort": '"extreme"'},
        f"request.reasoning_effort: 'extreme' is not one of {EFFORTS}",
    ),
    (
        "effort-case",
        {"request.reasoning_effort": '"High"'},
        f"request.reasoning_effort: 'High' is not one of {EFFORTS}",
    ),
    (
        "verbosity",
        {"request.verbosity": '"high"'},
        "request.verbosity: 'high' is not one of low, medium",
    ),
    (
        "tokens-zero",
        {"request.max_completion_tokens": "0"},
        "request.max_completion_tokens: 0 is out of range 1..128000",
    ),
    (
        "tokens-high",
        {"request.max_completion_tokens": "128001"},
        "request.max_completion_tokens: 128001 is out of range 1..128000",
    ),
    (
        "tokens-string",
        {"request.max_completion_tokens": '"64"'},
        "request.max_completion_tokens: must be an integer in 1..128000, got '64'",
    ),
    (
        "tokens-float",
        {"request.max_completion_tokens": "64.0"},
        "request.max_completion_tokens: must be an integer in 1..128000, got 64.0",
    ),
    (
        "response-format",
        {"request.response_format": '"json_schema"'},
        "request.response_format: 'json_schema' is not one of text, json_object",
    ),
    ("stream", {"request.stream": '"yes"'}, "request.stream: must be true or false, got 'yes'"),
    ("dedupe", {"request.dedupe": "1"}, "request.dedupe: must be true or false, got 1"),
    (
        "extra-type",
        {"request.extra": '"temperature=0"'},
        "request.extra: must be a table (sent verbatim in the request body), got 'temperature=0'",
    ),
    (
        "extra-model",
        {"request.extra": '{ model = "x" }'},
        "request.extra.model: is set by batchrun; use request.model",
    ),
    (
        "extra-messages",
        {"request.extra": "{ messages = [] }"},
        "request.extra.messages: is set by batchrun",
    ),
    (
        "extra-date",
        {"request.extra": "{ when = 2026-11-25 }"},
        "request.extra.when: 2026-11-25 (a TOML date/time; quote it) cannot be sent as JSON",
    ),
    (
        "extra-duplicate",
        {"request.max_completion_tokens": "64", "request.extra": "{ max_completion_tokens = 9 }"},
        "request.extra.max_completion_tokens: duplicates request.max_completion_tokens; set",
    ),
    (
        "request-unknown",
        {"request.promt": '"x"'},
        "unknown key request.promt (did you mean request.prompt?)",
    ),
    (
        "request-unknown-far",
        {"request.zzz": "1"},
        "unknown key request.zzz (keys of [request]: model, prompt, system_prompt,",
    ),
    # [limits]
    (
        "concurrency-negative",
        {"limits.concurrency": "-1"},
        "limits.concurrency: must be a positive integer, got -1",
    ),
    (
        "concurrency-bool",
        {"limits.concurrency": "true"},
        "limits.concurrency: must be a positive integer, got true",
    ),
    (
        "concurrency-string",
        {"limits.concurrency": '"64"'},
        "limits.concurrency: must be a positive integer, got '64'",
    ),
    (
        "rpm-zero",
        {"limits.requests_per_minute": "0"},
        "limits.requests_per_minute: must be a positive integer, got 0",
    ),
    (
        "rpm-float",
        {"limits.requests_per_minute": "1.5"},
        "limits.requests_per_minute: must be a positive integer, got 1.5",
    ),
    (
        "tpm-string",
        {"limits.tokens_per_minute": '"many"'},
        "limits.tokens_per_minute: must be a positive integer, got 'many'",
    ),
    (
        "tpm-below-one-request",
        {"limits.tokens_per_minute": "1000"},
        "limits.tokens_per_minute: 1000 is below one request's 128000 completion tokens",
    ),
    (
        "attempts-zero",
        {"limits.max_attempts": "0"},
        "limits.max_attempts: must be a positive integer, got 0",
    ),
    ("timeout-zero", {"limits.timeout_s": "0"}, "limits.timeout_s: must be a number > 0, got 0"),
    ("timeout-nan", {"limits.timeout_s": "nan"}, "limits.timeout_s: must be a number > 0, got nan"),
    (
        "cost-zero",
        {**PRICED, "limits.max_cost_usd": "0"},
        "limits.max_cost_usd: must be a number > 0, got 0",
    ),
    (
        "cost-unpriced",
        {"limits.max_cost_usd": "5.0"},
        "limits.max_cost_usd: needs a price for model 'gpt-5.5': add [pricing.\"gpt-5.5\"] with",
    ),
    (
        "failed-rows",
        {"limits.max_failed_rows": "-1"},
        "limits.max_failed_rows: must be an integer >= 0, got -1",
    ),
    (
        "limits-unknown",
        {"limits.rpm": "5"},
        "unknown key limits.rpm (keys of [limits]: concurrency,",
    ),
    ("limits-not-table", {"limits": "5"}, "limits: must be a table [limits], got 5"),
    # [output]
    ("output-path-missing", {"output.path": None}, "output.path: missing; it is required"),
    (
        "output-path-suffix",
        {"output.path": '"out/t.csv"'},
        "output.path: 'out/t.csv' must end in .parquet",
    ),
    (
        "output-is-input",
        {"input.path": '"t.parquet"', "output.path": '"t.parquet"'},
        "output.path: 't.parquet' is the input file; the output would replace it",
    ),
    ("parse-mode", {"output.parse": '"yaml"'}, "output.parse: 'yaml' is not one of json"),
    ("reask-range", {"request.reask": "11"}, "request.reask: 11 is out of range 0..10"),
    (
        "examples-not-a-table",
        {"request.examples": '"examples.csv"'},
        'request.examples: must be a table like {path = "examples.csv"}',
    ),
    (
        "examples-unknown-key",
        {"request.examples": '{path = "e.csv", label = "y"}'},
        "request.examples.label: unknown key; request.examples takes path and answer",
    ),
    (
        "cut-off-retry-not-larger",
        {"request.max_completion_tokens": "64", "request.cut_off_retry_tokens": "64"},
        "request.cut_off_retry_tokens: 64 must be above request.max_completion_tokens (64)",
    ),
    (
        "reask-without-columns",
        {"request.reask": "1"},
        'request.reask: 1 needs output.parse = "json" and output.columns',
    ),
    (
        "columns-without-parse",
        {"output.columns": '{ label = "string" }'},
        'output.columns: needs output.parse = "json"',
    ),
    (
        "columns-type",
        {"output.parse": '"json"', "output.columns": '{ label = "text" }'},
        f"output.columns.label: 'text' is not one of {TYPES}",
    ),
    (
        "columns-clash",
        {"output.parse": '"json"', "output.columns": '{ status = "string" }'},
        "output.columns.status: clashes with batchrun's own column of that name",
    ),
    (
        "columns-not-table",
        {"output.parse": '"json"', "output.columns": '"label"'},
        "output.columns: must be a table of column = type, got 'label'",
    ),
    ("prefix-type", {"output.prefix": "1"}, "output.prefix: must be a string, got 1"),
    (
        "checkpoint-type",
        {"output.checkpoint": "false"},
        "output.checkpoint: must be a string, got false",
    ),
    (
        "output-unknown",
        {"output.colums": "{}"},
        "unknown key output.colums (did you mean output.columns?)",
    ),
    # [pricing."MODEL"]
    (
        "price-negative",
        {**PRICED, 'pricing."gpt-5.5".input': "-1"},
        'pricing."gpt-5.5".input: must be a number >= 0 (USD per million tokens), got -1',
    ),
    (
        "price-string",
        {**PRICED, 'pricing."gpt-5.5".output': '"10"'},
        "pricing.\"gpt-5.5\".output: must be a number >= 0 (USD per million tokens), got '10'",
    ),
    (
        "price-missing-output",
        {'pricing."gpt-5.5".input': "1"},
        'pricing."gpt-5.5".output: missing; it is required',
    ),
    (
        "price-unknown",
        {**PRICED, 'pricing."gpt-5.5".cached': "0.1"},
        'unknown key pricing."gpt-5.5".cached (did you mean pricing."gpt-5.5".cached_input?)',
    ),
    (
        "price-not-table",
        {"pricing": '{ "gpt-5.5" = 3 }'},
        'pricing."gpt-5.5": must be a table of input, cached_input, output, got 3',
    ),
    # sections and variables
    (
        "section-unknown",
        {"requests.model": '"x"'},
        "unknown section [requests] (did you mean [request]?)",
    ),
    (
        "section-far",
        {"zzz.a": "1"},
        "unknown section [zzz] (sections: job, input, api, request, limits, output, pricing)",
    ),
    ("top-level-key", {"model": '"x"'}, "unknown key model (did you mean request.model?)"),
    (
        "variable-undefined",
        {"output.path": '"out/${date}.parquet"'},
        "output.path: variable ${date} is not defined; pass --var date=...",
    ),
    (
        "variable-malformed",
        {"request.prompt": '"{text} costs ${ amount }"'},
        "request.prompt: '${ amount }' is not a variable (write $${ for ${)",
    ),
]


@pytest.mark.parametrize(
    ("changes", "expected"), [c[1:] for c in BAD_JOBS], ids=[c[0] for c in BAD_JOBS]
)
def test_bad_job_file_is_refused_naming_key_and_allowed_values(
    write_job: WriteJob, changes: dict[str, str | None], expected: str
) -> None:
    message = load_error(write_job(changes))
    assert expected in message


def test_catalogue_covers_every_key() -> None:
    from batchrun.job.keys import SCHEMA

    covered = {key for _, changes, _ in BAD_JOBS for key in changes}
    missing = [f"{s}.{k}" for s, keys in SCHEMA.items() for k in keys if f"{s}.{k}" not in covered]
    assert missing == []


def test_secrets_are_never_echoed(write_job: WriteJob) -> None:
    for changes in (
        {"api.api_key": '"sk-live-123"'},
        {"api.api_key_env": '"sk-live-123"'},
        {"api.base_url": '"https://user:sk-live-123@api.example.com"'},
    ):
        assert "sk-live-123" not in load_error(write_job(changes))


def test_invalid_toml_names_the_file_and_position(write_job: WriteJob) -> None:
    path = write_job(text='[job]\nname = "t"\nprompt = \n')
    message = load_error(path)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 3" in message


def test_missing_job_file(tmp_path: Path) -> None:
    assert load_error(tmp_path / "nope.toml") == f"job file not found: {tmp_path / 'nope.toml'}"


def test_job_file_that_is_not_utf8(write_job: WriteJob) -> None:
    path = write_job()
    path.write_bytes(b'[job]\nname = "\xff"\n')
    assert "not UTF-8" in load_error(path)


# --- what a valid file gives --------------------------------------------------------


def test_unset_keys_take_the_dataclass_defaults(write_job: WriteJob) -> None:
    job = load_job(write_job())
    assert job.api == ApiConfig()
    assert job.limits == Limits()
    assert job.request == RequestConfig(model="gpt-5.5", prompt="Label: {text}")
    assert job.output == OutputConfig(path="out/t.parquet")
    assert job.pricing == {}


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8000", "http://localhost:8000/", "http://[::1]:8000", "http://127.8.0.1"],
)
def test_plain_http_is_allowed_on_loopback(write_job: WriteJob, url: str) -> None:
    job = load_job(write_job({"api.base_url": f'"{url}"'}))
    assert job.api.base_url == url.rstrip("/")


def test_ints_are_accepted_where_numbers_are_expected(write_job: WriteJob) -> None:
    job = load_job(write_job({"limits.timeout_s": "30", **PRICED, "limits.max_cost_usd": "5"}))
    assert job.limits.timeout_s == 30.0 and isinstance(job.limits.timeout_s, float)
    assert job.pricing["gpt-5.5"].output == 10.0


def test_home_is_expanded_in_paths(write_job: WriteJob) -> None:
    job = load_job(write_job({"input.path": '"~/data/in.csv"'}))
    assert job.input.path == str(Path("~/data/in.csv").expanduser())


def test_system_prompt_may_name_columns(write_job: WriteJob) -> None:
    job = load_job(write_job({"request.system_prompt": '"You label {product} reviews."'}))
    assert job.request.system_prompt == "You label {product} reviews."


# --- --set --------------------------------------------------------------------------

SETS = [
    ("limits.concurrency=8", lambda j: j.limits.concurrency, 8),
    ("limits.timeout_s=2.5", lambda j: j.limits.timeout_s, 2.5),
    ("request.stream=true", lambda j: j.request.stream, True),
    ("request.model=glm-5.2", lambda j: j.request.model, "glm-5.2"),
    ('request.model="glm 5"', lambda j: j.request.model, "glm 5"),
    (
        "request.extra={temperature = 0, stop = ['END']}",
        lambda j: j.request.extra,
        {"temperature": 0, "stop": ["END"]},
    ),
    ("request.extra.top_p=0.5", lambda j: j.request.extra, {"top_p": 0.5}),
    ("job.name=2026", lambda j: j.name, "2026"),
    ("job.name=2026-11-25", lambda j: j.name, "2026-11-25"),
    ("output.path=out/x y.parquet", lambda j: j.output.path, "out/x y.parquet"),
    ("request.prompt=Rate 1-5: {text}", lambda j: j.request.prompt, "Rate 1-5: {text}"),
    ("pricing.glm-5.2={input = 1, output = 2}", lambda j: j.pricing["glm-5.2"].output, 2.0),
    ("pricing.gpt-5.5.input=2", lambda j: j.pricing["gpt-5.5"].input, 2.0),
    ('pricing."gpt-5.5".cached_input=0', lambda j: j.pricing["gpt-5.5"].cached_input, 0.0),
]


@pytest.mark.parametrize(("item", "get", "expected"), SETS, ids=[s[0] for s in SETS])
def test_set_values_are_typed_by_toml_syntax(
    write_job: WriteJob, item: str, get: Callable[[Job], object], expected: object
) -> None:
    job = load_job(write_job(PRICED), sets=[item])
    value = get(job)
    assert value == expected and type(value) is type(expected)


def test_set_creates_missing_tables(write_job: WriteJob) -> None:
    job = load_job(write_job(), sets=["limits.max_failed_rows=3", "api.api_key_env=MY_KEY"])
    assert (job.limits.max_failed_rows, job.api.api_key_env) == (3, "MY_KEY")


def test_set_with_empty_value_clears_an_optional_key(write_job: WriteJob) -> None:
    path = write_job({"request.system_prompt": '"Be brief."', "request.verbosity": '"low"'})
    job = load_job(path, sets=["request.system_prompt=", "request.verbosity="])
    assert (job.request.system_prompt, job.request.verbosity) == (None, None)


def test_later_set_wins(write_job: WriteJob) -> None:
    job = load_job(write_job(), sets=["limits.concurrency=2", "limits.concurrency=3"])
    assert job.limits.concurrency == 3


def test_set_of_unknown_key_suggests_the_right_one(write_job: WriteJob) -> None:
    message = load_error(write_job(), sets=["request.promt=x"])
    assert message == "unknown key request.promt (did you mean request.prompt?) (from --set)"


def test_bad_set_value_is_refused_like_a_bad_file_value(write_job: WriteJob) -> None:
    message = load_error(write_job(), sets=["request.max_completion_tokens=0"])
    assert message == "request.max_completion_tokens: 0 is out of range 1..128000 (from --set)"


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("request.model", "--set 'request.model': expected KEY=VALUE"),
        ("=x", "--set '': not a dotted key"),
        ("a..b=1", "--set 'a..b': not a dotted key"),
        ("job.name.x=1", "--set job.name.x: job.name is not a table"),
    ],
)
def test_malformed_set_is_refused(write_job: WriteJob, item: str, expected: str) -> None:
    assert expected in load_error(write_job(), sets=[item])


def test_toml_literal_round_trips_through_set(write_job: WriteJob) -> None:
    extra = {"temperature": 0.2, "stop": ["END", 'say "hi"\n'], "logit_bias": {"50256": -100}}
    job = load_job(write_job(), sets=[f"request.extra={toml_literal(extra)}"])
    assert job.request.extra == extra


# --- --var, ${today}, ${yesterday} ---------------------------------------------------


def test_var_fills_every_string(write_job: WriteJob) -> None:
    path = write_job({"input.path": '"in/${date}/*.csv"', "output.path": '"out/${date}.parquet"'})
    job = load_job(path, variables=["date=2026-11-25", "unused=1"])
    assert (job.input.path, job.output.path) == ("in/2026-11-25/*.csv", "out/2026-11-25.parquet")


def test_var_fills_set_values(write_job: WriteJob) -> None:
    job = load_job(write_job(), sets=["output.path=out/${run}.parquet"], variables=["run=r7"])
    assert job.output.path == "out/r7.parquet"


def test_today_and_yesterday_are_utc_iso_dates(write_job: WriteJob) -> None:
    before = datetime.now(UTC).date()
    job = load_job(write_job({"output.path": '"out/${yesterday}_${today}.parquet"'}))
    after = datetime.now(UTC).date()
    days = {
        f"out/{(d - timedelta(days=1)).isoformat()}_{d.isoformat()}.parquet"
        for d in (before, after)
    }
    assert job.output.path in days


def test_var_may_pin_today_for_a_backfill(write_job: WriteJob) -> None:
    job = load_job(
        write_job({"output.path": '"out/${today}.parquet"'}), variables=["today=2020-01-01"]
    )
    assert job.output.path == "out/2020-01-01.parquet"


def test_double_dollar_keeps_a_literal_reference(write_job: WriteJob) -> None:
    job = load_job(write_job({"request.prompt": '"Price in $${currency}: {text}"'}))
    assert job.request.prompt == "Price in ${currency}: {text}"


@pytest.mark.parametrize("item", ["date", "2date=x", "=x"])
def test_malformed_var_is_refused(write_job: WriteJob, item: str) -> None:
    assert f"--var {item!r}: expected NAME=VALUE" in load_error(write_job(), variables=[item])


# --- config_hash --------------------------------------------------------------------


def test_config_hash_is_versioned_and_stable(write_job: WriteJob) -> None:
    first, second = load_job(write_job()), load_job(write_job())
    assert re.fullmatch(r"v1:[0-9a-f]{64}", first.config_hash)
    assert first.config_hash == second.config_hash


def test_config_hash_changes_with_a_set(write_job: WriteJob) -> None:
    path = write_job()
    assert load_job(path).config_hash != load_job(path, sets=["request.model=glm-5.2"]).config_hash


def test_config_hash_ignores_layout_and_spelling(write_job: WriteJob, tmp_path: Path) -> None:
    one = load_job(write_job({"limits.timeout_s": "120"}))
    text = (
        '# same job\n[output]\npath = "out/t.parquet"\n[request]\nprompt = "Label: {text}"\n'
        'model = "gpt-5.5"\n[limits]\ntimeout_s = 120.0\n[input]\npath = "in.csv"\n'
        '[job]\nname = "t"\n'
    )
    (tmp_path / "other.toml").write_text(text)
    assert load_job(tmp_path / "other.toml").config_hash == one.config_hash


# --- validate_job (jobs built in code) ----------------------------------------------


def test_validate_job_applies_the_file_rules_to_a_built_job() -> None:
    request = RequestConfig(model="gpt-5.5", prompt="{text}", reasoning_effort="extreme")
    job = Job("nb", InputConfig("in.parquet"), request, OutputConfig("out.parquet"))
    with pytest.raises(
        JobError, match=f"request.reasoning_effort: 'extreme' is not one of {EFFORTS}"
    ):
        validate_job(job)


def test_validate_job_hashes_like_the_loader(write_job: WriteJob) -> None:
    job = load_job(write_job(PRICED))
    assert validate_job(job) == job


def test_validate_job_keeps_examples_and_hashes_like_the_loader(write_job: WriteJob) -> None:
    job = load_job(write_job({"request.examples": '{path = "shots.csv", answer = "label"}'}))
    assert job.request.examples == ExamplesConfig("shots.csv", "label")
    assert validate_job(job) == job
