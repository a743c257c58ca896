"""Ranked suggestions: equal the offline beam search, run on a fork, ordered with the session's ops."""

from __future__ import annotations

import asyncio
import itertools
import math
from pathlib import Path

import pytest
from _engine_helpers import assert_prediction_matches, engine, make_settings, offline_probs, run
from cellserve.engine.beam import beam_width
from cellserve.engine.core import EngineCore
from cellserve.engine.core_io import Outcome
from cellserve.engine.inprocess import InProcessEngineClient
from cellserve.engine.types import AppendOptions, Suggestion, SuggestRequest
from cellserve.errors import CapacityExceeded, InvalidInput, NotFound, Unavailable
from cellserve.nn.checkpoint import LoadedModel
from cellserve.nn.decode import beam_search
from cellserve.repository import ModelRepository


def assert_same(lm: LoadedModel, got: list[Suggestion], context: str, r: SuggestRequest) -> None:
    want = beam_search(lm.model, lm.vocab, context, n=r.n, until=r.scope, max_chars=r.max_chars)  # type: ignore[arg-type]
    assert [s.text for s in got] == [s.text for s in want]
    for g, w in zip(got, want, strict=True):
        assert math.isclose(g.logprob, w.logprob, rel_tol=1e-4, abs_tol=1e-4)
    assert got == sorted(got, key=lambda s: -s.logprob)


@pytest.mark.parametrize("model", ["tiny-lstm", "tiny-gru"])
@pytest.mark.parametrize("scope", ["word", "line"])
def test_suggestions_equal_offline_beam_search(model_dir: Path, model: str, scope: str) -> None:
    async def body() -> None:
        async with engine(model_dir) as eng:
            lm = eng.repository.get(model)
            s = (await eng.open_session(model)).session_id
            other = (await eng.open_session(model)).session_id
            prompt = "def main(x):\n    ret"
            await eng.append(s, 0, prompt)
            # two searches of different shapes and a session typing share the same iterations
            r1, r2 = SuggestRequest(n=3, scope=scope, max_chars=10), SuggestRequest(n=5, scope=scope, max_chars=4)
            typing = [eng.append(other, i, "ab"[i % 2]) for i in range(6)]
            got1, got2, _ = await asyncio.gather(
                eng.submit_suggest(s, r1), eng.submit_suggest(s, r2), asyncio.gather(*typing)
            )
            assert got1 and got2
            assert_same(lm, got1, prompt, r1)
            assert_same(lm, got2, prompt, r2)
            # the session continues exactly as if no search had run
            pred = await eng.append(s, len(prompt), "u", AppendOptions(top_k=5))
            assert_prediction_matches(lm, pred, offline_probs(lm, prompt + "u")[-1], 5)
            assert (await eng.get_session(s)).position == len(prompt) + 1

    run(body)


def test_suggest_is_ordered_after_earlier_appends_and_fresh_sessions(model_dir: Path) -> None:
    async def body() -> None:
        async with engine(model_dir) as eng:
            lm = eng.repository.get("tiny-lstm")
            s = (await eng.open_session("tiny-lstm")).session_id
            r = SuggestRequest(n=2, scope="word", max_chars=6)
            fresh = eng.submit_suggest(s, r)  # before any text: the zero state
            first = eng.submit_append(s, 0, "import o")
            after = eng.submit_suggest(s, r)  # pipelined: sees "import o"
            await first
            assert_same(lm, await fresh, "", r)
            assert_same(lm, await after, "import o", r)

    run(body)


def test_suggest_errors_through_the_client(model_dir: Path) -> None:
    async def body() -> None:
        async with engine(model_dir) as eng:
            client = InProcessEngineClient(eng)
            s = (await eng.open_session()).session_id
            for bad, msg in [
                (SuggestRequest(n=0), "n is 0"),
                (SuggestRequest(n=99), "n is 99"),
                (SuggestRequest(scope="para"), "scope is 'para'"),
                (SuggestRequest(max_chars=0), "max_chars is 0"),
                (SuggestRequest(max_chars=10_000), "max_chars is 10000"),
            ]:
                with pytest.raises(InvalidInput, match=msg):
                    await client.suggest("", s, bad)
            with pytest.raises(NotFound):
                await client.suggest("", "0" * 32, SuggestRequest())
            with pytest.raises(NotFound):
                await client.suggest("someone-else", s, SuggestRequest())
            assert (await eng.get_session(s)).position == 0

    run(body)


def test_one_batched_step_per_iteration_alongside_keystrokes(model_dir: Path) -> None:
    """A search advances one character per engine iteration (never a whole search inside one),
    and a keystroke submitted while it runs is answered in between."""

    async def body() -> None:
        async with engine(model_dir) as eng:
            lm = eng.repository.get("tiny-lstm")
            rt = eng.core._runtimes["tiny-lstm"]
            s = (await eng.open_session("tiny-lstm")).session_id
            other = (await eng.open_session("tiny-lstm")).session_id
            await eng.append(s, 0, "x = ")
            loop = asyncio.get_running_loop()
            steps: list[int] = []
            typed: list[asyncio.Future[object]] = []
            answered_before: list[int] = []  # steps taken when the keystroke was seen answered
            real_step = rt.beams.step

            def step() -> int:  # worker thread
                if typed and typed[0].done() and not answered_before:
                    answered_before.append(len(steps))  # steps already taken
                steps.append(eng.core._iterations)
                if len(steps) == 1:  # a keystroke arrives while the search runs
                    loop.call_soon_threadsafe(lambda: typed.append(eng.submit_append(other, 0, "a")))  # type: ignore[arg-type]
                return real_step()

            rt.beams.step = step  # type: ignore[method-assign]
            r = SuggestRequest(n=2, scope="line", max_chars=24)
            got = await eng.submit_suggest(s, r)
            assert_same(lm, got, "x = ", r)
            assert len(steps) >= 3 and len(set(steps)) == len(steps)  # one step per iteration
            # whether the keystroke is answered while the search still runs depends on thread
            # timing (on a slow CI machine the search can finish first): its answer is awaited only
            await typed[0]

    run(body)


def test_pending_suggestions_are_capped(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cellserve.engine.session_ops.MAX_PENDING_SUGGESTS", 2)

    async def body() -> None:
        async with engine(model_dir) as eng:
            s = (await eng.open_session()).session_id
            r = SuggestRequest(n=2, max_chars=4)
            first = [eng.submit_suggest(s, r), eng.submit_suggest(s, r)]
            with pytest.raises(CapacityExceeded, match="too many suggestions"):
                await eng.submit_suggest(s, r)
            assert all(await asyncio.gather(*first))
            assert await eng.submit_suggest(s, r)  # answered ones no longer count

    run(body)


def test_core_step_runs_searches_and_answers_through_the_deliveries(model_dir: Path) -> None:
    """Driven synchronously (no loop running, no device thread): each step advances the search
    one character and counts its beam rows in the step's stats; the answer is an Outcome for the
    op's ticket in the step that finished it; a search still running at stop fails through the
    deliveries."""
    st = make_settings(model_dir)
    core = EngineCore(st, ModelRepository.load(st))
    tickets = itertools.count(1)
    lm = core.repository.get(core.repository.default)
    sid = core.open_session().session_id
    core.submit_append(sid, 0, "x = ", AppendOptions(), "", next(tickets))
    r = SuggestRequest(n=2, scope="line", max_chars=5)
    ticket, other = next(tickets), next(tickets)
    core.submit_suggest(sid, r, "", ticket)
    got: list[Suggestion] | None = None
    iterations, beam_rows = core.stats().iterations, []
    for _ in range(r.max_chars + 4):  # the append, the read, at most max_chars searching steps
        out = core.step()
        answers = [d for d in out.deliveries if isinstance(d, Outcome) and d.ticket == ticket]
        if answers:  # the search may end without a forward: then no device work ran
            assert answers[0].error is None and out.idle
            got = answers[0].value  # type: ignore[assignment]
            break
        assert core.stats().iterations == iterations + 1  # a beams-only step is an iteration
        iterations += 1
        assert out.stats is not None
        if not out.stats.queue_wait_s:  # no op started: a step of the search alone
            beam_rows.append(out.stats.rows)
    assert got is not None and len(beam_rows) >= 2
    assert all(1 <= n <= beam_width(r.n) for n in beam_rows)  # its beams, counted as rows
    assert_same(lm, got, "x = ", r)
    assert core.completions.suggest_tickets == set()  # answered: no longer counted against the cap
    core.submit_suggest(sid, r, "", other)
    core.step()  # the read
    core.step()  # the search starts
    core.fail_all(Unavailable("server is stopping"))
    failed = [d for d in core.take_deliveries() if isinstance(d, Outcome) and d.ticket == other]
    assert len(failed) == 1 and isinstance(failed[0].error, Unavailable)
    assert not core.has_work() and core.completions.suggest_tickets == set()
