"""OTLP/HTTP trace requests → OpenTelemetry SDK ``ReadableSpan`` objects.

``runlake serve`` decodes ``POST /v1/traces`` bodies here and hands the spans to the same
``RunlakeSpanExporter`` (mapping + writer) that in-process instrumentation uses, so a span stored by the
receiver and one stored by the exporter are the same row.

Both encodings of the OTLP specification are accepted:

- binary protobuf (``application/x-protobuf``): ``ExportTraceServiceRequest`` parsed by the generated
  classes of ``opentelemetry-proto``;
- OTLP/JSON (``application/json``): the proto3 JSON mapping (``google.protobuf.json_format``: enums as
  integers or names, 64-bit integers as strings or numbers, lowerCamelCase or original field names, unknown
  fields ignored) with OTLP's one exception: ``traceId``/``spanId``/``parentSpanId`` are hex strings, not
  base64.

A request that cannot be parsed at all raises :class:`OTLPDecodeError` (HTTP 400). A parsed request whose
individual spans are invalid (bad ids, missing or impossible times) keeps the valid spans; the invalid ones
are counted and described for ``ExportTraceServiceResponse.partial_success``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from opentelemetry.exporter.runlake.layout import storable_text
from opentelemetry.exporter.runlake.mapping import bytes_text
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

__all__ = [
    "JSON",
    "PROTOBUF",
    "DecodedRequest",
    "OTLPDecodeError",
    "decode_request",
    "encode_response",
    "encode_status",
    "media_type",
    "parse_json",
    "parse_protobuf",
    "to_readable_spans",
]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_PROTOBUF_ALIASES = {PROTOBUF, "application/protobuf", "application/vnd.google.protobuf"}

_INT64_MAX = (1 << 63) - 1  # the lake stores times as int64 nanoseconds
_MAX_REASONS = 3  # reasons quoted in partial_success.error_message
MAX_ENTRIES = 10_000  # ResourceSpans + ScopeSpans per request; real batches carry a few (HTTP 400 beyond)
MAX_SPANS = 100_000  # spans per request: SDKs send 512, a collector's batch processor up to 8,192 (HTTP 400 beyond)
_HEX = re.compile(r"[0-9a-fA-F]*")
_ID_FIELDS = (("traceId", "trace_id", 32), ("spanId", "span_id", 16), ("parentSpanId", "parent_span_id", 16))
# OTLP SpanKind (0 = unspecified) → SDK SpanKind
_KINDS = {
    0: SpanKind.INTERNAL,
    1: SpanKind.INTERNAL,
    2: SpanKind.SERVER,
    3: SpanKind.CLIENT,
    4: SpanKind.PRODUCER,
    5: SpanKind.CONSUMER,
}
_HAS_IS_REMOTE = 0x100  # SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_IS_REMOTE = 0x200  # SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_UNSET = Status(StatusCode.UNSET)
_OK = Status(StatusCode.OK)


class OTLPDecodeError(ValueError):
    """The body is not an ExportTraceServiceRequest in the declared encoding (HTTP 400)."""


@dataclass
class DecodedRequest:
    """The valid spans of a request, and how many were rejected and why."""

    spans: list[ReadableSpan] = field(default_factory=list)
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)
    dropped_links: int = 0  # links with bad ids: the span is kept without them (a warning, as OTLP allows)
    link_reasons: list[str] = field(default_factory=list)

    @property
    def error_message(self) -> str:
        parts = []
        if self.rejected:
            total = self.rejected + len(self.spans)
            text = f"rejected {self.rejected} of {total} spans: " + "; ".join(self.reasons)
            parts.append(text + ("; ..." if self.rejected > len(self.reasons) else ""))
        if self.dropped_links:
            text = f"dropped {self.dropped_links} link(s) with bad ids, their spans kept: " + "; ".join(
                self.link_reasons
            )
            parts.append(text + ("; ..." if self.dropped_links > len(self.link_reasons) else ""))
        return "; ".join(parts)

    def reject(self, reason: str) -> None:
        self.rejected += 1
        if len(self.reasons) < _MAX_REASONS:
            self.reasons.append(reason)

    def drop_link(self, reason: str) -> None:
        self.dropped_links += 1
        if len(self.link_reasons) < _MAX_REASONS:
            self.link_reasons.append(reason)


def media_type(content_type: str | None) -> str | None:
    """``PROTOBUF`` or ``JSON`` for a Content-Type header value, else None (HTTP 415)."""
    if not content_type:
        return None
    base = content_type.split(";", 1)[0].strip().lower()
    if base in _PROTOBUF_ALIASES:
        return PROTOBUF
    if base == JSON:
        return JSON
    return None


# ---- parsing ------------------------------------------------------------------------------------------------
def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]  # IndexError past the end: left for the parser to refuse
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7


def _wire_fields(data: bytes, start: int, end: int) -> Iterable[tuple[int, int, int, int, int]]:
    """(tag, tag start, value start, value end) of the fields of one message — a length-delimited value starts
    after its length — and the position reached; stops at a group (not in OTLP). A varint past the end raises
    IndexError."""
    pos = start
    while pos < end:
        tag_start = pos
        tag, pos = _varint(data, pos)
        wire = tag & 7
        if wire == 0:
            _, value_end = _varint(data, pos)
        elif wire in (1, 5):
            value_end = pos + (8 if wire == 1 else 4)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value_end = pos + length
        else:
            return
        yield tag, tag_start, pos, value_end
        pos = value_end


def _fields(data: bytes, start: int, end: int) -> Iterable[tuple[int, int, int]]:
    """(field number, start, end) of the fields of one message; stops at a group (``_count_entries`` then counts)."""
    for tag, _, value_start, value_end in _wire_fields(data, start, end):
        yield tag >> 3, value_start, value_end


def _too_many_entries(body: bytes) -> str | None:
    """What a request holds too many of, found before parsing: more than ``MAX_ENTRIES`` fields at the
    ResourceSpans and ScopeSpans levels, or more than ``MAX_SPANS`` spans; else None.

    Parsing 4 million empty 2-byte ResourceSpans (or spans) costs ~300 MB; this scan stops at the first limit.
    """
    budget, spans = MAX_ENTRIES, MAX_SPANS
    size = len(body)
    try:
        for number, start, end in _fields(body, 0, size):
            budget -= 1
            if number == 1:  # resource_spans: count its fields (scope_spans and the rest) too
                for field, scope_start, scope_end in _fields(body, start, min(end, size)):
                    budget -= 1
                    if budget < 0:
                        return _TOO_MANY_ENTRIES
                    if field == 2:  # scope_spans: count its spans (field 2)
                        for span_field, _, _ in _fields(body, scope_start, min(scope_end, size)):
                            spans -= span_field == 2
                            if spans < 0:
                                return _TOO_MANY_SPANS
            if budget < 0:
                return _TOO_MANY_ENTRIES
    except IndexError:
        return None
    return None


_TOO_MANY_ENTRIES = f"request has more than {MAX_ENTRIES} ResourceSpans and ScopeSpans entries"
_TOO_MANY_SPANS = f"request has more than {MAX_SPANS} spans; send smaller batches"


def _too_many_parsed(request: ExportTraceServiceRequest) -> str | None:
    """``_too_many_entries`` on a parsed request (counting stops just past a limit)."""
    entries, spans = len(request.resource_spans), 0
    for resource_spans in request.resource_spans:
        if entries > MAX_ENTRIES:
            return _TOO_MANY_ENTRIES
        entries += len(resource_spans.scope_spans)
        for scope_spans in resource_spans.scope_spans:
            spans += len(scope_spans.spans)
            if spans > MAX_SPANS:
                return _TOO_MANY_SPANS
    return _TOO_MANY_ENTRIES if entries > MAX_ENTRIES else None


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _utf8_strings(data: bytes, descriptor: Any, depth: int = 0) -> bytes | None:
    """The message ``data`` (wire format) with every string field of ``descriptor`` (and of its sub-messages)
    made valid UTF-8, invalid bytes as U+FFFD; None where the wire format itself is broken. Walks the fields the
    descriptor names; anything else is copied as it is."""
    if depth > 64:
        return None
    out = bytearray()
    reached = 0
    try:
        for tag, tag_start, value_start, value_end in _wire_fields(data, 0, len(data)):
            if value_end > len(data):
                return None
            reached = value_end
            field = descriptor.fields_by_number.get(tag >> 3) if tag & 7 == 2 else None
            if field is None or field.type not in (field.TYPE_STRING, field.TYPE_MESSAGE):
                out += data[tag_start:value_end]
                continue
            payload = data[value_start:value_end]
            if field.type == field.TYPE_STRING:
                fixed = payload.decode("utf-8", "replace").encode()
            else:
                fixed = _utf8_strings(payload, field.message_type, depth + 1)
                if fixed is None:
                    return None
            out += _encode_varint(tag) + _encode_varint(len(fixed)) + fixed
    except IndexError:  # a varint past the end
        return None
    return bytes(out) if reached == len(data) else None  # stopped short: a group (not in OTLP)


def parse_protobuf(body: bytes) -> ExportTraceServiceRequest:
    """Parse a binary protobuf ExportTraceServiceRequest."""
    too_many = _too_many_entries(body)
    if too_many:
        raise OTLPDecodeError(too_many)
    try:
        request = ExportTraceServiceRequest.FromString(body)
    except (DecodeError, RuntimeError, ValueError) as error:
        # proto3 strings must be UTF-8: one string cut inside a character would refuse the whole request (a 400 is
        # not retried), so such strings are stored with U+FFFD, as the JSON side and the writer store them
        repaired = _utf8_strings(body, ExportTraceServiceRequest.DESCRIPTOR)
        try:
            if repaired is None or repaired == body:
                raise error
            request = ExportTraceServiceRequest.FromString(repaired)
        except (DecodeError, RuntimeError, ValueError):
            raise OTLPDecodeError(f"body is not a protobuf ExportTraceServiceRequest: {error}") from None
    too_many = _too_many_parsed(request)  # what the scan could not see (fields inside groups)
    if too_many:
        raise OTLPDecodeError(too_many)
    return request


def parse_json(body: bytes, decoded: DecodedRequest | None = None) -> ExportTraceServiceRequest:
    """Parse an OTLP/JSON ExportTraceServiceRequest; spans with ids that are not hex are rejected into ``decoded``."""
    try:
        data = json.loads(body)
    except RecursionError:  # nesting deeper than the interpreter's stack: a client error, not a crash
        raise OTLPDecodeError("body is not valid JSON: nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, or an integer over the digit limit
        raise OTLPDecodeError(f"body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise OTLPDecodeError("body is not an OTLP/JSON ExportTraceServiceRequest: the top level must be an object")
    if _may_hold_lone_surrogates(body) or json.detect_encoding(body) not in ("utf-8", "utf-8-sig"):
        _storable_strings(data)
    entries = spans = 0
    for resource_spans in _list(_get(data, "resourceSpans", "resource_spans")):
        scopes = _list(_get(resource_spans, "scopeSpans", "scope_spans") if isinstance(resource_spans, dict) else None)
        entries += 1 + len(scopes)
        if entries > MAX_ENTRIES:
            raise OTLPDecodeError(_TOO_MANY_ENTRIES)
        spans += sum(len(_list(_get(scope, "spans", "spans"))) for scope in scopes if isinstance(scope, dict))
        if spans > MAX_SPANS:
            raise OTLPDecodeError(_TOO_MANY_SPANS)
    _hex_ids_to_base64(data, decoded if decoded is not None else DecodedRequest())
    request = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(data, request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError) as error:
        raise OTLPDecodeError(f"body is not an OTLP/JSON ExportTraceServiceRequest: {error}") from None
    except RecursionError:
        raise OTLPDecodeError("body is not an OTLP/JSON ExportTraceServiceRequest: nested too deeply") from None
    return request


# what can become a lone surrogate in json.loads (which decodes bytes with "surrogatepass"): a \uD800-\uDFFF escape
# that is not half of a pair, as JavaScript's JSON.stringify writes for a string cut inside an emoji, or such a code
# point encoded as UTF-8. Escaped pairs (Python's json.dumps writes one for every emoji) are fine as they are.
_LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    rb"|\xed[\xa0-\xbf]"
)


def _may_hold_lone_surrogates(body: bytes) -> bool:
    """Whether the strings need a walk (``_storable_strings``): three substring scans first, the pattern only where
    one of them finds something (an ordinary body costs ~1 ms per 10 MB)."""
    if b"\\ud" not in body and b"\\uD" not in body and b"\xed" not in body:
        return False
    return _LONE_SURROGATE.search(body) is not None


def _storable_strings(data: dict | list) -> None:
    """Replace each lone surrogate in the strings of ``data`` (parsed JSON, keys included) with U+FFFD, in place, as
    the writer stores such text (``storable_text``): protobuf refuses them, which would refuse the whole request
    for one cut string. Iterative, so any nesting ``json.loads`` took is walked without recursion."""
    stack: list[dict | list] = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key in [k for k in node if storable_text(k) is not k]:
                node[storable_text(key)] = node.pop(key)
            items: Iterable[tuple[Any, Any]] = node.items()
        else:
            items = enumerate(node)
        for key, value in items:
            if isinstance(value, str):
                fixed = storable_text(value)
                if fixed is not value:
                    node[key] = fixed
            elif isinstance(value, (dict, list)):
                stack.append(value)


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _dicts(value: Any) -> Iterable[dict]:
    """Items of a JSON list that are objects (anything else is left for ParseDict to refuse)."""
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    return ()


def _get(obj: dict, camel: str, snake: str) -> Any:
    return obj.get(camel, obj.get(snake))


def _hex_field(obj: dict, camel: str, snake: str, hex_len: int) -> str | None:
    """Rewrite one hex id of ``obj`` to base64 (what ParseDict expects for bytes); the problem, if any."""
    for key in (camel, snake):
        if key not in obj:
            continue
        value = obj[key]
        if value is None or value == "":
            obj[key] = ""
            continue
        if not isinstance(value, str) or not _HEX.fullmatch(value) or len(value) != hex_len:
            shown = value if isinstance(value, str) and len(value) <= 40 else type(value).__name__
            return f"{camel} {shown!r} is not {hex_len} hex characters (OTLP/JSON ids are hex, not base64)"
        obj[key] = base64.b64encode(binascii.unhexlify(value)).decode("ascii")
    return None


def _hex_ids_to_base64(data: dict, decoded: DecodedRequest) -> None:
    for resource_spans in _dicts(_get(data, "resourceSpans", "resource_spans")):
        for scope_spans in _dicts(_get(resource_spans, "scopeSpans", "scope_spans")):
            spans = _get(scope_spans, "spans", "spans")
            if not isinstance(spans, list):
                continue
            kept = []
            for span in spans:
                if not isinstance(span, dict):
                    kept.append(span)  # ParseDict will refuse the request
                    continue
                problem = None
                for camel, snake, hex_len in _ID_FIELDS:
                    problem = problem or _hex_field(span, camel, snake, hex_len)
                links = span.get("links")
                if isinstance(links, list):
                    good_links = []
                    for link in links:
                        bad = None
                        if isinstance(link, dict):
                            bad = _hex_field(link, "traceId", "trace_id", 32) or _hex_field(
                                link, "spanId", "span_id", 16
                            )
                        if bad:
                            decoded.drop_link(f"span {str(span.get('name', ''))[:60]!r}: link {bad}")
                        else:
                            good_links.append(link)
                    span["links"] = good_links
                if problem:
                    decoded.reject(f"span {str(span.get('name', ''))[:60]!r}: {problem}")
                else:
                    kept.append(span)
            spans[:] = kept


# ---- conversion -----------------------------------------------------------------------------------------------
def _any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "array_value":
        return tuple(_any_value(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return bytes_text(value.bytes_value)  # UTF-8 text as it is, else base64 (as OTLP/JSON writes bytes)
    return None


def _attributes(key_values: Iterable[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in key_values:
        value = _any_value(kv.value)
        if value is not None:
            out[kv.key] = value
    return out


def _plain(value: Any) -> Any:
    """A value the SDK's attribute validation keeps (resources and scopes validate; spans do not)."""
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, tuple) and value and all(isinstance(v, type(value[0])) for v in value):
        if isinstance(value[0], (str, bool, int, float)):
            return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _resource(resource: Any, schema_url: str) -> Resource:
    attrs = {k: _plain(v) for k, v in _attributes(resource.attributes).items()}
    return Resource(attrs, schema_url or None)


def _scope(scope_spans: Any) -> InstrumentationScope:
    scope = scope_spans.scope
    attrs = {k: _plain(v) for k, v in _attributes(scope.attributes).items()}
    return InstrumentationScope(scope.name, scope.version or None, scope_spans.schema_url or None, attrs or None)


def _trace_state(header: str) -> TraceState | None:
    if not header:
        return None
    try:
        return TraceState.from_header([header])
    except Exception:  # noqa: BLE001 - a bad tracestate is not worth rejecting the span
        return None


def _problem(span: Any) -> str | None:
    if len(span.trace_id) != 16 or not any(span.trace_id):
        return "trace_id must be 16 bytes, not all zero"
    if len(span.span_id) != 8 or not any(span.span_id):
        return "span_id must be 8 bytes, not all zero"
    if len(span.parent_span_id) not in (0, 8):
        return "parent_span_id must be empty or 8 bytes"
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    if not start:
        return "start_time_unix_nano is missing"
    if not end:
        return "end_time_unix_nano is missing"
    if end < start:
        return "end_time_unix_nano is before start_time_unix_nano"
    if end > _INT64_MAX:
        return "time is past the int64 nanosecond range"
    return None


def _status(status: Any) -> Status:
    code = status.code
    if code == 2:
        return Status(StatusCode.ERROR, status.message or None)
    return _OK if code == 1 else _UNSET


def to_readable_spans(request: ExportTraceServiceRequest, decoded: DecodedRequest | None = None) -> DecodedRequest:
    """The request's valid spans as ``ReadableSpan`` objects; invalid ones are counted in the result."""
    out = decoded if decoded is not None else DecodedRequest()
    spans = out.spans
    # one Resource / scope object per distinct value: building and validating one per entry is the cost of a
    # request of many small entries (and the mapper caches per Resource object)
    resources: dict[tuple[bytes, str], Resource] = {}
    scopes: dict[tuple[bytes, str], InstrumentationScope] = {}
    for resource_spans in request.resource_spans:
        if not any(scope_spans.spans for scope_spans in resource_spans.scope_spans):
            continue  # nothing to store: skip before building anything
        key = (resource_spans.resource.SerializeToString(), resource_spans.schema_url)
        resource = resources.get(key)
        if resource is None:
            resource = resources[key] = _resource(resource_spans.resource, resource_spans.schema_url)
        for scope_spans in resource_spans.scope_spans:
            if not scope_spans.spans:
                continue
            key = (scope_spans.scope.SerializeToString(), scope_spans.schema_url)
            scope = scopes.get(key)
            if scope is None:
                scope = scopes[key] = _scope(scope_spans)
            for span in scope_spans.spans:
                problem = _problem(span)
                if problem is not None:
                    out.reject(f"span {span.name[:60]!r} (span_id {span.span_id.hex() or '-'}): {problem}")
                    continue
                trace_id = int.from_bytes(span.trace_id, "big")
                flags = span.flags
                context = SpanContext(
                    trace_id,
                    int.from_bytes(span.span_id, "big"),
                    is_remote=False,
                    trace_flags=TraceFlags(flags & 0xFF),
                    trace_state=_trace_state(span.trace_state),
                )
                parent = None
                if span.parent_span_id and any(span.parent_span_id):
                    remote = bool(flags & _IS_REMOTE) if flags & _HAS_IS_REMOTE else True
                    parent = SpanContext(trace_id, int.from_bytes(span.parent_span_id, "big"), is_remote=remote)
                events = [Event(e.name, _attributes(e.attributes), e.time_unix_nano) for e in span.events]
                links = []
                for k in span.links:
                    if len(k.trace_id) == 16 and len(k.span_id) == 8:
                        context_of_link = SpanContext(
                            int.from_bytes(k.trace_id, "big"), int.from_bytes(k.span_id, "big"), True
                        )
                        links.append(Link(context_of_link, _attributes(k.attributes)))
                    else:
                        out.drop_link(
                            f"span {span.name[:60]!r}: link ids of {len(k.trace_id)} and {len(k.span_id)} bytes, "
                            "not 16 and 8"
                        )
                spans.append(
                    ReadableSpan(
                        name=span.name,
                        context=context,
                        parent=parent,
                        resource=resource,
                        attributes=_attributes(span.attributes),
                        events=events,
                        links=links,
                        kind=_KINDS.get(span.kind, SpanKind.INTERNAL),
                        status=_status(span.status),
                        start_time=span.start_time_unix_nano,
                        end_time=span.end_time_unix_nano,
                        instrumentation_scope=scope,
                    )
                )
    return out


def decode_request(body: bytes, content_type: str) -> DecodedRequest:
    """Decode a whole request body of media type ``PROTOBUF`` or ``JSON`` (see :func:`media_type`)."""
    decoded = DecodedRequest()
    if content_type == JSON:
        request = parse_json(body, decoded)
    elif content_type == PROTOBUF:
        request = parse_protobuf(body)
    else:
        raise ValueError(f"unsupported media type {content_type!r}")
    return to_readable_spans(request, decoded)


# ---- responses --------------------------------------------------------------------------------------------------
def encode_response(content_type: str, rejected: int = 0, error_message: str = "") -> bytes:
    """An ExportTraceServiceResponse (with ``partial_success`` when spans were rejected) in ``content_type``."""
    response = ExportTraceServiceResponse()
    if rejected or error_message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = error_message
    if content_type == PROTOBUF:
        return response.SerializeToString()
    return json.dumps(json_format.MessageToDict(response)).encode()


def encode_status(content_type: str, code: int, message: str) -> bytes:
    """A ``google.rpc.Status`` error body, as OTLP/HTTP requires for 4xx/5xx, in ``content_type``."""
    status = status_pb2.Status(code=code, message=message)
    if content_type == PROTOBUF:
        return status.SerializeToString()
    return json.dumps(json_format.MessageToDict(status)).encode()
