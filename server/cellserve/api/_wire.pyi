# A keystroke's Append read and its answer written in C (_wire.c); api/wire.py holds the
# protobuf paths they short-cut.

class AppendRequest(tuple[object, ...]):
    request_id: int
    offset: int
    text: str
    top_k: int | None
    want_logprobs: bool
    want_gates: bool
    only_last: bool
    no_memory: bool

def append_request(raw: bytes, /) -> AppendRequest | None: ...
def prediction_response(
    request_id: int, position: int, top_k: tuple[tuple[str, float], ...], replayed: bool, superseded: bool, /
) -> bytes: ...
