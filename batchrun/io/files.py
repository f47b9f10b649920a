"""Finding and opening files, local or on an object store, through ``pyarrow.fs``.

A location is a local path (relative to the working directory) or a URI:
``s3://bucket/key`` or ``gs://bucket/key``. Credentials and endpoints come from
the standard environment only (``AWS_*`` and profiles; ``GOOGLE_APPLICATION_CREDENTIALS``),
never from a job file.

``find(spec, suffixes)`` resolves a file, a directory (searched recursively) or a glob
to ``Found`` files; directory discovery follows ``pyarrow.dataset``'s rule (names starting
with ``.`` or ``_`` are skipped: temp files of an atomic write, ``_SUCCESS`` markers), and
``partitions(files)`` reads hive ``key=value`` directories with ``pyarrow.dataset``'s
typed inference (no file is opened for it). Every store failure becomes one line
through ``describe``, which names the location and the cause and never prints a secret.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from batchrun._errors import JobError, redact
from batchrun.job.config import is_store_uri, store_uri_problem

IGNORED_PREFIXES = (".", "_")
_GLOB_CHARS = frozenset("*?[")


class NotFound(Exception):
    """Nothing at a location; ``cause`` says what is missing on a store (bucket or key)."""

    def __init__(self, location: str, cause: str = "does not exist") -> None:
        super().__init__(f"{location}: {cause}")
        self.location, self.cause = location, cause


@dataclass(frozen=True, slots=True)
class Found:
    """One file: ``name`` as the user would write it, ``path`` in ``fs``."""

    name: str
    fs: pafs.FileSystem
    path: str
    size: int | None = None

    @property
    def suffix(self) -> str:
        base = self.path.rsplit("/", 1)[-1]
        return "." + base.rsplit(".", 1)[-1].lower() if "." in base else ""


def is_remote(location: str) -> bool:
    """Whether ``location`` is an object-store URI (``s3://``, ``gs://``)."""
    return is_store_uri(location)


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding ``location`` and the path within it."""
    if not is_remote(location):
        return _local(), location
    problem = store_uri_problem(location)
    if problem:
        raise JobError(f"{location} {problem}")  # redacted, as every message is
    parts = urlsplit(location)
    scheme, bucket = parts.scheme.lower(), parts.netloc
    path = f"{bucket}{parts.path}".rstrip("/") if parts.path != "/" else bucket
    if scheme == "s3":
        return _s3(bucket), path
    return _gcs(), path


@functools.cache
def _local() -> pafs.FileSystem:
    return pafs.LocalFileSystem()


def _s3(bucket: str) -> pafs.FileSystem:
    options: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        url = urlsplit(endpoint)
        options["endpoint_override"] = url.netloc or url.path
        options["scheme"] = url.scheme or "https"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    elif not endpoint:
        # The bucket's region, asked of S3 once (a wrong region redirects every call).
        options["region"] = _bucket_region(bucket)
    else:
        options["region"] = "us-east-1"  # S3-compatible stores mostly ignore it
    return pafs.S3FileSystem(**options)


def _bucket_region(bucket: str) -> str:
    try:
        return str(pafs.resolve_s3_region(bucket))
    except (OSError, ValueError):
        return "us-east-1"  # the later call names the real cause


def _gcs() -> pafs.FileSystem:
    # Credentials: GOOGLE_APPLICATION_CREDENTIALS or the default chain of the GCS client.
    return pafs.GcsFileSystem()


# --- finding files ------------------------------------------------------------------


def find(spec: str, suffixes: Sequence[str], *, expand_globbed_dirs: bool = True) -> list[Found]:
    """The files ``spec`` names (a file, a directory or a glob) with one of ``suffixes``.

    A directory's files are found recursively, skipping ``.``/``_`` names; a glob follows
    Python's rules (``*`` stays in one directory and skips hidden names, ``**`` spans
    directories) and a directory it matches is searched as one. A named file is returned
    whatever its suffix. Raises ``NotFound`` when ``spec`` names nothing.
    """
    fs, path = resolve(spec)
    if _GLOB_CHARS.intersection(path):
        return _sorted(_globbed(spec, fs, path, suffixes, expand_globbed_dirs))
    if not is_remote(spec):
        path = os.path.abspath(path)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [Found(spec, fs, path, info.size)]
    if info.type == pafs.FileType.Directory:
        return _sorted(_directory(spec, fs, path, suffixes))
    raise NotFound(spec, _missing(fs, path) if is_remote(spec) else "does not exist")


def _missing(fs: pafs.FileSystem, path: str) -> str:
    """Which part of a store path is missing: the bucket, or the key in it."""
    bucket = path.split("/", 1)[0]
    if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
        return "no such bucket"
    return "no such key"


def is_directory(spec: str) -> bool:
    """Whether ``spec`` is an existing directory (or, on a store, a key prefix)."""
    fs, path = resolve(spec)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def _directory(name: str, fs: pafs.FileSystem, path: str, suffixes: Sequence[str]) -> list[Found]:
    """Every file below ``path`` with a data suffix, skipping ``.``/``_`` names at any depth:
    ``pyarrow.dataset``'s discovery rule, on one recursive ``pyarrow.fs`` listing (importing
    ``pyarrow.dataset`` alone would add ~50 MB to every run's memory)."""
    root = path.rstrip("/")
    shown = name.rstrip("/")
    found = []
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        relative = info.path[len(root) :].lstrip("/")
        if info.type != pafs.FileType.File or not _has_suffix(info.path, suffixes):
            continue
        if not any(part.startswith(IGNORED_PREFIXES) for part in relative.split("/")):
            found.append(Found(_join(shown, relative), fs, info.path, info.size))
    return found


def _globbed(
    spec: str, fs: pafs.FileSystem, path: str, suffixes: Sequence[str], expand: bool
) -> list[Found]:
    parts = path.split("/")
    fixed = next(i for i, p in enumerate(parts) if _GLOB_CHARS.intersection(p))
    base = "/".join(parts[:fixed])
    shown = spec[: len(spec) - len(path)] + base if is_remote(spec) else base
    # Local globs list an absolute directory, so "*.csv" lists "." as glob does.
    root = base if is_remote(spec) else os.path.abspath(base or os.curdir)
    found: list[Found] = []
    for entry in _match(fs, root, parts[fixed:]):
        name = _join(shown, entry.path[len(root) :].lstrip("/"))
        if entry.type == pafs.FileType.Directory:
            found.extend(_directory(name, fs, entry.path, suffixes) if expand else [])
        elif _has_suffix(entry.path, suffixes):
            found.append(Found(name, fs, entry.path, entry.size))
    return found


def _match(fs: pafs.FileSystem, directory: str, parts: Sequence[str]) -> Iterator[pafs.FileInfo]:
    """Entries below ``directory`` matching the glob segments ``parts``, as ``glob`` would."""
    part, rest = parts[0], parts[1:]
    if part == "":  # a trailing slash: directories only
        yield fs.get_file_info(directory)
        return
    if part == "**":
        below = [e for e in _list(fs, directory, recursive=True) if _visible(e, directory)]
        if not rest:
            yield from below
            return
        for entry in [fs.get_file_info(directory), *below]:
            if entry.type == pafs.FileType.Directory:
                yield from _match(fs, entry.path, rest)
        return
    pattern = re.compile(fnmatch.translate(part))
    shows_hidden = part.startswith(".")  # as glob: "*" skips hidden names, ".*" does not
    for entry in _list(fs, directory, recursive=False):
        if pattern.match(entry.base_name) and (shows_hidden or not _hidden(entry.base_name)):
            if not rest:
                yield entry
            elif entry.type == pafs.FileType.Directory:
                yield from _match(fs, entry.path, rest)


def _list(fs: pafs.FileSystem, directory: str, *, recursive: bool) -> list[pafs.FileInfo]:
    selector = pafs.FileSelector(directory, allow_not_found=True, recursive=recursive)
    return list(fs.get_file_info(selector))


def _visible(entry: pafs.FileInfo, directory: str) -> bool:
    relative = entry.path[len(directory) :].lstrip("/") if directory else entry.path
    return not any(_hidden(p) for p in relative.split("/"))


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _has_suffix(path: str, suffixes: Sequence[str]) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.lower().endswith(tuple(suffixes)) and not name.startswith(IGNORED_PREFIXES)


def _join(base: str, relative: str) -> str:
    if not relative:
        return base
    if not base:
        return relative
    return f"{base}/{relative}" if is_remote(base) else os.path.join(base, relative)


def _sorted(found: Sequence[Found]) -> list[Found]:
    # As pathlib orders paths: by their parts, so "a/b" sorts before "a-b".
    unique = {f.name: f for f in found}
    return sorted(unique.values(), key=lambda f: f.name.split("/"))


# --- hive partitions --------------------------------------------------------------


def partitions(files: Sequence[Found]) -> list[dict[str, Any]]:
    """Each file's hive ``key=value`` directories, typed by ``pyarrow.dataset`` (ints
    where every value is one; ``__HIVE_DEFAULT_PARTITION__`` is null; %-escapes decoded)."""
    keys: list[dict[str, Any]] = [{} for _ in files]
    by_fs: dict[int, list[int]] = {}
    for index, file in enumerate(files):
        by_fs.setdefault(id(file.fs), []).append(index)
    for indices in by_fs.values():
        fs = files[indices[0]].fs
        paths = [files[i].path for i in indices]
        for index, values in zip(indices, _hive_keys(fs, paths), strict=True):
            keys[index] = values
    return keys


def _hive_keys(fs: pafs.FileSystem, paths: Sequence[str]) -> list[dict[str, Any]]:
    import pyarrow.dataset as ds  # here: ~50 MB that only report needs

    options = ds.FileSystemFactoryOptions(partitioning=ds.HivePartitioning.discover())
    # pyarrow-stubs know neither a list of paths here nor inspect's ``fragments``.
    factory = ds.FileSystemDatasetFactory(
        fs,
        list(paths),  # type: ignore[arg-type]
        ds.ParquetFileFormat(),
        options,
    )
    schema = factory.inspect(fragments=0)  # type: ignore[call-arg]  # partition keys only
    dataset = factory.finish(schema)
    by_path = {
        fragment.path: ds.get_partition_keys(fragment.partition_expression)
        for fragment in dataset.get_fragments()
    }
    return [dict(by_path.get(p, {})) for p in paths]


# --- errors ---------------------------------------------------------------------


def describe(location: str, exc: BaseException) -> str:
    """One line naming ``location`` and the cause of a store or file error, no secret."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if not is_remote(location):
        return f"{location}: {redact(text)}"
    cause = _cause(text)
    if cause in (None, _DENIED, _DENIED_HEAD) and not _has_credentials(location):
        cause = _NO_CREDENTIALS
    return f"{location}: {cause or _short(redact(text))}"


_CREDENTIALS_HINT = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE"
_NO_CREDENTIALS = (
    f"no credentials found (set {_CREDENTIALS_HINT}, or GOOGLE_APPLICATION_CREDENTIALS)"
)
_DENIED = "access denied"
# A HEAD answered 403 carries no body, so S3 cannot say whether the key was refused or
# the policy was: both are named rather than guessing.
_DENIED_HEAD = "access denied (HTTP 403: the credentials are wrong or lack permission)"
_CAUSES = (
    (("NoSuchBucket", "Bucket '", "bucket does not exist"), "no such bucket"),
    (
        ("INVALID_ACCESS_KEY_ID", "InvalidAccessKeyId", "SIGNATURE_DOES_NOT_MATCH"),
        f"credentials rejected by the store (check {_CREDENTIALS_HINT})",
    ),
    (("SignatureDoesNotMatch", "EXPIRED_TOKEN", "ExpiredToken"), "credentials rejected"),
    (("ACCESS_DENIED during HeadObject operation: No response body",), _DENIED_HEAD),
    (("ACCESS_DENIED", "AccessDenied", "Access Denied", "HTTP status 403"), _DENIED),
    (("No credentials", "credentials"), _NO_CREDENTIALS),
    (
        ("NETWORK_CONNECTION", "curlCode", "Couldn't connect", "Could not resolve"),
        "endpoint unreachable",
    ),
    (("NoSuchKey", "Path does not exist", "not found", "NotFound"), "no such key"),
)


def _cause(text: str) -> str | None:
    for needles, cause in _CAUSES:
        if any(n in text for n in needles):
            if cause == "endpoint unreachable":
                return f"{cause} ({_endpoint()})"
            return cause
    return None


def _has_credentials(location: str) -> bool:
    """Whether the environment names any credentials for ``location``'s store (a profile
    or a credentials file counts: only their absence is certain)."""
    if location.lower().startswith("gs://"):
        return True  # the GCS client has its own default chain; it names what it lacks
    names = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE")
    if any(os.environ.get(n) for n in names):
        return True
    files = (
        os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.expanduser("~/.aws/credentials"),
        os.environ.get("AWS_CONFIG_FILE") or os.path.expanduser("~/.aws/config"),
    )
    return any(os.path.exists(f) for f in files)


def _short(text: str) -> str:
    """pyarrow's text less its ``When ... in bucket 'b': `` prefix (the location is
    named already) and the request id."""
    text = re.sub(r"^When [^:]*: ", "", text)
    return re.sub(r"\s*\(Request ID: [^)]*\)", "", text).strip()


def _endpoint() -> str:
    return redact(
        os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or "the store's default endpoint"
    )
