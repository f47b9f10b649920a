"""The ASGI app: routing, auth, and the chat-completions request as named steps.

A plain ASGI callable (no framework) so the emulator is never the bottleneck of
a benchmark. One chat request goes: receive -> authenticate -> parse ->
rate-limit -> draw a fault -> bill -> delay -> answer (or fail, drop, stall, cut).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from batchrun.emulator.cache import PrefixCache
from batchrun.emulator.config import EmulatorConfig
from batchrun.emulator.faults import Fault, FaultPlan, literal_headers
from batchrun.emulator.ledger import Ledger
from batchrun.emulator.limits import Headers, RateLimiter, TerseLimiter
from batchrun.emulator.schema import MODEL_IDS, ApiError, ChatRequest, parse_chat_request
from batchrun.emulator.synth import body_digests, synthesize
from batchrun.emulator.wire import (
    Answer,
    completion_body,
    dumps,
    error_body,
    malformed,
    model_body,
    models_body,
    sse_events,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Every response says it is synthetic, so a run recognises the emulator at any address.
EMULATOR_HEADER = (b"x-batchrun-emulator", b"1")
_JSON: Headers = [(b"content-type", b"application/json"), EMULATOR_HEADER]
_SSE: Headers = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    EMULATOR_HEADER,
]
_CHAT = "/v1/chat/completions"


class EmulatorApp:
    """One emulated ModelStream endpoint with its billing ledger."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.ledger = Ledger()
        self._cache = PrefixCache()
        self._limiter: RateLimiter | TerseLimiter = (
            TerseLimiter(config.rpm, config.tpm, config.window_s, config.vendor_retry_after)
            if config.terse_limits
            else RateLimiter(config.rpm, config.tpm)
        )
        self._plan = FaultPlan(config.faults, config.seed, config.latency_ms, config.jitter_ms)
        self._models = models_body()
        self._system_fingerprint = f"fp_emulator_{config.seed}"

    def reset(self) -> None:
        """Back to a fresh start: ledger, prompt cache, rate windows and fault sequence."""
        self.ledger = Ledger()
        self._cache.clear()
        self._limiter.reset()
        self._plan.reset()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._route(scope, receive, send)
        elif scope["type"] == "lifespan":
            await _lifespan(receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        if path == _CHAT and method == "POST":
            await self._chat(scope, receive, send)
        elif path.startswith("/v1/models") and method == "GET":
            await self._model_list(scope, path, send)
        elif path == "/emulator/ledger" and method == "GET":
            full = b"full=1" in scope.get("query_string", b"")
            await _respond(send, 200, dumps(self._ledger_snapshot(full)))
        elif path == "/emulator/reset" and method == "POST":
            self.reset()
            await _respond(send, 200, b'{"ok":true}')
        else:
            error = ApiError(
                404,
                f"Unknown route {method} {path}.",
                type="invalid_request_error",
                param=None,
                code="not_found",
            )
            await _respond(send, 404, error_body(error))

    async def _model_list(self, scope: Scope, path: str, send: Send) -> None:
        denied = self._auth_error(scope)
        if denied is not None:
            await _respond(send, 401, error_body(denied))
            return
        model = path.removeprefix("/v1/models").strip("/")
        if not model:
            await _respond(send, 200, self._models)
        elif model in MODEL_IDS:
            await _respond(send, 200, model_body(model))
        else:
            await _respond(send, 404, error_body(_model_not_found(model)))

    def _ledger_snapshot(self, full: bool) -> dict[str, Any]:
        data = self.ledger.snapshot(full=full)
        if isinstance(self._limiter, TerseLimiter):  # requests admitted per fixed window
            windows = self._limiter.admitted_per_window
            first = min(windows, default=0)
            span = range(first, max(windows, default=-1) + 1)
            data["admitted_per_window"] = [windows.get(k, 0) for k in span]
        return data

    def _auth_error(self, scope: Scope) -> ApiError | None:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, key = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and self.config.accepts_key(key.strip()):
                    return None
                break
        return ApiError(
            401,
            "Incorrect API key provided.",
            type="invalid_request_error",
            param=None,
            code="invalid_api_key",
        )

    # -- chat completions, step by step ------------------------------------------------

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.ledger.receive(time.monotonic())
        ledger = self.ledger  # a reset meanwhile must not unbalance the new one
        ledger.started()
        try:
            await self._chat_answer(scope, receive, send)
        finally:
            ledger.ended()

    async def _chat_answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await _read_body(receive)
        try:
            denied = self._auth_error(scope)
            if denied is not None:
                raise denied
            body = _decode(raw)
            request = parse_chat_request(body)
            _check_context(request, self.config.context_tokens)
        except ApiError as error:
            await self._error(send, error, [])
            return
        if self.config.echo_key and request.stream:
            await _respond(send, 200, _echoing_error(scope), _SSE)
            return
        await self._admitted(send, body, request)

    async def _admitted(self, send: Send, body: dict[str, Any], request: ChatRequest) -> None:
        now = time.monotonic()
        verdict = self._limiter.admit(request.rate_limit_tokens, now)
        headers = literal_headers(verdict.headers, self.config.header_values)
        if not verdict.allowed:
            self.ledger.rate_limited += 1
            error = ApiError(
                429,
                verdict.message,
                type="rate_limit_exceeded",
                param=None,
                code="rate_limit_exceeded",
            )
            await self._error(send, error, headers)
            return
        fault = self._plan.next_fault()
        delay = self._plan.next_delay_s()
        if fault is Fault.FAIL:
            await self._fail(send, delay, headers)
            return
        answer = self._bill(body, request, now)
        await self._deliver(send, answer, fault, delay, headers)

    def _bill(self, body: dict[str, Any], request: ChatRequest, now: float) -> Answer:
        key, fingerprint = body_digests(self.config.seed, body)
        cached = self._cache.cached_tokens(request.model, request.messages, request.text_chars)
        answer = Answer(
            id="chatcmpl-" + key.hex()[:24],
            created=int(time.time()),
            fingerprint=self._system_fingerprint,
            request=request,
            completion=synthesize(request, key, self.config.labels),
            cached_tokens=cached,
        )
        self.ledger.bill(fingerprint, now, answer.ledger_tokens())
        return answer

    async def _deliver(
        self, send: Send, answer: Answer, fault: Fault | None, delay: float, headers: Headers
    ) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        if fault is not None:
            self.ledger.faults[fault.value] += 1
        if fault is Fault.DROP:
            await _close_connection(send)
            return
        if fault is Fault.STALL:
            await asyncio.sleep(self.config.stall_s)
        self.ledger.status_counts[200] += 1
        if answer.request.stream:
            await self._stream(send, answer, fault, headers)
        else:
            body = completion_body(answer, usage=fault is not Fault.NO_USAGE)
            await _send_body(send, body, fault, headers)

    async def _stream(
        self, send: Send, answer: Answer, fault: Fault | None, headers: Headers
    ) -> None:
        events = sse_events(answer, usage=fault is not Fault.NO_USAGE)
        if fault is Fault.MALFORMED:
            events[1] = (malformed(events[1][0].rstrip(b"\n")) + b"\n\n", events[1][1])
        if fault is Fault.TRUNCATE:
            events = events[: max(1, len(events) // 2)]
        pace = self.config.tokens_per_second
        if pace is None and fault is not Fault.TRUNCATE:
            await _respond(send, 200, b"".join(e for e, _ in events), _SSE + headers)
            return
        await send({"type": "http.response.start", "status": 200, "headers": _SSE + headers})
        await _send_paced(send, events, pace)
        if fault is Fault.TRUNCATE:
            await _close_connection(send)
        else:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _fail(self, send: Send, delay: float, headers: Headers) -> None:
        status, message, kind, code = self._plan.fail_answer()
        if delay > 0:
            await asyncio.sleep(delay)
        self.ledger.faults[Fault.FAIL.value] += 1
        error = ApiError(status, message, type=kind, param=None, code=code)
        await self._error(send, error, headers)

    async def _error(self, send: Send, error: ApiError, headers: Headers) -> None:
        self.ledger.status_counts[error.status] += 1
        await _respond(send, error.status, error_body(error), _JSON + headers)


def _check_context(request: ChatRequest, context_tokens: int | None) -> None:
    # A bad row among good ones: its message names its own length, as OpenAI's does.
    if context_tokens and request.prompt_tokens > context_tokens:
        raise ApiError(
            400,
            f"This model's maximum context length is {context_tokens} tokens. However,"
            f" your messages resulted in {request.prompt_tokens} tokens.",
            type="invalid_request_error",
            param="messages",
            code="context_length_exceeded",
        )


def _model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        type="invalid_request_error",
        param="model",
        code="model_not_found",
    )


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(
            400,
            f"We could not parse the JSON body of your request: {exc}",
            type="invalid_request_error",
            param=None,
            code="invalid_json",
        ) from None


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    chunks = [body]
    while message.get("more_body"):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


def _echoing_error(scope: Scope) -> bytes:
    """A stream whose only event is an error quoting the request's Authorization header,
    as a careless proxy does."""
    auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
    error = {"message": f"upstream refused the request (authorization: {auth})"}
    return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"


async def _respond(send: Send, status: int, body: bytes, headers: Headers = _JSON) -> None:
    length = (b"content-length", str(len(body)).encode())
    await send({"type": "http.response.start", "status": status, "headers": [*headers, length]})
    await send({"type": "http.response.body", "body": body})


async def _send_body(send: Send, body: bytes, fault: Fault | None, headers: Headers) -> None:
    if fault is Fault.MALFORMED:
        await _respond(send, 200, malformed(body), _JSON + headers)
    elif fault is Fault.TRUNCATE:
        # Promise the whole body, deliver half, hang up: the client sees a cut body.
        length = (b"content-length", str(len(body)).encode())
        await send(
            {"type": "http.response.start", "status": 200, "headers": [*_JSON, *headers, length]}
        )
        await send(
            {"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True}
        )
        await _close_connection(send)
    else:
        await _respond(send, 200, body, _JSON + headers)


async def _send_paced(send: Send, events: list[tuple[bytes, int]], pace: float | None) -> None:
    """Send each event when its tokens are due at ``pace`` tokens/s (all at once if None)."""
    if pace is None:
        await send(
            {
                "type": "http.response.body",
                "body": b"".join(e for e, _ in events),
                "more_body": True,
            }
        )
        return
    loop = asyncio.get_running_loop()
    start, tokens = loop.time(), 0
    for event, count in events:
        tokens += count
        delay = start + tokens / pace - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await send({"type": "http.response.body", "body": event, "more_body": True})


async def _close_connection(send: Send) -> None:
    """Hang up on the client without finishing the response.

    ASGI has no way to drop a connection, so reach the transport through
    uvicorn's bound ``send`` and close it; then yield until uvicorn has seen
    the disconnect, so it neither logs an error nor sends a 500 of its own.
    """
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise ConnectionAbortedError("emulated connection drop")  # server closes; logs once
    transport.close()
    for _ in range(1000):
        if getattr(cycle, "disconnected", True):
            return
        await asyncio.sleep(0)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
