"""The SDK's bounded waits keep their caller's cancellation (``cellserve_client._aio.within``).

On Python 3.11 ``asyncio.wait_for`` drops a cancellation that lands in the same loop pass as
the awaited answer and returns the answer: a task typing in a loop, cancelled just as an
append was answered, went on typing, and ``task.cancel(); await task`` never returned."""

from __future__ import annotations

import asyncio
import pathlib

import pytest
from cellserve_client._aio import within

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_a_cancel_in_the_answers_pass_cancels() -> None:
    async def test() -> None:
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        typed = 0

        async def typist() -> None:
            nonlocal typed
            while True:  # a typing loop: each keystroke waits for its answer
                await within(asyncio.shield(answer), 5.0)
                typed += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(typist())
        await asyncio.sleep(0)  # the typist now waits for its answer
        answer.set_result(1)  # the answer and the cancel, one pass
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=2.0)
        assert done and task.cancelled(), f"the typist went on after its cancel ({typed} keystrokes)"

    asyncio.run(test())


def test_the_bound_still_bounds() -> None:
    async def test() -> None:
        never: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        with pytest.raises(TimeoutError):
            await within(never, 0.01)
        assert never.cancelled()  # what it waited on is not left behind
        assert await within(asyncio.sleep(0, "x"), None) == "x"  # None: no bound

    asyncio.run(test())


def test_no_wait_for_in_the_sdk_or_the_servers_request_paths() -> None:
    """A reintroduced ``asyncio.wait_for`` brings the race back (the bench's bounded loads may
    use it: nothing cancels them mid-answer)."""
    trees = [ROOT / "client" / "cellserve_client", ROOT / "server" / "cellserve"]
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for tree in trees
        for path in tree.rglob("*.py")
        if "bench" not in path.relative_to(tree).parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "wait_for(" in line and not line.lstrip().startswith("#")
    ]
    assert not found, found
