"""Rows to requests: wire bodies, invalid rows, fingerprints, token estimates."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from batchrun._errors import JobError
from batchrun._types import Keyed, Request, Result
from batchrun.io.input import open_input
from batchrun.job.config import InputConfig, Job, OutputConfig, RequestConfig
from batchrun.job.template import Template
from batchrun.send.requests import (
    RequestBuilder,
    canonical_json,
    estimate_prompt_tokens,
    fingerprint,
)


def make_job(**request: Any) -> Job:
    fields: dict[str, Any] = {"model": "gpt-5.5", "prompt": "Label: {text}", **request}
    return Job(
        name="t",
        input=InputConfig(path="in.csv", id_column="id"),
        request=RequestConfig(**fields),
        output=OutputConfig(path="out.parquet"),
    )


def build(job: Job, columns: dict[str, list[Any]]) -> list[Request | Result]:
    batch = pa.RecordBatch.from_pydict(columns)
    return RequestBuilder(job, batch.schema).build(batch, start=0)


def one_request(job: Job, **columns: Any) -> Request:
    [item] = build(job, {"id": ["r1"], **{k: [v] for k, v in columns.items()}})
    assert isinstance(item, Request), item
    return item


def one_invalid(job: Job, columns: dict[str, list[Any]]) -> str:
    [item] = build(job, {"id": ["r1"], **columns})
    assert isinstance(item, Result) and item.status == "invalid", item
    assert item.error_type == "invalid_row" and item.attempts == 0
    return item.error_message or ""


# --- the wire body -----------------------------------------------------------------


def test_text_only_body() -> None:
    job = make_job(system_prompt="You label reviews.", max_completion_tokens=64)
    request = one_request(job, text="great")
    assert request.key == "r1"
    assert request.body == {
        "model": "gpt-5.5",
        "messages": [
            {"role": "developer", "content": "You label reviews."},
            {"role": "user", "content": "Label: great"},
        ],
        "max_completion_tokens": 64,
    }
    assert request.max_completion_tokens == 64


def test_system_role_can_be_system() -> None:
    request = one_request(make_job(system_prompt="S {text}", system_role="system"), text="x")
    assert request.body["messages"][0] == {"role": "system", "content": "S x"}


def test_images_with_detail_and_options_match_the_api_example() -> None:
    job = make_job(
        image_urls_column="images",
        image_detail="high",
        reasoning_effort="high",
        verbosity="medium",
        max_completion_tokens=4096,
        stream=True,
    )
    request = one_request(job, text="diagram", images=["https://example.com/arch.png"])
    assert request.body == {
        "model": "gpt-5.5",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Label: diagram"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/arch.png", "detail": "high"},
                    },
                ],
            }
        ],
        "reasoning_effort": "high",
        "verbosity": "medium",
        "max_completion_tokens": 4096,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_image_without_detail_sends_no_detail() -> None:
    request = one_request(
        make_job(image_urls_column="images"), text="x", images=["data:image/png;base64,AA"]
    )
    assert request.body["messages"][0]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,AA"},
    }


def test_response_format_and_extra_merged_last() -> None:
    job = make_job(response_format="json_object", extra={"temperature": 0, "seed": 7})
    body = one_request(job, text="x").body
    assert body["response_format"] == {"type": "json_object"}
    assert list(body)[-2:] == ["temperature", "seed"]
    assert body["temperature"] == 0 and body["seed"] == 7


def test_csv_image_cell_as_json_array_single_url_or_empty() -> None:
    job = make_job(image_urls_column="images")
    cells = ['["https://a.io/1.png", "https://a.io/2.png"]', "https://a.io/3.png", "", None]
    items = build(job, {"id": ["a", "b", "c", "d"], "text": ["x"] * 4, "images": cells})
    counts = [
        0
        if isinstance(i.body["messages"][0]["content"], str)
        else len(i.body["messages"][0]["content"]) - 1
        for i in items
        if isinstance(i, Request)
    ]
    assert counts == [2, 1, 0, 0]


def test_render_matches_template_render_for_non_string_columns() -> None:
    job = make_job(prompt="{text} n={n} f={f} b={b}")
    columns = {
        "id": ["r1", "r2"],
        "text": ["a", "b"],
        "n": [1, None],
        "f": [1.5, 2.0],
        "b": [True, False],
    }
    items = build(job, columns)
    for i, item in enumerate(items):
        assert isinstance(item, Request)
        row = {name: values[i] for name, values in columns.items()}
        assert item.body["messages"][0]["content"] == Template.parse(job.request.prompt).render(row)


# --- invalid rows ------------------------------------------------------------------


def test_null_prompt_column_is_invalid_and_names_the_column() -> None:
    message = one_invalid(make_job(), {"text": [None]})
    assert message == "row 'r1': prompt has no content (text is null)"


def test_blank_prompt_column_is_invalid() -> None:
    message = one_invalid(make_job(prompt="{title}\n{text}"), {"title": ["  "], "text": [None]})
    assert message == "row 'r1': prompt has no content (title is blank, text is null)"


def test_one_filled_column_is_enough() -> None:
    one_request(make_job(prompt="{title}\n{text}"), title="T", text=None)


def test_eleven_urls_are_invalid() -> None:
    urls = [f"https://a.io/{i}.png" for i in range(11)]
    message = one_invalid(make_job(image_urls_column="images"), {"text": ["x"], "images": [urls]})
    assert message == "row 'r1': 11 image URLs; at most 10 are allowed"


def test_ten_urls_are_fine() -> None:
    urls = [f"https://a.io/{i}.png" for i in range(10)]
    one_request(make_job(image_urls_column="images"), text="x", images=urls)


def test_ftp_url_is_invalid() -> None:
    cells = {"text": ["x"], "images": [["https://a.io/1.png", "ftp://a.io/2.png"]]}
    message = one_invalid(make_job(image_urls_column="images"), cells)
    assert message == "row 'r1': image URL 2 'ftp://a.io/2.png' is not an http(s):// or data: URL"


def test_bad_json_image_cell_is_invalid() -> None:
    cells = {"text": ["x"], "images": ['["https://a.io/1.png",']}
    message = one_invalid(make_job(image_urls_column="images"), cells)
    assert message.startswith("row 'r1': image URL cell is not valid JSON (Expecting value")
    assert message.endswith("""): '["https://a.io/1.png",'""")


def test_null_url_in_list_is_invalid() -> None:
    cells = {"text": ["x"], "images": [["https://a.io/1.png", None]]}
    message = one_invalid(make_job(image_urls_column="images"), cells)
    assert message == "row 'r1': image URL 2 is null, not a string"


def test_invalid_rows_do_not_stop_the_batch() -> None:
    items = build(make_job(), {"id": ["a", "b", "c"], "text": ["x", None, "z"]})
    assert [type(i).__name__ for i in items] == ["Request", "Result", "Request"]


# --- set-up errors -----------------------------------------------------------------


def test_template_naming_a_missing_column() -> None:
    schema = pa.schema([("id", pa.string()), ("body", pa.string())])
    with pytest.raises(JobError) as info:
        RequestBuilder(make_job(), schema)
    assert str(info.value) == (
        "request.prompt: the template names column {text} but the input has no such column "
        "(columns: id, body)"
    )


def test_system_template_naming_a_missing_column() -> None:
    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    with pytest.raises(JobError, match=r"^request.system_prompt: .* column \{lang\}"):
        RequestBuilder(make_job(system_prompt="Answer in {lang}"), schema)


def test_missing_image_column() -> None:
    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    with pytest.raises(JobError, match=r"^request.image_urls_column: column 'pics' is not"):
        RequestBuilder(make_job(image_urls_column="pics"), schema)


def test_image_column_of_wrong_type() -> None:
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("pics", pa.int64())])
    with pytest.raises(JobError, match="has type int64; expected list<string>"):
        RequestBuilder(make_job(image_urls_column="pics"), schema)


# --- fingerprints --------------------------------------------------------------------


def test_identical_bodies_share_a_fingerprint() -> None:
    items = build(make_job(), {"id": ["a", "b"], "text": ["same", "same"]})
    assert items[0].fingerprint == items[1].fingerprint  # type: ignore[union-attr]
    assert items[0].fingerprint.startswith("v1:")  # type: ignore[union-attr]


def test_fingerprint_changes_with_template_and_model() -> None:
    base = one_request(make_job(), text="x").fingerprint
    assert one_request(make_job(prompt="Tag: {text}"), text="x").fingerprint != base
    assert one_request(make_job(model="glm-5.2"), text="x").fingerprint != base
    assert one_request(make_job(), text="x").fingerprint == base


def test_dedupe_off_makes_identical_bodies_differ() -> None:
    items = build(make_job(dedupe=False), {"id": ["a", "b"], "text": ["same", "same"]})
    assert items[0].fingerprint != items[1].fingerprint  # type: ignore[union-attr]


# --- token estimate ------------------------------------------------------------------


def test_estimate_counts_text_messages_and_images_by_detail() -> None:
    body = {
        "messages": [
            {"role": "developer", "content": "x" * 10},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "y" * 7},
                    {"type": "image_url", "image_url": {"url": "u", "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "u", "detail": "high"}},
                    {"type": "image_url", "image_url": {"url": "u"}},
                ],
            },
        ]
    }
    assert estimate_prompt_tokens(body) == 5 + 2 * 4 + 85 + 765 + 425  # ceil(17 / 4) = 5


def test_request_carries_the_estimate_and_worst_case_completion() -> None:
    request = one_request(make_job(), text="abcd")
    assert request.est_prompt_tokens == estimate_prompt_tokens(request.body) == 3 + 4
    assert request.max_completion_tokens == 128_000


def test_builds_from_a_real_csv(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text('id,text,images\n1,hi,"[""https://a.io/x.png""]"\n')
    job = make_job(image_urls_column="images")
    job = dataclasses.replace(job, input=InputConfig(str(tmp_path / "in.csv"), "id"))
    table = open_input(job)
    [request] = RequestBuilder(job, table.schema).build(next(table.batches()), 0)
    assert isinstance(request, Request)
    assert json.loads(json.dumps(request.body))["messages"][0]["content"][1]["image_url"] == {
        "url": "https://a.io/x.png"
    }


@pytest.mark.parametrize(
    "request_fields",
    [
        {},
        {"system_prompt": "Sys é {text}", "system_role": "system", "dedupe": False},
        {"image_urls_column": "images", "image_detail": "low", "stream": True},
        {"image_urls_column": "images", "response_format": "json_object", "extra": {"n": [1]}},
        {"extra": {"messages": [{"role": "user", "content": "fixed"}], "model": "x"}},
    ],
)
def test_fast_fingerprint_and_estimate_equal_the_generic_ones(request_fields: Any) -> None:
    job = make_job(**request_fields)
    columns: dict[str, list[Any]] = {"id": ["a", "b"], "text": ['q "\u2603\n\x01', "plain"]}
    if "image_urls_column" in request_fields:
        columns["images"] = [["https://a.io/\u00e9.png", "data:image/png;base64,AA"], None]
    for item in build(job, columns):
        assert isinstance(item, Request)
        key = None if job.request.dedupe else item.key
        assert item.fingerprint == fingerprint(item.body, key)
        assert item.est_prompt_tokens == estimate_prompt_tokens(item.body)
        # What is sent: the same JSON as the body (the canonical text, already encoded).
        assert item.wire is None or json.loads(item.wire) == item.body
        assert item.wire is None or item.wire == canonical_json(item.body).encode()


@pytest.mark.parametrize(
    "request_fields",
    [
        {},
        {"system_prompt": "You label {text}.", "dedupe": False},
        {"system_prompt": "  {empty}  ", "prompt": "{empty}{text}", "extra": {"temperature": 0.5}},
    ],
)
def test_fingerprints_without_building_equal_the_built_requests(
    request_fields: dict[str, Any],
) -> None:
    texts = ["", " ", 'a "quote"\n', "é ünïcode", None]
    batch = pa.RecordBatch.from_pydict(
        {
            "id": [f"r{i}" for i in range(20)],
            "text": [texts[i % 5] for i in range(20)],
            "empty": [""] * 20,
        }
    )
    builder = RequestBuilder(make_job(**request_fields), batch.schema)
    keys = batch.column("id").to_pylist()
    built = builder.build(batch, 0, keys)
    expected = [item.fingerprint if isinstance(item, Request) else None for item in built]
    assert builder.fingerprints(batch, 0, keys) == expected
    assert None in expected and len(set(expected)) > 2  # blank rows are invalid in both


@pytest.mark.parametrize("request_fields", [{}, {"system_prompt": "You label {text}."}])
def test_keyed_rows_carry_the_built_keys_and_fingerprints(request_fields: dict[str, Any]) -> None:
    def rows(texts: list[str]) -> tuple[pa.RecordBatch, list[str]]:
        ids = [f"r{i}" for i in range(len(texts))]
        return pa.RecordBatch.from_pydict({"id": ids, "text": texts}), ids

    builder = RequestBuilder(make_job(**request_fields), rows(["x"])[0].schema)
    valid, keys = rows(["a", 'b "quote"\n', "é ünïcode", "a"])
    built = builder.build(valid, 0, keys)
    keyed = builder.keyed(valid, 0, keys)
    assert all(isinstance(item, Keyed) for item in keyed)
    assert [(i.key, i.fingerprint) for i in keyed] == [(i.key, i.fingerprint) for i in built]
    # A batch with an invalid row is built: that row's Result says why.
    invalid, keys = rows(["a", " "])
    assert builder.keyed(invalid, 0, keys) == builder.build(invalid, 0, keys)
