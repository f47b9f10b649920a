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
"""

from __future__ import annotations


class BatchrunError(Exception):
    """Base of all job-level errors."""

    exit_code = 1


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
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.retry_after = retry_after
        self.retry_after_from = retry_after_from  # the header that said so


class RetryableError(AttemptError):
    """Worth another attempt: 429, 5xx, timeout, connection error, broken stream."""


class PermanentError(AttemptError):
    """Fails the row at once: a 4xx other than 401/403/404-model/429."""
