"""Who may see what: API keys, tenants and users, tried through every endpoint and parameter.

Tenant ``acme`` (users alice and bob, an admin) has its keys in a keys file; tenant ``globex`` (user carol, an
admin) in ``RUNLAKE_API_KEYS``. Every run is ingested through ``/v1/traces`` with its owner's key; some spans
claim another tenant, which must not matter.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
import websockets
from opentelemetry.exporter.runlake.layout import encode_partition_value
from opentelemetry.sdk.trace.export import SpanExportResult
from server_fixtures import Server, SpanFactory, auth, new_key, send, write_keys

from runlake import HistoryDB
from runlake.auth import KeysError, key_from_headers, load_keys, parse_keys_env

pytestmark = pytest.mark.timeout(120)

NODES = [{"id": "plan", "type": "llm", "ms": 100}, {"id": "act", "type": "tool", "ms": 50}]
READ_ENDPOINTS = [
    ("/api/v1/agents/history", {}),
    ("/api/v1/agents/logs", {"run_id": "x"}),
    ("/api/v1/runs", {"session_id": "x"}),
    ("/api/v1/traces", {}),
    ("/api/v1/agents/stats", {}),
    ("/api/v1/agents/some-agent/performance", {}),
    ("/api/v1/status", {}),
]


class World:
    def __init__(self, server: Server, keys: dict[str, str], runs: dict[str, str]) -> None:
        self.server, self.keys, self.runs = server, keys, runs

    def client(self, who: str) -> httpx.Client:
        return httpx.Client(base_url=self.server.base, headers=auth(self.keys[who]), timeout=30)

    def get(self, who: str, path: str, **params: object) -> httpx.Response:
        with self.client(who) as client:
            return client.get(path, params=params)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("auth")
    keys = {name: new_key() for name in ("alice", "bob", "acme_admin", "carol", "globex_admin")}
    keys_file = write_keys(
        base / "keys.json",
        [
            {"key": keys["alice"], "tenant_id": "acme", "user_id": "alice", "role": "user"},
            # the file may hold only the key's SHA-256
            {"key_sha256": hashlib.sha256(keys["bob"].encode()).hexdigest(), "tenant_id": "acme", "user_id": "bob"},
            {"key": keys["acme_admin"], "tenant_id": "acme", "role": "admin", "name": "acme ops"},
        ],
    )
    env_keys = f"{keys['carol']}:globex:carol:user,{keys['globex_admin']}:globex::admin"
    server = Server(
        base / "lake",
        ["--keys-file", str(keys_file), "--no-ttl", "--durability", "sync"],
        env={"RUNLAKE_API_KEYS": env_keys},
    )
    with server:
        factory = SpanFactory()
        runs: dict[str, str] = {}
        for who, tenant_claim in (("alice", "globex"), ("bob", None), ("carol", "acme")):
            run_id, spans = factory.run(f"agent-{who}", f"session-{who}", who, NODES, tenant_claim=tenant_claim)
            assert send(server, keys[who], spans) is SpanExportResult.SUCCESS
            runs[who] = run_id
        yield World(server, keys, runs)
        assert "Traceback" not in server.log()


def history_ids(world: World, who: str, **params: object) -> set[str]:
    response = world.get(who, "/api/v1/agents/history", **params)
    assert response.status_code == 200, response.text
    return {item["run_id"] for item in response.json()}


# ---- authentication --------------------------------------------------------------------------------------------
def test_no_key_or_bad_key_is_401_everywhere(world: World) -> None:
    for headers in ({}, auth("rk_not_a_key_at_all_0000"), {"Authorization": "Basic dXNlcjpwYXNz"}):
        with httpx.Client(base_url=world.server.base, headers=headers) as client:
            for path, params in READ_ENDPOINTS:
                response = client.get(path, params=params)
                assert response.status_code == 401, (path, headers)
                assert response.headers["www-authenticate"] == "Bearer"
                assert "API key" in response.json()["detail"]
            ingest = client.post("/v1/traces", content=b"{}", headers={"Content-Type": "application/json"})
            assert ingest.status_code == 401 and "API key" in ingest.json()["message"]


def test_x_api_key_header_and_hashed_keys(world: World) -> None:
    with httpx.Client(base_url=world.server.base, headers={"X-API-Key": world.keys["bob"]}) as client:
        assert {h["run_id"] for h in client.get("/api/v1/agents/history").json()} == {world.runs["bob"]}
    assert key_from_headers({"authorization": "bearer  abc "}) == "abc"
    assert key_from_headers({"authorization": "Basic abc", "x-api-key": "k"}) == "k"  # X-API-Key is the fallback
    assert key_from_headers({"authorization": "Bearer", "x-api-key": "k"}) == "k"
    assert key_from_headers({"authorization": "Bearer b", "x-api-key": "k"}) == "b"


def test_x_api_key_beside_another_authorization_scheme(world: World) -> None:
    """A proxy's ``Authorization: Basic`` must not hide the X-API-Key; a key under the wrong scheme is named."""
    bob = world.keys["bob"]
    for authorization in ("Basic dXNlcjpwYXNz", "Bearer", "Token abc"):
        headers = {"Authorization": authorization, "X-API-Key": bob}
        with httpx.Client(base_url=world.server.base, headers=headers) as client:
            response = client.get("/api/v1/agents/history")
            assert response.status_code == 200, (authorization, response.text)
            assert {h["run_id"] for h in response.json()} == {world.runs["bob"]}
            ingest = client.post("/v1/traces", content=b"{}", headers={"Content-Type": "application/json"})
            assert ingest.status_code == 200, (authorization, ingest.text)
    for scheme in ("Basic", "Token"):
        headers = {"Authorization": f"{scheme} {bob}"}
        with httpx.Client(base_url=world.server.base, headers=headers) as client:
            response = client.get("/api/v1/agents/history")
            assert response.status_code == 401
            assert f"Authorization scheme '{scheme}' is not supported" in response.json()["detail"]
            ingest = client.post("/v1/traces", content=b"{}", headers={"Content-Type": "application/json"})
            assert ingest.status_code == 401
            assert f"Authorization scheme '{scheme}' is not supported" in ingest.json()["message"]


# ---- user keys see their own runs; admins their tenant ------------------------------------------------------
def test_history_is_scoped(world: World) -> None:
    runs = world.runs
    assert history_ids(world, "alice") == {runs["alice"]}
    assert history_ids(world, "bob") == {runs["bob"]}
    assert history_ids(world, "carol") == {runs["carol"]}
    # the alice spans claimed tenant globex and the carol spans tenant acme: stored under the key's tenant
    assert history_ids(world, "acme_admin") == {runs["alice"], runs["bob"]}
    assert history_ids(world, "globex_admin") == {runs["carol"]}
    for who, agent in (("alice", "agent-bob"), ("alice", "agent-carol"), ("acme_admin", "agent-carol")):
        assert history_ids(world, who, agent_id=agent) == set()
    assert history_ids(world, "globex_admin", agent_id="agent-carol") == {runs["carol"]}


def test_lake_folders_follow_the_key_tenant(world: World) -> None:
    spans = world.server.lake / "spans"
    acme, globex = (
        spans / f"tenant={encode_partition_value('acme')}",
        spans / f"tenant={encode_partition_value('globex')}",
    )

    def sessions_under(folder: Path) -> set[str]:  # small sessions share a per-day file: look at the rows
        return {
            s
            for f in folder.rglob("*.parquet")
            for s in pq.read_table(f, columns=["session_id"])["session_id"].to_pylist()
        }

    assert {"session-alice", "session-bob"} <= sessions_under(acme) and "session-carol" not in sessions_under(acme)
    assert "session-carol" in sessions_under(globex)
    assert not {"session-alice", "session-bob"} & sessions_under(globex)


def test_logs_of_someone_elses_run_is_404_like_a_missing_run(world: World) -> None:
    runs = world.runs
    missing = world.get("alice", "/api/v1/agents/logs", run_id="0000000000000000")
    assert missing.status_code == 404
    for who, run in (("alice", "bob"), ("alice", "carol"), ("bob", "alice"), ("acme_admin", "carol")):
        response = world.get(who, "/api/v1/agents/logs", run_id=runs[run])
        assert response.status_code == 404, (who, run)
        assert response.json() == {"detail": f"run {runs[run]!r} not found"}  # the same words as for a missing run
        assert response.headers.keys() == missing.headers.keys()
    for who, run in (("alice", "alice"), ("acme_admin", "bob"), ("acme_admin", "alice"), ("globex_admin", "carol")):
        response = world.get(who, "/api/v1/agents/logs", run_id=runs[run])
        assert response.status_code == 200 and response.json()["summary"]["total_nodes"] == 2, (who, run)


def test_runs_and_traces_are_scoped_through_every_parameter(world: World) -> None:
    runs = world.runs
    assert [r["run_id"] for r in world.get("alice", "/api/v1/runs", session_id="session-alice").json()] == [
        runs["alice"]
    ]
    for who, session in (("alice", "session-bob"), ("alice", "session-carol"), ("acme_admin", "session-carol")):
        assert world.get(who, "/api/v1/runs", session_id=session).json() == [], (who, session)
    assert [r["run_id"] for r in world.get("acme_admin", "/api/v1/runs", session_id="session-bob").json()] == [
        runs["bob"]
    ]

    def trace_runs(who: str, **params: object) -> set[str]:
        response = world.get(who, "/api/v1/traces", **params)
        assert response.status_code == 200
        return {t["run_id"] for t in response.json()}

    assert trace_runs("alice") == {runs["alice"]}
    assert trace_runs("alice", user_id="bob") == set()
    assert trace_runs("alice", user_id="carol") == set()
    assert trace_runs("alice", session_id="session-bob") == set()
    assert trace_runs("alice", session_id="session-carol", user_id="carol") == set()
    assert trace_runs("acme_admin") == {runs["alice"], runs["bob"]}
    assert trace_runs("acme_admin", user_id="bob") == {runs["bob"]}
    assert trace_runs("acme_admin", user_id="carol") == set()
    assert trace_runs("globex_admin", session_id="session-carol") == {runs["carol"]}
    # no way to name another tenant: the parameter does not exist
    for path in ("/api/v1/agents/history", "/api/v1/traces", "/api/v1/agents/stats"):
        assert world.get("alice", path, tenant_id="globex").status_code == 422


def test_stats_and_performance_are_scoped(world: World) -> None:
    def total(who: str, path: str, **params: object) -> int:
        response = world.get(who, path, **params)
        assert response.status_code == 200, response.text
        return response.json()["total_executions"]

    assert total("alice", "/api/v1/agents/stats") == 1
    assert world.get("alice", "/api/v1/agents/stats").json()["user_id"] == "alice"
    assert total("alice", "/api/v1/agents/stats", user_id="bob") == 0
    assert total("alice", "/api/v1/agents/stats", user_id="carol") == 0
    assert total("acme_admin", "/api/v1/agents/stats") == 2
    assert total("acme_admin", "/api/v1/agents/stats", user_id="bob") == 1
    assert total("acme_admin", "/api/v1/agents/stats", user_id="carol") == 0
    assert total("globex_admin", "/api/v1/agents/stats") == 1
    assert total("alice", "/api/v1/agents/agent-bob/performance") == 0
    assert total("alice", "/api/v1/agents/agent-carol/performance") == 0
    assert total("acme_admin", "/api/v1/agents/agent-carol/performance") == 0
    assert total("globex_admin", "/api/v1/agents/agent-carol/performance") == 1
    assert (
        world.get("globex_admin", "/api/v1/agents/agent-carol/performance").json()["node_types"]["tool"]["count"] == 1
    )
    assert world.get("alice", "/api/v1/status").status_code == 403
    status = world.get("acme_admin", "/api/v1/status").json()
    assert {s["tenant_id"] for s in status["ingest"]} == {"acme"}  # not globex's counters


def test_websocket_events_are_scoped(world: World) -> None:
    factory = SpanFactory()
    batches = {
        who: factory.run(f"ws-agent-{who}", f"ws-session-{who}", who, NODES[:1]) for who in ("bob", "carol", "alice")
    }

    async def listen(who: str, ws: websockets.ClientConnection, last: str) -> list[dict]:
        events = []
        deadline = time.monotonic() + 20
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
            events.append(event)
            if event["type"] == "execution_completed" and event["run_id"] == last:
                return events

    async def scenario() -> dict[str, list[dict]]:
        url = f"{world.server.ws_base}/api/v1/agents/ws"
        async with (
            websockets.connect(url, additional_headers=auth(world.keys["alice"])) as alice,
            websockets.connect(url, additional_headers=auth(world.keys["acme_admin"])) as admin,
            websockets.connect(url, additional_headers=auth(world.keys["globex_admin"])) as globex,
        ):
            for ws in (alice, admin, globex):
                assert json.loads(await ws.recv())["type"] == "subscribed"
            for who in ("bob", "carol", "alice"):  # alice's last: once hers arrive, the others were processed
                run_id, spans = batches[who]
                assert await asyncio.to_thread(send, world.server, world.keys[who], spans) is SpanExportResult.SUCCESS
            return {
                "alice": await listen("alice", alice, batches["alice"][0]),
                "admin": await listen("admin", admin, batches["alice"][0]),
                "globex": await listen("globex", globex, batches["carol"][0]),
            }

    seen = asyncio.run(scenario())
    assert {e["user_id"] for e in seen["alice"]} == {"alice"}
    assert {(e["tenant_id"], e["user_id"]) for e in seen["admin"]} == {("acme", "alice"), ("acme", "bob")}
    assert {(e["tenant_id"], e["user_id"]) for e in seen["globex"]} == {("globex", "carol")}
    assert len(seen["alice"]) == 3  # started, node, completed
    # status counters are the tenant's own (the only WebSocket test of this module: nothing was published before)
    for admin, tenant_events in (("acme_admin", seen["admin"]), ("globex_admin", seen["globex"])):
        counters = world.get(admin, "/api/v1/status").json()["websocket"]
        assert counters["events_published"] == len(tenant_events)


# ---- key loading -------------------------------------------------------------------------------------------
def test_a_user_key_writes_only_as_its_own_user(tmp_path: Path) -> None:
    """Spans sent with alice's ``user`` key that claim user carol are stored as alice's, also through the
    ingest log's replay after a crash; an admin key keeps the user the spans name."""
    keys = {"alice": new_key(), "admin": new_key()}
    keys_file = write_keys(
        tmp_path / "keys.json",
        [
            {"key": keys["alice"], "tenant_id": "acme", "user_id": "alice", "role": "user"},
            {"key": keys["admin"], "tenant_id": "acme", "role": "admin"},
        ],
    )
    lake = tmp_path / "lake"
    factory = SpanFactory()
    replayed_run, replayed_spans = factory.run("agent-x", "s-1", "carol", NODES)
    live_run, live_spans = factory.run("agent-x", "s-2", "carol", NODES)
    admin_run, admin_spans = factory.run("agent-x", "s-3", "carol", NODES)
    crashed = Server(lake, ["--keys-file", str(keys_file), "--no-ttl", "--flush-interval-s", "600"])
    with crashed:
        assert send(crashed, keys["alice"], replayed_spans) is SpanExportResult.SUCCESS  # in the log only
        crashed.stop(signal.SIGKILL)
    with Server(lake, ["--keys-file", str(keys_file), "--no-ttl", "--flush-interval-s", "600"]) as server:
        with httpx.Client(base_url=server.base, headers=auth(keys["alice"])) as client:  # replayed before serving
            assert {h["run_id"] for h in client.get("/api/v1/agents/history").json()} == {replayed_run}
        assert send(server, keys["alice"], live_spans) is SpanExportResult.SUCCESS
        assert send(server, keys["admin"], admin_spans) is SpanExportResult.SUCCESS
    assert "Traceback" not in server.log()
    history = HistoryDB(lake)
    assert {h["run_id"] for h in history.scoped("acme", "alice").get_history()} == {replayed_run, live_run}
    assert {h["run_id"] for h in history.scoped("acme", "carol").get_history()} == {admin_run}


def test_keys_file_formats_and_errors(tmp_path: Path) -> None:
    key = new_key()
    toml = tmp_path / "keys.toml"
    toml.write_text(f'[[keys]]\nkey = "{key}"\ntenant_id = "t"\nuser_id = "u"\nrole = "user"\n')
    principal = load_keys(toml, env={}).authenticate(key)
    assert principal is not None and (principal.tenant_id, principal.user_id, principal.role) == ("t", "u", "user")
    assert load_keys(toml, env={}).authenticate(key + "x") is None
    assert load_keys(None, env={"RUNLAKE_API_KEYS": json.dumps([{"key": key, "tenant_id": "t", "role": "admin"}])})

    bad = {
        "no tenant": {"key": key, "user_id": "u"},
        "user without user_id": {"key": key, "tenant_id": "t"},
        "unknown role": {"key": key, "tenant_id": "t", "user_id": "u", "role": "root"},
        "short key": {"key": "abc", "tenant_id": "t", "user_id": "u"},
        "both key and hash": {"key": key, "key_sha256": "0" * 64, "tenant_id": "t", "user_id": "u"},
        "unknown field": {"key": key, "tenant_id": "t", "user_id": "u", "tenant": "x"},
    }
    for what, entry in bad.items():
        path = write_keys(tmp_path / "bad.json", [entry])
        with pytest.raises(KeysError):
            load_keys(path, env={})
        assert what
    duplicate = write_keys(tmp_path / "dup.json", [{"key": key, "tenant_id": "t", "user_id": "u"}] * 2)
    with pytest.raises(KeysError, match="twice"):
        load_keys(duplicate, env={})
    with pytest.raises(KeysError):
        parse_keys_env("only:two")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(KeysError, match="not valid JSON"):
        load_keys(tmp_path / "broken.json", env={})
