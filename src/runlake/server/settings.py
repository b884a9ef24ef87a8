"""Settings of ``runlake serve``: defaults, the durability choice, and what ``create_app`` is given."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from ..auth import KeyStore

DEFAULT_PORT = 8000
DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_BODY_BYTES = 8 << 20  # 8 MiB, on the wire and after decompression
DEFAULT_TTL_INTERVAL_S = 24 * 3600.0
DEFAULT_FLUSH_INTERVAL_S = 2.0
DEFAULT_COMPACT_INTERVAL_S = 600.0
DEFAULT_COMPACT_OLDER_THAN_MIN = 10.0
DEFAULT_MIN_SESSION_ROWS = 256  # sessions with fewer rows in a flush share one file per day until compaction
DEFAULT_WS_QUEUE = 1000  # events buffered per WebSocket connection; past it the oldest are dropped
DEFAULT_MAX_PENDING_INGEST = 64  # OTLP requests in progress; past it: 429 + Retry-After
# of those, one tenant's at most: None = half of them, rounded up (so other tenants keep at least as many)
DEFAULT_MAX_PENDING_INGEST_PER_TENANT: int | None = None
DEFAULT_BODY_TIMEOUT_S = 30.0  # an OTLP body not wholly received this long after it began gets 408 (frees its slot)
RETRY_AFTER_S = 2
WS_SUBPROTOCOL = "runlake"


class Durability(str, Enum):
    log = "log"  # answer once the request is in the ingest log; Parquet written every flush interval
    sync = "sync"  # answer once the rows are in Parquet part files (group commit)
    buffered = "buffered"  # answer once the rows are buffered in memory


@dataclass
class ServerSettings:
    """Everything ``create_app`` needs; ``serve`` builds it from the command line."""

    root: Path
    keys: KeyStore = field(default_factory=KeyStore)
    no_auth: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    ttl_interval_s: float | None = DEFAULT_TTL_INTERVAL_S
    durability: Durability = Durability.log
    flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S
    ingest_log_dir: Path | None = None  # default <root>/.ingest-log
    fsync: bool = False
    ws_queue_size: int = DEFAULT_WS_QUEUE
    max_pending_ingest: int = DEFAULT_MAX_PENDING_INGEST
    max_pending_ingest_per_tenant: int | None = DEFAULT_MAX_PENDING_INGEST_PER_TENANT
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    ingest_threads: int = 4
    min_session_rows: int = DEFAULT_MIN_SESSION_ROWS
    compact_interval_s: float | None = DEFAULT_COMPACT_INTERVAL_S
    compact_older_than_minutes: float = DEFAULT_COMPACT_OLDER_THAN_MIN

    @property
    def tenant_pending_limit(self) -> int:
        """OTLP requests of one tenant in progress at once (``max_pending_ingest_per_tenant``, else half of
        ``max_pending_ingest`` rounded up)."""
        if self.max_pending_ingest_per_tenant is not None:
            return self.max_pending_ingest_per_tenant
        return (self.max_pending_ingest + 1) // 2
