"""Runtime-state mirroring (placeholder until the session store lands)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def prepare_state(state: Mapping[str, Any], session_id: str | None, runtime_id: str, turn_id: str) -> str | None:
    """The state as JSON, or None when it cannot be stored."""
    try:
        return json.dumps(dict(state), ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return None
