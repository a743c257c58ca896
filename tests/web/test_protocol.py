"""The web backend's WebSocket protocol: answers, clear errors for every kind of bad message,
and a backend that outlives them all; a server restart is survived without losing the text."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cellserve_client import Client
from servers import ServerProcess, start_server

from .conftest import KEY_ENV, WebProcess

aiohttp = pytest.importorskip("aiohttp", reason="the web extra is not installed: pip install 'cellserve-client[web]'")

SUGGEST_CHARS = 24  # the backend's default (TabSettings.suggest_chars)
TIMEOUT_S = 60.0


def fresh_suggestion(target: str, text: str, model: str | None = None) -> str:
    """The ghost text a new session shows after ``text``: the greedy continuation to a line break."""
    with Client(target) as c, c.open(model) as s:
        if text:
            s.append(text)
        return s.complete(max_chars=SUGGEST_CHARS, stop=["\n"]).collect()[0].text.split("\n")[0]


def run(url: str, body: Callable[[aiohttp.ClientWebSocketResponse], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(url + "ws", **kw) as ws:
            await body(ws)

    asyncio.run(asyncio.wait_for(main(), 4 * TIMEOUT_S))


async def until(ws: aiohttp.ClientWebSocketResponse, kind: str, seq: int | None = None) -> dict[str, Any]:
    """The next message of ``kind`` (for ``seq`` when given), skipping the others."""
    while True:
        msg = await ws.receive_json(timeout=TIMEOUT_S)
        if msg["type"] == kind and (seq is None or msg.get("seq") == seq):
            return msg


async def send(ws: aiohttp.ClientWebSocketResponse, **msg: Any) -> None:
    await ws.send_str(json.dumps(msg))


def test_open_edit_ranked(web: WebProcess, shipped_server: ServerProcess) -> None:
    got: dict[str, Any] = {}

    async def body(ws: aiohttp.ClientWebSocketResponse) -> None:
        await send(ws, type="open", seq=1, model=None, text="import o")
        got["opened"] = await until(ws, "opened", 1)
        got["first"] = await until(ws, "suggestion", 1)
        got["gates"] = await until(ws, "gates", 1)
        await send(ws, type="edit", seq=2, text="import")  # Backspace twice: a rewind
        got["rewound"] = await until(ws, "suggestion", 2)
        await send(ws, type="edit", seq=3, text="imXport")  # an edit in the middle
        got["middle"] = await until(ws, "suggestion", 3)
        await send(ws, type="ranked", seq=4)
        got["ranked"] = await until(ws, "ranked", 4)

    run(web.url, body)
    assert got["opened"]["model"]["name"] == "python-lstm" and got["opened"]["model"]["gates"] == ["f", "i", "o"]
    assert got["first"]["text"] == fresh_suggestion(shipped_server.target, "import o")
    assert got["first"]["position"] == len("import o")
    assert got["rewound"]["text"] == fresh_suggestion(shipped_server.target, "import")
    assert got["middle"]["text"] == fresh_suggestion(shipped_server.target, "imXport")
    assert got["middle"]["position"] == len("imXport")
    g = got["gates"]
    assert g["gate_names"] == ["f", "i", "o"] and "".join(c["char"] for c in g["characters"]) == "import o"
    layer = g["characters"][-1]["layers"][1]
    assert set(layer) == {"f", "i", "o"} and 0 < layer["f"][0] < 1 and len(layer["f"][1]) == 3
    items = got["ranked"]["items"]
    assert got["ranked"]["source"] == "beam-word"
    with Client(shipped_server.target) as c, c.open() as s:
        s.append("imXport")
        want = s.suggest(n=8, scope="word", max_chars=24)
    assert [i["text"] for i in items] == [w.text for w in want] and len(items) >= 2
    assert [i["logprob"] for i in items] == pytest.approx([w.logprob for w in want], abs=1e-4)


def test_rewind_beyond_the_window_starts_over(web: WebProcess, shipped_server: ServerProcess) -> None:
    """Deleting more than the server's rewind window (256 characters) resets and re-appends."""
    long = "x = [" + ", ".join(str(i) for i in range(80)) + "]\n"
    got: dict[str, Any] = {}

    async def body(ws: aiohttp.ClientWebSocketResponse) -> None:
        await send(ws, type="open", seq=1, text=long)
        await until(ws, "suggestion", 1)
        await send(ws, type="edit", seq=2, text="x = [1")
        got["short"] = await until(ws, "suggestion", 2)

    assert len(long) > 300
    run(web.url, body)
    assert got["short"]["position"] == len("x = [1")
    assert got["short"]["text"] == fresh_suggestion(shipped_server.target, "x = [1")


def test_model_flag_is_the_pages_default(shipped_server: ServerProcess) -> None:
    web = WebProcess(shipped_server.target, "--model", "python-gru")
    got: dict[str, Any] = {}

    async def body(ws: aiohttp.ClientWebSocketResponse) -> None:
        await send(ws, type="open", seq=1, model=None, text="x = ")
        got["opened"] = await until(ws, "opened", 1)
        got["suggestion"] = await until(ws, "suggestion", 1)

    try:
        run(web.url, body)
    finally:
        web.stop()
    assert got["opened"]["model"]["name"] == "python-gru" and got["opened"]["model"]["gates"] == ["r", "z"]
    assert got["suggestion"]["text"] == fresh_suggestion(shipped_server.target, "x = ", "python-gru")


BAD = [
    ("not json", "bad_json", "not JSON"),
    ("[1, 2]", "bad_message", "JSON object"),
    ('{"type": "dance", "seq": 1}', "unknown_type", "known types: open, edit, ranked"),
    ('{"type": "edit", "text": "x"}', "bad_field", "'seq' must be an integer"),
    ('{"type": "edit", "seq": true, "text": "x"}', "bad_field", "'seq' must be an integer"),
    ('{"type": "edit", "seq": -1, "text": "x"}', "bad_field", "'seq' must be an integer"),
    ('{"type": "edit", "seq": 1, "text": 5}', "bad_field", "'text' must be a string"),
    ('{"type": "edit", "seq": 1}', "bad_field", "'text' must be a string"),
    ('{"type": "edit", "seq": 1, "text": "x"}', "not_open", "send an 'open' message first"),
    ('{"type": "open", "seq": 1, "model": 7}', "bad_field", "'model' must be a string or null"),
    ('{"type": "open", "seq": 1, "text": "\\ud800"}', "bad_field", "unpaired UTF-16 surrogate"),
    (json.dumps({"type": "open", "seq": 1, "text": "x" * 20_001}), "too_long", "at most 20000"),
    ('{"type": "open", "seq": 1, "model": "no-such-model"}', "not_found", "unknown model"),
]


def test_bad_messages_get_clear_errors_and_the_tab_goes_on(web: WebProcess, shipped_server: ServerProcess) -> None:
    errors: list[dict[str, Any]] = []
    after: dict[str, Any] = {}

    async def body(ws: aiohttp.ClientWebSocketResponse) -> None:
        for frame, _, _ in BAD:
            await ws.send_str(frame)
            errors.append(await until(ws, "error"))
        await ws.send_bytes(b"\x00\x01")
        errors.append(await until(ws, "error"))
        await send(ws, type="open", seq=10, text="def ")
        await until(ws, "suggestion", 10)
        await send(ws, type="edit", seq=10, text="def f")  # seq must grow
        errors.append(await until(ws, "error"))
        await send(ws, type="edit", seq=11, text="def f")
        after["suggestion"] = await until(ws, "suggestion", 11)

    run(web.url, body)
    for (frame, code, words), err in zip(BAD, errors, strict=False):
        assert (err["code"], words in err["message"]) == (code, True), (frame, err)
    assert errors[len(BAD)]["code"] == "bad_message" and "JSON text frames" in errors[len(BAD)]["message"]
    assert errors[-1]["code"] == "bad_field" and "'seq' must grow" in errors[-1]["message"]
    for err in errors:
        assert "Traceback" not in err["message"] and "cellserve_client" not in err["message"]
    assert after["suggestion"]["text"] == fresh_suggestion(shipped_server.target, "def f")
    assert web.alive


def test_oversized_frame_closes_only_that_socket(web: WebProcess) -> None:
    closed: dict[str, Any] = {}

    async def body(ws: aiohttp.ClientWebSocketResponse) -> None:
        await ws.send_str("x" * (300 * 1024))
        msg = await ws.receive(timeout=TIMEOUT_S)
        closed["type"], closed["code"] = msg.type, ws.close_code

    run(web.url, body)
    assert closed["type"] in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    assert closed["code"] == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    opened: dict[str, Any] = {}

    async def again(ws: aiohttp.ClientWebSocketResponse) -> None:
        await send(ws, type="open", seq=1, text="")
        opened.update(await until(ws, "opened", 1))

    run(web.url, again)  # the backend is still there for the next tab
    assert opened["model"]["name"] and web.alive


def test_page_is_self_contained_and_cross_origin_sockets_are_refused(web: WebProcess) -> None:
    async def main() -> tuple[str, str, int, int]:
        async with aiohttp.ClientSession() as http:
            async with http.get(web.url) as r:
                page, csp = await r.text(), r.headers["Content-Security-Policy"]
            async with http.get(web.url + "static/app.js") as r:
                js = await r.text()
            async with http.get(web.url + "static/../../etc/passwd") as r:
                missing = r.status
            try:
                await http.ws_connect(web.url + "ws", headers={"Origin": "http://elsewhere.example"})
                refused = 0
            except aiohttp.WSServerHandshakeError as exc:
                refused = exc.status
            return page + js, csp, missing, refused

    text, csp, missing, refused = asyncio.run(main())
    assert 'data-testid="suggestion"' in text and 'data-testid="gates"' in text
    assert "http://" not in text and "https://" not in text  # nothing loaded from elsewhere: works offline
    assert "default-src 'self'" in csp
    assert missing == 404 and refused == 403


def test_server_restart_keeps_the_text(model_dir: Path) -> None:
    """The server goes away while the page is typed into, and a new one comes up on the same
    address: the tab ends up on it, with the page's whole text, answering as a fresh session."""
    first = start_server(model_dir, env=KEY_ENV)
    port = first.target.rsplit(":", 1)[1]
    web = WebProcess(first.target)
    second: ServerProcess | None = None
    got: dict[str, Any] = {}
    try:

        async def body(ws: aiohttp.ClientWebSocketResponse) -> None:
            nonlocal second
            await send(ws, type="open", seq=1, text="for i in ")
            await until(ws, "suggestion", 1)
            first.terminate()
            await send(ws, type="edit", seq=2, text="for i in range(")  # typed while it is down
            second = await asyncio.to_thread(start_server, model_dir, "--port", port, env=KEY_ENV)
            got["suggestion"] = await until(ws, "suggestion", 2)

        run(web.url, body)
        print("".join(web.lines))  # shown on failure: how the tab got over (failover or rebuild)
        assert second is not None and second.target == first.target
        assert got["suggestion"]["position"] == len("for i in range(")
        assert got["suggestion"]["text"] == fresh_suggestion(second.target, "for i in range(")
        assert web.alive
    finally:
        web.stop()
        first.kill()
        if second is not None:
            second.terminate()


def test_backend_says_at_start_whether_cellserve_answers(web: WebProcess) -> None:
    assert any("answers; models: python-gru, python-lstm (default)" in line for line in web.lines), web.lines


def test_favicon_is_served(web: WebProcess) -> None:
    async def main() -> tuple[int, str, str]:
        async with aiohttp.ClientSession() as http, http.get(web.url + "favicon.ico") as r:
            return r.status, r.content_type, await r.text()

    status, kind, body = asyncio.run(main())
    assert status == 200 and kind == "image/svg+xml" and body.startswith("<svg")


def test_tab_opened_while_cellserve_is_down_connects_when_it_comes_up(model_dir: Path) -> None:
    """The real cause is shown (never "not_open"), edits typed meanwhile are kept, and the tab
    opens by itself once cellserve is up: "opened", then the answer for the newest text."""
    port = _free_port()
    target = f"127.0.0.1:{port}"
    web = WebProcess(target)
    server: ServerProcess | None = None
    got: dict[str, Any] = {"statuses": [], "errors": []}
    try:
        assert any(f"cellserve at {target} is NOT reachable now" in line for line in web.lines), web.lines

        async def body(ws: aiohttp.ClientWebSocketResponse) -> None:
            nonlocal server
            await send(ws, type="open", seq=1, model=None, text="def ")
            got["statuses"].append(await until(ws, "status"))
            await send(ws, type="edit", seq=2, text="def main(")  # typed while cellserve is down
            server = await asyncio.to_thread(start_server, model_dir, "--port", str(port), env=KEY_ENV)
            while True:
                msg = await ws.receive_json(timeout=TIMEOUT_S)
                if msg["type"] in ("error", "status"):
                    got[msg["type"] + "s" if msg["type"] == "error" else "statuses"].append(msg)
                else:
                    got[msg["type"]] = msg
                if msg["type"] == "suggestion" and msg["seq"] == 2:
                    return

        run(web.url, body)
        first = got["statuses"][0]
        assert first["state"] == "reconnecting" and f"cellserve at {target}" in first["message"]
        assert "failed to connect" in first["message"] or "Connection refused" in first["message"]
        assert got["errors"] == [], got["errors"]
        assert got["statuses"][-1]["state"] == "ok"  # said once it is back
        assert got["opened"]["model"]["name"] == "tiny-lstm"
        assert server is not None
        assert got["suggestion"]["position"] == len("def main(")
        assert got["suggestion"]["text"] == fresh_suggestion(server.target, "def main(")
    finally:
        web.stop()
        if server is not None:
            server.terminate()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_a_refused_open_is_retried_by_edits_with_its_real_cause(web: WebProcess) -> None:
    errors: list[dict[str, Any]] = []

    async def body(ws: aiohttp.ClientWebSocketResponse) -> None:
        await send(ws, type="open", seq=1, model="no-such-model", text="x")
        errors.append(await until(ws, "error", 1))
        await send(ws, type="edit", seq=2, text="xy")
        errors.append(await until(ws, "error", 2))

    run(web.url, body)
    assert [e["code"] for e in errors] == ["not_found", "not_found"], errors
    assert errors[1]["message"] == errors[0]["message"]  # the same real cause, not "not_open"


def test_gates_carry_the_units_that_track_the_text(web: WebProcess) -> None:
    """The shipped models have units.json (``cellserve units``): the gates message carries each
    tracked unit's label and its state for every character shown."""
    got: dict[str, Any] = {}

    async def body(ws: aiohttp.ClientWebSocketResponse) -> None:
        await send(ws, type="open", seq=1, model=None, text='x = ("a", [1])')
        got["gates"] = await until(ws, "gates", 1)

    run(web.url, body)
    tracked = got["gates"]["tracked"]
    assert {t["feature"] for t in tracked} == {"in_string", "in_comment", "bracket_depth", "indent", "column"}
    for t in tracked:
        assert len(t["values"]) == len('x = ("a", [1])') and t["label"] and -1 <= t["correlation"] <= 1
