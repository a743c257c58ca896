# The session memory's C loops (_window.c); memory/window.py holds their Python reference.
from array import array

_Orders = tuple[tuple[int, int, array[int], array[int]], ...]

def events(buf: bytearray, i0: int, pos0: int, orders: _Orders, cap: int, mask: int, /) -> None: ...
def predict(
    buf: bytearray,
    off: int,
    extra: bytes,
    orders: _Orders,
    cap: int,
    mask: int,
    window: int,
    occ: int,
    max_links: int,
    base_len: int,
    /,
) -> tuple[tuple[bytes, ...], int, int]: ...
