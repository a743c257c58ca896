"""``within``: an await with a deadline that never drops its caller's cancellation.

On Python 3.11, ``asyncio.wait_for`` returns the awaited result when it lands in the same
event-loop pass as a cancellation of the waiting task, and the cancellation is lost: a task
that awaits a call in a loop (typing, say) and is cancelled just as an answer arrives goes on,
and ``task.cancel(); await task`` waits forever. ``asyncio.timeout`` does not intercept the
task's cancellation, so the SDK bounds its waits with it (3.12 made ``wait_for`` the same).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(aw: Awaitable[T], timeout: float | None) -> T:
    """``await aw``, raising ``TimeoutError`` after ``timeout`` seconds (None: no bound)."""
    async with asyncio.timeout(timeout):
        return await aw
