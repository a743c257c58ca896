"""The page in a real browser (Debian's chromium driven by playwright): suggestions as ghost
text, Tab, Backspace and edits in the middle rewinding the session exactly, ranked word
completions, and the gate viewer. Skips only where chromium or playwright is not installed."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import ServerProcess

from .conftest import ROOT, WebProcess
from .test_protocol import fresh_suggestion

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = ROOT / "docs" / "web-editor.png"
WAIT_MS = 60_000
# Records (editor text, ghost text, state) every time the page redraws the ghost.
RECORD_GHOSTS = """() => {
  window.ghosts = [];
  const g = document.querySelector('[data-testid=suggestion]');
  const t = document.querySelector('[data-testid=editor]');
  new MutationObserver(() => window.ghosts.push([t.value, g.textContent, g.dataset.state]))
    .observe(g, {childList: true, characterData: true, subtree: true, attributes: true});
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def new_page(browser: Any, url: str) -> Any:
    pg = browser.new_page(viewport={"width": 1280, "height": 720})
    pg.set_default_timeout(WAIT_MS)
    pg.goto(url)
    return pg


@pytest.fixture(scope="module")
def page(browser: Any, web: WebProcess) -> Any:
    return new_page(browser, web.url)


def settled(page: Any, text: str) -> str:
    """Waits until the editor holds ``text`` and the ghost suggestion is the answer for it."""
    page.wait_for_function(
        """(t) => document.querySelector('[data-testid=editor]').value === t
              && document.querySelector('[data-testid=suggestion]').dataset.state === 'fresh'""",
        arg=text,
    )
    value: str = page.get_by_test_id("suggestion").text_content()
    return value


def test_type_accept_rewind_and_gates(page: Any, web: WebProcess, shipped_server: ServerProcess) -> None:
    target = shipped_server.target
    editor = page.get_by_test_id("editor")
    editor.click()
    settled(page, "")
    page.evaluate(RECORD_GHOSTS)
    page.keyboard.type("import o", delay=15)  # fast typing: appends pipeline and coalesce
    ghost = settled(page, "import o")
    assert ghost and ghost == fresh_suggestion(target, "import o")
    # No stale suggestion was ever shown: every ghost shown as an answer is the answer for the
    # text it was shown after, and meanwhile only the rest of the last answer was shown.
    shown: list[tuple[str, str, str]] = [tuple(r) for r in page.evaluate("window.ghosts")]
    assert ("import o", ghost, "fresh") in shown
    last = ""
    for value, text, state in shown:
        if state == "fresh":
            if text:
                assert text == fresh_suggestion(target, value), (value, text)
            last = value + text
        elif text:
            assert value + text == last, (value, text)

    page.keyboard.press("Tab")  # accepts the suggestion
    accepted = "import o" + ghost
    assert editor.input_value() == accepted
    assert settled(page, accepted) == fresh_suggestion(target, accepted)

    page.keyboard.press("Backspace")  # rewinds the session by one character
    assert settled(page, accepted[:-1]) == fresh_suggestion(target, accepted[:-1])

    page.keyboard.press("Home")
    for _ in range(2):
        page.keyboard.press("ArrowRight")
    page.keyboard.type("X")  # an edit in the middle: rewound to the edit point, the rest re-appended
    edited = "imXport o" + ghost[:-1]
    settled(page, edited)
    assert page.get_by_test_id("suggestion").text_content() == ""  # no ghost away from the end
    page.keyboard.press("End")
    want = fresh_suggestion(target, edited)
    # the ghost comes back after the caret event reaches the page's handler: wait for it to show
    page.wait_for_function(
        "(w) => document.querySelector('[data-testid=suggestion]').textContent === w", arg=want, timeout=15000
    )
    assert settled(page, edited) == want
    page.wait_for_function(
        "(n) => document.querySelector('[data-testid=status]').textContent.includes('position ' + n)",
        arg=len(edited),
    )
    status = page.get_by_test_id("status").text_content()
    assert "python-lstm (lstm 2×512)" in status and "round trip" in status and " ms" in status

    # The gate viewer: rows L0 f .. L1 o, one cell per character, and a hover with the detail.
    page.wait_for_function(
        "(n) => document.querySelectorAll('[data-testid=gates] .row.chars .cell').length === n", arg=len(edited)
    )
    gates = page.get_by_test_id("gates")
    rows = gates.locator(".row[data-gate]")
    assert rows.count() == 6
    assert [rows.nth(k).locator(".label").text_content() for k in range(6)] == [
        "L0 f", "L0 i", "L0 o", "L1 f", "L1 i", "L1 o"
    ]  # fmt: skip
    assert rows.nth(0).locator(".cell").count() == len(edited)
    gates.locator(".row.chars .cell").nth(2).hover()
    detail = page.get_by_test_id("gate-detail").text_content()
    assert detail.startswith("'X'  character 2") and "layer 1  f 0." in detail and "next: '" in detail
    assert "units that moved most: #" in detail
    legend = page.get_by_test_id("legend").text_content()
    assert "forget gate: near 0 the cell forgets its previous content" in legend

    # Ctrl+Space: the ranked word completions; Enter inserts the first.
    page.keyboard.press("Control+Space")
    ranked = page.get_by_test_id("ranked")
    ranked.wait_for(state="visible")
    first = ranked.locator("li").first.locator("span").first.text_content()
    assert ranked.locator("li").count() >= 2
    page.keyboard.press("Enter")
    assert ranked.is_hidden()
    assert editor.input_value() == edited + {"␣": " ", "↵": "\n", "⇥": "\t"}.get(first, first)


def test_gru_gates_and_screenshot(page: Any, tmp_path: Path) -> None:
    """Switching to the GRU shows r and z rows and the update-gate legend; the page's picture
    goes to the README when CELLSERVE_UPDATE_SCREENSHOT is set."""
    page.get_by_test_id("model").select_option("python-gru")
    editor = page.get_by_test_id("editor")
    editor.fill("")
    editor.type("def area(r):\n    return 3.14 * r", delay=5)
    page.keyboard.press("End")
    page.wait_for_function("() => document.querySelectorAll('[data-testid=gates] .row[data-gate]').length === 4")
    legend = page.get_by_test_id("legend").text_content()
    assert "update gate: near 1 the state keeps its previous value" in legend
    settled(page, "def area(r):\n    return 3.14 * r")
    page.get_by_test_id("model").select_option("python-lstm")
    page.wait_for_function("() => document.querySelectorAll('[data-testid=gates] .row[data-gate]').length === 6")
    settled(page, "def area(r):\n    return 3.14 * r")
    page.get_by_test_id("gates").locator(".row.chars .cell").nth(-3).hover()
    shot = tmp_path / "web-editor.png"
    page.set_viewport_size({"width": 1280, "height": 540})  # the README's picture: no empty bottom
    page.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("CELLSERVE_UPDATE_SCREENSHOT"):
        shutil.copyfile(shot, SCREENSHOT)


def test_web_backend_restart_keeps_the_page_text(browser: Any, shipped_server: ServerProcess) -> None:
    """The backend goes away under an open page and comes back on the same port: the page
    reconnects, sends its text with the new open, and answers as a fresh session would."""
    first = WebProcess(shipped_server.target)
    port = int(first.url.rsplit(":", 1)[1].strip("/"))
    second: WebProcess | None = None
    pg = new_page(browser, first.url)
    try:
        editor = pg.get_by_test_id("editor")
        editor.click()
        pg.keyboard.type("while True:", delay=5)
        settled(pg, "while True:")
        first.stop()
        pg.wait_for_function("() => document.querySelector('[data-testid=status]').textContent.includes('unreachable')")
        pg.keyboard.type("\n    ")  # typed while the backend is away
        second = WebProcess(shipped_server.target, port=port)
        text = "while True:\n    "
        assert settled(pg, text) == fresh_suggestion(shipped_server.target, text)
        assert editor.input_value() == text
    finally:
        pg.close()
        first.stop()
        if second is not None:
            second.stop()


def test_page_opened_while_cellserve_is_down_shows_why_and_recovers(browser: Any, model_dir: Path) -> None:
    """cellserve is down as the tab opens: the status line shows the real cause (never
    "not_open"), the text typed meanwhile stays, and once cellserve is up the ghost for that
    text appears by itself, with no reload. Every request of the page succeeds (favicon too)."""
    from servers import start_server

    from .conftest import KEY_ENV
    from .test_protocol import _free_port

    port = _free_port()
    web = WebProcess(f"127.0.0.1:{port}")
    server: ServerProcess | None = None
    failed: list[str] = []
    pg = browser.new_page(viewport={"width": 1280, "height": 720})
    pg.set_default_timeout(WAIT_MS)
    pg.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    try:
        pg.goto(web.url)
        status = pg.get_by_test_id("status")
        pg.wait_for_function(
            "() => document.querySelector('[data-testid=status]').textContent.includes('reconnecting · cellserve at')"
        )
        editor = pg.get_by_test_id("editor")
        editor.click()
        pg.keyboard.type("import o", delay=5)
        assert "not_open" not in status.text_content()
        assert "Connection refused" in status.text_content() or "failed to connect" in status.text_content()
        server = start_server(model_dir, "--port", str(port), env=KEY_ENV)
        assert settled(pg, "import o") == fresh_suggestion(server.target, "import o")
        pg.wait_for_function(
            "() => !document.querySelector('[data-testid=status]').textContent.includes('reconnecting')"
        )
        assert "tiny-lstm" in status.text_content() and editor.input_value() == "import o"
        pg.wait_for_timeout(500)  # the browser asks for the favicon after the load
        assert failed == [], failed
    finally:
        pg.close()
        web.stop()
        if server is not None:
            server.terminate()


def test_tracked_units_are_shown_and_readable_at_1280(page: Any) -> None:
    """Beside the gate means, one row per tracked unit (labelled), the newest characters in view
    and the labels kept at the left of the viewer at 1280 px."""
    editor = page.get_by_test_id("editor")
    editor.fill("")
    editor.click()
    page.keyboard.type('def f(x):\n    return [x, ("a", 1)]  # done\n' * 2, delay=2)
    page.wait_for_selector("[data-testid=tracked]")
    rows = page.locator("[data-testid=tracked] .row .label").all_text_contents()
    assert sorted(rows) == ["brackets", "column", "comment", "indent", "string"]
    box = page.get_by_test_id("gates").bounding_box()
    assert box["x"] + box["width"] <= 1280  # the viewer fits the window
    label = page.locator("[data-testid=tracked] .row .label").first.bounding_box()
    assert box["x"] <= label["x"] < box["x"] + 20  # the labels stay in view after scrolling to the end
    last = page.locator(".row.chars .cell").last.bounding_box()
    assert last["x"] + last["width"] <= box["x"] + box["width"]  # the newest character is in view
    page.locator("[data-testid=tracked] .row .cell").last.hover()
    assert "bracket depth" in page.get_by_test_id("gate-detail").text_content()
