"""The job as frozen, validated value objects.

The loader (``load_job``) is the one place a job file, ``--set`` overrides and
``--var`` values become a ``Job``; every violation raises ``JobError`` naming
the key, the bad value and what is allowed.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from batchrun.job.columns import ColumnRule

DEFAULT_BASE_URL = "https://api.modelstream.ai"
DEFAULT_API_KEY_ENV = "MODELSTREAM_API_KEY"
MAX_COMPLETION_TOKENS_LIMIT = 128_000
MAX_IMAGE_URLS = 10
MAX_REASKS = 10
MAX_EXAMPLES = 50

REASONING_EFFORTS = ("low", "medium", "high", "xhigh")
VERBOSITIES = ("low", "medium")
IMAGE_DETAILS = ("auto", "low", "high")
RESPONSE_FORMATS = ("text", "json_object")
SYSTEM_ROLES = ("developer", "system")
PARSE_MODES = ("json",)


@dataclass(frozen=True)
class InputConfig:
    path: str
    id_column: str | None = None
    delimiter: str = ","


@dataclass(frozen=True)
class ApiConfig:
    base_url: str = DEFAULT_BASE_URL
    api_key_env: str = DEFAULT_API_KEY_ENV


@dataclass(frozen=True)
class ExamplesConfig:
    """Few-shot examples: a file with the prompt's columns and an ``answer`` column."""

    path: str
    answer: str = "answer"


@dataclass(frozen=True)
class RequestConfig:
    model: str
    prompt: str
    system_prompt: str | None = None
    system_role: str = "developer"
    image_urls_column: str | None = None
    image_detail: str | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    max_completion_tokens: int | None = None
    response_format: str | None = None
    stream: bool = False
    dedupe: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)
    reask: int = 0  # answers failing the parse or a column rule are asked again this often
    # An answer cut off by max_completion_tokens (finish_reason = length) is sent once
    # more with this larger max_completion_tokens; None: never.
    cut_off_retry_tokens: int | None = None
    examples: ExamplesConfig | None = None  # user/assistant turns before each row's prompt

    @property
    def worst_case_completion_tokens(self) -> int:
        """The completion tokens a request may use at most (the API's cap when unset)."""
        return self.max_completion_tokens or MAX_COMPLETION_TOKENS_LIMIT


@dataclass(frozen=True)
class Limits:
    concurrency: int = 64
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_attempts: int = 6
    timeout_s: float = 120.0
    max_cost_usd: float | None = None
    max_failed_rows: int = 0


@dataclass(frozen=True)
class OutputConfig:
    path: str
    parse: str | None = None
    columns: Mapping[str, str] = field(default_factory=dict)
    rules: Mapping[str, ColumnRule] = field(default_factory=dict)
    prefix: str = ""
    checkpoint: str | None = None

    @property
    def checkpoint_path(self) -> Path:
        """Where answers are checkpointed: beside the output unless the job says otherwise.

        SQLite needs a local (or mounted) filesystem: an output on an object store keeps
        its checkpoint under ``state_dir()``, in a directory named after the output and
        a hash of its URI (``reviews-3f2a9c01b7de/ckpt.sqlite``)."""
        if self.checkpoint:
            return Path(self.checkpoint)
        if is_store_uri(self.path):
            digest = hashlib.sha256(self.path.encode("utf-8")).hexdigest()[:12]
            stem = Path(urlsplit(self.path).path).stem or "output"
            return state_dir() / f"{stem}-{digest}" / "ckpt.sqlite"
        out = Path(self.path)
        return out.with_name(out.name + ".ckpt.sqlite")


STORE_SCHEMES = ("s3", "gs", "gcs")


def is_store_uri(location: str) -> bool:
    """Whether ``location`` is an object-store URI (``s3://``, ``gs://``)."""
    return "://" in location and urlsplit(location).scheme.lower() in STORE_SCHEMES


_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def store_uri_problem(location: str) -> str | None:
    """What is wrong with an object-store URI (None when nothing is), never quoting it."""
    netloc = location.split("://", 1)[1].split("/", 1)[0]
    if "@" in netloc:
        return (
            "must not carry credentials (they come from AWS_* variables or profiles, "
            "or GOOGLE_APPLICATION_CREDENTIALS)"
        )
    if not _BUCKET.fullmatch(netloc):
        return "is not a valid object-store URI; write s3://BUCKET/KEY or gs://BUCKET/KEY"
    return None


def state_dir() -> Path:
    """batchrun's local state: ``$XDG_STATE_HOME/batchrun``, by default
    ``~/.local/state/batchrun`` (checkpoints of outputs on object stores)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "batchrun"


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cached_input: float | None = None

    def cost(self, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> float:
        """The cost formula; cached tokens at ``cached_input`` (``input`` when unset).

        >>> Price(input=1.25, cached_input=0.125, output=10.0).cost(1000, 200, 100)
        0.002025
        """
        cached_price = self.input if self.cached_input is None else self.cached_input
        micro = (
            (prompt_tokens - cached_tokens) * self.input
            + cached_tokens * cached_price
            + completion_tokens * self.output
        )
        return micro / 1_000_000


@dataclass(frozen=True)
class Variant:
    """One ``[[variants]]`` table: a name and the job's request with its overrides."""

    name: str
    request: RequestConfig


@dataclass(frozen=True)
class Job:
    name: str
    input: InputConfig
    request: RequestConfig
    output: OutputConfig
    api: ApiConfig = field(default_factory=ApiConfig)
    limits: Limits = field(default_factory=Limits)
    pricing: Mapping[str, Price] = field(default_factory=dict)
    config_hash: str = ""
    variants: tuple[Variant, ...] = ()

    @property
    def price(self) -> Price | None:
        """The price of the job's model, or None when ``[pricing]`` does not list it."""
        return self.pricing.get(self.request.model)
