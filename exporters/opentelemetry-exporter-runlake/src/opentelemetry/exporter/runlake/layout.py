"""The lake's folder layout: the one place that encodes partition values and lists files.

```
<root>/spans/tenant=<t>/ttl=<days>/day=<YYYY-MM-DD>/session=<s>/part-<id>.parquet
<root>/runs/tenant=<t>/ttl=<days>/day=<YYYY-MM-DD>/part-<id>.parquet
```

Writers, readers and TTL all build paths through :func:`encode_partition_value`, so a hostile id
(``../x``, ``a/b``, ``=``, ``%``, 300 characters, unicode) maps to the same safe folder everywhere.
The exact value is kept in the rows themselves; the folder name only has to be safe and unique.

A lake lives in a local folder (a :class:`pathlib.Path`: listed with ``os.scandir``, the fast path) or under an
object-store prefix (``s3://bucket/prefix``: an :class:`ObjectPath`, reached through ``pyarrow.fs``). Both are
:data:`LakeRoot` values (see :func:`resolve_lake`) and every function here takes and returns either kind, so
callers build partition paths with ``/`` and list them the same way; :func:`lake_filesystem` gives
``(pyarrow filesystem, path)`` for anything else that wants to read the lake.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlparse

import pyarrow.fs as pafs

SPANS = "spans"
RUNS = "runs"
TABLES = (SPANS, RUNS)
DEFAULT_TENANT = "default"
# The shared partition of a day: small sessions of a flush written together (sorted by session) when the writer's
# ``min_session_rows`` is set, and a closed day's one compacted file. ``encode_partition_value``
# never yields this name (``~`` appears only alone or before a 32-digit hash), so it cannot shadow a session.
MIXED = "~mixed"
MIXED_FOLDER = f"session={MIXED}"

# Bytes kept verbatim in a folder name; everything else is %XX-escaped (UTF-8 bytes).
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.")
_MAX_NAME = 150  # well under the 255-byte limit of common file systems, with room for "session="
_EMPTY = "~"  # never produced by escaping ("~" itself is escaped), so it cannot collide


def storable_text(value: Any) -> Any:
    """``value`` with each lone surrogate (a character UTF-8, so Parquet, cannot hold) replaced by U+FFFD; anything
    else as it is. The writer stores such text this way and names its folder from the same text, and readers look
    ids up the same way, so a stray surrogate costs one character, not the value or the session's reads."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def encode_partition_value(value: str | None) -> str:
    """Return a folder-safe, collision-free name for ``value`` (as :func:`storable_text` makes it).

    ``~`` marks the empty value and the hash suffix of long values; ``~`` in a value is escaped, so
    no two distinct values share a name.
    """
    if not value:
        return _EMPTY
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        value = storable_text(value)
        raw = value.encode("utf-8")
    if all(b in _SAFE for b in raw) and raw[0] != 0x2E:  # fast path; a leading "." would be hidden
        encoded = value
    else:
        encoded = "".join(
            chr(b) if b in _SAFE and not (i == 0 and b == 0x2E) else f"%{b:02X}" for i, b in enumerate(raw)
        )
    if len(encoded) > _MAX_NAME:
        digest = hashlib.sha256(raw).hexdigest()[:32]
        encoded = f"{encoded[:100].rstrip('%0123456789ABCDEF')}~{digest}"
    return encoded


def decode_partition_value(name: str) -> str | None:
    """Inverse of :func:`encode_partition_value`; ``None`` for hashed (long) names, which rows resolve."""
    if name == _EMPTY:
        return ""
    if "~" in name:
        return None
    return unquote(name, errors="surrogateescape")


def day_of(unix_nano: int) -> str:
    """UTC day (``YYYY-MM-DD``) of a timestamp in nanoseconds."""
    return _day_name(unix_nano // 86_400_000_000_000)


_DAY_CACHE: dict[int, str] = {}
_EPOCH = _dt.date(1970, 1, 1)


def _day_name(day_number: int) -> str:
    name = _DAY_CACHE.get(day_number)
    if name is None:
        name = (_EPOCH + _dt.timedelta(days=day_number)).isoformat()
        if len(_DAY_CACHE) < 100_000:
            _DAY_CACHE[day_number] = name
    return name


# ---- where the lake lives: a local folder or an object-store prefix ---------------------------------------------
STATE_URL_ENV = "RUNLAKE_STATE_URL"
STATE_URL_ENVS = (STATE_URL_ENV, "PRAISONAI_STATE_URL")  # read in this order when no state URL is given
DEFAULT_STATE_URL = "./runlake-data"  # the lake of the command line (and of a writer given nothing) when none is set
S3_ENDPOINT_ENV = "RUNLAKE_S3_ENDPOINT"
# URL query parameters accepted for s3:// state URLs (all optional)
S3_URL_OPTIONS = ("endpoint_override", "scheme", "region", "anonymous", "connect_timeout", "request_timeout")


class ObjectStore:
    """One object-store bucket seen through ``pyarrow.fs``; the filesystem is built on first use (no I/O before).

    Options come from the state URL's query, else the environment: endpoint ``RUNLAKE_S3_ENDPOINT``, else
    ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL`` (``http://host:port`` or ``host:port``); region
    ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` (else ``us-east-1`` with an endpoint override, else the bucket's own);
    credentials from the standard AWS chain (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_SESSION_TOKEN``, profiles, instance roles).
    """

    def __init__(self, scheme: str, bucket: str, options: dict[str, Any]) -> None:
        self.scheme = scheme
        self.bucket = bucket
        self.options = dict(options)
        self._identity = (scheme, bucket, tuple(sorted(self.options.items())))
        self._hash = hash(self._identity)
        self._fs: pafs.FileSystem | None = None
        self._lock = threading.Lock()

    @property
    def fs(self) -> pafs.FileSystem:
        fs = self._fs
        if fs is None:
            with self._lock:
                if self._fs is None:
                    self._fs = self._make()
                fs = self._fs
        return fs

    def _make(self) -> pafs.FileSystem:
        options = dict(self.options)
        if not options.get("region"):
            options["region"] = "us-east-1" if options.get("endpoint_override") else pafs.resolve_s3_region(self.bucket)
        # small objects go up in one PUT; larger ones as a multipart upload completed only once every part is in:
        # either way an object appears whole or not at all
        return pafs.S3FileSystem(allow_delayed_open=True, **options)

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, ObjectStore) and self._identity == other._identity)

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        endpoint = self.options.get("endpoint_override")
        return f"ObjectStore({self.scheme}://{self.bucket}" + (f" at {endpoint})" if endpoint else ")")


class ObjectPath:
    """A folder or object of a lake on an object store, used like a ``pathlib.Path`` by the lake's code.

    ``path`` is the ``pyarrow.fs`` path (``bucket/key``), ``str()`` the URL (``s3://bucket/key``), ``fs`` the
    filesystem; ``/``, ``name``, ``parent``, ``parts``, ``exists()`` work as for a Path. Objects found by listing
    also carry their ``size`` and ``mtime`` (seconds), so readers and compaction need no extra request.
    """

    __slots__ = ("store", "path", "root", "size", "mtime")

    def __init__(
        self,
        store: ObjectStore,
        path: str,
        root: str | None = None,
        size: int | None = None,
        mtime: float | None = None,
    ) -> None:
        self.store = store
        self.path = path.strip("/")
        self.root = self.path if root is None else root  # the lake root's path, to tell which table a file is in
        self.size = size
        self.mtime = mtime

    @property
    def fs(self) -> pafs.FileSystem:
        return self.store.fs

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.store, self.path.rpartition("/")[0], self.root)

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.path.split("/"))

    @property
    def table(self) -> str | None:
        """``spans`` or ``runs`` for a path inside the lake's tables, else None."""
        if not self.path.startswith(self.root + "/"):
            return None
        return self.path[len(self.root) + 1 :].partition("/")[0]

    def __truediv__(self, name: str) -> ObjectPath:
        return ObjectPath(self.store, f"{self.path}/{name}", self.root)

    def exists(self) -> bool:
        """An object, or a prefix with objects under it (or the bucket, for the bucket's root)."""
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def resolve(self) -> ObjectPath:
        return self

    def __str__(self) -> str:
        return f"{self.store.scheme}://{self.path}"

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and self.path == other.path and self.store == other.store

    def __hash__(self) -> int:
        return hash((self.path, self.store))

    def __lt__(self, other: ObjectPath) -> bool:
        return self.path < other.path


LakeRoot = Path | ObjectPath
"""A lake root, or a folder or file in it: a local ``Path`` or an ``ObjectPath``."""


def is_remote(path: object) -> bool:
    """Whether ``path`` is on an object store (an :class:`ObjectPath`)."""
    return isinstance(path, ObjectPath)


def lake_filesystem(path: LakeRoot) -> tuple[pafs.FileSystem, str]:
    """``(pyarrow filesystem, path in it)`` for a lake root, folder or file, local or remote."""
    if isinstance(path, ObjectPath):
        return path.fs, path.path
    return pafs.LocalFileSystem(), str(Path(path).absolute())


def _endpoint(text: str, options: dict[str, Any]) -> None:
    """``http://host:port`` or ``host:port`` into pyarrow's ``endpoint_override`` (and ``scheme``)."""
    parsed = urlparse(text if "://" in text else f"//{text}")
    if not parsed.netloc:
        raise ValueError(f"S3 endpoint must be host:port or a URL like http://host:port, got {text!r}")
    options["endpoint_override"] = parsed.netloc
    if parsed.scheme:
        options.setdefault("scheme", parsed.scheme)


def _s3_store(text: str, parsed: Any) -> ObjectPath:
    bucket = parsed.netloc
    if not bucket or "@" in bucket:
        raise ValueError(f"S3 state URL must be s3://bucket/prefix (credentials come from the environment): {text!r}")
    query = dict(parse_qsl(parsed.query, keep_blank_values=True))
    unknown = set(query) - set(S3_URL_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(sorted(unknown))} in {text!r}; supported: {', '.join(S3_URL_OPTIONS)}"
        )
    options: dict[str, Any] = {}
    if "scheme" in query:
        options["scheme"] = query["scheme"]
    endpoint = (
        query.get("endpoint_override")
        or os.environ.get(S3_ENDPOINT_ENV)
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    if endpoint:
        _endpoint(endpoint, options)
    region = query.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    if query.get("anonymous", "").lower() in ("1", "true", "yes"):
        options["anonymous"] = True
    for name in ("connect_timeout", "request_timeout"):
        if name in query:
            options[name] = float(query[name])
    prefix = unquote(parsed.path).strip("/")
    store = ObjectStore("s3", bucket, options)
    return ObjectPath(store, f"{bucket}/{prefix}" if prefix else bucket)


def resolve_lake(state_url: str | os.PathLike[str] | ObjectPath | None = None) -> LakeRoot | None:
    """Where the lake lives, local or on an object store: the argument, else ``RUNLAKE_STATE_URL``, else
    ``PRAISONAI_STATE_URL``.

    A folder path or ``file://`` URL gives a ``Path``; ``s3://bucket/prefix`` (optionally
    ``?endpoint_override=host:port&scheme=http&region=...``; see :class:`ObjectStore`) gives an
    :class:`ObjectPath`. Returns ``None`` when nothing is configured.
    """
    if state_url is None:
        state_url = next((os.environ[name] for name in STATE_URL_ENVS if os.environ.get(name)), None)
    if state_url is None:
        return None
    if isinstance(state_url, ObjectPath):
        return state_url
    text = os.fspath(state_url)
    if not text.strip():
        return None
    parsed = urlparse(text)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file:// state URL must name a local path, got {text!r}")
        return Path(unquote(parsed.path))
    if parsed.scheme == "s3":
        return _s3_store(text, parsed)
    if parsed.scheme and len(parsed.scheme) > 1:  # "C:\\x" has a one-letter "scheme"
        raise ValueError(
            f"unsupported state URL {text!r}: runlake keeps its lake in a folder or on S3; "
            "give a path or a file:// URL (for example file:///var/lib/runlake), "
            "or s3://bucket/prefix for an S3 or S3-compatible object store"
        )
    return Path(text).expanduser()


def resolve_state_url(state_url: str | os.PathLike[str] | None = None) -> Path | None:
    """Like :func:`resolve_lake`, for code that needs a local folder: an object-store URL is a ``ValueError``.

    The exporter, ``HistoryDB``, TTL and compaction take :func:`resolve_lake`'s answer and so work on S3 too.
    """
    root = resolve_lake(state_url)
    if isinstance(root, ObjectPath):
        raise ValueError(
            f"{root} is on an object store, but this needs a local lake folder: "
            "give a path or a file:// URL (for example file:///var/lib/runlake)"
        )
    return root


def partition_dir(
    root: LakeRoot, table: str, tenant: str, ttl_days: int, day: str, session: str | None = None
) -> LakeRoot:
    """The folder of one partition; ``session`` only for the spans table."""
    path = root / table / f"tenant={encode_partition_value(tenant)}" / f"ttl={int(ttl_days)}" / f"day={day}"
    if table == SPANS:
        path = path / f"session={encode_partition_value(session)}"
    return path


COMPACTED_PREFIX = "compact-"


def new_part_name(compacted: bool = False, counts: Mapping[str, int] | None = None) -> str:
    """A unique, time-ordered part file name: safe for many processes writing one partition.

    Compaction's output is named ``compact-…``: a day whose only file is one of those holds each span once, so
    readers can skip the start/end de-duplication there (``runlake.query``). ``counts`` (rows, distinct spans and,
    for span files, finished nodes) go into the name as ``-r…-s…[-n…]``: TTL then counts what it deletes from a
    listing, without opening a file. The name appears with the file (rename), so it never disagrees with it.
    """
    prefix = COMPACTED_PREFIX if compacted else "part-"
    suffix = ""
    if counts is not None:
        suffix = f"-r{int(counts['rows'])}-s{int(counts['spans'])}"
        if "nodes" in counts:
            suffix += f"-n{int(counts['nodes'])}"
    return f"{prefix}{time.time_ns():016x}-{os.getpid():x}-{secrets.token_hex(6)}{suffix}.parquet"


_COUNTS_IN_NAME = re.compile(r"-r(\d+)-s(\d+)(?:-n(\d+))?\.parquet$")


def counts_in_name(path: LakeRoot | str) -> dict[str, int] | None:
    """The counts ``new_part_name`` put into a file's name; None for names without them (older files)."""
    found = _COUNTS_IN_NAME.search(path if isinstance(path, str) else path.name)
    if found is None:
        return None
    rows, spans, nodes = found.groups()
    counts = {"rows": int(rows), "spans": int(spans)}
    if nodes is not None:
        counts["nodes"] = int(nodes)
    return counts


def is_compacted(path: LakeRoot | str) -> bool:
    """Whether a part file was written by compaction (one row per span id within its partition)."""
    name = path if isinstance(path, str) else path.name
    return os.path.basename(name).startswith(COMPACTED_PREFIX)


def temp_name_for(final_name: str) -> str:
    """Hidden name not ending in ``.parquet``: invisible to readers until renamed."""
    return f".{final_name}.tmp"


def is_data_file(name: str) -> bool:
    """Whether a file name is a finished part file (not hidden, not temporary)."""
    return name.endswith(".parquet") and not name.startswith((".", "_"))


def _listing(path: ObjectPath, recursive: bool = False) -> list[pafs.FileInfo]:
    """One level of an object-store folder (one LIST request per 1,000 entries); missing: empty.

    ``recursive``: every object under the prefix, at any depth (one LIST request per 1,000 objects, not one per
    folder: pyarrow lists without a delimiter)."""
    return path.fs.get_file_info(pafs.FileSelector(path.path, allow_not_found=True, recursive=recursive))


_LIST_THREADS = 16
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _forget_pool() -> None:
    """In a forked child: the parent's pool counts threads the child does not have (its tasks would never run)."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _each_folder(folders: list[LakeRoot], list_one: Callable[[LakeRoot], list]) -> Iterator:
    """``list_one`` of every folder, in order: concurrently on an object store (each listing is a round trip),
    one after the other locally (``os.scandir`` is faster than any thread hand-off)."""
    if len(folders) < 2 or not isinstance(folders[0], ObjectPath):
        for folder in folders:
            yield from list_one(folder)
        return
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=_LIST_THREADS, thread_name_prefix="runlake-list")
    for found in _pool.map(list_one, folders):
        yield from found


def _scan(folder: str | os.PathLike[str]) -> tuple[int, list[tuple[str, bool, bool]]]:
    """A local folder's entries ``(name, is a folder, is a regular file)`` as of one moment, and its mtime then
    (symlinks followed for the file test: a dangling one, a FIFO or a socket is neither).

    ``readdir`` returns each entry that does not change while it reads the folder exactly once, but may miss one
    added or removed meanwhile: a listing that spans compaction's in-place merge (its file renamed in, then the
    parts it merged removed) can miss both, and a reader would answer without those rows. So a folder whose mtime
    moved while it was read is read again (up to 8 times, then the last reading stands). ``FileNotFoundError`` /
    ``NotADirectoryError`` if it is not there."""
    before = os.stat(folder).st_mtime_ns
    for _ in range(8):
        with os.scandir(folder) as found:
            entries = [(e.name, e.is_dir(follow_symlinks=False), e.is_file()) for e in found]
        after = os.stat(folder).st_mtime_ns
        if after == before:
            break
        before = after
    return before, entries


def _subdirs(path: LakeRoot, prefix: str) -> Iterator[tuple[str, LakeRoot]]:
    if isinstance(path, ObjectPath):
        for info in _listing(path):
            name = info.base_name
            if info.type == pafs.FileType.Directory and name.startswith(prefix):
                yield name[len(prefix) :], ObjectPath(path.store, info.path, path.root)
        return
    try:
        _, entries = _scan(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    for name, is_dir, _ in entries:
        if is_dir and name.startswith(prefix):
            yield name[len(prefix) :], path / name


def data_files(folder: LakeRoot) -> list[LakeRoot]:
    """Finished part files directly inside one partition folder, oldest first."""
    if isinstance(folder, ObjectPath):
        found = [
            ObjectPath(folder.store, info.path, folder.root, info.size, info.mtime.timestamp() if info.mtime else None)
            for info in _listing(folder)
            if info.type == pafs.FileType.File and is_data_file(info.base_name)
        ]
        return sorted(found, key=lambda p: p.name)
    try:
        _, entries = _scan(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [folder / n for n in sorted(n for n, _, is_file in entries if is_file and is_data_file(n))]


def day_folder_of(file: LakeRoot) -> LakeRoot:
    """The ``day=`` folder a part file lies in: its own folder (``runs/``) or its session folder's (``spans/``)."""
    parent = file.parent
    return parent.parent if parent.name.startswith("session=") else parent


def day_of_file(file: LakeRoot) -> str:
    """The ``YYYY-MM-DD`` of the day folder a part file lies in ("" where it lies in none)."""
    name = day_folder_of(file).name
    return name[len("day=") :] if name.startswith("day=") else ""


def session_of_folder(folder: LakeRoot) -> str | None:
    """The session id a ``session=`` folder is named for; None for a hashed long id (its rows name it)."""
    return decode_partition_value(folder.name[len("session=") :])


def table_of_file(path: str) -> str | None:
    """Which table (``spans`` or ``runs``) a part file's path lies in, else None."""
    for table in TABLES:
        if f"/{table}/tenant=" in path or f"\\{table}\\tenant=" in path:
            return table
    return None


def tenants(root: LakeRoot, table: str) -> list[str]:
    """The tenants a table holds folders for, as their ids (a hashed long id: its folder name)."""
    return sorted(
        (decoded if decoded is not None else name)
        for name, _ in _subdirs(root / table, "tenant=")
        for decoded in [decode_partition_value(name)]
    )


def _ttl_of(text: str) -> int | None:
    """The days of a ``ttl=`` folder name as writers make it (ASCII digits), else None: not a lake folder."""
    return int(text) if text.isascii() and text.isdigit() else None


def ttl_subdirs(root: Path, table: str, tenant: str | None, prefix: str) -> list[Path]:
    """Folders named ``prefix...`` beside the day folders (``<table>/tenant=*/ttl=*/``) of a local lake: where TTL
    parks expired days before deleting them."""
    base = root / table
    if tenant is not None:
        tenant_dirs: list[LakeRoot] = [base / f"tenant={encode_partition_value(tenant)}"]
    else:
        tenant_dirs = [path for _, path in _subdirs(base, "tenant=")]
    return [
        path  # type: ignore[misc]
        for tenant_dir in tenant_dirs
        for _, ttl_dir in _subdirs(tenant_dir, "ttl=")
        for _, path in _subdirs(ttl_dir, prefix)
    ]


def day_dirs(
    root: LakeRoot,
    table: str,
    tenant: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> Iterator[tuple[str, int, str, LakeRoot]]:
    """Yield ``(encoded tenant, ttl_days, day, folder)`` for every day folder, optionally filtered.

    ``tenant`` is a raw tenant id (encoded here); ``since``/``until`` are inclusive ``YYYY-MM-DD``.
    """
    base = root / table
    if tenant is not None:
        tenant_dirs: Iterable[tuple[str, LakeRoot]] = [
            (enc, base / f"tenant={enc}") for enc in [encode_partition_value(tenant)]
        ]
    else:
        tenant_dirs = _subdirs(base, "tenant=")
    for enc_tenant, tenant_dir in tenant_dirs:
        for ttl_text, ttl_dir in _subdirs(tenant_dir, "ttl="):
            ttl = _ttl_of(ttl_text)
            if ttl is None:
                continue
            for day, day_dir in _subdirs(ttl_dir, "day="):
                if (since and day < since) or (until and day > until):
                    continue
                yield enc_tenant, ttl, day, day_dir


def session_files(
    root: LakeRoot, session_id: str, tenant: str | None = None, days: Iterable[str] | None = None
) -> list[LakeRoot]:
    """All span part files that may hold a session's rows, found by building its paths (no lake-wide glob).

    That is its own ``session=`` folders and each day's shared ``session=~mixed`` folder: readers filter on
    ``session_id``. ``days`` (``YYYY-MM-DD``), when known, limits it to those days.
    """
    return sessions_files(root, {session_id: days}, tenant)


def sessions_files(
    root: LakeRoot, sessions: Mapping[str, Iterable[str] | None], tenant: str | None = None
) -> list[LakeRoot]:
    """``session_files`` of several sessions (each with its days, or None for every day), each file once.

    The sessions' own folders are listed first, the days' ``session=~mixed`` folders only once all of those
    listings have finished (see :func:`_spans_day_files`)."""
    wanted = {
        f"session={encode_partition_value(s)}": (None if days is None else set(days)) for s, days in sessions.items()
    }
    own: dict[str, LakeRoot] = {}
    shared: dict[str, LakeRoot] = {}
    for _, _, day, day_dir in day_dirs(root, SPANS, tenant):
        for folder_name, days in wanted.items():
            if days is None or day in days:
                folder = day_dir / folder_name
                own.setdefault(str(folder), folder)
                shared.setdefault(str(day_dir), mixed_dir(day_dir))
    files = list(_each_folder(list(own.values()), data_files))
    files.extend(_each_folder(list(shared.values()), data_files))  # strictly after: see _spans_day_files
    return files


def table_files(
    root: LakeRoot, table: str, tenant: str | None = None, since: str | None = None, until: str | None = None
) -> list[LakeRoot]:
    """Every part file of a table (optionally one tenant, a day range): for cross-session reads."""
    days = [day_dir for _, _, _, day_dir in day_dirs(root, table, tenant, since, until)]
    if table == SPANS:
        return _spans_day_files(days)
    return list(_each_folder(days, data_files))


def _spans_day_files(days: list[LakeRoot]) -> list[LakeRoot]:
    """Every part file of some spans day folders: first the files of each day's own ``session=`` folders, then,
    strictly after all of those listings have finished, each day's ``session=~mixed`` folder (built from the path,
    whether or not the day's listing showed it).

    That order is what keeps a reader from missing rows while compaction merges a closed day (``runlake.compact``):
    compaction writes the day's merged ``compact-…`` file into ``session=~mixed`` *before* it deletes the parts it
    merged. A reader that found a session folder without some part (deleted, or the folder removed) therefore
    finds the merged file when it lists ``session=~mixed`` afterwards; a reader that listed a part that is deleted
    before it reads it lists again (``runlake.query``). Had ``session=~mixed`` been listed first (or at the same time,
    as the concurrent listings of an object store would), a reader could see neither the parts nor the merged file
    and answer without those rows, with no error. The open-day and ``runs/`` merges write their file into the very
    folder they merge, which one listing sees before or after.
    """
    files = list(_each_folder(days, _own_session_files))
    files.extend(_each_folder([mixed_dir(day) for day in days], data_files))
    return files


def _own_session_files(day_dir: LakeRoot) -> list[LakeRoot]:
    """Part files of one spans day's own ``session=`` folders (not ``session=~mixed``), folder by folder, oldest first.

    On an object store one recursive listing of the day: a session prefix emptied by compaction (only its
    ``folder/`` marker is left, see ``runlake.compact``) costs nothing, and a day costs one LIST per 1,000 objects
    instead of one per session.
    """
    if isinstance(day_dir, ObjectPath):
        found: list[ObjectPath] = []
        start = len(day_dir.path) + 1
        for info in _listing(day_dir, recursive=True):
            if info.type != pafs.FileType.File:
                continue
            folder, _, name = info.path[start:].partition("/")
            if folder.startswith("session=") and folder != MIXED_FOLDER and "/" not in name and is_data_file(name):
                mtime = info.mtime.timestamp() if info.mtime else None
                found.append(ObjectPath(day_dir.store, info.path, day_dir.root, info.size, mtime))
        return sorted(found, key=lambda p: (p.parent.path, p.name))
    files: list[LakeRoot] = []
    for name, session_dir in _subdirs(day_dir, "session="):
        if name != MIXED:
            files.extend(data_files(session_dir))
    return files


class CachedListing:
    """``table_files`` of a local lake, re-listing only folders whose modification time changed.

    A folder's entries are reused while its mtime is unchanged and that mtime was already two seconds old when it
    was listed (a change within the file system's timestamp granularity could otherwise go unseen). A query then
    costs a ``stat`` per folder instead of a ``scandir``. Object stores have no folder mtimes: listed every time.
    """

    def __init__(self, max_folders: int = 200_000) -> None:
        # folder -> (mtime, trusted, {prefix: [(value, subfolder)]}, data files)
        self._folders: dict[str, tuple[int, bool, list[tuple[str, str]], list[Path]]] = {}
        self._max = max_folders
        self._lock = threading.Lock()

    def _entries(self, folder: str) -> tuple[list[tuple[str, str]], list[Path]]:
        """``([(name, path) of subfolders], [data files])`` of one folder."""
        try:
            mtime = os.stat(folder).st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):
            self._folders.pop(folder, None)
            return [], []
        hit = self._folders.get(folder)
        if hit is not None and hit[0] == mtime and hit[1]:
            return hit[2], hit[3]
        listed_at = time.time_ns()
        try:
            mtime, entries = _scan(folder)
        except (FileNotFoundError, NotADirectoryError):
            return [], []
        subfolders = sorted((n, os.path.join(folder, n)) for n, is_dir, _ in entries if is_dir)
        files = [Path(folder, n) for n in sorted(n for n, _, is_file in entries if is_file and is_data_file(n))]
        with self._lock:
            if len(self._folders) >= self._max:
                self._folders.clear()
            self._folders[folder] = (mtime, listed_at - mtime > 2_000_000_000, subfolders, files)
        return subfolders, files

    def _dirs(self, folder: str, prefix: str) -> list[tuple[str, str]]:
        return [(n[len(prefix) :], p) for n, p in self._entries(folder)[0] if n.startswith(prefix)]

    def table_files(
        self, root: LakeRoot, table: str, tenant: str | None = None, since: str | None = None, until: str | None = None
    ) -> list[LakeRoot]:
        """What :func:`table_files` returns, from the cache where folders have not changed."""
        if isinstance(root, ObjectPath):
            return table_files(root, table, tenant, since, until)
        base = os.path.join(root, table)
        if tenant is not None:
            enc = encode_partition_value(tenant)
            tenant_dirs = [(enc, os.path.join(base, f"tenant={enc}"))]
        else:
            tenant_dirs = self._dirs(base, "tenant=")
        files: list[LakeRoot] = []
        shared: list[str] = []
        for _, tenant_dir in tenant_dirs:
            for ttl_text, ttl_dir in self._dirs(tenant_dir, "ttl="):
                if _ttl_of(ttl_text) is None:
                    continue
                for day, day_dir in self._dirs(ttl_dir, "day="):
                    if (since and day < since) or (until and day > until):
                        continue
                    if table == SPANS:
                        for name, session_dir in self._dirs(day_dir, "session="):
                            if name != MIXED:
                                files.extend(self._entries(session_dir)[1])
                        shared.append(os.path.join(day_dir, MIXED_FOLDER))
                    else:
                        files.extend(self._entries(day_dir)[1])
        for folder in shared:  # strictly after every session folder: see _spans_day_files
            files.extend(self._entries(folder)[1])
        return files

    def sessions_files(
        self, root: LakeRoot, sessions: Mapping[str, Iterable[str] | None], tenant: str | None = None
    ) -> list[LakeRoot]:
        """What :func:`sessions_files` returns, from the cache where folders have not changed."""
        if isinstance(root, ObjectPath):
            return sessions_files(root, sessions, tenant)
        wanted = [
            (f"session={encode_partition_value(s)}", None if days is None else set(days))
            for s, days in sessions.items()
        ]
        base = os.path.join(root, SPANS)
        if tenant is not None:
            tenant_dirs = [os.path.join(base, f"tenant={encode_partition_value(tenant)}")]
        else:
            tenant_dirs = [p for _, p in self._dirs(base, "tenant=")]
        own: dict[str, None] = {}
        shared: dict[str, None] = {}
        for tenant_dir in tenant_dirs:
            for ttl_text, ttl_dir in self._dirs(tenant_dir, "ttl="):
                if _ttl_of(ttl_text) is None:
                    continue
                for day, day_dir in self._dirs(ttl_dir, "day="):
                    for folder_name, days in wanted:
                        if days is None or day in days:
                            own[os.path.join(day_dir, folder_name)] = None
                            shared[os.path.join(day_dir, MIXED_FOLDER)] = None
        files: list[LakeRoot] = []
        for folder in [*own, *shared]:  # every session=~mixed strictly after the own folders: see _spans_day_files
            files.extend(self._entries(folder)[1])
        return files


def session_dirs(day_dir: LakeRoot, include_mixed: bool = False) -> list[LakeRoot]:
    """The ``session=`` folders of one spans day folder (the shared ``session=~mixed`` one only if asked).

    On an object store only prefixes that hold a part file: a session prefix emptied by compaction keeps its
    ``folder/`` marker (see ``runlake.compact``), which is not a session folder any more."""
    if isinstance(day_dir, ObjectPath):
        held = {file.parent for file in _own_session_files(day_dir)}
        if include_mixed and data_files(mixed_dir(day_dir)):
            held.add(mixed_dir(day_dir))
        return sorted(held)
    return [p for name, p in _subdirs(day_dir, "session=") if include_mixed or name != MIXED]


def mixed_dir(day_dir: LakeRoot) -> LakeRoot:
    """The shared partition of one spans day folder (see ``MIXED``)."""
    return day_dir / MIXED_FOLDER


def day_files(day_folder: LakeRoot, table: str) -> list[LakeRoot]:
    """Part files under one day folder (all of its sessions for the spans table)."""
    if table == SPANS:
        return _spans_day_files([day_folder])
    return data_files(day_folder)


# ---- reading and removing files, local or remote ---------------------------------------------------------------
def fs_and_path(path: LakeRoot) -> tuple[pafs.FileSystem | None, str]:
    """What pyarrow's readers take: ``(None, local path)`` or ``(filesystem, bucket/key)``."""
    if isinstance(path, ObjectPath):
        return path.fs, path.path
    return None, os.fspath(path)


_GONE = ("NO_SUCH_KEY", "RESOURCE_NOT_FOUND", "Path does not exist")  # how an object store says "not there"


def is_missing(error: BaseException) -> bool:
    """Whether an error means the file is gone (removed by TTL or compaction after it was listed)."""
    return isinstance(error, FileNotFoundError) or (isinstance(error, OSError) and any(m in str(error) for m in _GONE))


def size_and_mtime(path: LakeRoot) -> tuple[int, float]:
    """A file's size in bytes and modification time (epoch seconds); ``FileNotFoundError`` if it is gone."""
    if isinstance(path, ObjectPath):
        if path.size is not None and path.mtime is not None:
            return path.size, path.mtime
        info = path.fs.get_file_info(path.path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(str(path))
        return info.size or 0, info.mtime.timestamp() if info.mtime else 0.0
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime


def remove_file(path: LakeRoot) -> None:
    """Delete one part file; one already gone is fine."""
    try:
        if isinstance(path, ObjectPath):
            path.fs.delete_file(path.path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def remove_dir(folder: LakeRoot) -> None:
    """Delete a partition folder and everything under it (every object under the prefix on an object store).

    Locally errors are ignored as ``shutil.rmtree(ignore_errors=True)`` does; on an object store a failure other
    than "already gone" raises, so a caller never reports as deleted what is still there.

    Everything means also what a writer puts there meanwhile (on an object store ``delete_dir`` lists the prefix,
    then deletes what it found): only for partitions whose every row is to go, such as TTL's expired days. Never
    for a folder merely seen empty (compaction leaves those on an object store).
    """
    if isinstance(folder, ObjectPath):
        try:
            folder.fs.delete_dir(folder.path)
        except FileNotFoundError:
            pass
        return
    shutil.rmtree(folder, ignore_errors=True)
