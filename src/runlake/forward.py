"""Forwarding to an existing OTLP collector beside the Parquet copy.

The stock OTLP exporter runs in its own ``BatchSpanProcessor``: a collector that is down or slow only fills
that processor's bounded queue, never blocks the application and never delays the lake. What does not reach
the collector is counted (``ForwardingProcessor.stats``) and logged.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlparse

from opentelemetry.exporter.runlake.writer import ForkSafeLock
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

_logger = logging.getLogger(__name__)
PROTOCOLS = ("grpc", "http/protobuf")


def parse_headers(headers: Mapping[str, str] | str | None) -> dict[str, str]:
    """Headers as a dict; a string is the ``OTEL_EXPORTER_OTLP_HEADERS`` form ``k=v,k2=v2`` (URL-encoded)."""
    if headers is None:
        return {}
    if isinstance(headers, Mapping):
        return {str(k): str(v) for k, v in headers.items()}
    out: dict[str, str] = {}
    for item in headers.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"bad OTLP header {item!r}: expected key=value")
        out[unquote(key.strip())] = unquote(value.strip())
    return out


def forwarding_settings(
    endpoint: str | None, protocol: str | None, headers: Mapping[str, str] | str | None
) -> tuple[str, str, dict[str, str]] | None:
    """Resolve endpoint, protocol and headers from the arguments, else the standard OTEL_EXPORTER_OTLP_* vars."""
    env = os.environ
    from_env = endpoint is None
    if from_env:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint:
        return None
    protocol = (
        protocol or env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    )
    if protocol not in PROTOCOLS:
        raise ValueError(f"otlp_protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if headers is None:
        headers = env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or env.get("OTEL_EXPORTER_OTLP_HEADERS")
    parsed = urlparse(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"OTLP endpoint must be an http(s) URL like http://collector:4317, got {endpoint!r}")
    if protocol == "http/protobuf":
        signal_specific = from_env and env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        if from_env and not signal_specific:  # the spec: the base endpoint, path or not, gets the signal's path
            endpoint = endpoint.rstrip("/") + "/v1/traces"
        elif not from_env and parsed.path in ("", "/"):  # an endpoint given with no path: the collector's root
            endpoint = endpoint.rstrip("/") + "/v1/traces"
    return endpoint, protocol, parse_headers(headers)


def exports_otlp(provider: Any) -> bool:
    """Whether an SDK ``TracerProvider`` already sends its spans to an OTLP exporter (the application's own, or
    ``opentelemetry-instrument``'s): forwarding again from the same ``OTEL_EXPORTER_OTLP_*`` settings would send
    every span twice."""
    multi = getattr(provider, "_active_span_processor", None)
    for processor in getattr(multi, "_span_processors", ()) or ():
        batch = getattr(processor, "_batch_processor", None)
        exporter = getattr(processor, "span_exporter", None) or getattr(batch, "_exporter", None)
        if type(exporter).__name__ == "OTLPSpanExporter" and type(exporter).__module__.startswith(
            "opentelemetry.exporter.otlp"
        ):
            return True
    return False


class PartialSuccess:
    """What OTLP receivers refused inside accepted requests (``partial_success``), which the stock exporters do not
    look at: read from each HTTP response by a hook on the ``requests`` session the exporter is given, and from each
    gRPC reply by a stub that wraps the exporter's (``watch_grpc``)."""

    def __init__(self) -> None:
        self._lock = ForkSafeLock()
        self._rejected = 0
        self._message: str | None = None

    def session(self) -> Any:
        import requests

        session = requests.Session()
        session.hooks["response"].append(self._on_response)
        return session

    def _on_response(self, response: Any, *args: Any, **kwargs: Any) -> None:
        if response.status_code != 200 or not response.content:
            return
        try:
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

            partial = ExportTraceServiceResponse.FromString(response.content).partial_success
        except Exception:  # noqa: BLE001 - a receiver that answers something else: nothing to learn
            return
        self._note(partial)

    def _note(self, partial: Any) -> None:
        if partial.rejected_spans or partial.error_message:
            with self._lock:
                self._rejected += partial.rejected_spans
                self._message = partial.error_message or self._message

    def watch_grpc(self, exporter: Any) -> bool:
        """Read ``partial_success`` from the gRPC exporter's replies: its stub (and the factory it uses to make a new
        one when it reconnects) is wrapped. These are the SDK exporter's private attributes; where they are not
        there, nothing is counted (False) and the exporter works as it is."""
        make_stub = getattr(exporter, "_stub", None)
        channel = getattr(exporter, "_channel", None)
        if make_stub is None or channel is None or getattr(exporter, "_client", None) is None:
            return False
        watcher = self

        class WatchedStub:
            def __init__(self, channel: Any) -> None:
                self._stub = make_stub(channel)

            def Export(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802 - the gRPC method's name
                reply = self._stub.Export(*args, **kwargs)
                try:
                    watcher._note(reply.partial_success)
                except Exception:  # noqa: BLE001 - a reply of another shape: nothing to learn
                    pass
                return reply

        exporter._stub = WatchedStub
        exporter._client = WatchedStub(channel)
        return True

    def take(self) -> tuple[int, str | None]:
        """Spans rejected and the last message since the previous call."""
        with self._lock:
            out = (self._rejected, self._message)
            self._rejected, self._message = 0, None
        return out


def build_otlp_exporter(
    endpoint: str, protocol: str, headers: Mapping[str, str], timeout_s: float, partial: PartialSuccess | None = None
) -> SpanExporter:
    """The stock OTLP span exporter for the protocol; ``partial`` learns of partially refused requests."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        parsed = urlparse(endpoint)
        exporter = GrpcExporter(
            endpoint=endpoint,
            insecure=parsed.scheme == "http",
            headers=dict(headers) or None,
            timeout=timeout_s,
        )
        if partial is not None:
            partial.watch_grpc(exporter)
        return exporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    session = partial.session() if partial is not None else None
    return HttpExporter(endpoint=endpoint, headers=dict(headers) or None, timeout=timeout_s, session=session)


class CountingSpanExporter(SpanExporter):
    """Wraps an exporter to count what it was given, what it delivered, and what failed (logged once)."""

    def __init__(self, exporter: SpanExporter, label: str, partial: PartialSuccess | None = None) -> None:
        self._exporter = exporter
        self._label = label
        self._partial = partial
        self._lock = ForkSafeLock()
        self.handed = 0
        self.sent = 0
        self.failed = 0
        self.rejected = 0  # of ``failed``: refused by the receiver inside an accepted request (partial_success)
        self._failing = False
        self._rejecting = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            self.handed += len(spans)
        try:
            result = self._exporter.export(spans)
        except Exception:  # noqa: BLE001 - never raise into the processor's thread
            _logger.exception("runlake: forwarding to %s raised", self._label)
            result = SpanExportResult.FAILURE
        refused, message = self._partial.take() if self._partial is not None else (0, None)
        refused = min(refused, len(spans)) if result is SpanExportResult.SUCCESS else 0
        with self._lock:
            if refused:
                self.failed += refused
                self.rejected += refused
                if not self._rejecting:
                    self._rejecting = True
                    _logger.error(
                        "runlake: %s refused %d of %d forwarded spans (%s); the local lake keeps them. Further "
                        "refusals are counted (see runlake.forwarding_stats())",
                        self._label,
                        refused,
                        len(spans),
                        message or "no reason given",
                    )
            if result is SpanExportResult.SUCCESS:
                self.sent += len(spans) - refused
                if self._failing:
                    self._failing = False
                    _logger.warning("runlake: forwarding to %s works again", self._label)
            else:
                self.failed += len(spans)
                if not self._failing:
                    self._failing = True
                    _logger.error(
                        "runlake: could not forward %d spans to %s; the local lake keeps them. "
                        "Further failures are counted (see runlake.forwarding_stats())",
                        len(spans),
                        self._label,
                    )
        return result

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._exporter.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self._exporter.shutdown()


class ForwardingProcessor(SpanProcessor):
    """A ``BatchSpanProcessor`` around the stock OTLP exporter, with counts and a bounded shutdown."""

    def __init__(
        self,
        endpoint: str,
        protocol: str = "grpc",
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 5.0,
        shutdown_timeout_s: float = 5.0,
        wrap: Callable[[SpanExporter], SpanExporter] | None = None,
        **batch_options: Any,
    ) -> None:
        """``wrap`` puts a filter (runtime-state guard, redaction) between the batch processor and the exporter."""
        self.endpoint = endpoint
        self.protocol = protocol
        partial = PartialSuccess()
        otlp = build_otlp_exporter(endpoint, protocol, headers or {}, timeout_s, partial)
        self.exporter = CountingSpanExporter(otlp, f"{endpoint} ({protocol})", partial)
        self._batch = BatchSpanProcessor(wrap(self.exporter) if wrap else self.exporter, **batch_options)
        self._shutdown_timeout_s = shutdown_timeout_s
        self._flush_lock = ForkSafeLock()
        self._flush_worker: threading.Thread | None = None
        self.ended = 0

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is not None and span.context.trace_flags.sampled:
            self.ended += 1
        self._batch.on_end(span)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export what is queued, waiting at most ``timeout_millis`` (the SDK's batch processor exports its whole
        queue on the caller's thread whatever the timeout; a collector that is down would hold the application).
        One flush runs at a time; a call while one is under way waits for that one."""
        with self._flush_lock:
            worker = self._flush_worker
            if worker is None or not worker.is_alive():
                worker = self._flush_worker = threading.Thread(
                    target=self._batch.force_flush, args=(timeout_millis,), name="runlake-forward-flush", daemon=True
                )
                worker.start()
        worker.join(max(timeout_millis, 0) / 1000)
        return not worker.is_alive()

    def shutdown(self) -> None:
        """Flush what the collector will take within ``shutdown_timeout_s``; never hold the application longer."""
        worker = threading.Thread(target=self._batch.shutdown, name="runlake-forward-shutdown", daemon=True)
        worker.start()
        worker.join(self._shutdown_timeout_s)
        stats = self.stats
        if worker.is_alive() or stats["not_forwarded"]:
            _logger.warning(
                "runlake: %d of %d spans were not forwarded to %s (collector down or slow); the local lake has them",
                stats["not_forwarded"],
                stats["ended"],
                self.endpoint,
            )

    @property
    def stats(self) -> dict[str, Any]:
        e = self.exporter
        return {
            "endpoint": self.endpoint,
            "protocol": self.protocol,
            "ended": self.ended,
            "sent": e.sent,
            "failed": e.failed,
            "rejected": e.rejected,
            "queued_or_dropped": max(self.ended - e.handed, 0),
            "not_forwarded": max(self.ended - e.sent, 0),
        }
