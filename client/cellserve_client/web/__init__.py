"""``cellserve-client web``: a browser editor with live suggestions and a gate viewer.

A small web backend (aiohttp; the ``web`` extra) that does what an autocompletion backend does
with cellserve: it serves one page and holds one SDK session per browser tab, over one
WebSocket per tab. The page (``static/``: plain HTML, CSS and JavaScript, nothing fetched from
elsewhere) shows the model's greedy continuation as ghost text after the caret, and the gates of
the text typed so far (InspectGates) beside it.

Messages: one JSON object per WebSocket text frame, each with a ``type``. ``seq`` is chosen by
the page and grows with every message it sends; answers carry the ``seq`` they answer.

Page -> backend::

    {"type": "open", "seq": N, "model": "name" | null, "text": "..."}
        opens the tab's session (null: the server's default model) holding ``text``; again at
        any time to switch models, and after a reconnect (the page sends its text).
    {"type": "edit", "seq": N, "text": "..."}
        the whole text after an edit (at most 20000 characters).
    {"type": "ranked", "seq": N}
        the ranked suggestions at the end of the text (Ctrl+Space on the page).

Backend -> page::

    {"type": "opened", "seq": N, "model": {"name", "cell", "layers", "hidden", "gates"},
     "models": [...], "limits": {"max_text_chars", "gate_chars"}}
    {"type": "suggestion", "seq": N, "text": "...", "position": P, "failovers": F}
        the greedy continuation after the text of edit N (up to a line break).
    {"type": "gates", "seq": N, "cell": "lstm" | "gru", "gate_names": ["f", "i", "o"],
     "first_index": I, "characters": [{"char": "x", "top": [["y", p], ...],
                                        "layers": [{"f": [mean, [[unit, value, change|null], ...]], ...}, ...]}]}
        the gates of the last characters of the text of edit N (``first_index``: where they start).
    {"type": "ranked", "seq": N, "source": "beam-word", "items": [{"text", "logprob"}]}
    {"type": "status", "state": "reconnecting" | "ok", "message": "..."}
        cellserve cannot be reached (the tab opened while it was down, or its session was lost):
        the message is the real cause ("cellserve at HOST:PORT: ...; next attempt in N s"),
        sent again on every failed attempt (backing off to every 5 s); "ok" once it is back.
        A tab whose open failed that way gets "opened" when cellserve is up, then the answers
        for its newest text; its edits meanwhile are kept.
    {"type": "error", "code": C, "message": "...", "seq": N | null}

Error codes: ``bad_json`` (not JSON), ``bad_message`` (not an object, or a binary frame),
``unknown_type``, ``bad_field`` (a missing or mistyped field, a ``seq`` that does not grow),
``too_long`` (the text is over the limit), ``not_open`` (an edit before any open; after a
refused open, each edit tries the open again and gets its real error),
``not_found`` (no such model), ``bad_input`` (the server refused the text), ``server``
(another server error), ``gates`` (the gates could not be read), ``internal`` (a bug here; the
backend's log has it). A frame over 256 KiB closes the socket with code 1009. None of them ends
the tab: the backend reads on.
"""

from __future__ import annotations

from ._app import create_app, serve
from ._tab import TabSettings

__all__ = ["TabSettings", "create_app", "serve"]
