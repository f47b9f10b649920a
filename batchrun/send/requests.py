"""Rows to requests: render the templates, check each row, build the wire body.

``RequestBuilder(job, schema).build(batch, start)`` turns each row of an Arrow
batch into a ``Request`` or, when the row itself is unusable (empty prompt, too
many or malformed image URLs), a ``Result(status="invalid")`` that is never sent.
Work is column-wise: each template column is converted to Python once per batch.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from json.encoder import encode_basestring
from typing import Any, TypeVar, cast

import pyarrow as pa

from batchrun._errors import JobError
from batchrun._types import Keyed, Request, Result
from batchrun.io.input import InputTable, row_keys
from batchrun.job.columns import instruction
from batchrun.job.config import MAX_IMAGE_URLS, Job
from batchrun.job.examples import example_turns
from batchrun.job.template import Template
from batchrun.send.budget import texts_kind

FINGERPRINT_VERSION = "v1"
IMAGE_TOKENS: Mapping[str | None, int] = {"low": 85, "high": 765, "auto": 425, None: 425}
"""Prompt tokens one image counts for in ``estimate_prompt_tokens``, by ``detail``."""
_URL = re.compile(r"(?:https?://[^\s/?#]+\S*|data:\S+)\Z", re.IGNORECASE)
_SHOWN_URL_CHARS = 80


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """batchrun's (and the emulator's) approximation of a request's prompt tokens.

    ``ceil(C / 4) + 4 * M + sum of image tokens``, where ``C`` counts the
    characters (code points) of every message's text (string contents and
    ``text`` parts), ``M`` is the number of messages, and each ``image_url`` part
    counts by its ``detail``: low 85, high 765, auto or absent 425.

    >>> estimate_prompt_tokens({"messages": [{"role": "user", "content": "abcde"}]})
    6
    """
    chars = images = 0
    messages = body.get("messages") or []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
            continue
        for part in content or ():
            if part.get("type") == "text":
                chars += len(part.get("text") or "")
            elif part.get("type") == "image_url":
                images += IMAGE_TOKENS.get(part["image_url"].get("detail"), IMAGE_TOKENS[None])
    return -(-chars // 4) + 4 * len(messages) + images


def canonical_json(body: Mapping[str, Any]) -> str:
    """The body's one canonical text: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(body: Mapping[str, Any], key: str | None = None) -> str:
    """``"v1:" + sha256`` of the canonical body, the row key first when given.

    The key is written as a JSON string, which is self-delimiting, so no key and
    body can collide with another pair.
    """
    return _hash(canonical_json(body), key)


def _hash(canonical: str, key: str | None) -> str:
    return _hash_bytes(canonical.encode(), key)


def _hash_bytes(canonical: bytes, key: str | None) -> str:
    """``_hash`` of a canonical text already encoded (UTF-8 encodes piece by piece, so
    the key's bytes then the body's are the bytes of the joined text)."""
    if key is not None:
        canonical = encode_basestring(key).encode() + canonical
    return f"{FINGERPRINT_VERSION}:{hashlib.sha256(canonical).hexdigest()}"


def _nonblank(system: str | None) -> str | None:
    """A system prompt that renders blank is left out of the request."""
    return system if system and system.strip() else None


class _CanonicalWriter:
    """Writes ``canonical_json(body)`` from a row's texts, without re-encoding the
    fields all rows share: the per-row cost is a few string escapes, not a full
    ``json.dumps`` (tests pin that both give the same text)."""

    _MARK = "\x00messages\x00"

    def __init__(
        self, head: str, tail: str, system_role: str, detail: str | None, examples: str
    ) -> None:
        self.head, self.tail, self.examples = head, tail, examples
        self.system_close = f',"role":{encode_basestring(system_role)}}},'
        self.url_open = '{"image_url":{' + (
            "" if detail is None else f'"detail":{encode_basestring(detail)},'
        )

    @classmethod
    def create(
        cls, job: Job, static: Mapping[str, Any], examples: Sequence[Mapping[str, str]]
    ) -> _CanonicalWriter | None:
        """None when ``extra`` replaces ``messages``: then the generic path is used."""
        whole = canonical_json({"model": job.request.model, "messages": cls._MARK, **static})
        pieces = whole.split(encode_basestring(cls._MARK))
        if len(pieces) != 2:
            return None
        # The example turns, written once: each followed by the comma before the next message.
        turns = "".join(canonical_json(m) + "," for m in examples)
        request = job.request
        return cls(pieces[0], pieces[1], request.system_role, request.image_detail, turns)

    def text(self, system: str | None, prompt: str, urls: list[str]) -> str:
        out = [self.head, "["]
        if system is not None:
            out += ['{"content":', encode_basestring(system), self.system_close]
        out.append(self.examples)
        out += ['{"content":', self._content(prompt, urls), ',"role":"user"}]', self.tail]
        return "".join(out)

    def _content(self, prompt: str, urls: list[str]) -> str:
        if not urls:
            return encode_basestring(prompt)
        out = ['[{"text":', encode_basestring(prompt), ',"type":"text"}']
        for url in urls:
            out += [",", self.url_open, '"url":', encode_basestring(url), '},"type":"image_url"}']
        out.append("]")
        return "".join(out)


class RequestBuilder:
    """Builds each row's request; checks the templates against ``schema`` up front."""

    def __init__(self, job: Job, schema: pa.Schema) -> None:
        self.job = job
        self.prompt = _template(job.request.prompt, "request.prompt", schema)
        system = job.request.system_prompt
        self.system = _template(system, "request.system_prompt", schema) if system else None
        self.image_column = _image_column(job, schema)
        self._static = _static_fields(job)
        self._examples = _example_messages(job)
        self._example_texts = tuple(m["content"] for m in self._examples)
        self._example_chars = sum(map(len, self._example_texts))
        self._canonical = _CanonicalWriter.create(job, self._static, self._examples)
        # What hashes a row without building it: none on the generic path (``extra``
        # replaces messages) or with images, whose rows are built to be hashed.
        self._hasher = None if self.image_column is not None else self._canonical
        self._image_tokens = IMAGE_TOKENS.get(job.request.image_detail, IMAGE_TOKENS[None])
        self._worst_case = job.request.worst_case_completion_tokens
        self._format = _format_instruction(job)
        system_columns = self.system.columns if self.system else ()
        self._text_columns = tuple(dict.fromkeys(self.prompt.columns + system_columns))

    def build(
        self, batch: pa.RecordBatch, start: int, keys: list[str] | None = None
    ) -> list[Request | Result]:
        """One ``Request`` or invalid ``Result`` per row of ``batch``, in row order.

        ``keys`` are the rows' keys when the caller has them already (``row_keys``).
        """
        if keys is None:
            keys = row_keys(batch, self.job, start)
        texts = {name: _column_text(batch.column(name)) for name in self._text_columns}
        prompts = _render(self.prompt, texts, batch.num_rows)
        systems = self._systems(texts, batch.num_rows)
        blank = _blank_rows(self.prompt, texts, prompts)
        images = _column_values(batch, self.image_column)
        out: list[Request | Result] = []
        for i, key in enumerate(keys):
            urls, problem = _row_urls(images[i] if images else None)
            if problem is None and blank[i]:
                problem = _empty_prompt_problem(self.prompt, batch, i)
            if problem is not None:
                out.append(_invalid(key, problem))
                continue
            system = systems[i] if systems else None
            out.append(self._request(key, prompts[i], system, urls))
        return out

    def keyed(
        self, batch: pa.RecordBatch, start: int, keys: list[str]
    ) -> list[Keyed | Request | Result]:
        """``build`` for the output pass, which reads only keys and fingerprints: a
        ``Keyed`` per row, a third of the cost, unless a row is invalid (its ``Result``
        says why) or the job's requests are built anyway (``fingerprints``)."""
        if self._hasher is None:
            return list(self.build(batch, start, keys))
        found = self.fingerprints(batch, start, keys)
        if None in found:
            return list(self.build(batch, start, keys))
        return [Keyed(key, fp) for key, fp in zip(keys, found, strict=True) if fp is not None]

    def fingerprints(self, batch: pa.RecordBatch, first: int, keys: list[str]) -> list[str | None]:
        """Each row's ``Request.fingerprint`` as ``build`` makes it (None: an invalid row):
        what a resume asks of the checkpoint about rows it may not send. Without a body,
        estimate or ``Request`` (a third of the cost), unless this job's requests take
        the generic path or carry images: then they are built."""
        hasher = self._hasher
        if hasher is None:
            built = self.build(batch, first, keys)
            return [item.fingerprint if isinstance(item, Request) else None for item in built]
        texts = {name: _column_text(batch.column(name)) for name in self._text_columns}
        prompts = _render(self.prompt, texts, batch.num_rows)
        systems = self._systems(texts, batch.num_rows)
        blank = _blank_rows(self.prompt, texts, prompts)
        text, dedupe = hasher.text, self.job.request.dedupe
        out: list[str | None] = []
        for i, key in enumerate(keys):
            system = _nonblank(systems[i]) if systems else None
            hashed = (
                None if blank[i] else _hash(text(system, prompts[i], []), None if dedupe else key)
            )
            out.append(hashed)
        return out

    def _systems(self, texts: Mapping[str, list[str]], n: int) -> list[str] | None:
        """Each row's system message: the rendered system prompt, then the JSON asked for."""
        if self.system is None:
            return None if self._format is None else [self._format] * n
        systems = _render(self.system, texts, n)
        if self._format is None:
            return systems
        return [f"{s}\n\n{self._format}" if s.strip() else self._format for s in systems]

    def _request(self, key: str, prompt: str, system: str | None, urls: list[str]) -> Request:
        # Runs for every row, in the run and again in the output pass: names read once.
        request = self.job.request
        system = _nonblank(system)
        user = {"role": "user", "content": self._user_content(prompt, urls) if urls else prompt}
        messages: list[dict[str, Any]] = [*self._examples, user]
        if system is not None:
            messages.insert(0, {"role": request.system_role, "content": system})
        body = {"model": request.model, "messages": messages, **self._static}
        dedupe_key = None if request.dedupe else key
        kind: str | None = None  # the generic path: the budget reads the body's texts
        wire: bytes | None = None
        if self._canonical is None:  # extra replaced messages: the generic path
            digest, estimate = fingerprint(body, dedupe_key), estimate_prompt_tokens(body)
        else:
            texts = (*self._example_texts, prompt) + (() if system is None else (system,))
            plain = all(text.isascii() for text in texts)
            kind = "ascii" if plain else texts_kind(texts)
            wire = self._canonical.text(system, prompt, urls).encode()
            digest = _hash_bytes(wire, dedupe_key)
            # Same sum as estimate_prompt_tokens(body), from the parts in hand.
            chars = len(prompt) + (len(system) if system is not None else 0) + self._example_chars
            estimate = -(-chars // 4) + 4 * len(messages) + self._image_tokens * len(urls)
        return Request(key, body, digest, estimate, self._worst_case, kind, wire)

    def _user_content(self, prompt: str, urls: list[str]) -> str | list[dict[str, Any]]:
        if not urls:
            return prompt
        detail = self.job.request.image_detail
        parts: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
        for url in urls:
            image: dict[str, str] = (
                {"url": url} if detail is None else {"url": url, "detail": detail}
            )
            parts.append({"type": "image_url", "image_url": image})
        return parts


# --- set-up checks ------------------------------------------------------------------


Selector = Callable[[list[str]], list[bool]]
"""Which rows of a batch to keep, given their keys (``--limit``, ``--shard``)."""


def built_batches(
    table: InputTable,
    builder: RequestBuilder,
    *,
    select: Selector | None = None,
    batch_size: int = 4096,
) -> Iterator[tuple[pa.RecordBatch, list[Request | Result]]]:
    """Each input batch with its rows' requests, the rows ``select`` drops left out.

    The one place rows are read, keyed, selected and built: the run, ``plan`` and
    the output writer (``keyed_batches``) all walk the input through it.
    """
    return _walk(table, builder.job, builder.build, select, batch_size)


def keyed_batches(
    table: InputTable,
    builder: RequestBuilder,
    *,
    select: Selector | None = None,
    batch_size: int = 4096,
) -> Iterator[tuple[pa.RecordBatch, list[Keyed | Request | Result]]]:
    """``built_batches`` with ``RequestBuilder.keyed``'s rows: the output pass's walk."""
    return _walk(table, builder.job, builder.keyed, select, batch_size)


_Item = TypeVar("_Item")


def _walk(
    table: InputTable,
    job: Job,
    make: Callable[[pa.RecordBatch, int, list[str]], list[_Item]],
    select: Selector | None,
    batch_size: int,
) -> Iterator[tuple[pa.RecordBatch, list[_Item]]]:
    start = 0
    for whole in table.batches(batch_size):
        keys = row_keys(whole, job, start)
        items = make(whole, start, keys)
        start += whole.num_rows
        if select is None:
            yield whole, items
            continue
        mask = select(keys)
        kept = [item for item, keep in zip(items, mask, strict=True) if keep]
        yield whole.filter(pa.array(mask, pa.bool_())), kept


def _template(text: str, key: str, schema: pa.Schema) -> Template:
    try:
        template = Template.parse(text)
    except ValueError as exc:
        raise JobError(f"{key}: {exc}") from None
    for name in template.columns:
        if name not in schema.names:
            raise JobError(
                f"{key}: the template names column {{{name}}} but the input has no such "
                f"column (columns: {', '.join(schema.names)})"
            )
    return template


def _image_column(job: Job, schema: pa.Schema) -> str | None:
    name = job.request.image_urls_column
    if name is None:
        return None
    if name not in schema.names:
        raise JobError(
            f"request.image_urls_column: column {name!r} is not in the input "
            f"(columns: {', '.join(schema.names)})"
        )
    kind = schema.field(name).type
    if not (_is_text(kind) or (_is_list(kind) and _is_text(kind.value_type))):
        raise JobError(
            f"request.image_urls_column: column {name!r} has type {kind}; "
            "expected list<string>, or a string holding a JSON array or one URL"
        )
    return name


def _example_messages(job: Job) -> list[dict[str, str]]:
    """``request.examples`` as the user/assistant messages before each row's prompt."""
    examples = job.request.examples
    if examples is None:
        return []
    turns = example_turns(examples, job.request.prompt, job.input.delimiter)
    return [
        {"role": role, "content": text}
        for user, answer in turns
        for role, text in (("user", user), ("assistant", answer))
    ]


def _format_instruction(job: Job) -> str | None:
    """With parsed columns, the system message says which JSON object to answer with."""
    out = job.output
    return instruction(out.columns, out.rules) if out.parse == "json" and out.columns else None


def _static_fields(job: Job) -> dict[str, Any]:
    """The body fields every row shares, in wire order, ``extra`` merged last."""
    req = job.request
    fields: dict[str, Any] = {}
    for name in ("reasoning_effort", "verbosity", "max_completion_tokens"):
        if getattr(req, name) is not None:
            fields[name] = getattr(req, name)
    if req.response_format is not None:
        fields["response_format"] = {"type": req.response_format}
    if req.stream:
        fields["stream"] = True
        fields["stream_options"] = {"include_usage": True}
    fields.update(req.extra)
    try:
        canonical_json(fields)
    except (TypeError, ValueError) as exc:
        raise JobError(f"request.extra: not JSON-serialisable: {exc}") from None
    return fields


def _is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _is_list(kind: pa.DataType) -> bool:
    return bool(pa.types.is_list(kind) or pa.types.is_large_list(kind))


# --- column-wise rendering --------------------------------------------------------


def _render(template: Template, texts: Mapping[str, list[str]], n: int) -> list[str]:
    """``template.render`` for ``n`` rows at once (same rules: null renders as '')."""
    pieces: list[Sequence[str]] = []
    for literal, name in template.parts:
        if literal:
            pieces.append([literal] * n)
        if name is not None:
            pieces.append(texts[name])
    if not pieces:
        return [""] * n
    if len(pieces) == 1:
        return list(pieces[0])
    return ["".join(row) for row in zip(*pieces, strict=True)]


def _column_text(column: pa.Array[Any]) -> list[str]:
    values = column.to_pylist()
    if _is_text(column.type) or pa.types.is_dictionary(column.type):
        if column.null_count == 0:
            return cast(list[str], values)  # text without nulls
        return ["" if v is None else v for v in values]
    return ["" if v is None else str(v) for v in values]


def _blank_rows(
    template: Template, texts: Mapping[str, list[str]], prompts: list[str]
) -> list[bool]:
    """Rows whose prompt is blank, or whose prompt columns are all null or blank:
    the template's fixed text alone is not worth a request."""
    columns = [texts[name] for name in template.columns]
    if not columns:
        return [not prompt.strip() for prompt in prompts]
    return [not any(value.strip() for value in row) for row in zip(*columns, strict=True)]


def _column_values(batch: pa.RecordBatch, name: str | None) -> list[Any] | None:
    return None if name is None else batch.column(name).to_pylist()


# --- per-row checks ---------------------------------------------------------------


def _row_urls(cell: Any) -> tuple[list[str], str | None]:
    """A row's image URLs from a list<string> value or a CSV cell, or the problem."""
    if cell is None:
        return [], None
    if isinstance(cell, str):
        cell = cell.strip()
        if not cell:
            return [], None
        if not cell.startswith("["):
            cell = [cell]
        else:
            try:
                cell = json.loads(cell)
            except json.JSONDecodeError as exc:
                return [], f"image URL cell is not valid JSON ({exc}): {_shown(cell)}"
            if not isinstance(cell, list):
                return [], "image URL cell is not a JSON array of strings"
    return cell, _url_problem(cell)


def _url_problem(urls: list[Any]) -> str | None:
    if len(urls) > MAX_IMAGE_URLS:
        return f"{len(urls)} image URLs; at most {MAX_IMAGE_URLS} are allowed"
    for number, url in enumerate(urls, start=1):
        if not isinstance(url, str):
            return f"image URL {number} is {json.dumps(url)}, not a string"
        if not _URL.match(url):
            return f"image URL {number} {_shown(url)} is not an http(s):// or data: URL"
    return None


def _empty_prompt_problem(template: Template, batch: pa.RecordBatch, row: int) -> str:
    if not template.columns:
        return "prompt is empty after rendering"
    states = [
        f"{name} is {'null' if not batch.column(name)[row].is_valid else 'blank'}"
        for name in template.columns
    ]
    return f"prompt has no content ({', '.join(states)})"


def _shown(text: str) -> str:
    if len(text) > _SHOWN_URL_CHARS:
        text = text[:_SHOWN_URL_CHARS] + "..."
    return repr(text)


def _invalid(key: str, problem: str) -> Result:
    return Result(
        status="invalid", error_type="invalid_row", error_message=f"row {key!r}: {problem}"
    )
