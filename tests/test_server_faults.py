"""``runlake serve`` under faults: slow and stalled clients, clients that disconnect, unexpected errors, a lake that
cannot be compacted. The real server in a subprocess, real clients (raw sockets where the bytes on the wire
matter, httpx otherwise); every wait is bounded.
"""

from __future__ import annotations

import re
import select
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from server_fixtures import Server, SpanFactory, auth, new_key, write_keys

from runlake.otlp import PROTOBUF

pytestmark = pytest.mark.timeout(120)

WAIT_S = 20.0  # bound of every wait below; a passing test takes a fraction of it


def _keys(tmp_path: Path, *tenants: str) -> tuple[dict[str, str], Path]:
    keys = {tenant: new_key() for tenant in tenants}
    entries = [
        {"key": key, "tenant_id": tenant, "role": "admin", "name": f"{tenant}-ops"} for tenant, key in keys.items()
    ]
    return keys, write_keys(tmp_path / "keys.json", entries)


def _otlp_body() -> bytes:
    spans = SpanFactory().run("agent", "s-faults", "u", [{"id": "n"}])[1]
    return encode_spans(spans).SerializeToString()


def _post_head(key: str, length: int) -> bytes:
    return (
        f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: {PROTOBUF}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


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


def _wait_for(what: str, found: Callable[[], object]) -> object:
    """Poll ``found`` until it returns something true (bounded by WAIT_S)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        result = found()
        if result:
            return result
        time.sleep(0.05)  # polling interval of a bounded wait
    raise AssertionError(f"timed out waiting for {what}")


# ---- slow and stalled bodies --------------------------------------------------------------------------------------
def test_a_body_dripping_a_byte_at_a_time_gets_408_at_the_body_deadline(tmp_path: Path) -> None:
    """--body-timeout-s is a deadline for the whole body: a client sending a byte well within the timeout, again and
    again, is still refused once it has passed (before, the timeout applied to each chunk: it held a slot for ever)."""
    keys, keys_file = _keys(tmp_path, "t1")
    args = ["--keys-file", str(keys_file), "--no-ttl", "--no-compact", "--durability", "sync"]
    with Server(tmp_path / "lake", [*args, "--max-pending-ingest", "1", "--body-timeout-s", "1"]) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as drip:
            started = time.monotonic()
            drip.sendall(_post_head(keys["t1"], 1_000_000))
            answered = False
            while time.monotonic() - started < 8:  # 8 deadlines: long enough to tell "refused" from "never"
                drip.sendall(b"\x0a")  # one byte every 0.2 s: never 1 s without data
                if select.select([drip], [], [], 0.2)[0]:
                    answered = True
                    break
            elapsed = time.monotonic() - started
            assert answered, f"no answer after {elapsed:.1f} s of a dripping body"
            status, _, body = _read_response(drip)  # the whole response (it may come in more than one packet)
            assert status == 408 and b"the body did not arrive within 1 s" in body, (status, body)
            assert elapsed < 5, elapsed  # the deadline (1 s), not 8 s of dripping
        with httpx.Client(base_url=server.base, headers=auth(keys["t1"]), timeout=WAIT_S) as client:
            response = client.post("/v1/traces", content=_otlp_body(), headers={"Content-Type": PROTOBUF})
            assert response.status_code == 200, response.text  # the one slot is free again


def test_one_tenant_cannot_take_every_ingest_slot(tmp_path: Path) -> None:
    """A tenant holds at most half the ingest slots (--max-pending-ingest-per-tenant's default): its stalled
    requests past that get 429 at once, and another tenant's requests still find slots."""
    keys, keys_file = _keys(tmp_path, "evil", "good")
    args = ["--keys-file", str(keys_file), "--no-ttl", "--no-compact", "--durability", "sync"]
    with Server(tmp_path / "lake", [*args, "--max-pending-ingest", "4", "--body-timeout-s", "60"]) as server:
        stalls = [socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) for _ in range(4)]
        try:
            for stall in stalls:  # as many stalled uploads as the server has slots: 1 of 1000 bytes, then nothing
                stall.sendall(_post_head(keys["evil"], 1000) + b"\x0a")
            answered: dict[socket.socket, tuple[int, dict[str, str], bytes]] = {}
            deadline = time.monotonic() + WAIT_S
            while len(answered) < 2 and time.monotonic() < deadline:
                ready = select.select([s for s in stalls if s not in answered], [], [], 0.5)[0]
                for stall in ready:
                    answered[stall] = _read_response(stall)
            assert len(answered) == 2, f"{len(answered)} of the tenant's 4 stalled requests were refused, not 2"
            for status, headers, body in answered.values():
                assert (status, headers["retry-after"]) == (429, "2"), body
                message = status_pb2.Status.FromString(body).message
                assert message == "too many requests of this tenant in progress (2, its share of 4 slots)"

            with httpx.Client(base_url=server.base, timeout=WAIT_S) as client:
                for _ in range(3):  # the other tenant is served while the first one's stalls hold their slots
                    response = client.post(
                        "/v1/traces", content=_otlp_body(), headers={**auth(keys["good"]), "Content-Type": PROTOBUF}
                    )
                    assert response.status_code == 200, response.text
                status = client.get("/api/v1/status", headers=auth(keys["evil"])).json()
                assert status["ingest_in_progress"] == {"requests": 2, "limit": 2}
                status = client.get("/api/v1/status", headers=auth(keys["good"])).json()
                assert status["ingest_in_progress"] == {"requests": 0, "limit": 2}
        finally:
            for stall in stalls:
                stall.close()


def test_a_client_disconnecting_mid_body_is_one_info_line_and_frees_its_slot(tmp_path: Path) -> None:
    """A collector that times out or an SDK that is killed while sending is not an internal error: one INFO line,
    no traceback, no 500 attempted, and its slot is free again."""
    keys, keys_file = _keys(tmp_path, "t1")
    args = ["--keys-file", str(keys_file), "--no-ttl", "--no-compact", "--durability", "sync"]
    with Server(tmp_path / "lake", [*args, "--max-pending-ingest", "1"]) as server:
        for sent in (1, 2):  # one after the other: the one slot is free again once the first is logged
            with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as gone:
                gone.sendall(_post_head(keys["t1"], 100_000) + b"\x0a" * 100)  # 100 of 100,000 bytes, then gone
            _wait_for(
                "the server to log the disconnect",
                lambda sent=sent: (
                    server.log().count("the client disconnected") + server.log().count("ingest failed") == sent
                ),
            )
        log = server.log()
        lines = re.findall(r"INFO: runlake ingest \(t1-ops\): the client disconnected after (\d+) byte\(s\)", log)
        assert len(lines) == 2 and all(int(size) in (0, 100) for size in lines), log  # 0: gone before it was read
        assert "Traceback" not in log and "ingest failed" not in log and "ERROR" not in log
        with httpx.Client(base_url=server.base, headers=auth(keys["t1"]), timeout=WAIT_S) as client:
            response = client.post("/v1/traces", content=_otlp_body(), headers={"Content-Type": PROTOBUF})
            assert response.status_code == 200, response.text


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


# ---- background compaction ----------------------------------------------------------------------------------------
def test_a_lake_that_cannot_be_compacted_is_logged_once_per_change_of_state(tmp_path: Path) -> None:
    """A lake whose compaction lock cannot be opened (as a read-only lake) is an expected state: one WARNING line
    when it begins, nothing at the next intervals, one INFO line when compaction works again. Before, every interval
    logged an ERROR with the CompactError's whole traceback."""
    keys, keys_file = _keys(tmp_path, "t1")
    lake = tmp_path / "lake"
    lake.mkdir()
    lock = lake / ".compact.lock"
    lock.symlink_to(tmp_path / "missing" / "compact.lock")  # neither made nor opened: ENOENT, as root too
    args = ["--keys-file", str(keys_file), "--no-ttl", "--durability", "sync"]
    with Server(lake, [*args, "--compact-interval-minutes", "0.01", "--compact-older-than", "0"]) as server:
        with httpx.Client(base_url=server.base, headers=auth(keys["t1"]), timeout=WAIT_S) as client:

            def compaction() -> dict:
                return client.get("/api/v1/status").json()["compaction"]

            _wait_for("three refused compactions", lambda: compaction()["runs"] >= 3)
            last = compaction()["last"]
            assert last["ok"] is False and "cannot open its lock file" in last["error"], last
            log = server.log()
            assert "Traceback" not in log and "compaction failed" not in log, log
            [line] = [line for line in log.splitlines() if "compaction" in line]
            assert line.startswith(f"WARNING: runlake compaction: cannot compact the lake at {lake}: cannot open its")
            assert line.endswith("tried again every 0.6 s, logged again when this changes")

            lock.unlink()  # the lake can be compacted again
            _wait_for("a compaction that works", lambda: compaction()["last"]["ok"])
            runs = compaction()["runs"]
            _wait_for("two more compactions", lambda: compaction()["runs"] >= runs + 2)
        log = server.log()
        assert log.count("INFO: runlake compaction works again (it failed before: cannot compact the lake at") == 1
        assert log.count("runlake compaction: cannot compact") == 1 and "Traceback" not in log
