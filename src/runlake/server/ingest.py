"""``POST /v1/traces``: the OTLP/HTTP receiver. Bodies are read with a size cap, inflated with a cap (no zip
bombs), decoded and stored off the event loop; errors are ``google.rpc.Status`` in the request's encoding."""

from __future__ import annotations

import asyncio
import logging
import zlib

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from .. import otlp
from ..auth import key_from_headers
from ..ingest_log import IngestLog, StorageUnavailable
from .deps import missing_key_message, runtime_of
from .runtime import TenantSink
from .settings import RETRY_AFTER_S

_logger = logging.getLogger("runlake.server")
_GRPC_CODES = {400: 3, 401: 16, 408: 4, 403: 7, 404: 5, 413: 8, 415: 3, 429: 8, 500: 13, 503: 14}

router = APIRouter()


class BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ---- request bodies ----------------------------------------------------------------------------------------------
class ClientGone(Exception):
    """The client disconnected before sending its whole body (a collector's timeout, a killed SDK): nothing to
    answer, nothing stored."""

    def __init__(self, received: int) -> None:
        super().__init__(f"the client disconnected after {received} byte(s) of the body")
        self.received = received


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The raw body, refused with 413 as soon as it passes ``limit`` bytes (Content-Length checked first), and
    with 408 unless the whole body has arrived within ``timeout_s`` of the start: a slow or stalled client must
    not hold an ingest slot for longer than that (a deadline for the body, not a timeout for each chunk, which a
    client sending a byte now and then would never reach). Raises ``ClientGone`` if the client disconnects."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BodyError(413, f"body of {int(declared)} bytes is over the limit of {limit} bytes")
        except ValueError:
            raise BodyError(400, "Content-Length is not a number") from None
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyError(413, f"body is over the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise BodyError(
            408, f"the body did not arrive within {timeout_s:g} s ({size} bytes received); send the request again"
        ) from None
    except ClientDisconnect:
        raise ClientGone(size) from None
    return b"".join(chunks)


MAX_GZIP_MEMBERS = 1000  # concatenated gzip members per body; real clients send one
_INFLATE_CHUNK = 64 << 10


def decompress(data: bytes, encoding: str, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (gzip or deflate), never producing more than ``limit`` bytes (no bombs).

    The input is fed in slices, so ``unused_data`` never copies the rest of the body: the work is linear in the
    body, whatever its number of gzip members (at most ``MAX_GZIP_MEMBERS``).
    """
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}[encoding]
    view = memoryview(data)
    out = bytearray()
    pos = members = 0
    while pos < len(view):
        if members == MAX_GZIP_MEMBERS:
            raise BodyError(400, f"{encoding} body has more than {MAX_GZIP_MEMBERS} members")
        if members and encoding == "deflate":
            raise BodyError(400, "deflate body has trailing data")
        members += 1
        inflater = zlib.decompressobj(wbits)
        try:
            while not inflater.eof and pos < len(view):
                chunk = view[pos : pos + _INFLATE_CHUNK]
                pos += len(chunk)
                out += inflater.decompress(chunk, limit + 1 - len(out))
                if len(out) > limit or inflater.unconsumed_tail:
                    raise BodyError(413, f"decompressed body is over the limit of {limit} bytes")
        except zlib.error as error:
            where = f"data after gzip member {members - 1}" if members > 1 else f"body is not valid {encoding}"
            raise BodyError(400, f"{where}: {error}") from None
        if not inflater.eof:
            raise BodyError(400, f"{encoding} body is truncated")
        pos -= len(inflater.unused_data)  # the start of the next member (gzip allows several)
    return bytes(out)


def otlp_error(media: str, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    media = media if media == otlp.PROTOBUF else otlp.JSON
    body = otlp.encode_status(media, _GRPC_CODES.get(status, 2), message)
    return Response(body, status, headers=headers, media_type=media)


@router.post(
    "/v1/traces",
    tags=["OTLP"],
    summary="OTLP/HTTP trace receiver (ExportTraceServiceRequest, protobuf or JSON, gzip or deflate)",
    response_class=Response,
    responses={
        200: {"description": "ExportTraceServiceResponse; partial_success counts rejected spans"},
        400: {"description": "Malformed protobuf / JSON / gzip (google.rpc.Status)"},
        401: {"description": "No key or an unknown key"},
        408: {"description": "The whole body did not arrive within --body-timeout-s"},
        413: {"description": "Body (or decompressed body) over the limit"},
        415: {"description": "Content-Type other than application/x-protobuf or application/json"},
        429: {
            "description": "Too many requests in progress (on the server, or of the key's tenant); retry after "
            "Retry-After"
        },
        503: {"description": "The lake cannot be written; retry after Retry-After"},
    },
)
async def ingest(request: Request) -> Response:
    runtime = runtime_of(request)
    settings = runtime.settings
    media = otlp.media_type(request.headers.get("content-type")) or otlp.JSON
    key = key_from_headers(request.headers)
    principal = runtime.authenticate(key)
    if principal is None:
        message = missing_key_message(request.headers) if key is None else "invalid API key"
        return otlp_error(media, 401, message, {"WWW-Authenticate": "Bearer"})
    if otlp.media_type(request.headers.get("content-type")) is None:
        return otlp_error(
            media,
            415,
            f"Content-Type must be {otlp.PROTOBUF} or {otlp.JSON}, got {request.headers.get('content-type')!r}",
        )
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "", "gzip", "x-gzip", "deflate"):
        return otlp_error(media, 415, f"Content-Encoding {encoding!r} is not supported (use gzip or deflate)")
    refused = runtime.ingest_slots.take(None if settings.no_auth else principal.tenant_id)
    if refused:
        return otlp_error(media, 429, refused, {"Retry-After": str(RETRY_AFTER_S)})
    try:
        body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
        sink = runtime.sink(principal.tenant_id)
        decoded, rejected = await anyio.to_thread.run_sync(
            _decode_and_store,
            body,
            encoding,
            media,
            settings.max_body_bytes,
            sink,
            runtime.log,
            principal.read_user,  # a user key writes as its own user, whatever the spans claim
            limiter=runtime.ingest_limiter,
        )
    except BodyError as error:
        headers = {"Connection": "close"} if error.status == 408 else None  # the rest of the body is not read
        return otlp_error(media, error.status, error.message, headers)
    except ClientGone as error:  # nobody to answer: the response below is dropped by the server
        _logger.info("runlake ingest (%s): %s; nothing stored", principal.name, error)
        return otlp_error(media, 400, str(error))
    except otlp.OTLPDecodeError as error:
        return otlp_error(media, 400, str(error))
    except StorageUnavailable as error:
        _logger.error("runlake ingest: %s", error)
        return otlp_error(media, 503, str(error), {"Retry-After": str(RETRY_AFTER_S)})
    except Exception:  # noqa: BLE001
        _logger.exception("runlake ingest failed")
        return otlp_error(media, 500, "internal server error")
    finally:
        runtime.ingest_slots.give_back(None if settings.no_auth else principal.tenant_id)
    message = decoded.error_message
    if rejected:  # refused by the mapping (not by the decoder)
        decoded.rejected += rejected
        message = decoded.error_message or f"{rejected} span(s) could not be stored"
    return Response(otlp.encode_response(media, decoded.rejected, message), 200, media_type=media)


def _decode_and_store(
    body: bytes,
    encoding: str,
    media: str,
    limit: int,
    sink: TenantSink,
    log: IngestLog | None,
    user: str | None,
) -> tuple[otlp.DecodedRequest, int]:
    if encoding in ("gzip", "x-gzip", "deflate"):
        body = decompress(body, encoding, limit)
    decoded = otlp.decode_request(body, media)
    rejected = sink.ingest(decoded.spans, log, (media, body), user=user) if decoded.spans else 0
    return decoded, rejected
