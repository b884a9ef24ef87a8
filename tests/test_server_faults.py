"""``runlake serve`` under faults: slow and stalled clients, clients that disconnect, unexpected errors, a lake that
cannot be compacted. The real server in a subprocess, real clients (raw sockets where the bytes on the wire
matter, httpx otherwise); every wait is bounded.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from server_fixtures import Server, new_key, write_keys

pytestmark = pytest.mark.timeout(120)

WAIT_S = 20.0  # bound of every wait below; a passing test takes a fraction of it


def _keys(tmp_path: Path, *tenants: str) -> tuple[dict[str, str], Path]:
    keys = {tenant: new_key() for tenant in tenants}
    entries = [
        {"key": key, "tenant_id": tenant, "role": "admin", "name": f"{tenant}-ops"} for tenant, key in keys.items()
    ]
    return keys, write_keys(tmp_path / "keys.json", entries)


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length; AssertionError if the server closes the connection first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection (got {data[:200]!r})"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection in the middle of a response"
        body += chunk
    return int(status_line.split()[1]), headers, body


# ---- unexpected errors --------------------------------------------------------------------------------------------
class FaultyServer(Server):
    """``runlake serve`` whose history reads raise an unexpected error (a stand-in for any bug behind a route)."""

    def command(self) -> list[str]:
        code = (
            "import sys, typer\n"
            "from runlake.history import HistoryDB\n"
            "def broken(self, *args, **kwargs):\n"
            "    raise RuntimeError('injected fault')\n"
            "HistoryDB.get_history = broken\n"
            "from runlake.server.command import serve_command\n"
            "typer.run(serve_command)\n"
        )
        return [sys.executable, "-c", code, "--port", str(self.port), "--state-url", str(self.lake)]


def test_an_unexpected_error_is_a_json_500_logged_once_and_the_connection_lives_on(tmp_path: Path) -> None:
    """Before, Starlette answered the 500 and re-raised: uvicorn logged the traceback again and closed the client's
    keep-alive connection, so its next request failed with a reset."""
    keys, keys_file = _keys(tmp_path, "t1")
    with FaultyServer(tmp_path / "lake", ["--keys-file", str(keys_file), "--no-ttl", "--no-compact"]) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as sock:
            sock.sendall(f"GET /api/v1/agents/history HTTP/1.1\r\nHost: x\r\nX-API-Key: {keys['t1']}\r\n\r\n".encode())
            status, headers, body = _read_response(sock)
            assert (status, body) == (500, b'{"detail":"internal server error"}')
            assert headers["content-type"] == "application/json" and headers.get("connection") != "close"
            for _ in range(2):  # the same connection serves the next requests
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert _read_response(sock)[0] == 200
        log = server.log()
        assert log.count("Traceback") == 1 and log.count("RuntimeError: injected fault") == 1, log
        assert "ERROR: runlake: unexpected error on GET /api/v1/agents/history" in log
        assert "Exception in ASGI application" not in log
