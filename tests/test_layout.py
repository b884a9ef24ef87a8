"""Partition-path encoding: safe for hostile ids, collision-free, and one function for all uses."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import HOSTILE_IDS
from opentelemetry.exporter.runlake.layout import (
    decode_partition_value,
    encode_partition_value,
    partition_dir,
    resolve_state_url,
)


@pytest.mark.parametrize("value", HOSTILE_IDS)
def test_encoded_value_is_one_safe_folder_name(value: str) -> None:
    name = encode_partition_value(value)
    assert "/" not in name and "\\" not in name and "=" not in name and "\x00" not in name
    assert name not in (".", "..") and not name.startswith(".")
    assert len(f"session={name}".encode()) <= 255
    assert name.isascii() and name.isprintable()


@pytest.mark.parametrize("value", HOSTILE_IDS)
def test_encoding_round_trips_or_is_hashed(value: str) -> None:
    decoded = decode_partition_value(encode_partition_value(value))
    if len(value) > 100:
        assert decoded is None  # long values are hashed; rows keep the exact value
    else:
        assert decoded == value


def test_distinct_values_never_share_a_folder() -> None:
    values = HOSTILE_IDS + ["%25", "%2F", "a%2Fb", "~x", "x" * 301, "x" * 299 + "y", "A", "a", "-", "_", "."]
    names = [encode_partition_value(v) for v in values]
    assert len(set(names)) == len(set(values))


def test_partition_dir_stays_inside_the_lake(tmp_path: Path) -> None:
    for value in HOSTILE_IDS:
        folder = partition_dir(tmp_path, "spans", value, 30, "2026-01-02", value)
        assert folder.resolve().is_relative_to(tmp_path.resolve())
        assert len(folder.relative_to(tmp_path).parts) == 5


def test_state_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNLAKE_STATE_URL", raising=False)
    monkeypatch.delenv("PRAISONAI_STATE_URL", raising=False)
    assert resolve_state_url(None) is None
    assert resolve_state_url(str(tmp_path)) == tmp_path
    assert resolve_state_url(f"file://{tmp_path}") == tmp_path
    monkeypatch.setenv("PRAISONAI_STATE_URL", str(tmp_path / "p"))
    assert resolve_state_url(None) == tmp_path / "p"
    monkeypatch.setenv("RUNLAKE_STATE_URL", str(tmp_path / "r"))
    assert resolve_state_url(None) == tmp_path / "r"
    with pytest.raises(ValueError, match="give a path or a file:// URL"):
        resolve_state_url("sqlite:///agent_state.db")
