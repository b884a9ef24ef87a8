"""API keys for ``runlake serve``: who is calling, and what they may see.

A key maps to a tenant, a user and a role:

- ``user``: reads only its own runs (its tenant and its ``user_id``);
- ``admin``: reads every run of its tenant.

Spans ingested with a key are stored under the key's tenant, whatever tenant they claim.

Keys come from a keys file (JSON or TOML) and/or the ``RUNLAKE_API_KEYS`` environment variable.

Keys file, JSON::

    {"keys": [
      {"key": "rk_live_8cX0...", "tenant_id": "acme", "user_id": "alice", "role": "user"},
      {"key_sha256": "<sha256 hex of the key>", "tenant_id": "acme", "role": "admin", "name": "ops"}
    ]}

Keys file, TOML (Python 3.11+, or the ``tomli`` package)::

    [[keys]]
    key = "rk_live_8cX0..."
    tenant_id = "acme"
    user_id = "alice"
    role = "user"

Each entry has ``key`` (the secret itself) or ``key_sha256`` (hex SHA-256 of it, so the file need not hold
the secret), ``tenant_id``, ``role`` (``user`` by default; ``user`` needs ``user_id``), optionally
``user_id`` for admins and ``name`` (shown in logs instead of the key). A top-level JSON list of entries
is accepted too.

``RUNLAKE_API_KEYS``: the same JSON, or comma-separated ``key:tenant_id:user_id[:role]`` entries, e.g.
``RUNLAKE_API_KEYS="k1-....:acme:alice,k2-....:acme::admin"``.

Only SHA-256 digests of keys are kept in memory; a presented key is hashed and compared with every known
digest in constant time. Keys must be at least 16 characters (``secrets.token_urlsafe(32)`` makes good ones).
Clients send ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (WebSocket clients that cannot set
headers, such as browsers, may offer the subprotocol ``runlake.bearer.<key>``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ENV_VAR",
    "MIN_KEY_LENGTH",
    "ROLES",
    "WS_SUBPROTOCOL_PREFIX",
    "KeyStore",
    "KeysError",
    "Principal",
    "key_from_headers",
    "key_from_subprotocols",
    "load_keys",
    "unsupported_scheme",
]

ENV_VAR = "RUNLAKE_API_KEYS"
ROLES = ("user", "admin")
MIN_KEY_LENGTH = 16
WS_SUBPROTOCOL_PREFIX = "runlake.bearer."
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_ENTRY_FIELDS = {"key", "key_sha256", "tenant_id", "user_id", "role", "name"}


class KeysError(ValueError):
    """A keys file or ``RUNLAKE_API_KEYS`` value that cannot be used."""


@dataclass(frozen=True)
class Principal:
    """The caller: the tenant and user its key was issued for, and its role."""

    tenant_id: str | None
    user_id: str | None
    role: str
    name: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def read_user(self) -> str | None:
        """The user every read is restricted to: the key's user, or None (whole tenant) for admins."""
        return None if self.is_admin else self.user_id


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class KeyStore:
    """Known keys (as SHA-256 digests) → principals."""

    def __init__(self, entries: Iterable[tuple[bytes, Principal]] = ()) -> None:
        self._entries: list[tuple[bytes, Principal]] = []
        for digest, principal in entries:
            self.add(digest, principal)

    def add(self, digest: bytes, principal: Principal) -> None:
        if any(hmac.compare_digest(digest, known) for known, _ in self._entries):
            raise KeysError(f"key {principal.name!r} is listed twice")
        self._entries.append((digest, principal))

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, key: str | None) -> Principal | None:
        """The principal of ``key``, or None. Compares with every known digest, in constant time."""
        if not key:
            return None
        presented = _digest(key)
        found = None
        for digest, principal in self._entries:  # no early exit: time does not depend on which key matched
            if hmac.compare_digest(presented, digest):
                found = principal
        return found


# ---- loading ------------------------------------------------------------------------------------------------
def _entry(raw: Any, where: str) -> tuple[bytes, Principal]:
    if not isinstance(raw, Mapping):
        raise KeysError(f"{where}: each key entry must be an object/table, got {type(raw).__name__}")
    unknown = set(raw) - _ENTRY_FIELDS
    if unknown:
        raise KeysError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; allowed: {sorted(_ENTRY_FIELDS)}")
    key, key_hash = raw.get("key"), raw.get("key_sha256")
    if (key is None) == (key_hash is None):
        raise KeysError(f"{where}: give exactly one of 'key' or 'key_sha256'")
    if key is not None:
        if not isinstance(key, str) or len(key) < MIN_KEY_LENGTH:
            raise KeysError(f"{where}: 'key' must be a string of at least {MIN_KEY_LENGTH} characters")
        if key != key.strip() or any(c.isspace() for c in key):
            raise KeysError(f"{where}: 'key' must not contain whitespace")
        digest = _digest(key)
    else:
        if not isinstance(key_hash, str) or not _SHA256_HEX.fullmatch(key_hash.lower()):
            raise KeysError(f"{where}: 'key_sha256' must be 64 hex characters")
        digest = bytes.fromhex(key_hash)
    tenant = raw.get("tenant_id")
    if not isinstance(tenant, str) or not tenant:
        raise KeysError(f"{where}: 'tenant_id' must be a non-empty string")
    role = raw.get("role", "user")
    if role not in ROLES:
        raise KeysError(f"{where}: 'role' must be one of {', '.join(ROLES)}, got {role!r}")
    user = raw.get("user_id") or None
    if user is not None and not isinstance(user, str):
        raise KeysError(f"{where}: 'user_id' must be a string")
    if role == "user" and not user:
        raise KeysError(f"{where}: a 'user' key needs a 'user_id'")
    name = raw.get("name") or f"{tenant}/{user or role}#{digest.hex()[:8]}"
    return digest, Principal(tenant_id=tenant, user_id=user, role=role, name=str(name))


def _entries_of(document: Any, where: str) -> list[tuple[bytes, Principal]]:
    if isinstance(document, Mapping):
        extra = set(document) - {"keys"}
        if extra:
            raise KeysError(f"{where}: unknown top-level field(s) {', '.join(sorted(extra))}; expected 'keys'")
        document = document.get("keys", [])
    if not isinstance(document, list):
        raise KeysError(f"{where}: expected a list of key entries under 'keys'")
    return [_entry(raw, f"{where}, entry {i + 1}") for i, raw in enumerate(document)]


def _parse_toml(text: str, where: str) -> Any:
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise KeysError(f"{where}: TOML keys files need Python 3.11+ or the 'tomli' package; use JSON") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise KeysError(f"{where}: not valid TOML: {error}") from None


def parse_keys_file(path: str | os.PathLike[str]) -> list[tuple[bytes, Principal]]:
    """Entries of a keys file: ``.json`` is JSON, ``.toml`` is TOML, any other name JSON if it parses, else TOML."""
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise KeysError(f"cannot read keys file {where}: {error.strerror or error}") from None
    suffix = path.suffix.lower()
    if suffix == ".toml":
        document = _parse_toml(text, where)
    else:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            if suffix == ".json" or text.lstrip().startswith("{"):
                raise KeysError(f"{where}: not valid JSON: {error}") from None
            document = _parse_toml(text, where)  # no telling suffix: JSON, else TOML
    return _entries_of(document, where)


def parse_keys_env(value: str) -> list[tuple[bytes, Principal]]:
    """Entries of a ``RUNLAKE_API_KEYS`` value (JSON, or ``key:tenant:user[:role]`` comma-separated)."""
    text = value.strip()
    if not text:
        return []
    if text.startswith(("{", "[")):
        try:
            return _entries_of(json.loads(text), ENV_VAR)
        except json.JSONDecodeError as error:
            raise KeysError(f"{ENV_VAR}: not valid JSON: {error}") from None
    entries = []
    for i, item in enumerate(p.strip() for p in text.split(",")):
        if not item:
            continue
        parts = item.split(":")
        if len(parts) not in (3, 4):
            raise KeysError(f"{ENV_VAR}, entry {i + 1}: expected key:tenant_id:user_id[:role]")
        raw = {"key": parts[0], "tenant_id": parts[1], "user_id": parts[2] or None}
        if len(parts) == 4:
            raw["role"] = parts[3]
        entries.append(_entry(raw, f"{ENV_VAR}, entry {i + 1}"))
    return entries


def load_keys(
    keys_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    extra: Iterable[Mapping[str, Any]] = (),
) -> KeyStore:
    """All keys from ``keys_file``, ``RUNLAKE_API_KEYS`` and ``extra`` entries (dicts as in the file)."""
    env = os.environ if env is None else env
    store = KeyStore()
    if keys_file:
        for digest, principal in parse_keys_file(keys_file):
            store.add(digest, principal)
    for digest, principal in parse_keys_env(env.get(ENV_VAR, "")):
        store.add(digest, principal)
    for i, raw in enumerate(extra):
        store.add(*_entry(raw, f"key entry {i + 1}"))
    return store


# ---- extracting the key from a request ------------------------------------------------------------------------
def key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The key of ``Authorization: Bearer <key>``, else of ``X-API-Key: <key>`` (header names case-insensitive).

    Another Authorization scheme (``Basic`` added by a proxy, say) does not hide an ``X-API-Key`` beside it.
    """
    scheme, credentials = _authorization(headers)
    if scheme.lower() == "bearer" and credentials:
        return credentials
    key = headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


def unsupported_scheme(headers: Mapping[str, str]) -> str | None:
    """The scheme of an ``Authorization`` header other than Bearer when no key was found: named in the 401."""
    scheme, _ = _authorization(headers)
    if not scheme or scheme.lower() == "bearer" or key_from_headers(headers) is not None:
        return None
    return scheme[:40]


def _authorization(headers: Mapping[str, str]) -> tuple[str, str]:
    scheme, _, credentials = (headers.get("authorization") or "").strip().partition(" ")
    return scheme, credentials.strip()


def key_from_subprotocols(subprotocols: Iterable[str]) -> str | None:
    """The key of a ``runlake.bearer.<key>`` WebSocket subprotocol, if one was offered."""
    for protocol in subprotocols:
        if protocol.startswith(WS_SUBPROTOCOL_PREFIX) and len(protocol) > len(WS_SUBPROTOCOL_PREFIX):
            return protocol[len(WS_SUBPROTOCOL_PREFIX) :]
    return None
