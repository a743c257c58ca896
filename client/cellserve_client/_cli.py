"""``cellserve-client``: the command line of the SDK.

    cellserve-client [--target HOST:PORT ...] models
    cellserve-client predict TEXT
    cellserve-client complete TEXT [--max-chars N] [--n N] [--temperature T]
    cellserve-client type          (needs the [cli] extra: prompt_toolkit)
    cellserve-client web [--host 127.0.0.1] [--port 8080]   (needs the [web] extra: aiohttp)

``type`` is a one-line-at-a-time editor: the session follows the line as it is edited (typed
characters are appended, Backspace rewinds), and the model's greedy continuation is shown as
dimmed ghost text after the cursor; Ctrl-Space cycles the ghost through the ranked suggestions
for the current word (``Session.suggest``, listed in the toolbar), Tab accepts what the ghost
shows, Enter appends the line break, Ctrl-D ends.
``web`` serves the same editor, and a gate viewer, to a browser (``cellserve_client.web``).
The connection options may come before the command or after it.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

from ._errors import CellserveError
from ._sync import Client, Session
from ._types import Prediction

RANKED = 5  # ranked suggestions Ctrl-Space cycles through


def _connection_options(p: argparse.ArgumentParser, defaults: bool) -> None:
    """Where and how to connect; accepted before the command and after it. After it, unset
    options are left out (SUPPRESS), so they never override what came before the command."""

    def d(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    p.add_argument(
        "--target",
        action="append",
        default=d(None),
        help="server host:port; repeat for replicas (default: $CELLSERVE_TARGET or localhost:50051)",
    )
    p.add_argument("--token", default=d(None), help="sent as 'authorization: Bearer ...' (default: $CELLSERVE_TOKEN)")
    p.add_argument("--tls", action="store_true", default=d(False), help="use TLS with the system's root certificates")
    p.add_argument(
        "--tls-ca", metavar="PEM", default=d(None), help="use TLS trusting this CA bundle (not the system roots)"
    )
    p.add_argument("--tls-cert", metavar="PEM", default=d(None), help="client certificate (mTLS); with --tls-key")
    p.add_argument("--tls-key", metavar="PEM", default=d(None), help="private key of --tls-cert")
    p.add_argument("--transport", choices=("stream", "unary"), default=d("stream"))
    p.add_argument("--timeout", type=float, default=d(30.0), help="seconds to wait for an answer")
    p.add_argument("--model", default=d(None), help="model name (default: the server's default)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cellserve-client", description="Talk to a cellserve server.")
    _connection_options(p, defaults=True)
    after = argparse.ArgumentParser(add_help=False)
    _connection_options(after, defaults=False)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the server's models", parents=[after])
    pr = sub.add_parser("predict", help="the most probable next characters after TEXT", parents=[after])
    pr.add_argument("text")
    pr.add_argument("--top-k", type=int, default=5)
    co = sub.add_parser("complete", help="continue TEXT", parents=[after])
    co.add_argument("text")
    co.add_argument("--max-chars", type=int, default=32)
    co.add_argument("--n", type=int, default=1)
    co.add_argument("--temperature", type=float, default=0.0)
    co.add_argument("--seed", type=int, default=None)
    ty = sub.add_parser("type", help="interactive editor with ghost-text suggestions", parents=[after])
    ty.add_argument("--suggest-chars", type=int, default=16, help="length of the ghost suggestion")
    we = sub.add_parser("web", help="serve a browser editor with suggestions and a gate viewer", parents=[after])
    we.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    we.add_argument("--port", type=int, default=8080, help="port to listen on (0: any free port)")
    we.add_argument("--suggest-chars", type=int, default=24, help="length of the ghost suggestion")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    targets = args.target or [os.environ.get("CELLSERVE_TARGET", "localhost:50051")]
    if args.command == "web":
        return _web(args, targets)
    try:
        with Client(targets, **_connection(args)) as client:
            if args.command == "models":
                for m in client.models():
                    bpc = f"{m.validation_bits_per_char:.3f}" if m.validation_bits_per_char is not None else "-"
                    star = " (default)" if m.is_default else ""
                    loss = "" if m.precision_loss is None else f" ({m.precision_loss:+.2%} bits/char)"
                    print(
                        f"{m.name}{star}\t{m.cell.value}\t{m.layers}x{m.hidden}\tbits/char {bpc}\t{m.precision}{loss}"
                    )
            elif args.command == "predict":
                with client.open(args.model) as session:
                    pred = session.append(args.text, top_k=args.top_k)
                    for char, prob in pred.top:
                        print(f"{char!r}\t{prob:.4f}")
            elif args.command == "complete":
                with client.open(args.model) as session:
                    session.append(args.text, top_k=0)
                    stream = session.complete(
                        max_chars=args.max_chars, n=args.n, temperature=args.temperature, seed=args.seed
                    )
                    for c in stream.collect():
                        print(c.text if args.n == 1 else f"[{c.alternative}] {c.text!r}")
            else:
                with client.open(args.model) as session:
                    return _type(session, args.suggest_chars)
    except CellserveError as exc:
        print(f"cellserve-client: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a credential argument that cannot be used
        print(f"cellserve-client: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


class Typer:
    """Keeps a session in step with an edited line and computes the ghost suggestion."""

    def __init__(self, session: Session, suggest_chars: int) -> None:
        self.session = session
        self.suggest_chars = suggest_chars
        self.line = ""  # the part of the current line the session has consumed
        self.suggestion = ""
        self.prediction: Prediction | None = None
        self.ranked: list[str] = []  # ranked word suggestions for ``ranked_for`` (on demand)
        self.ranked_for: str | None = None
        self.choice = -1  # index into ``ranked`` the ghost shows; -1: the greedy continuation
        self._lock = threading.Lock()

    def sync(self, text: str) -> str:
        """Brings the session to ``text`` (rewinding what was deleted, appending what was
        typed) and returns the new suggestion."""
        with self._lock:
            common = os.path.commonprefix([self.line, text])
            deleted = len(self.line) - len(common)
            if len(text) > len(common):
                if deleted:
                    self.session.rewind(deleted)
                self.prediction = self.session.append(text[len(common) :])
            elif deleted:
                self._rewind_to(common, deleted)
            self.line = text
            self.choice = -1
            stream = self.session.complete(max_chars=self.suggest_chars, stop=("\n",))
            self.suggestion = "".join(c.text for c in stream).split("\n")[0]
            return self.suggestion

    def _rewind_to(self, kept: str, deleted: int) -> None:
        """A pure deletion: the rewind answers no prediction, so the last kept character is
        rewound too and appended again (the rewind restores its state exactly), and the
        toolbar shows the probabilities after the text now on screen, not the deleted text's.
        Before the line comes the newline that ended the previous one; at the very start of
        the session there is nothing to re-read, and no prediction to show."""
        position = self.session.position - deleted
        if position == 0:
            self.session.rewind(deleted)
            self.prediction = None
            return
        self.session.rewind(deleted + 1)
        self.prediction = self.session.append(kept[-1] if kept else "\n")

    def cycle(self) -> str:
        """The next ranked suggestion for the current word (asked for once per text), as the
        new ghost; after the last one, back to the first."""
        with self._lock:
            if self.ranked_for != self.line:
                found = self.session.suggest(n=RANKED, scope="word", max_chars=self.suggest_chars)
                self.ranked, self.ranked_for, self.choice = [s.text for s in found], self.line, -1
            if self.ranked:
                self.choice = (self.choice + 1) % len(self.ranked)
                self.suggestion = self.ranked[self.choice]
            return self.suggestion

    def newline(self) -> None:
        with self._lock:
            self.prediction = self.session.append("\n")
            self.line = ""


def _web(args: argparse.Namespace, targets: list[str]) -> int:
    try:
        from .web import TabSettings, serve
    except ImportError:
        print("cellserve-client web needs aiohttp: pip install 'cellserve-client[web]'", file=sys.stderr)
        return 2
    import asyncio
    import logging

    from ._client import AsyncClient
    from ._types import FailoverPolicy

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # More attempts than the SDK's default: a restarting server is back after seconds, not
    # milliseconds; a tab whose session still cannot move is rebuilt by the backend itself.
    policy = FailoverPolicy(max_attempts=10, backoff_max_s=2.0)

    async def run() -> None:
        async with AsyncClient(targets, failover=policy, **_connection(args)) as client:
            settings = TabSettings(suggest_chars=args.suggest_chars, default_model=args.model)
            await serve(client, args.host, args.port, settings)

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"cellserve-client web: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def _connection(args: argparse.Namespace) -> dict[str, Any]:
    """The client's connection keywords from the options. ``tls``: a CA bundle path, or True
    for the system roots (also implied by a client certificate)."""
    tls: str | bool = str(args.tls_ca) if args.tls_ca else bool(args.tls or args.tls_cert is not None)
    return {
        "token": args.token,
        "tls": tls,
        "client_cert": args.tls_cert,
        "client_key": args.tls_key,
        "timeout": args.timeout,
        "transport": args.transport,
    }


def _type(session: Session, suggest_chars: int) -> int:
    try:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.auto_suggest import AutoSuggest, Suggestion
        from prompt_toolkit.buffer import Buffer
        from prompt_toolkit.document import Document
        from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
    except ImportError:
        print("cellserve-client type needs prompt_toolkit: pip install 'cellserve-client[cli]'", file=sys.stderr)
        return 2

    typer = Typer(session, suggest_chars)

    class Ghost(AutoSuggest):
        # prompt_toolkit asks after every insertion; the answer is whatever the last sync
        # computed for exactly this text (``on_text_changed`` below keeps it current).
        def get_suggestion(self, buffer: Buffer, document: Document) -> Suggestion | None:
            if document.text == typer.line and typer.suggestion:
                return Suggestion(typer.suggestion)
            return None

    def changed(buffer: Buffer) -> None:
        # Every edit, deletions included (prompt_toolkit only re-suggests after insertions).
        ghost = typer.sync(buffer.text)
        buffer.suggestion = Suggestion(ghost) if ghost else None

    bindings = KeyBindings()

    @bindings.add("c-space")
    def _cycle(event: KeyPressEvent) -> None:
        if event.current_buffer.document.is_cursor_at_the_end:
            _show(event.current_buffer, typer.cycle())

    @bindings.add("tab")
    def _accept(event: KeyPressEvent) -> None:
        buffer = event.current_buffer
        if buffer.suggestion and buffer.document.is_cursor_at_the_end:
            buffer.insert_text(buffer.suggestion.text)

    def toolbar() -> Any:
        p = typer.prediction
        best = ", ".join(f"{c!r} {prob:.2f}" for c, prob in (p.top[:3] if p else ()))
        ranked = ""
        if typer.ranked_for == typer.line and typer.ranked:
            marked = [f"[{t}]" if i == typer.choice else t for i, t in enumerate(typer.ranked)]
            ranked = " · ranked: " + " ".join(marked)
        return f" {session.model.name} · position {session.position} · next: {best}{ranked}"

    prompt: Any = PromptSession(auto_suggest=Ghost(), key_bindings=bindings, bottom_toolbar=toolbar)
    prompt.default_buffer.on_text_changed += changed
    typer.sync("")
    while True:
        try:
            # A new line starts with the suggestion for the empty line (no edit has happened yet).
            line = prompt.prompt("> ", default="", pre_run=lambda: _show(prompt.default_buffer, typer.suggestion))
        except EOFError:
            return 0
        except KeyboardInterrupt:
            return 130
        typer.sync(line)
        typer.newline()
        typer.sync("")


def _show(buffer: Any, ghost: str) -> None:
    from prompt_toolkit.auto_suggest import Suggestion

    buffer.suggestion = Suggestion(ghost) if ghost else None


if __name__ == "__main__":
    sys.exit(main())
