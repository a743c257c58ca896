"""The aiohttp application: the page, its two static files, and one WebSocket per tab."""

from __future__ import annotations

import asyncio
import json
import logging
from importlib import resources
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from .._aio import within
from .._client import AsyncClient
from .._errors import CellserveError
from ._tab import Tab, TabSettings

log = logging.getLogger("cellserve_client.web")

# An edit carries the whole text (at most MAX_TEXT_CHARS characters; JSON escapes may take 6
# bytes each): a bigger frame is no message of the page, and the socket is closed with 1009.
MAX_FRAME_BYTES = 256 * 1024
HEARTBEAT_S = 30.0  # pings find tabs that vanished without closing their socket
STATIC = {"app.js": "text/javascript", "style.css": "text/css", "icon.svg": "image/svg+xml"}
# Everything the page loads comes from here: no CDN, so it works offline, and nothing injected
# into it can reach elsewhere.
CSP = "default-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'"
CHECK_TIMEOUT_S = 5.0  # the start-up check of the target; the page is served either way
CLIENT_KEY = web.AppKey("client", AsyncClient)
SETTINGS_KEY = web.AppKey("settings", TabSettings)


def _static(name: str) -> bytes:
    return (resources.files(__package__) / "static" / name).read_bytes()


def create_app(client: AsyncClient, settings: TabSettings | None = None) -> web.Application:
    """The web application over ``client`` (which the caller owns and closes)."""
    app = web.Application()
    app[CLIENT_KEY] = client
    app[SETTINGS_KEY] = settings or TabSettings()
    files = {name: _static(name) for name in (*STATIC, "index.html")}

    async def index(request: web.Request) -> web.Response:
        return web.Response(
            body=files["index.html"], content_type="text/html", headers={"Content-Security-Policy": CSP}
        )

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=files[name], content_type=STATIC[name])

    async def favicon(request: web.Request) -> web.Response:
        # Browsers ask for /favicon.ico whatever the page links: the page's icon, not a 404.
        return web.Response(body=files["icon.svg"], content_type=STATIC["icon.svg"])

    app.router.add_get("/", index)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/ws", tab_socket)
    return app


async def tab_socket(request: web.Request) -> web.StreamResponse:
    """One tab: its messages in order, answered by its ``Tab``; ends with the socket."""
    origin = request.headers.get("Origin")
    if origin is not None and origin.split("://", 1)[-1] != request.host:
        # Another site's page must not drive sessions that carry this backend's credentials.
        raise web.HTTPForbidden(text="cross-origin WebSocket refused")
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=MAX_FRAME_BYTES)
    await ws.prepare(request)
    lock = asyncio.Lock()

    async def send(obj: dict[str, Any]) -> None:
        if ws.closed:
            return
        async with lock:
            try:
                await ws.send_str(json.dumps(obj, ensure_ascii=False, allow_nan=False))
            except ConnectionError:
                pass  # the tab went away; its reader ends the handler

    tab = Tab(request.app[CLIENT_KEY], send, request.app[SETTINGS_KEY])
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await tab.handle(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await send({"type": "error", "code": "bad_message", "message": "send JSON text frames", "seq": None})
            elif msg.type == WSMsgType.ERROR:
                log.info("tab socket: %s", ws.exception())
    finally:
        await tab.close()
        if not ws.closed:
            await ws.close(code=WSCloseCode.GOING_AWAY)
    return ws


async def check_target(client: AsyncClient) -> str:
    """One line on whether cellserve answers, said at start: a backend whose target is wrong or
    down still serves the page (tabs connect when cellserve is up), but says so at once."""
    targets = ", ".join(client.targets)
    try:
        models = await within(client.models(), CHECK_TIMEOUT_S)
    except TimeoutError:
        return f"cellserve at {targets} did NOT answer within {CHECK_TIMEOUT_S:g} s; tabs will connect when it does"
    except CellserveError as exc:
        return (
            f"cellserve at {targets} is NOT reachable now ({type(exc).__name__}: {exc}); tabs will connect when it is"
        )
    names = ", ".join(m.name + (" (default)" if m.is_default else "") for m in models)
    return f"cellserve at {targets} answers; models: {names}"


async def serve(client: AsyncClient, host: str, port: int, settings: TabSettings | None = None) -> None:
    """Serves until cancelled; says whether cellserve answers, then the page's address."""
    print(await check_target(client), flush=True)
    runner = web.AppRunner(create_app(client, settings), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        shown = f"[{host}]" if ":" in host else host
        print(f"cellserve-client web on http://{shown}:{bound}/ (cellserve at {', '.join(client.targets)})", flush=True)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
