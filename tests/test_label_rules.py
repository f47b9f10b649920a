"""Label rules in ``[output.columns]``: checked when the job loads, applied to each answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrun._errors import JobError
from batchrun._types import Result
from batchrun.job.columns import ColumnRule, instruction, json_schema
from batchrun.job.load import load_job, validate_job
from batchrun.output.parse import parse_response
from batchrun.output.table import parse_status

COLUMNS = """
label = {type = "string", enum = ["positive", "negative", "neutral"]}
confidence = {type = "double", min = 0, max = 1}
tags = {type = "list<string>", enum = ["price", "quality"], required = false}
stars = {type = "int64", min = 1, max = 5, required = true}
note = "string"
"""


def _job_file(tmp_path: Path, columns: str) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(
        '[job]\nname = "t"\n[input]\npath = "in.csv"\n'
        '[request]\nmodel = "gpt-5.5"\nprompt = "{text}"\n'
        '[output]\npath = "out.parquet"\nparse = "json"\n'
        f"[output.columns]\n{columns}\n",
        encoding="utf-8",
    )
    return path


def test_rules_load_into_types_and_rules(tmp_path: Path) -> None:
    job = load_job(_job_file(tmp_path, COLUMNS))
    assert job.output.columns == {
        "label": "string",
        "confidence": "double",
        "tags": "list<string>",
        "stars": "int64",
        "note": "string",
    }
    rules = job.output.rules
    assert rules["label"] == ColumnRule(enum=("positive", "negative", "neutral"), required=True)
    assert rules["confidence"] == ColumnRule(min=0, max=1, required=False)
    assert rules["tags"].enum == ("price", "quality") and not rules["tags"].required
    assert rules["stars"].required and "note" not in rules


def test_validate_job_keeps_rules(tmp_path: Path) -> None:
    job = load_job(_job_file(tmp_path, COLUMNS))
    again = validate_job(job)
    assert again.output.rules == job.output.rules
    assert again.config_hash == job.config_hash


def test_jobs_without_rules_keep_their_config_hash(tmp_path: Path) -> None:
    plain = load_job(_job_file(tmp_path, 'label = "string"'))
    ruled = load_job(_job_file(tmp_path, 'label = {type = "string", enum = ["a"]}'))
    assert plain.config_hash != ruled.config_hash
    assert plain.output.rules == {}


BAD_RULES = [
    ('label = {type = "string", enum = []}', "output.columns.label.enum: must be a non-empty"),
    ('label = {type = "string", enum = ["a", 1]}', "output.columns.label.enum: mixes types: 1"),
    ('n = {type = "double", enum = [1.5]}', "output.columns.n.enum: does not fit a double"),
    ('label = {type = "string", min = 0}', "output.columns.label.min: does not fit a string"),
    ('c = {type = "double", min = 2, max = 1}', "output.columns.c.min: 2 is above max 1"),
    ('c = {type = "double", max = "high"}', "output.columns.c.max: must be a number"),
    ('c = {enum = ["a"]}', "output.columns.c.type: missing; one of string"),
    ('c = {type = "text"}', "output.columns.c.type: 'text' is not one of string"),
    ('c = {type = "string", allowed = ["a"]}', "output.columns.c.allowed: unknown rule"),
    ('c = {type = "string", required = "yes"}', "output.columns.c.required: must be true or"),
    ('c = {type = "string", enum = ["a", "a"]}', "output.columns.c.enum: lists a value twice"),
]


@pytest.mark.parametrize(("columns", "message"), BAD_RULES)
def test_bad_rules_fail_with_one_line(tmp_path: Path, columns: str, message: str) -> None:
    with pytest.raises(JobError) as caught:
        load_job(_job_file(tmp_path, columns))
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_bad_rule_exits_2_without_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    job = _job_file(tmp_path, 'label = {type = "string", enum = []}')
    done = subprocess.run(
        [sys.executable, "-m", "batchrun", "plan", str(job)], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "output.columns.label.enum: must be a non-empty" in done.stderr


TYPES = {"label": "string", "confidence": "double", "tags": "list<string>"}
RULES = {
    "label": ColumnRule(enum=("positive", "negative"), required=True),
    "confidence": ColumnRule(min=0, max=1),
    "tags": ColumnRule(enum=("price", "quality")),
}


def test_an_answer_inside_the_rules_parses() -> None:
    parsed = parse_response(
        '{"label": "positive", "confidence": 0.5, "tags": ["price"]}', TYPES, RULES
    )
    assert parsed.values == {"label": "positive", "confidence": 0.5, "tags": ["price"]}


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            '{"label": "great", "confidence": 0.5}',
            "column 'label': 'great' is not in the enum; allowed: one of 'positive', 'negative'",
        ),
        (
            '{"label": "positive", "confidence": 1.5}',
            "column 'confidence': 1.5 is above the maximum; allowed: a double from 0 to 1",
        ),
        (
            '{"label": "positive", "confidence": -1}',
            "column 'confidence': -1.0 is below the minimum; allowed: a double from 0 to 1",
        ),
        (
            '{"confidence": 0.5}',
            "column 'label': no value, and the column is required; allowed: one of",
        ),
        (
            '{"label": "negative", "tags": ["price", "speed"]}',
            "column 'tags': 'speed' is not in the enum; allowed: items of 'price', 'quality'",
        ),
    ],
)
def test_a_broken_rule_is_an_invalid_answer(answer: str, message: str) -> None:
    parsed = parse_response(answer, TYPES, RULES)
    assert parsed.values is None and parsed.error_type == "invalid_answer"
    assert parsed.error is not None and parsed.error.startswith(message)


def test_a_wrong_type_stays_a_parse_error() -> None:
    parsed = parse_response('{"label": "positive", "tags": "price"}', TYPES, RULES)
    assert parsed.error_type == "parse_error"
    assert parsed.error == "column 'tags' (list<string>): got a string: 'price'"


def test_parse_status_marks_invalid_answer(tmp_path: Path) -> None:
    job = load_job(_job_file(tmp_path, COLUMNS))
    ok = Result(status="ok", response='{"label": "maybe", "stars": 3}')
    failed = parse_status(job, ok)
    assert (failed.status, failed.error_type) == ("error", "invalid_answer")
    assert failed.error_message is not None and "'maybe'" in failed.error_message
    good = Result(status="ok", response='{"label": "neutral", "stars": 3}')
    assert parse_status(job, good) == good


def test_the_schema_carries_the_rules() -> None:
    schema = json_schema(TYPES, RULES)
    assert schema["properties"]["label"] == {"type": "string", "enum": ["positive", "negative"]}
    assert schema["properties"]["confidence"] == {"type": "number", "minimum": 0, "maximum": 1}
    assert schema["properties"]["tags"]["items"]["enum"] == ["price", "quality"]
    assert schema["required"] == ["label"]
    assert instruction(TYPES, RULES).startswith("Answer with one JSON object matching")
