# The keystroke answer's serialization in C (_wire.c); api/wire.py holds the protobuf path it
# short-cuts.

def prediction_response(
    request_id: int, position: int, top_k: tuple[tuple[str, float], ...], replayed: bool, superseded: bool, /
) -> bytes: ...
