"""The lake's folder layout: the one place that encodes partition values and lists files.

```
<root>/spans/tenant=<t>/ttl=<days>/day=<YYYY-MM-DD>/session=<s>/part-<id>.parquet
<root>/runs/tenant=<t>/ttl=<days>/day=<YYYY-MM-DD>/part-<id>.parquet
```

Writers, readers and TTL all build paths through :func:`encode_partition_value`, so a hostile id
(``../x``, ``a/b``, ``=``, ``%``, 300 characters, unicode) maps to the same safe folder everywhere.
The exact value is kept in the rows themselves; the folder name only has to be safe and unique.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

SPANS = "spans"
RUNS = "runs"
TABLES = (SPANS, RUNS)
DEFAULT_TENANT = "default"

# Bytes kept verbatim in a folder name; everything else is %XX-escaped (UTF-8 bytes).
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.")
_MAX_NAME = 150  # well under the 255-byte limit of common file systems, with room for "session="
_EMPTY = "~"  # never produced by escaping ("~" itself is escaped), so it cannot collide


def encode_partition_value(value: str | None) -> str:
    """Return a folder-safe, collision-free name for ``value``.

    ``~`` marks the empty value and the hash suffix of long values; ``~`` in a value is escaped, so
    no two distinct values share a name.
    """
    if not value:
        return _EMPTY
    raw = value.encode("utf-8", "surrogatepass")
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


def resolve_state_url(state_url: str | os.PathLike[str] | None = None) -> Path | None:
    """Where the lake lives: the argument, else ``RUNLAKE_STATE_URL``, else ``PRAISONAI_STATE_URL``.

    Accepts a folder path or a ``file://`` URL. Returns ``None`` when nothing is configured.
    """
    if state_url is None:
        state_url = os.environ.get("RUNLAKE_STATE_URL") or os.environ.get("PRAISONAI_STATE_URL") or None
    if state_url is None:
        return None
    text = os.fspath(state_url)
    if not text.strip():
        return None
    parsed = urlparse(text)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file:// state URL must name a local path, got {text!r}")
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # "C:\\x" has a one-letter "scheme"
        raise ValueError(
            f"unsupported state URL {text!r}: runlake keeps its lake in a folder; "
            "give a path or a file:// URL (for example file:///var/lib/runlake)"
        )
    return Path(text).expanduser()


def partition_dir(root: Path, table: str, tenant: str, ttl_days: int, day: str, session: str | None = None) -> Path:
    """The folder of one partition; ``session`` only for the spans table."""
    path = root / table / f"tenant={encode_partition_value(tenant)}" / f"ttl={int(ttl_days)}" / f"day={day}"
    if table == SPANS:
        path = path / f"session={encode_partition_value(session)}"
    return path


def new_part_name() -> str:
    """A unique, time-ordered part file name: safe for many processes writing one partition."""
    return f"part-{time.time_ns():016x}-{os.getpid():x}-{secrets.token_hex(6)}.parquet"


def temp_name_for(final_name: str) -> str:
    """Hidden name not ending in ``.parquet``: invisible to readers until renamed."""
    return f".{final_name}.tmp"


def is_data_file(name: str) -> bool:
    """Whether a file name is a finished part file (not hidden, not temporary)."""
    return name.endswith(".parquet") and not name.startswith((".", "_"))


def _subdirs(path: Path, prefix: str) -> Iterator[tuple[str, Path]]:
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.name.startswith(prefix) and entry.is_dir(follow_symlinks=False):
                    yield entry.name[len(prefix) :], Path(entry.path)
    except (FileNotFoundError, NotADirectoryError):
        return


def data_files(folder: Path) -> list[Path]:
    """Finished part files directly inside one partition folder, oldest first."""
    try:
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries if is_data_file(e.name) and e.is_file())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [folder / n for n in names]


def tenants(root: Path, table: str) -> list[str]:
    """Encoded tenant folder names present for a table."""
    return sorted(name for name, _ in _subdirs(root / table, "tenant="))


def day_dirs(
    root: Path,
    table: str,
    tenant: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> Iterator[tuple[str, int, str, Path]]:
    """Yield ``(encoded tenant, ttl_days, day, folder)`` for every day folder, optionally filtered.

    ``tenant`` is a raw tenant id (encoded here); ``since``/``until`` are inclusive ``YYYY-MM-DD``.
    """
    base = root / table
    if tenant is not None:
        tenant_dirs: Iterable[tuple[str, Path]] = [
            (enc, base / f"tenant={enc}") for enc in [encode_partition_value(tenant)]
        ]
    else:
        tenant_dirs = _subdirs(base, "tenant=")
    for enc_tenant, tenant_dir in tenant_dirs:
        for ttl_text, ttl_dir in _subdirs(tenant_dir, "ttl="):
            try:
                ttl = int(ttl_text)
            except ValueError:
                continue
            for day, day_dir in _subdirs(ttl_dir, "day="):
                if (since and day < since) or (until and day > until):
                    continue
                yield enc_tenant, ttl, day, day_dir


def session_files(root: Path, session_id: str, tenant: str | None = None) -> list[Path]:
    """All span part files of one session, found by building its paths (no lake-wide glob)."""
    folder_name = f"session={encode_partition_value(session_id)}"
    files: list[Path] = []
    for _, _, _, day_dir in day_dirs(root, SPANS, tenant):
        files.extend(data_files(day_dir / folder_name))
    return files


def table_files(
    root: Path, table: str, tenant: str | None = None, since: str | None = None, until: str | None = None
) -> list[Path]:
    """Every part file of a table (optionally one tenant, a day range): for cross-session reads."""
    files: list[Path] = []
    for _, _, _, day_dir in day_dirs(root, table, tenant, since, until):
        if table == SPANS:
            for _, session_dir in _subdirs(day_dir, "session="):
                files.extend(data_files(session_dir))
        else:
            files.extend(data_files(day_dir))
    return files


def session_dirs(day_dir: Path) -> list[Path]:
    """The ``session=`` folders of one spans day folder."""
    return [p for _, p in _subdirs(day_dir, "session=")]


def day_files(day_folder: Path, table: str) -> list[Path]:
    """Part files under one day folder (all of its sessions for the spans table)."""
    if table == SPANS:
        return [f for s in session_dirs(day_folder) for f in data_files(s)]
    return data_files(day_folder)
