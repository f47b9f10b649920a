"""Every exception batchrun raises, in one tree.

    BatchrunError                 base; ``exit_code`` is what the CLI exits with
    ├── JobError          (2)     bad job file, bad option, bad argument
    │   ├── InputError    (2)     missing/corrupt/undecodable input, missing column, duplicate id
    │   └── OutputError   (2)     output not writable there, or someone else's file (no --overwrite)
    ├── LockedError       (2)     another run of the same job holds the checkpoint
    └── FatalApiError     (4)     401/403 or unknown model: the whole job stops

Row-level failures are not exceptions that leave the dispatcher: a row that
cannot be sent or fails for good becomes a ``Result`` with ``status`` ``invalid``
or ``error``. Inside the dispatcher, one attempt's failure is either a
``RetryableError`` (429, 5xx, timeout, connection error, malformed body, broken
stream) or a ``PermanentError`` (any other 4xx). Foreign exceptions (httpx,
aiohttp, pyarrow, sqlite3) are translated into these at exactly one boundary each.

Secrets never leave batchrun: ``redact`` is the one path every error message (both
trees redact their message when made), every line of the ``batchrun`` logger and every
checkpointed answer (hence every output cell) passes through. It hides the API key
(``add_secret``), the userinfo of any URL (``s3://KEY:SECRET@bucket``,
``https://bob:pw@host``) and the values of the standard cloud credential variables.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from typing import Any

_SECRETS: set[str] = set()
# Values never shown: the standard credential variables of the object stores.
_SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
# ``scheme://userinfo@``: everything between ``://`` and the first ``@`` of a word.
_USERINFO = re.compile(r"(?<=://)[^\s'\"@]*@")
_MIN_SECRET = 4  # shorter values would blank out ordinary text
MASK = "***"


def add_secret(value: str | None) -> None:
    """Hide ``value`` (an API key) from every message, log line and stored answer."""
    if value and len(value) >= _MIN_SECRET:
        _SECRETS.add(value)


def redact(text: str) -> str:
    """``text`` without the API key, URL credentials or cloud credential values."""
    return redactor()(text)


def redactor() -> Callable[[str], str]:
    """``redact`` with the secrets known now, for many texts at once (a commit's answers)."""
    secrets = [v for v in map(os.environ.get, _SECRET_VARIABLES) if v and len(v) >= _MIN_SECRET]
    secrets.extend(_SECRETS)

    def apply(text: str) -> str:
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return _USERINFO.sub(MASK + "@", text) if "://" in text else text

    return apply


def _redacted_args(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(redact(a) if isinstance(a, str) else a for a in args)


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        return True


logging.getLogger("batchrun").addFilter(_RedactingFilter())


class BatchrunError(Exception):
    """Base of all job-level errors."""

    exit_code = 1

    def __init__(self, *args: Any) -> None:
        super().__init__(*_redacted_args(args))


class JobError(BatchrunError):
    """The job file, an option or an argument is wrong. Nothing was sent."""

    exit_code = 2


class InputError(JobError):
    """The input table cannot be read or does not fit the job."""


class OutputError(JobError):
    """The output cannot be written where the job says, or must not be replaced there."""


class LockedError(BatchrunError):
    """Another run of the same job is in progress."""

    exit_code = 2


class FatalApiError(BatchrunError):
    """The API refused the whole job (bad key, no access, unknown model).

    ``failed_alike`` is the ``(error_type, message)`` every row failed with when the
    job was stopped for its first answers all failing alike (``send.earlystop``)."""

    exit_code = 4

    def __init__(self, message: str, *, failed_alike: tuple[str, str] | None = None) -> None:
        super().__init__(message)
        self.failed_alike = failed_alike


class AttemptError(Exception):
    """One attempt at one request failed. Never escapes the dispatcher."""

    def __init__(
        self,
        error_type: str,
        message: str,
        *,
        retry_after: float | None = None,
        retry_after_from: str = "",
    ):
        message = redact(message)
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.retry_after = retry_after
        self.retry_after_from = retry_after_from  # the header that said so


class RetryableError(AttemptError):
    """Worth another attempt: 429, 5xx, timeout, connection error, broken stream."""


class PermanentError(AttemptError):
    """Fails the row at once: a 4xx other than 401/403/404-model/429."""
