"""What the API layer reports about requests, and the timing of the responses clients wait for.

The servicers never touch metric objects: they hold a ``Recorder`` (``cellserve.metrics.Metrics``
in the server, ``NULL_RECORDER`` when nobody listens, a list-backed fake in tests) and a
``ResponseTimer`` per request that turns "this response was just sent" into a keystroke-latency
observation of the right kind. Label values are closed sets (method and op names from the proto,
grpc code names, model names, the kinds below): never ids or user text.
"""

from __future__ import annotations

import time
from typing import Protocol

import grpc

APPEND_SINGLE = "append_single"  # one character: the common keystroke
APPEND_MULTI = "append_multi"  # several characters (a paste, coalesced typing): a prefill
FIRST_CHUNK = "completion_first_chunk"  # request received -> first completion chunk sent
COMPLETION_CHAR = "completion_char"  # each later completion character (inter-chunk time / chars)


class Recorder(Protocol):
    def request(self, method: str, code: str) -> None:
        """One finished request (a call, or one operation of a stream) and its status code name."""

    def keystroke(self, model: str, kind: str, seconds: float) -> None:
        """One response a client waited for, ``seconds`` after its request was received."""


class _NullRecorder:
    def request(self, method: str, code: str) -> None:
        pass

    def keystroke(self, model: str, kind: str, seconds: float) -> None:
        pass


NULL_RECORDER: Recorder = _NullRecorder()


def code_name(code: grpc.StatusCode) -> str:
    return str(code.name)


def prediction_sent(recorder: Recorder, model: str, received: float, chars: int) -> None:
    """An Append's prediction (``chars`` appended) was just sent, for a request received at
    ``received`` (perf_counter): ``ResponseTimer.prediction_sent`` without the timer object
    (the stream's writer, once per keystroke)."""
    recorder.keystroke(model, APPEND_SINGLE if chars == 1 else APPEND_MULTI, time.perf_counter() - received)


class ResponseTimer:
    """Times the responses of one request from the moment it was received (perf_counter)."""

    __slots__ = ("_first_at", "_last", "_model", "_recorder", "_received")

    def __init__(self, recorder: Recorder, model: str, received: float | None = None) -> None:
        self._recorder = recorder
        self._model = model
        self._received = time.perf_counter() if received is None else received
        self._first_at: float | None = None  # when the first completion chunk was sent
        self._last: dict[int, float] = {}  # alternative -> when its previous chunk was sent

    def prediction_sent(self, chars: int) -> None:
        prediction_sent(self._recorder, self._model, self._received, chars)

    def chunk_sent(self, alternative: int, chars: int) -> None:
        now = time.perf_counter()
        if chars <= 0:  # a bare "done" marker carries nothing a user waits for
            return
        if self._first_at is None:
            self._first_at = now
            self._recorder.keystroke(self._model, FIRST_CHUNK, now - self._received)
        else:
            # Another alternative's first chunk counts from the very first chunk: alternatives
            # decode in the same iterations, so that is their per-character pace too.
            per_char = (now - self._last.get(alternative, self._first_at)) / chars
            for _ in range(chars):
                self._recorder.keystroke(self._model, COMPLETION_CHAR, per_char)
        self._last[alternative] = now
