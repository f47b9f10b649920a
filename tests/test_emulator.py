"""The emulator speaks ModelStream well enough for the official openai client.

Every test runs against a real emulator process on loopback.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from batchrun.emulator import EmulatorProcess, main

KEY = "sk-test"
USER = [{"role": "user", "content": "Summarise the quarterly report."}]


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(["--seed", "7"]) as process:
        yield process


@pytest.fixture
def client(emu: EmulatorProcess) -> openai.OpenAI:
    emu.reset()
    return openai.OpenAI(base_url=emu.base_url + "/v1", api_key=KEY, max_retries=0)


def post(emu: EmulatorProcess, body: Any, key: str | None = KEY) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(emu.base_url + "/v1/chat/completions", content=content, headers=headers)


def expected_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """The documented approximation, written out independently of the emulator."""
    chars, images = 0, 0
    for message in messages:
        content = message["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for part in parts:
            if part["type"] == "text":
                chars += len(part["text"])
            else:
                images += {"low": 85, "high": 765}.get(part["image_url"].get("detail"), 425)
    return math.ceil(chars / 4) + 4 * len(messages) + images


# -- answers and usage ---------------------------------------------------------------


def test_completion_usage_is_complete_and_consistent(client: openai.OpenAI) -> None:
    messages = [
        {"role": "developer", "content": "You are terse."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe these."},
                {"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://x/b.png", "detail": "high"}},
                {"type": "image_url", "image_url": {"url": "https://x/c.png"}},
            ],
        },
    ]
    answer = client.chat.completions.create(
        model="gpt-5.5", messages=messages, reasoning_effort="medium"
    )
    usage = answer.usage
    assert usage is not None and answer.choices[0].finish_reason == "stop"
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens == expected_prompt_tokens(messages)
    details = usage.prompt_tokens_details
    assert details is not None and details.image_tokens == 85 + 765 + 425
    assert details.text_tokens + details.image_tokens == usage.prompt_tokens
    reasoning = usage.completion_tokens_details
    assert reasoning is not None and 64 <= reasoning.reasoning_tokens <= 256
    assert reasoning.reasoning_tokens + reasoning.text_tokens == usage.completion_tokens
    assert answer.choices[0].message.model_extra["reasoning_content"]
    assert answer.choices[0].message.content


def test_stream_carries_the_same_answer_and_usage(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model="glm-5.2", messages=USER, reasoning_effort="low")
    chunks = list(
        client.chat.completions.create(
            model="glm-5.2",
            messages=USER,
            reasoning_effort="low",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
        for c in chunks
        if c.choices
    )
    assert content == plain.choices[0].message.content
    assert reasoning == plain.choices[0].message.model_extra["reasoning_content"]
    assert [c.choices[0].finish_reason for c in chunks[:-1]][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage


def test_json_object_answers_are_json_with_a_plausible_label(client: openai.OpenAI) -> None:
    def label(text: str) -> dict[str, Any]:
        answer = client.chat.completions.create(
            model="gemini-3.5-flash",
            messages=[{"role": "user", "content": text}],
            response_format={"type": "json_object"},
        )
        return json.loads(answer.choices[0].message.content or "")

    happy = label("I love it, the quality is excellent.")
    assert happy["label"] == "positive" and 0 < happy["confidence"] <= 1
    assert label("Terrible. It arrived broken and I hate it.")["label"] == "negative"
    assert label("The parcel came on Tuesday.")["label"] in {"positive", "negative", "neutral"}


def test_small_max_completion_tokens_cuts_the_answer(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="gpt-5.5", messages=USER, max_completion_tokens=5)
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 5
    assert len(answer.choices[0].message.content or "") <= 20


def test_repeated_long_prefix_is_billed_as_cached(client: openai.OpenAI) -> None:
    system = {"role": "system", "content": "Policy clause. " * 400}  # 6000 chars: 1500 tokens

    def cached(question: str) -> tuple[int, int]:
        messages = [system, {"role": "user", "content": question}]
        usage = client.chat.completions.create(model="qwen-3.7-max", messages=messages).usage
        assert usage is not None and usage.prompt_tokens_details is not None
        return usage.prompt_tokens_details.cached_tokens or 0, usage.prompt_tokens

    assert cached("First question?")[0] == 0
    tokens, prompt = cached("Second question?")
    assert tokens >= 1024 and (tokens - 1024) % 128 == 0 and tokens <= prompt


def test_models_are_listed_in_openai_shape(client: openai.OpenAI) -> None:
    ids = {model.id for model in client.models.list()}
    assert {"gpt-5.5", "claude-opus-4.8", "gemini-3.5-flash", "qwen-3.7-max", "glm-5.2"} <= ids


# -- errors --------------------------------------------------------------------------


def test_bad_or_missing_key_is_401(emu: EmulatorProcess) -> None:
    bad = openai.OpenAI(base_url=emu.base_url + "/v1", api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="gpt-5.5", messages=USER)
    error = post(emu, {"model": "gpt-5.5", "messages": USER}, key=None).json()["error"]
    assert set(error) == {"message", "type", "param", "code"}


def test_only_configured_keys_are_accepted() -> None:
    with EmulatorProcess(["--api-key", "sk-good"]) as emu:
        assert post(emu, {"model": "gpt-5.5", "messages": USER}, key="sk-good").status_code == 200
        assert post(emu, {"model": "gpt-5.5", "messages": USER}, key="sk-other").status_code == 401


def _images(count: int) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "Compare."}]
    parts += [{"type": "image_url", "image_url": {"url": f"https://x/{i}"}} for i in range(count)]
    return [{"role": "user", "content": parts}]


BAD_REQUESTS = {
    "eleven images": ({"messages": _images(11)}, "messages"),
    "reasoning effort": ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    "verbosity": ({"verbosity": "high"}, "verbosity"),
    "image detail": (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Look."},
                        {"type": "image_url", "image_url": {"url": "https://x", "detail": "max"}},
                    ],
                }
            ]
        },
        "messages[0].content[1].image_url.detail",
    ),
    "response format": ({"response_format": {"type": "xml"}}, "response_format.type"),
    "zero max tokens": ({"max_completion_tokens": 0}, "max_completion_tokens"),
    "too many max tokens": ({"max_completion_tokens": 128_001}, "max_completion_tokens"),
    "empty prompt": (
        {"messages": [{"role": "developer", "content": "Hi"}, {"role": "user", "content": " "}]},
        "messages",
    ),
}


@pytest.mark.parametrize("change,param", BAD_REQUESTS.values(), ids=list(BAD_REQUESTS))
def test_schema_violation_is_400_naming_the_param(
    client: openai.OpenAI, change: dict[str, Any], param: str
) -> None:
    kwargs: dict[str, Any] = {"model": "gpt-5.5", "messages": USER, **change}
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(**kwargs)
    body = raised.value.body
    assert isinstance(body, dict) and body["param"] == param
    assert body["type"] == "invalid_request_error" and body["code"] and body["message"]


@pytest.mark.parametrize(
    "body,param",
    [(b'{"model": "gpt-5.5", "messages": [', None), ({"model": "gpt-5.5"}, "messages")],
    ids=["malformed json", "missing messages"],
)
def test_unparseable_or_incomplete_body_is_400(
    emu: EmulatorProcess, body: Any, param: str | None
) -> None:
    response = post(emu, body)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-9", messages=USER)
    assert raised.value.code == "model_not_found"


# -- rate limits ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(["--rpm", "5", "--tpm", "2000", "--tokens-per-second", "200"]) as process:
        yield process


def test_rpm_over_limit_is_429_with_headers(limited: EmulatorProcess) -> None:
    limited.reset()
    client = openai.OpenAI(base_url=limited.base_url + "/v1", api_key=KEY, max_retries=0)
    for left in range(4, -1, -1):
        raw = client.chat.completions.with_raw_response.create(model="gpt-5.5", messages=USER)
        assert raw.headers["x-ratelimit-remaining-requests"] == str(left)
        assert raw.headers["x-ratelimit-limit-tokens"] == "2000"
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="gpt-5.5", messages=USER)
    headers = raised.value.response.headers
    assert 55 <= int(headers["retry-after"]) <= 60 and int(headers["retry-after-ms"]) > 55_000
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert raised.value.body["type"] == "rate_limit_exceeded"  # type: ignore[index]
    ledger = limited.ledger()
    assert ledger["rate_limited"] == 1 and ledger["max_billed_in_60s"] == 5
    assert ledger["max_requests_in_60s"] == 6


def test_tpm_counts_prompt_plus_max_completion_tokens(limited: EmulatorProcess) -> None:
    limited.reset()
    first = post(limited, {"model": "gpt-5.5", "messages": USER, "max_completion_tokens": 1500})
    assert first.status_code == 200
    second = post(limited, {"model": "gpt-5.5", "messages": USER, "max_completion_tokens": 600})
    assert second.status_code == 429 and "tokens per min" in second.json()["error"]["message"]
    assert second.headers["x-ratelimit-remaining-tokens"] == str(2000 - 1500 - 12)


def test_stream_is_paced_by_tokens_per_second(limited: EmulatorProcess) -> None:
    limited.reset()
    client = openai.OpenAI(base_url=limited.base_url + "/v1", api_key=KEY, max_retries=0)
    started = time.monotonic()
    stream = client.chat.completions.create(model="gpt-5.5", messages=USER, stream=True)
    content = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert time.monotonic() - started >= 0.9 * math.ceil(len(content) / 4) / 200


# -- determinism ---------------------------------------------------------------------


def _answers(emu: EmulatorProcess) -> list[str | None]:
    client = openai.OpenAI(base_url=emu.base_url + "/v1", api_key=KEY, max_retries=0)
    return [
        client.chat.completions.create(
            model="gpt-5.5", messages=[{"role": "user", "content": f"Question {i}"}]
        )
        .choices[0]
        .message.content
        for i in range(5)
    ]


def test_answers_depend_only_on_seed_and_request(emu: EmulatorProcess) -> None:
    first = _answers(emu)  # the module's emulator runs with --seed 7
    with EmulatorProcess(["--seed", "7"]) as again:
        assert _answers(again) == first
    with EmulatorProcess(["--seed", "8"]) as other:
        assert _answers(other) != first


# -- faults --------------------------------------------------------------------------

RATE = 0.15
FAULT_ARGS = ["--stall-s", "30", "--seed", "3"] + [
    arg
    for kind in ("fail", "drop", "stall", "truncate", "malformed")
    for arg in (f"--{kind}-rate", str(RATE))
]


async def _outcome(client: httpx.AsyncClient, index: int) -> str:
    body = {"model": "gpt-5.5", "messages": [{"role": "user", "content": f"Row {index}"}]}
    request = client.build_request("POST", "/v1/chat/completions", json=body)
    try:
        response = await client.send(request, stream=True)
    except httpx.ReadTimeout:
        return "stall"
    except httpx.RemoteProtocolError:
        return "drop"  # no answer at all
    try:
        raw = await response.aread()
    except httpx.RemoteProtocolError:
        return "truncate"  # headers, then a cut body
    if response.status_code >= 500:
        return "fail"
    try:
        json.loads(raw)
    except ValueError:
        return "malformed"
    return "ok"


async def _outcomes(base_url: str, count: int) -> Counter[str]:
    headers = {"authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=1.0) as client:
        sem = asyncio.Semaphore(64)

        async def one(index: int) -> str:
            async with sem:
                return await _outcome(client, index)

        return Counter(await asyncio.gather(*(one(i) for i in range(count))))


def test_each_fault_is_served_at_its_rate_and_ledgered() -> None:
    count = 300
    with EmulatorProcess(FAULT_ARGS, quiet=True) as emu:
        seen = asyncio.run(_outcomes(emu.base_url, count))
        ledger = emu.ledger()
    for kind in ("fail", "drop", "stall", "truncate", "malformed"):
        assert abs(seen[kind] / count - RATE) < 0.06, (kind, seen)
        assert ledger["faults"][kind] == seen[kind]
    assert ledger["requests_billed"] == count - seen["fail"]  # every fault but fail is billed
    assert ledger["completions"]["200"] == seen["ok"] + seen["truncate"] + seen["malformed"]


def test_truncated_stream_ends_before_done() -> None:
    with EmulatorProcess(["--truncate-rate", "1"]) as emu:
        body = {"model": "gpt-5.5", "messages": USER, "stream": True}
        headers = {"authorization": f"Bearer {KEY}"}
        lines: list[str] = []
        with (
            pytest.raises(httpx.RemoteProtocolError),
            httpx.stream(
                "POST", emu.base_url + "/v1/chat/completions", json=body, headers=headers
            ) as r,
        ):
            lines.extend(r.iter_lines())
        assert emu.ledger()["faults"]["truncate"] == 1
    assert "data: [DONE]" not in lines


# -- ledger and process --------------------------------------------------------------


def test_ledger_counts_bodies_billed_twice_and_reset_clears_it(
    emu: EmulatorProcess, client: openai.OpenAI
) -> None:
    body = {"model": "gpt-5.5", "messages": USER}
    for _ in range(2):
        assert post(emu, body).status_code == 200
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    fingerprint = "v1:" + hashlib.sha256(canonical.encode()).hexdigest()
    ledger = emu.ledger(full=True)
    assert ledger["requests_billed"] == 2 and ledger["duplicates_billed"] == 1
    assert ledger["billed_by_body_hash"] == {fingerprint: 2}
    assert ledger["tokens"]["prompt"] == 2 * expected_prompt_tokens(USER)
    emu.reset()
    assert emu.ledger()["requests_received"] == 0 and emu.ledger()["tokens"]["prompt"] == 0


PARENT = """
import sys, time
from batchrun.emulator import EmulatorProcess
emu = EmulatorProcess([]).start()
print(emu.pid, flush=True)
time.sleep(60)
"""


def test_emulator_exits_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not _alive(child):
            return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the emulator outlived its parent")


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a reaper."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_non_loopback_host_is_refused() -> None:
    assert main(["--host", "0.0.0.0"]) == 2
