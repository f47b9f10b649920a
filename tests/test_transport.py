"""Sending one request: answer shapes, SSE assembly and error translation (MockTransport);
proxies from the environment (real sockets on loopback)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from httpx_aiohttp import AiohttpTransport

from batchrun._errors import FatalApiError, JobError, PermanentError, RetryableError
from batchrun._types import Request
from batchrun.emulator import EmulatorProcess
from batchrun.send.transport import COMPLETIONS_PATH, Reply, Sender, completions_url, make_transport

KEY = "sk-secret-key-123"
URL = "http://127.0.0.1:9/v1/chat/completions"

COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-5.5",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "positive",
                "reasoning_content": "thinking",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "label", "arguments": '{"x": 1}'},
                    }
                ],
            },
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 12,
        "completion_tokens": 7,
        "total_tokens": 19,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 3},
    },
}


def _request(stream: bool = False) -> Request:
    body: dict[str, Any] = {"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return Request("row-1", body, "v1:abc", 10, 64)


def _send(handler: Callable[[httpx.Request], httpx.Response], stream: bool = False) -> Reply:
    async def main() -> Reply:
        async with httpx.MockTransport(handler) as transport:
            sender = Sender(transport, url=URL, api_key=KEY, timeout_s=2.0)
            return await sender.send(_request(stream))

    return anyio.run(main)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Callable[..., Any]:
    return lambda request: httpx.Response(status, json=body, headers=headers)


def _sse(events: list[dict[str, Any]], done: bool = True) -> bytes:
    lines = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]
    return b"".join(lines) + (b"data: [DONE]\n\n" if done else b"")


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"id": "chatcmpl-1", "model": "gpt-5.5", "choices": [choice], **extra}


STREAM_EVENTS = [
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"reasoning_content": "think"}),
    _chunk({"reasoning_content": "ing"}),
    _chunk({"content": "posi"}),
    _chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "label", "arguments": '{"x"'},
                }
            ]
        }
    ),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
    _chunk({"content": "tive"}, "stop"),
    {"id": "chatcmpl-1", "model": "gpt-5.5", "choices": [], "usage": COMPLETION["usage"]},
]


def test_plain_answer_fills_every_result_field() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=COMPLETION)

    result = _send(handler).result
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"
    assert seen[0].headers["user-agent"].startswith("batchrun/")
    assert json.loads(seen[0].content) == _request().body
    assert (result.status, result.response, result.reasoning_content) == (
        "ok",
        "positive",
        "thinking",
    )
    assert json.loads(result.tool_calls or "")[0]["function"] == {
        "name": "label",
        "arguments": '{"x": 1}',
    }
    assert (result.finish_reason, result.model, result.response_id) == (
        "stop",
        "gpt-5.5",
        "chatcmpl-1",
    )
    usage = (result.prompt_tokens, result.completion_tokens, result.total_tokens)
    assert usage == (12, 7, 19)
    assert (result.cached_tokens, result.reasoning_tokens) == (4, 3)
    assert result.latency_ms is not None and result.latency_ms >= 0


def test_streamed_answer_equals_the_plain_one() -> None:
    plain = _send(_json(200, COMPLETION)).result
    streamed = _send(lambda r: httpx.Response(200, content=_sse(STREAM_EVENTS)), stream=True).result
    plain.latency_ms = streamed.latency_ms = None
    assert streamed == plain


def test_stream_cut_before_done_is_a_broken_stream() -> None:
    with pytest.raises(RetryableError) as caught:
        _send(lambda r: httpx.Response(200, content=_sse(STREAM_EVENTS, done=False)), stream=True)
    assert caught.value.error_type == "broken_stream"


def test_garbage_in_a_stream_is_retryable() -> None:
    content = b"data: {not json\n\n"
    with pytest.raises(RetryableError) as caught:
        _send(lambda r: httpx.Response(200, content=content), stream=True)
    assert caught.value.error_type == "malformed_response"


def test_malformed_body_is_retryable() -> None:
    with pytest.raises(RetryableError) as caught:
        _send(lambda r: httpx.Response(200, content=b'{"id": "x", "choi'))
    assert caught.value.error_type == "malformed_response"


def test_bad_request_is_permanent_with_the_api_message() -> None:
    error = {
        "error": {
            "message": "prompt is required",
            "type": "invalid_request_error",
            "code": "missing_prompt",
        }
    }
    with pytest.raises(PermanentError) as caught:
        _send(_json(400, error))
    assert (caught.value.error_type, caught.value.message) == (
        "missing_prompt",
        "prompt is required",
    )


def test_bad_request_without_error_body_is_typed_by_status() -> None:
    with pytest.raises(PermanentError) as caught:
        _send(lambda r: httpx.Response(422, content=b"nope"))
    assert caught.value.error_type == "http_422"


@pytest.mark.parametrize("status", [401, 403, 404])
def test_refused_key_or_unknown_model_is_fatal_and_never_shows_the_key(status: int) -> None:
    error = {"error": {"message": f"Incorrect API key provided: {KEY}", "code": "invalid_api_key"}}
    with pytest.raises(FatalApiError) as caught:
        _send(_json(status, error))
    assert KEY not in str(caught.value)
    assert "Incorrect API key" in str(caught.value)


def test_model_not_found_code_is_fatal_whatever_the_status() -> None:
    error = {"error": {"message": "The model `x` does not exist", "code": "model_not_found"}}
    with pytest.raises(FatalApiError):
        _send(_json(400, error))


def test_rate_limited_carries_retry_after_ms() -> None:
    headers = {"retry-after": "2", "retry-after-ms": "1500"}
    with pytest.raises(RetryableError) as caught:
        _send(_json(429, {"error": {"message": "slow down"}}, headers))
    assert (caught.value.error_type, caught.value.retry_after) == ("rate_limited", 1.5)


def test_rate_limited_falls_back_to_the_reset_header() -> None:
    headers = {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "6m0s",
    }
    with pytest.raises(RetryableError) as caught:
        _send(_json(429, {"error": {"message": "slow down"}}, headers))
    assert caught.value.retry_after == 360.0


@pytest.mark.parametrize("status", [500, 502, 503, 408])
def test_server_errors_are_retryable(status: int) -> None:
    with pytest.raises(RetryableError) as caught:
        _send(_json(status, {"error": {"message": "boom"}}))
    assert caught.value.error_type == f"http_{status}"


def test_connection_error_is_retryable_and_hides_the_key() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused while sending {KEY}")

    with pytest.raises(RetryableError) as caught:
        _send(handler)
    assert caught.value.error_type == "connect_error"
    assert KEY not in caught.value.message


def test_timeout_is_retryable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow")

    with pytest.raises(RetryableError) as caught:
        _send(handler)
    assert caught.value.error_type == "timeout"


def test_rate_headers_are_returned_with_the_answer() -> None:
    headers = {"x-ratelimit-limit-requests": "600", "x-ratelimit-limit-tokens": "90000"}
    rate = _send(_json(200, COMPLETION, headers)).rate
    assert (rate.limit_requests, rate.limit_tokens) == (600, 90000)


def test_plain_http_is_refused_for_a_remote_host() -> None:
    with pytest.raises(JobError, match="https"):
        completions_url("http://api.example.com")
    assert completions_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000/v1/chat/completions"


# --- proxies (real sockets on loopback) ---------------------------------------------


class _Proxy:
    """A loopback 'proxy' that records the head of what it is asked, then refuses it."""

    def __init__(self) -> None:
        self.heads: list[str] = []

    async def handle(self, reader: Any, writer: Any) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head.decode("latin-1"))
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()


def _send_through_env_proxy(url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, _Proxy]:
    """Send one request to ``url`` with HTTP(S)_PROXY pointing at a ``_Proxy``."""
    proxy = _Proxy()

    async def main() -> Any:
        server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        try:
            async with make_transport(2, url, KEY) as transport:
                sender = Sender(transport, url=url, api_key=KEY, timeout_s=5.0)
                try:
                    return await sender.send(_request())
                except RetryableError as exc:
                    return exc
        finally:
            server.close()

    return asyncio.run(main()), proxy


def test_https_proxy_from_the_environment_is_used_and_never_sees_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outcome, proxy = _send_through_env_proxy(
        "https://api.example.test/v1/chat/completions", monkeypatch
    )
    assert isinstance(outcome, RetryableError)  # the proxy refused the tunnel
    assert len(proxy.heads) == 1
    assert proxy.heads[0].startswith("CONNECT api.example.test:443 HTTP/1.1")
    assert KEY not in proxy.heads[0]  # the key travels inside the TLS tunnel only


def test_a_loopback_url_is_never_proxied(monkeypatch: pytest.MonkeyPatch) -> None:
    with EmulatorProcess([], quiet=True) as emu:
        outcome, proxy = _send_through_env_proxy(emu.base_url + COMPLETIONS_PATH, monkeypatch)
    assert isinstance(outcome, Reply) and outcome.result.status == "ok"
    assert proxy.heads == []


@pytest.mark.parametrize("content", [None, ""])
def test_an_answer_without_content_is_the_same_row_plain_or_streamed(content: str | None) -> None:
    message = {"role": "assistant", "content": content, "reasoning_content": "all of it"}
    choice = {"index": 0, "message": message, "finish_reason": "length"}
    plain_body = {**COMPLETION, "choices": [choice]}
    events = [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"reasoning_content": "all of it"}),
        _chunk({}, "length"),  # no content delta at all
        {"id": "chatcmpl-1", "model": "gpt-5.5", "choices": [], "usage": COMPLETION["usage"]},
    ]
    plain = _send(_json(200, plain_body)).result
    streamed = _send(lambda r: httpx.Response(200, content=_sse(events)), stream=True).result
    plain.latency_ms = streamed.latency_ms = None
    assert streamed == plain
    assert plain.response is None  # "" and null cannot be told apart in a stream


# --- the direct aiohttp POST against httpx's path (real emulator on loopback) ----------


def _outcome(transport: httpx.AsyncBaseTransport, url: str, body: dict[str, Any]) -> Any:
    """What one send ends as: the answer (less its latency) and rate info, or the error."""

    async def main() -> Any:
        async with transport:
            sender = Sender(transport, url=url + COMPLETIONS_PATH, api_key=KEY, timeout_s=0.5)
            try:
                reply = await sender.send(Request("row-1", body, "v1:abc", 10, 64))
            except (RetryableError, PermanentError, FatalApiError) as exc:
                kind = getattr(exc, "error_type", None) or ""
                kind = "http_5xx" if kind.startswith("http_5") else kind  # the server picks
                return type(exc).__name__, kind, getattr(exc, "retry_after", None) is None
            return dataclasses.replace(reply.result, latency_ms=None), reply.rate

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("flags", "model"),
    [
        ((), "gpt-5.5"),
        ((), "no-such-model"),
        (("--fail-rate", "1"), "gpt-5.5"),
        (("--drop-rate", "1"), "gpt-5.5"),
        (("--malformed-rate", "1"), "gpt-5.5"),
        (("--stall-rate", "1", "--stall-s", "2"), "gpt-5.5"),
        (("--rpm", "1"), "gpt-5.5"),
    ],
)
def test_the_direct_post_ends_every_answer_as_the_httpx_path_does(
    emulator: Callable[..., EmulatorProcess], flags: tuple[str, ...], model: str
) -> None:
    """``make_transport``'s whole answers skip httpx's types (``Transport.post_json``);
    answers, rate headers, error types and timeouts stay what httpx-aiohttp gave."""
    emu = emulator(*flags)
    body = {"model": model, "messages": [{"role": "user", "content": "héllo"}]}
    direct = [_outcome(make_transport(2, emu.base_url, KEY), emu.base_url, body) for _ in range(2)]
    via_httpx = [_outcome(AiohttpTransport(), emu.base_url, body) for _ in range(2)]
    assert direct[1:] == via_httpx[1:]  # --rpm 1: the first send of all is the only ok one
    if not flags:
        assert direct == via_httpx


class _Recorder:
    """A loopback API that records each request's head, then answers with COMPLETION
    (whole, or as one SSE event and [DONE] when the body asks for a stream)."""

    def __init__(self) -> None:
        self.heads: list[list[tuple[str, str]]] = []

    async def handle(self, reader: Any, writer: Any) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")[1:-2]
        fields = [
            (name.lower(), value.strip()) for name, _, value in (h.partition(":") for h in head)
        ]
        self.heads.append(fields)
        body = json.loads(await reader.readexactly(int(dict(fields)["content-length"])))
        if body.get("stream"):
            payload, kind = _sse([COMPLETION]), b"text/event-stream"
        else:
            payload, kind = json.dumps(COMPLETION).encode(), b"application/json"
        length = str(len(payload)).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\nContent-Length: ")
        writer.write(length + b"\r\n\r\n" + payload)
        await writer.drain()
        writer.close()


@pytest.mark.parametrize("stream", [False, True])
def test_every_request_carries_the_key_and_its_headers_once(stream: bool) -> None:
    """Whole answers take the direct POST, streams httpx's path: the same headers, once."""
    recorder = _Recorder()

    async def main() -> None:
        server = await asyncio.start_server(recorder.handle, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}{COMPLETIONS_PATH}"
        try:
            async with make_transport(2, url, KEY) as transport:
                sender = Sender(transport, url=url, api_key=KEY, timeout_s=5.0)
                await sender.send(_request(stream))
        finally:
            server.close()

    asyncio.run(main())
    (fields,) = recorder.heads
    names = [name for name, _ in fields]
    expected = {
        "authorization": f"Bearer {KEY}",
        "accept": "application/json",
        "content-type": "application/json",
    }
    for name, value in expected.items():
        assert names.count(name) == 1 and dict(fields)[name] == value, fields
    assert names.count("user-agent") == 1 and dict(fields)["user-agent"].startswith("batchrun/")
