"""Helpers for the server tests: run the real ``runlake serve`` in a subprocess, make spans, send them.

The server runs as ``python -m runlake.server`` on a free 127.0.0.1 port; readiness is polled on /healthz
(bounded). Spans are made with the real OTel SDK (a local TracerProvider, not the global one) and sent with
the real ``OTLPSpanExporter`` (protobuf over HTTP).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def new_key() -> str:
    return "rk_" + secrets.token_urlsafe(24)


@dataclass
class Server:
    """A ``runlake serve`` subprocess."""

    lake: Path
    args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "runlake.server", "--port", str(self.port), "--state-url", str(self.lake)]

    def start(self) -> Server:
        env = dict(os.environ)
        env.pop("RUNLAKE_API_KEYS", None)
        env.update(self.env)
        self.log_path = self.log_path or self.lake.parent / f"server-{secrets.token_hex(3)}.log"
        for _attempt in range(3):  # another process may take the free port between probe and bind
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [*self.command(), *self.args], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO
                )
            if self._wait_ready():
                return self
            if "address already in use" not in self.log().lower():
                break
        self.stop()
        raise AssertionError(f"runlake serve did not become ready:\n{self.log()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return False
                try:
                    if client.get(f"{self.base}/healthz").status_code == 200:
                        return True
                except httpx.TransportError:
                    pass
                time.sleep(0.05)  # polling interval of a bounded readiness loop
        return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Stop the server (graceful: buffers are flushed) and return its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def write_keys(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"keys": entries}), encoding="utf-8")
    return path


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# ---- spans ------------------------------------------------------------------------------------------------------
class SpanFactory:
    """Spans shaped like runlake.run / runlake.node make them, from a local (non-global) TracerProvider."""

    def __init__(self, service: str = "server-tests") -> None:
        self.memory = InMemorySpanExporter()
        self.provider = TracerProvider(resource=Resource.create({"service.name": service}))
        self.provider.add_span_processor(SimpleSpanProcessor(self.memory))
        self.tracer = self.provider.get_tracer("server-tests")

    def run(
        self,
        agent: str,
        session_id: str,
        user_id: str | None,
        nodes: Sequence[dict[str, Any]] = (),
        *,
        fail: bool = False,
        tenant_claim: str | None = None,
        input_text: str = "hello",
        output_text: str = "done",
        start_ns: int | None = None,
    ) -> tuple[str, list[ReadableSpan]]:
        """One run with its nodes; returns (run_id, finished spans, children first as the SDK ends them)."""
        self.memory.clear()
        t = start_ns or time.time_ns() - 10_000_000_000
        attrs: dict[str, Any] = {
            "runlake.span.type": "run",
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": agent,
            "gen_ai.conversation.id": session_id,
            "session.id": session_id,
            "input.value": input_text,
        }
        if user_id:
            attrs["user.id"] = user_id
        if tenant_claim:
            attrs["runlake.tenant.id"] = tenant_claim
        root = self.tracer.start_span(f"invoke_agent {agent}", attributes=attrs, start_time=t)
        run_id = f"{root.get_span_context().span_id:016x}"
        root.set_attribute("runlake.run.id", run_id)
        from opentelemetry import trace

        ctx = trace.set_span_in_context(root)
        clock = t
        for node in nodes:
            node_attrs = {
                "runlake.span.type": "node",
                "runlake.node.id": node["id"],
                "runlake.node.type": node.get("type", "llm"),
                "runlake.run.id": run_id,
                "gen_ai.conversation.id": session_id,
                "session.id": session_id,
                "input.value": node.get("input", "in"),
                "output.value": node.get("output", "out"),
                "gen_ai.usage.input_tokens": node.get("in_tokens", 10),
                "gen_ai.usage.output_tokens": node.get("out_tokens", 5),
                "runlake.cost.cents": node.get("cost", 1.0),
            }
            if user_id:
                node_attrs["user.id"] = user_id
            if tenant_claim:
                node_attrs["runlake.tenant.id"] = tenant_claim
            span = self.tracer.start_span(f"node {node['id']}", context=ctx, attributes=node_attrs, start_time=clock)
            clock += int(node.get("ms", 100) * 1e6)
            if node.get("fail"):
                span.set_status(Status(StatusCode.ERROR, node.get("error", "node failed")))
                span.set_attribute("error.type", "NodeError")
            span.end(end_time=clock)
        root.set_attribute("output.value", output_text)
        if fail:
            root.set_status(Status(StatusCode.ERROR, "run failed"))
            root.set_attribute("error.type", "RunError")
        root.end(end_time=clock + 50_000_000)
        return run_id, list(self.memory.get_finished_spans())


def otlp_exporter(server: Server, key: str | None, compression: Compression = Compression.Gzip) -> OTLPSpanExporter:
    return OTLPSpanExporter(
        endpoint=f"{server.base}/v1/traces",
        headers=auth(key) if key else None,
        compression=compression,
        timeout=30,
    )


def send(server: Server, key: str | None, spans: Sequence[ReadableSpan]) -> SpanExportResult:
    exporter = otlp_exporter(server, key)
    try:
        return exporter.export(list(spans))
    finally:
        exporter.shutdown()
