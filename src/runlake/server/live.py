"""``WS /api/v1/agents/ws``: live execution events of spans arriving through ingest, filtered per subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect

from ..api_models import WsParams
from ..auth import WS_SUBPROTOCOL_PREFIX, key_from_headers, key_from_subprotocols
from ..events import Subscriber
from .deps import missing_key_message
from .runtime import Runtime
from .settings import WS_SUBPROTOCOL

router = APIRouter()
_logger = logging.getLogger(__name__)
_UVICORN_DENIAL_LINE = "ASGI callable returned without completing handshake."


class DeniedHandshakeFilter(logging.Filter):
    """Drops uvicorn's error line for a handshake this router refused on purpose: it sends the 401/422 answer with
    the WebSocket Denial Response extension and says why itself (``_deny``); uvicorn's sans-I/O protocol still
    logs that the app "returned without completing handshake". Any other uvicorn record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != _UVICORN_DENIAL_LINE


@router.websocket("/api/v1/agents/ws")
async def live_events(websocket: WebSocket) -> None:
    runtime: Runtime = websocket.app.state.runtime
    offered = list(websocket.scope.get("subprotocols") or [])
    key = key_from_headers(websocket.headers) or key_from_subprotocols(offered)
    principal = runtime.authenticate(key)
    if principal is None:
        message = f"{missing_key_message(websocket.headers)} (or offer subprotocol {WS_SUBPROTOCOL_PREFIX}<key>)"
        await _deny(websocket, 401, message if key is None else "invalid API key")
        return
    try:
        params = WsParams(**dict(websocket.query_params))
    except ValidationError as error:
        await _deny(websocket, 422, error.errors(include_url=False, include_context=False))
        return
    await websocket.accept(subprotocol=WS_SUBPROTOCOL if WS_SUBPROTOCOL in offered else None)
    filters = {k: v for k, v in params.model_dump().items() if v is not None}
    sub = Subscriber(principal, filters, runtime.settings.ws_queue_size)
    runtime.hub.subscribers.add(sub)
    try:
        await websocket.send_json(
            {
                "type": "subscribed",
                "tenant_id": principal.tenant_id,
                "user_id": principal.read_user,
                "role": principal.role,
                "filters": filters,
                "queue_size": runtime.settings.ws_queue_size,
            }
        )
        await _pump(websocket, sub)
    except WebSocketDisconnect:
        pass
    finally:
        runtime.hub.subscribers.discard(sub)


async def _deny(websocket: WebSocket, status: int, detail: Any) -> None:
    _logger.info("WebSocket %s refused with %d: %s", websocket.url.path, status, str(detail)[:200])
    response = JSONResponse(
        {"detail": detail}, status, headers={"WWW-Authenticate": "Bearer"} if status == 401 else None
    )
    try:
        await websocket.send_denial_response(response)
    except RuntimeError:  # the server cannot send an HTTP response here: close with "policy violation"
        await websocket.close(code=1008, reason=str(detail)[:120])


async def _pump(websocket: WebSocket, sub: Subscriber) -> None:
    """Send queued events until the client goes away (a receiver task notices the close)."""

    async def receive_until_closed() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return

    closed = asyncio.create_task(receive_until_closed())
    try:
        while not closed.done():
            ready = asyncio.create_task(sub.ready.wait())
            await asyncio.wait({ready, closed}, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if closed.done():
                break
            sub.ready.clear()
            if sub.unreported_drops:
                dropped, sub.unreported_drops = sub.unreported_drops, 0
                await websocket.send_json({"type": "events_dropped", "count": dropped, "total": sub.dropped})
            while sub.queue:
                await websocket.send_json(sub.queue.popleft())
    finally:
        closed.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
            await closed
