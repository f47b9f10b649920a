"""Sending one request: the one boundary where httpx/aiohttp exceptions become ours.

``Sender.send(request)`` returns a ``Reply`` (an ok ``Result`` plus what the headers
said about rate limits) or raises ``RetryableError``, ``PermanentError`` or
``FatalApiError``. It knows nothing of retries, pacing or budgets.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypedDict
from urllib.parse import urlsplit

import aiohttp
import anyio
import httpx
import yarl
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import map_aiohttp_exceptions

from batchrun._errors import FatalApiError, JobError, PermanentError, RetryableError
from batchrun._types import Request, Result
from batchrun._version import __version__
from batchrun.send.headers import RateInfo, parse_rate_info

COMPLETIONS_PATH = "/v1/chat/completions"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_FATAL_STATUSES = (401, 403, 404)
RawHeaders = Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Reply:
    """An ok answer and what its headers said about the API's limits."""

    result: Result
    rate: RateInfo


def completions_url(base_url: str) -> str:
    """The endpoint under ``base_url``; plain http is refused for non-loopback hosts."""
    parts = urlsplit(base_url)
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
        raise JobError(f"api.base_url: plain http:// is refused for {parts.hostname!r}; use https")
    if parts.scheme not in ("http", "https"):
        raise JobError(f"api.base_url: {base_url!r} is not an http(s) URL")
    return base_url.rstrip("/") + COMPLETIONS_PATH


def api_headers(api_key: str) -> dict[str, str]:
    """What every request carries: the key, who sends, what it accepts."""
    return {
        "Authorization": f"Bearer {api_key}",
        "User-Agent": f"batchrun/{__version__}",
        "Accept": "application/json",
    }


def make_transport(concurrency: int, url: str, api_key: str) -> httpx.AsyncBaseTransport:
    """One shared connection pool that fits ``concurrency``: aiohttp under httpx's types.

    ``Sender`` hands it ``httpx.Request`` objects itself (streams) instead of going
    through an ``httpx.AsyncClient``: the client's cookie jar, redirects, auth flow and
    header merging do nothing for us and cost a third of the CPU of a whole run
    (``bench/bench_dispatch.py``); whole answers skip httpx's types too
    (``Transport.post_json``).

    ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY`` are honoured, as by curl and the
    openai client, except for a loopback ``url`` (the emulator), which is never proxied.
    """
    trust_env = urlsplit(url).hostname not in _LOOPBACK
    # One TLS context (loading the CA bundle costs ~25 ms of CPU), handed to both: the
    # transport would otherwise build a second one it never uses. Plain http (loopback
    # only, see completions_url) never does TLS, so it loads no CA bundle at all.
    https = urlsplit(url).scheme == "https"
    tls: ssl.SSLContext | bool = httpx.create_ssl_context() if https else False
    # The session's own headers: aiohttp merges headers passed per request one by one
    # (bench_process: 1-3% of a run's CPU). A stream's httpx request carries the same.
    headers = {**api_headers(api_key), "Content-Type": "application/json"}

    def session() -> aiohttp.ClientSession:  # made inside the event loop, on first use
        connector = aiohttp.TCPConnector(limit=concurrency, ssl=tls)
        return aiohttp.ClientSession(connector=connector, trust_env=trust_env, headers=headers)

    return Transport(verify=tls, client=session)


class Transport(AiohttpTransport):
    """httpx-aiohttp's transport (streams, and any caller speaking httpx), plus a direct
    aiohttp POST for whole answers.

    Wrapping each request and answer in httpx's types (header objects, byte streams,
    a URL turned back into a string and parsed again) cost about a fifth of a run's CPU
    (``bench/bench_process.py``). ``post_json`` sends the same bytes and headers on the
    same session, and maps aiohttp's errors to httpx's exactly as the transport does.
    """

    async def post_json(
        self, url: yarl.URL, body: Any, timeout: aiohttp.ClientTimeout
    ) -> tuple[int, RawHeaders, bytes]:
        """POST ``body`` as JSON (or as is: bytes already JSON) with the session's headers
        (``make_transport``); (status, raw headers, whole body) of the answer.

        ``timeout.total`` covers connect, send and the whole answer (``TimeoutError``).
        """
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        if not isinstance(body, bytes):
            text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            body = text.encode()
        try:
            async with self.client.post(
                url,
                data=body,
                allow_redirects=False,
                compress=False,
                timeout=timeout,
            ) as response:
                return response.status, response.raw_headers, await response.read()
        except Exception as exc:
            with map_aiohttp_exceptions():  # entered on errors only: it costs on every call
                raise exc


class Sender:
    """Sends one request; timeouts cover connect, the whole body, and stream gaps."""

    def __init__(
        self, transport: httpx.AsyncBaseTransport, *, url: str, api_key: str, timeout_s: float
    ) -> None:
        self._transport = transport
        # Whole answers skip httpx's types where the transport is ours (``post_json``).
        self._direct = transport if isinstance(transport, Transport) else None
        self._url = httpx.URL(url)  # parsed once, not on every request
        self._yarl_url = yarl.URL(url)
        self._secret = api_key
        self._headers = api_headers(api_key)
        # The direct POST's deadline: connect, send and the whole answer, as ``fail_after``
        # gives the httpx path, for less (one timer, no cancel scope). Exact: aiohttp would
        # round a timeout over 5 s up to a whole second.
        self._whole_timeout = aiohttp.ClientTimeout(total=timeout_s, ceil_threshold=float("inf"))
        self._timeout_s = timeout_s

    async def send(self, request: Request) -> Reply:
        start = time.perf_counter()
        try:
            if request.body.get("stream") is True:
                result, rate = await self._send_streamed(request)
            elif self._direct is not None:  # aiohttp's own timer times it
                result, rate = await self._send_plain(request)
            else:
                with anyio.fail_after(self._timeout_s):
                    result, rate = await self._send_plain(request)
        except (httpx.HTTPError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self._translate(exc) from None
        result.latency_ms = (time.perf_counter() - start) * 1000
        return Reply(result, rate)

    def _post(self, request: Request) -> Awaitable[httpx.Response]:
        post = httpx.Request("POST", self._url, json=request.body, headers=self._headers)
        return self._transport.handle_async_request(post)

    async def _send_plain(self, request: Request) -> tuple[Result, RateInfo]:
        status, raw, body = await self._post_whole(request)
        rate = parse_rate_info(raw)
        if status != 200:
            raise self._status_error(status, body, rate)
        try:
            result = parse_completion(json.loads(body))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise RetryableError("malformed_response", f"unreadable answer: {exc}") from None
        result.synthetic = from_emulator(raw)
        return result, rate

    async def _post_whole(self, request: Request) -> tuple[int, RawHeaders, bytes]:
        if self._direct is not None:
            body = request.wire or request.body  # the builder's canonical bytes when it has them
            return await self._direct.post_json(self._yarl_url, body, self._whole_timeout)
        response = await self._post(request)  # any other httpx transport (tests)
        try:
            body = await response.aread()
        finally:
            await response.aclose()
        return response.status_code, response.headers.raw, body

    async def _send_streamed(self, request: Request) -> tuple[Result, RateInfo]:
        with anyio.fail_after(self._timeout_s):
            response = await self._post(request)
        try:
            rate = parse_rate_info(response.headers.raw)
            if response.status_code != 200:
                with anyio.fail_after(self._timeout_s):
                    body = await response.aread()
                raise self._status_error(response.status_code, body, rate)
            assembler = StreamAssembler()
            lines = _lines(_gapped(response.aiter_bytes(), self._timeout_s))
            async with aclosing(lines):
                async for line in lines:
                    if assembler.feed(line):
                        result = assembler.result()
                        result.synthetic = from_emulator(response.headers.raw)
                        return result, rate
            raise RetryableError("broken_stream", "the stream ended before data: [DONE]")
        finally:
            await response.aclose()

    def _status_error(self, status: int, body: bytes, rate: RateInfo) -> Exception:
        error_type, message = _api_error(status, body)
        message = self._redact(message)
        if status in _FATAL_STATUSES or error_type == "model_not_found":
            return FatalApiError(f"the API refused the job (HTTP {status} {error_type}): {message}")
        if status == 429:
            pause_s, source = rate.pause()
            return RetryableError(
                "rate_limited", message, retry_after=pause_s, retry_after_from=source
            )
        if status >= 500 or status == 408:
            return RetryableError(f"http_{status}", message)
        return PermanentError(error_type, message)

    def _translate(self, exc: BaseException) -> RetryableError:
        if isinstance(exc, TimeoutError | httpx.TimeoutException) and not _dropped(exc):
            return RetryableError("timeout", f"no answer within {self._timeout_s:g} s")
        detail = self._redact(str(exc) or type(exc).__name__)
        if isinstance(exc, httpx.ConnectError) or isinstance(
            exc.__cause__, aiohttp.ClientConnectorError
        ):
            return RetryableError("connect_error", detail)  # never reached the API: not billed
        if isinstance(exc, httpx.ReadError | aiohttp.ClientPayloadError):
            return RetryableError("broken_stream", f"the answer was cut: {detail}")
        return RetryableError("connection_error", detail)

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text


def from_emulator(raw_headers: RawHeaders) -> bool:
    """Whether batchrun's emulator gave the answer (it says so in ``x-batchrun-emulator``)."""
    return any(
        name[:1] in b"xX" and name.lower() == b"x-batchrun-emulator" for name, _ in raw_headers
    )


def _dropped(exc: BaseException) -> bool:
    # httpx-aiohttp maps every aiohttp connection error to ConnectTimeout; the cause tells.
    cause = exc.__cause__
    return isinstance(cause, aiohttp.ClientConnectionError) and not isinstance(
        cause, aiohttp.ServerTimeoutError | aiohttp.ConnectionTimeoutError
    )


def _api_error(status: int, body: bytes) -> tuple[str, str]:
    """(error_type, message) from an ``{"error": {...}}`` body, or from the status."""
    try:
        error = json.loads(body)["error"]
        message = str(error.get("message") or f"HTTP {status}")
        return str(error.get("code") or error.get("type") or f"http_{status}"), message
    except (ValueError, KeyError, TypeError, AttributeError):
        text = body[:200].decode("utf-8", "replace").strip()
        return f"http_{status}", text or f"HTTP {status}"


async def _gapped(chunks: AsyncIterator[bytes], gap_s: float) -> AsyncIterator[bytes]:
    """``chunks``, failing with TimeoutError when the next one takes longer than ``gap_s``."""
    iterator = aiter(chunks)
    while True:
        with anyio.fail_after(gap_s):
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                return
        yield chunk


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """SSE line framing by hand: bytes in, complete lines (without the newline) out."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r")
    if pending:
        yield pending


class _Usage(TypedDict):
    """A response's token counts, as ``Result`` fields."""

    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    cached_tokens: int | None
    reasoning_tokens: int | None


def _usage_fields(usage: dict[str, Any] | None) -> _Usage:
    usage = usage or {}
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return _Usage(
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        total_tokens=usage.get("total_tokens"),
        cached_tokens=prompt_details.get("cached_tokens"),
        reasoning_tokens=completion_details.get("reasoning_tokens"),
    )


def _tool_calls_json(calls: list[dict[str, Any]] | None) -> str | None:
    """Tool calls in one canonical shape, so streamed and plain answers compare equal."""
    if not calls:
        return None
    canonical = [
        {
            "id": call.get("id"),
            "type": call.get("type") or "function",
            "function": {
                "name": (call.get("function") or {}).get("name"),
                "arguments": (call.get("function") or {}).get("arguments") or "",
            },
        }
        for call in calls
    ]
    return json.dumps(canonical, ensure_ascii=False)


def parse_completion(data: dict[str, Any]) -> Result:
    """An ok ``Result`` from a chat.completion body (raises on a malformed one)."""
    choice = data["choices"][0]
    message = choice["message"]
    return Result(
        status="ok",
        response=message.get("content") or None,  # "" as null: a stream cannot tell them apart
        reasoning_content=message.get("reasoning_content"),
        tool_calls=_tool_calls_json(message.get("tool_calls")),
        finish_reason=choice.get("finish_reason"),
        model=data.get("model"),
        response_id=data.get("id"),
        **_usage_fields(data.get("usage")),
    )


class StreamAssembler:
    """Assembles SSE chunks (content, reasoning, tool-call deltas, usage) into one answer."""

    def __init__(self) -> None:
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None
        self._model: str | None = None
        self._id: str | None = None

    def feed(self, line: bytes) -> bool:
        """Take one SSE line; True once ``data: [DONE]`` arrived."""
        if not line.startswith(b"data:"):
            return False  # blank separators, comments, event: lines
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return True
        try:
            self._chunk(json.loads(payload))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise RetryableError("malformed_response", f"unreadable stream chunk: {exc}") from None
        return False

    def _chunk(self, chunk: dict[str, Any]) -> None:
        if "error" in chunk:
            raise RetryableError("stream_error", str(chunk["error"].get("message")))
        self._id = chunk.get("id") or self._id
        self._model = chunk.get("model") or self._model
        self._usage = chunk.get("usage") or self._usage
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) == 0:
                self._delta(choice.get("delta") or {})
                self._finish = choice.get("finish_reason") or self._finish

    def _delta(self, delta: dict[str, Any]) -> None:
        if delta.get("content"):
            self._content.append(delta["content"])
        if delta.get("reasoning_content"):
            self._reasoning.append(delta["reasoning_content"])
        for part in delta.get("tool_calls") or ():
            self._tool_call_delta(part)

    def _tool_call_delta(self, part: dict[str, Any]) -> None:
        call = self._calls.setdefault(
            part.get("index", 0), {"id": None, "type": None, "function": {"name": None}}
        )
        call["id"] = part.get("id") or call["id"]
        call["type"] = part.get("type") or call["type"]
        function = part.get("function") or {}
        call["function"]["name"] = function.get("name") or call["function"]["name"]
        arguments = call["function"].get("arguments", "") + (function.get("arguments") or "")
        call["function"]["arguments"] = arguments

    def result(self) -> Result:
        calls = [self._calls[index] for index in sorted(self._calls)]
        return Result(
            status="ok",
            response="".join(self._content) or None,  # no content delta: null, as plain
            reasoning_content="".join(self._reasoning) if self._reasoning else None,
            tool_calls=_tool_calls_json(calls),
            finish_reason=self._finish,
            model=self._model,
            response_id=self._id,
            **_usage_fields(self._usage),
        )
