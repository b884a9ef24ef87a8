"""The moment a caller asks about (``now=`` of TTL and statistics), in UTC and in exact nanoseconds.

Every day in the lake is a UTC day, so a naive datetime is taken as UTC (what ``datetime.utcnow()`` gives, as
CodexOS-style callers pass it), not as the process's local time, which would move the day with ``TZ``.
"""

from __future__ import annotations

import datetime as dt

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MICROSECOND = dt.timedelta(microseconds=1)


def utc_moment(now: dt.datetime | None) -> dt.datetime:
    """``now`` in UTC (naive: already UTC); the current time for None. Anything else is a ``TypeError``."""
    if now is None:
        return dt.datetime.now(dt.timezone.utc)
    if not isinstance(now, dt.datetime):
        raise TypeError(f"now must be a datetime (naive ones are taken as UTC) or None, got {now!r}")
    if now.tzinfo is None or now.tzinfo.utcoffset(now) is None:
        return now.replace(tzinfo=dt.timezone.utc)
    return now.astimezone(dt.timezone.utc)


def unix_nano(moment: dt.datetime) -> int:
    """Nanoseconds since the epoch of an aware datetime, exactly (``timestamp() * 1e9`` is off by up to ~128 ns)."""
    return (moment - _EPOCH) // _MICROSECOND * 1000
