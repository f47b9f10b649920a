"""Validation of a chat-completions body against the ModelStream form schema.

One pass over the body both validates it and measures it (text characters,
images, the last user text), so the hot path walks the messages once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MODELS: tuple[tuple[str, str], ...] = (
    ("gpt-5.5", "openai"),
    ("gpt-5.5-mini", "openai"),
    ("claude-opus-4.8", "anthropic"),
    ("claude-sonnet-4.8", "anthropic"),
    ("gemini-3.5-flash", "google"),
    ("gemini-3.5-pro", "google"),
    ("qwen-3.7-max", "alibaba"),
    ("glm-5.2", "zhipu"),
    ("deepseek-v4.1", "deepseek"),
)
MODEL_IDS = frozenset(model for model, _ in MODELS)

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
REASONING_EFFORTS = ("low", "medium", "high", "xhigh")
VERBOSITIES = ("low", "medium")
IMAGE_DETAILS = ("auto", "low", "high")
RESPONSE_FORMATS = ("text", "json_object")
MAX_IMAGES = 10
MAX_COMPLETION_TOKENS = 128_000

# The documented prompt-token approximation (see the docs, "Inputs and outputs").
IMAGE_TOKENS = {"low": 85, "high": 765, "auto": 425}
TOKENS_PER_MESSAGE = 4
CHARS_PER_TOKEN = 4


class ApiError(Exception):
    """An error answer: HTTP status plus the OpenAI-shaped error body fields."""

    def __init__(self, status: int, message: str, *, type: str, param: str | None, code: str):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code


def invalid(param: str | None, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, type="invalid_request_error", param=param, code=code)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What the emulator needs from a valid body."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    max_completion_tokens: int | None
    reasoning_effort: str | None
    verbosity: str
    json_mode: bool
    user_text: str
    text_chars: int
    image_tokens: int

    @property
    def text_tokens(self) -> int:
        return math.ceil(self.text_chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(
            self.messages
        )

    @property
    def prompt_tokens(self) -> int:
        return self.text_tokens + self.image_tokens

    @property
    def rate_limit_tokens(self) -> int:
        """Counted against TPM before the answer, as OpenAI does."""
        return self.prompt_tokens + (self.max_completion_tokens or 0)


@dataclass(slots=True)
class _Walk:
    """Running measurements while the messages are checked."""

    text_chars: int = 0
    image_tokens: int = 0
    images: int = 0
    user_text: str = ""


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate a decoded body; raises `ApiError` naming the offending param."""
    if not isinstance(body, dict):
        raise invalid(None, "The request body must be a JSON object.", "invalid_type")
    model = _model(body)
    messages = body.get("messages")
    if messages is None:
        raise invalid(
            "messages", "Missing required parameter: 'messages'.", "missing_required_parameter"
        )
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "'messages' must be a non-empty array.", "invalid_type")
    walk = _Walk()
    for index, message in enumerate(messages):
        _walk_message(walk, index, message)
    if walk.images > MAX_IMAGES:
        raise invalid(
            "messages",
            f"Too many images: {walk.images}; at most {MAX_IMAGES} are allowed.",
            "too_many_images",
        )
    if not walk.user_text.strip():
        raise invalid("messages", "The prompt is empty: no user message has text.", "empty_prompt")
    return ChatRequest(
        model=model,
        messages=messages,
        stream=_bool(body, "stream"),
        include_usage=_include_usage(body),
        max_completion_tokens=_max_completion_tokens(body),
        reasoning_effort=_enum(body, "reasoning_effort", REASONING_EFFORTS),
        verbosity=_enum(body, "verbosity", VERBOSITIES) or "medium",
        json_mode=_response_format(body) == "json_object",
        user_text=walk.user_text,
        text_chars=walk.text_chars,
        image_tokens=walk.image_tokens,
    )


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise invalid("model", "Missing required parameter: 'model'.", "missing_required_parameter")
    if not isinstance(model, str):
        raise invalid("model", "'model' must be a string.", "invalid_type")
    if model not in MODEL_IDS:
        raise ApiError(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            type="invalid_request_error",
            param="model",
            code="model_not_found",
        )
    return model


def _walk_message(walk: _Walk, index: int, message: Any) -> None:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise invalid(where, f"'{where}' must be an object.", "invalid_type")
    role = message.get("role")
    if role not in ROLES:
        raise invalid(f"{where}.role", f"Invalid role {role!r}; expected one of {sorted(ROLES)}.")
    content = message.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = _walk_parts(walk, where, content)
    elif content is None and role in ("assistant", "tool"):
        text = ""
    else:
        raise invalid(
            f"{where}.content", f"'{where}.content' must be a string or an array.", "invalid_type"
        )
    walk.text_chars += len(text)
    if role == "user" and text.strip():
        walk.user_text = text


def _walk_parts(walk: _Walk, where: str, parts: list[Any]) -> str:
    texts: list[str] = []
    for index, part in enumerate(parts):
        here = f"{where}.content[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            _walk_image(walk, here, part.get("image_url"))
        else:
            raise invalid(here, f"'{here}' must be a text or image_url part.", "invalid_type")
    return "".join(texts)


def _walk_image(walk: _Walk, where: str, image: Any) -> None:
    if not isinstance(image, dict) or not isinstance(image.get("url"), str):
        raise invalid(
            f"{where}.image_url.url", "An image_url part needs a 'url' string.", "invalid_type"
        )
    detail = image.get("detail", "auto")
    if detail not in IMAGE_TOKENS:
        raise invalid(
            f"{where}.image_url.detail",
            f"Invalid value {detail!r}; expected one of {list(IMAGE_DETAILS)}.",
        )
    walk.images += 1
    walk.image_tokens += IMAGE_TOKENS[detail]


def _enum(body: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if value not in allowed:
        raise invalid(
            name, f"Invalid value {value!r} for '{name}'; expected one of {list(allowed)}."
        )
    return str(value)


def _bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(name, f"'{name}' must be a boolean.", "invalid_type")
    return value


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise invalid("stream_options", "'stream_options' must be an object.", "invalid_type")
    return bool(options.get("include_usage"))


def _max_completion_tokens(body: dict[str, Any]) -> int | None:
    # max_tokens is the older spelling some clients still send.
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    value = body.get(name)
    if value is None:
        return None
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole:
        raise invalid(name, f"'{name}' must be an integer.", "invalid_type")
    if not 1 <= value <= MAX_COMPLETION_TOKENS:
        raise invalid(name, f"'{name}' must be between 1 and {MAX_COMPLETION_TOKENS}; got {value}.")
    return int(value)


def _response_format(body: dict[str, Any]) -> str:
    fmt = body.get("response_format")
    if fmt is None:
        return "text"
    if not isinstance(fmt, dict):
        raise invalid("response_format", "'response_format' must be an object.", "invalid_type")
    kind = fmt.get("type")
    if kind not in RESPONSE_FORMATS:
        raise invalid(
            "response_format.type",
            f"Invalid value {kind!r} for 'response_format.type'; "
            f"expected one of {list(RESPONSE_FORMATS)}.",
        )
    return str(kind)
