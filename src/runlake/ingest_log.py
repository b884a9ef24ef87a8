"""The ingest log: request bodies answered 200 are appended here first, so a crash loses none of them."""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import otlp

_logger = logging.getLogger("runlake.server")
_RECORD = struct.Struct("<4sBBHII")  # magic, media (0 protobuf, 1 JSON), flags, tenant length, body length, crc32
_USER_LEN = struct.Struct("<H")  # with flag 2: the forced user's length and bytes, before the tenant
_HAS_TENANT, _HAS_USER = 1, 2
_MAGIC = b"RLI1"
_MEDIA_CODES = {otlp.PROTOBUF: 0, otlp.JSON: 1}
_MEDIA_NAMES = {v: k for k, v in _MEDIA_CODES.items()}


class StorageUnavailable(RuntimeError):
    """The lake (or the ingest log) cannot be written right now (HTTP 503 + Retry-After)."""


class IngestLogLocked(RuntimeError):
    """Another ``runlake serve`` uses this ingest log folder."""


class _Segment:
    def __init__(self, path: Path, handle: Any = None) -> None:
        self.path = path
        self.handle = handle  # None once closed (or for segments found at start-up)
        self.pending = 0  # requests appended here whose rows are not yet in the writers' buffers
        self.records = 0


class IngestLog:
    """Append-only log of accepted OTLP request bodies (``durability=log``).

    A request is appended (one ``write``; ``fsync`` too if asked) before its rows go into the writers' memory
    buffers and before it is answered 200. Every flush interval a checkpoint starts a new segment, waits until
    the requests of the old ones are in the buffers, flushes every writer and then deletes the old segments.
    At start-up, segments left by a crash are replayed through the same decoding and exporter, so a crash loses
    nothing that was acknowledged (spans written just before the crash may be stored twice; every reader keeps
    one row per span id). A record torn by the crash was never acknowledged and is skipped.
    """

    def __init__(self, folder: Path, fsync: bool = False) -> None:
        self.folder = folder
        self.fsync = fsync
        self._cond = threading.Condition()
        self._current: _Segment | None = None
        self._closed: list[_Segment] = []
        self._lock_file: Any = None
        self._seq = 0
        self.appended = 0

    def open(self) -> list[Path]:
        """Lock the folder for this process; the segments a previous run left behind, oldest first."""
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.folder / "LOCK", "a+b")  # noqa: SIM115 - held for the life of the server
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise IngestLogLocked(
                f"ingest log {self.folder} is in use by another runlake serve "
                "(give this one its own folder with --ingest-log-dir, or --durability sync)"
            ) from None
        found = sorted(self.folder.glob("segment-*.log"))
        if found:
            self._seq = max(int(p.stem.split("-")[1]) for p in found)
        return found

    def adopt(self, paths: list[Path]) -> None:
        """Segments replayed at start-up: deleted by the next successful checkpoint."""
        with self._cond:
            self._closed.extend(_Segment(p) for p in paths)

    def append(self, tenant: str | None, media: str, body: bytes, user: str | None = None) -> _Segment:
        """Write one request (``user``: the user its spans are forced to); raises ``StorageUnavailable`` if it
        cannot be written (nothing accepted)."""
        tenant_bytes = (tenant or "").encode("utf-8")
        flags = _HAS_TENANT if tenant is not None else 0
        if user is not None:
            user_bytes = user.encode("utf-8")
            tenant_bytes = _USER_LEN.pack(len(user_bytes)) + user_bytes + tenant_bytes
            flags |= _HAS_USER
        header = _RECORD.pack(
            _MAGIC,
            _MEDIA_CODES[media],
            flags,
            len(tenant_bytes),  # tenant and user
            len(body),
            zlib.crc32(tenant_bytes + body),
        )
        with self._cond:
            segment = self._current
            try:
                if segment is None:
                    self._seq += 1
                    path = self.folder / f"segment-{self._seq:012d}.log"
                    segment = self._current = _Segment(path, open(path, "ab", buffering=0))  # noqa: SIM115
                segment.handle.write(header + tenant_bytes + body)
            except OSError as error:
                if segment is not None:  # a torn record may end this segment: continue in a new one
                    self._retire_current()
                raise StorageUnavailable(f"the ingest log cannot be written: {error}") from None
            segment.pending += 1
            segment.records += 1
            self.appended += 1
        if self.fsync:
            try:
                os.fsync(segment.handle.fileno())
            except OSError as error:
                self.done(segment)
                raise StorageUnavailable(f"the ingest log cannot be synced: {error}") from None
        return segment

    def done(self, segment: _Segment) -> None:
        """The rows of one appended request are in the writers' buffers (or its export failed)."""
        with self._cond:
            segment.pending -= 1
            self._cond.notify_all()

    def _retire_current(self) -> None:
        segment, self._current = self._current, None
        if segment is not None:
            self._closed.append(segment)

    def rotate(self, timeout_s: float = 60.0) -> list[_Segment]:
        """Close the current segment; return every closed one once its requests are all in the buffers."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._retire_current()
            segments, self._closed = self._closed, []
            while any(s.pending for s in segments) and time.monotonic() < deadline:
                self._cond.wait(max(deadline - time.monotonic(), 0.01))
            for segment in segments:
                if segment.handle is not None and not segment.pending:
                    segment.handle.close()
                    segment.handle = None
        return segments

    def retire(self, segments: list[_Segment], flushed: bool) -> None:
        """Delete segments whose rows are now in part files; keep them for the next checkpoint otherwise."""
        keep = []
        for segment in segments:
            if flushed and not segment.pending:
                with contextlib.suppress(FileNotFoundError):
                    segment.path.unlink()
            else:
                keep.append(segment)
        if keep:
            with self._cond:
                self._closed[:0] = keep

    def keep_for_replay(self, segments: list[_Segment]) -> None:
        """Leave ``segments`` on disk but out of every later checkpoint: the next start-up replays them."""
        with self._cond:
            for segment in segments:
                if segment.handle is not None:
                    segment.handle.close()
                    segment.handle = None

    def close(self) -> None:
        with self._cond:
            for segment in [self._current, *self._closed]:
                if segment is not None and segment.handle is not None:
                    segment.handle.close()
                    segment.handle = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    @staticmethod
    def read(path: Path) -> Iterator[tuple[str | None, str, bytes, str | None]]:
        """The intact records of one segment: (tenant, media type, body, forced user); stops at a torn or corrupt
        record."""
        with open(path, "rb") as f:
            data = f.read()
        offset = 0
        while offset < len(data):
            if len(data) - offset < _RECORD.size:
                _logger.warning("runlake ingest log %s: torn record at byte %d skipped", path.name, offset)
                return
            magic, media, flags, tenant_len, body_len, crc = _RECORD.unpack_from(data, offset)
            start = offset + _RECORD.size
            end = start + tenant_len + body_len
            if magic != _MAGIC or media not in _MEDIA_NAMES or end > len(data):
                _logger.warning("runlake ingest log %s: torn or corrupt record at byte %d skipped", path.name, offset)
                return
            payload = data[start:end]
            if zlib.crc32(payload) != crc:
                _logger.warning("runlake ingest log %s: record at byte %d fails its checksum", path.name, offset)
                return
            head, user = payload[:tenant_len], None
            if flags & _HAS_USER:  # the CRC held, so the lengths inside are the ones written
                (user_len,) = _USER_LEN.unpack_from(head)
                user = head[_USER_LEN.size : _USER_LEN.size + user_len].decode("utf-8")
                head = head[_USER_LEN.size + user_len :]
            tenant = head.decode("utf-8") if flags & _HAS_TENANT else None
            yield tenant, _MEDIA_NAMES[media], payload[tenant_len:], user
            offset = end
