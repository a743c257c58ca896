"""Rewind history of one session: a few state checkpoints plus the recent text. Plain Python.

Rewind(n) must restore exactly the state n characters back. The recurrence cannot be run
backwards, so the session keeps checkpoints (opaque state handles of [layers, hidden] x arity)
and the text since the oldest one: restore the newest checkpoint at or before the target, then
re-run the text between (a prefill), which reproduces the state the session had there.

Checkpoints are taken at the end of the first piece that lands ``every`` or more characters
after the previous checkpoint (the runner only sees a row's final state, so a checkpoint can
only be where a piece ended; a long paste therefore spans one gap, replayed by one prefill).

Bounds, whatever the session does: the history keeps one "anchor" (the newest checkpoint at or
before position - window) and every checkpoint after it, so at most ``window / every + 2``
checkpoints, and the text from the anchor on: at most ``window + every + max_append_chars``
characters. Older ones are dropped as the session advances.

So Rewind reaches ``window`` characters back from the furthest position the session has
reached since the anchor was set; after rewinding, a further rewind reaches only back to the
anchor (``reach()``; the API shows it as ``SessionInfo.rewindable``) until typing moves it on.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import InvalidInput, PreconditionFailed
from .plan import ZERO


class RewindLog:
    def __init__(
        self,
        every: int,
        window: int,
        base_position: int = 0,
        base_state: object = ZERO,
        release: Callable[[object], None] | None = None,
    ) -> None:
        self.every = every
        self.window = window
        # called with every checkpoint handle this log drops (the checkpoint pool frees its slot)
        self._release = release or (lambda handle: None)
        self.text_start = base_position  # position of text[0]
        self.text = ""  # the characters applied since text_start
        # (position, state handle), ascending; the first is the anchor. The zero state of a new
        # session (or a resumed session's snapshot state) is the first anchor.
        self.checkpoints: list[tuple[int, object]] = [(base_position, base_state)]

    def wants_checkpoint(self, new_position: int) -> bool:
        return self.window > 0 and new_position - self.checkpoints[-1][0] >= self.every

    def record(self, piece: str, new_position: int, checkpoint: object | None) -> None:
        """Notes an applied piece ending at ``new_position`` (and the state there, if taken)."""
        if self.window == 0:  # rewind is off: keep nothing
            self.release_all()
            if checkpoint is not None:
                self._release(checkpoint)
            self.text_start = new_position
            self.checkpoints = [(new_position, None)]
            return
        self.text += piece
        if checkpoint is not None:
            self.checkpoints.append((new_position, checkpoint))
        limit = new_position - self.window
        drop = 0
        while drop + 1 < len(self.checkpoints) and self.checkpoints[drop + 1][0] <= limit:
            drop += 1
        if drop:
            for _, handle in self.checkpoints[:drop]:
                self._release(handle)
            del self.checkpoints[:drop]
            anchor = self.checkpoints[0][0]
            self.text = self.text[anchor - self.text_start :]
            self.text_start = anchor

    def plan(self, position: int, chars: int) -> tuple[int, object, str]:
        """What restores the state ``chars`` back from ``position``: (target position, start
        state handle, text to replay from it). Raises when the target is out of reach."""
        if chars <= 0 or chars > position:
            raise InvalidInput(f"rewind needs 1 <= chars <= position ({position}), got {chars}")
        target = position - chars
        if chars > self.window or target < self.checkpoints[0][0]:
            raise PreconditionFailed(
                f"cannot rewind {chars} characters: the rewind window reaches {self.reach(position)} back"
            )
        ck_pos, ck_state = max((c for c in self.checkpoints if c[0] <= target), key=lambda c: c[0])
        return target, ck_state, self.text[ck_pos - self.text_start : target - self.text_start]

    def holds(self, handle: object) -> bool:
        """``handle`` is one of this log's checkpoints (its slot must not be freed by anyone else)."""
        return any(h == handle for _, h in self.checkpoints)

    def reach(self, position: int) -> int:
        """Characters Rewind can go back from ``position`` now."""
        return max(0, min(self.window, position - self.checkpoints[0][0]))

    def truncate(self, target: int) -> None:
        """After a rewind to ``target``: forget checkpoints and text beyond it."""
        for pos, handle in self.checkpoints:
            if pos > target:
                self._release(handle)
        self.checkpoints = [c for c in self.checkpoints if c[0] <= target]
        self.text = self.text[: target - self.text_start]

    def release_all(self) -> None:
        """The session is closed or its state replaced: every checkpoint is dropped."""
        for _, handle in self.checkpoints:
            self._release(handle)
        self.checkpoints = [(self.checkpoints[0][0], None)] if self.checkpoints else []
