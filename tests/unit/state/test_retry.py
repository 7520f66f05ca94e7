"""The one retry policy (state/retry.py): jittered capped waits, what is retried, when it stops."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from state.retry import Backoff, GaveUp, Stopped, of_types, retry_async, retry_sync

FAST = Backoff(0.001, 0.002)
transient = of_types(ConnectionError, TimeoutError)


class Flaky:
    """A call that raises each queued error once, in order, then returns `result`."""

    def __init__(self, errors: list[BaseException], result: str = "done") -> None:
        self.errors = list(errors)
        self.raised: list[BaseException] = []
        self.result = result
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            error = self.errors.pop(0)
            self.raised.append(error)
            raise error
        return self.result

    async def call_async(self) -> str:
        return self()


class Always:
    """A call that always raises a new transient error (each one kept, to check `__cause__`)."""

    def __init__(self) -> None:
        self.raised: list[BaseException] = []

    def __call__(self) -> str:
        error = ConnectionError(f"down #{len(self.raised)}")
        self.raised.append(error)
        raise error

    async def call_async(self) -> str:
        return self()


@given(
    initial=st.floats(min_value=1e-4, max_value=10.0),
    factor=st.floats(min_value=1.0, max_value=1000.0),
    attempt=st.integers(min_value=0, max_value=10_000),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_waits_stay_in_the_upper_half_of_their_step_and_under_the_cap(
    initial: float, factor: float, attempt: int, seed: int
) -> None:
    backoff = Backoff(initial, initial * factor)
    step = min(backoff.max_s, backoff.initial_s * 2.0 ** min(attempt, 62))
    wait = backoff.wait(attempt, random.Random(seed))
    assert step / 2 <= wait <= step
    assert wait <= backoff.max_s


@given(attempt=st.integers(min_value=0, max_value=10_000))
def test_waits_without_an_rng_are_bounded_too(attempt: int) -> None:
    backoff = Backoff(0.2, 5.0)
    wait = backoff.wait(attempt)
    assert 0.1 <= wait <= 5.0
    if attempt >= 5:  # 0.2 * 2**5 = 6.4 > 5: the cap is the step
        assert wait >= 2.5


def test_the_first_waits_double() -> None:
    backoff = Backoff(1.0, 100.0)
    rng = random.Random(7)
    for attempt, step in enumerate([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 100.0, 100.0]):
        assert step / 2 <= backoff.wait(attempt, rng) <= step


@pytest.mark.parametrize(
    ("initial", "maximum", "give_up"),
    [(0.0, 1.0, None), (-1.0, 1.0, None), (2.0, 1.0, None), (0.1, 1.0, 0.0), (0.1, 1.0, -1.0)],
)
def test_invalid_backoffs_are_refused(
    initial: float, maximum: float, give_up: float | None
) -> None:
    with pytest.raises(ValueError):
        Backoff(initial, maximum, give_up)


def test_with_deadline_keeps_the_steps() -> None:
    assert Backoff(0.5, 2.0).with_deadline(3.0) == Backoff(0.5, 2.0, 3.0)
    assert Backoff(0.5, 2.0, 3.0).with_deadline(None) == Backoff(0.5, 2.0)


def test_retry_sync_retries_transient_errors_then_returns() -> None:
    call = Flaky([ConnectionError("a"), TimeoutError("b")], result="ok")
    seen: list[tuple[BaseException, int, float]] = []
    out = retry_sync(
        call,
        what="op",
        backoff=FAST,
        transient=transient,
        on_retry=lambda e, a, w: seen.append((e, a, w)),
    )
    assert out == "ok"
    assert call.calls == 3
    assert [error for error, _, _ in seen] == call.raised
    assert [attempt for _, attempt, _ in seen] == [0, 1]
    assert all(0 < wait <= FAST.max_s for _, _, wait in seen)


def test_retry_sync_lets_a_non_transient_error_through_at_once() -> None:
    call = Flaky([ValueError("a bug"), ConnectionError("never reached")])
    seen: list[int] = []
    with pytest.raises(ValueError, match="a bug"):
        retry_sync(
            call,
            what="op",
            backoff=FAST,
            transient=transient,
            on_retry=lambda _e, a, _w: seen.append(a),
        )
    assert call.calls == 1
    assert seen == []


def test_retry_sync_after_a_transient_error_still_stops_on_a_non_transient_one() -> None:
    call = Flaky([ConnectionError("blip"), KeyError("bug")])
    with pytest.raises(KeyError):
        retry_sync(call, what="op", backoff=FAST, transient=transient)
    assert call.calls == 2


def test_retry_sync_gives_up_after_the_deadline_with_the_last_error_as_cause() -> None:
    call = Always()
    seen: list[tuple[int, float]] = []
    backoff = Backoff(0.001, 0.002, give_up_after_s=0.02)
    with pytest.raises(GaveUp) as caught:
        retry_sync(
            call,
            what="upsert",
            backoff=backoff,
            transient=transient,
            on_retry=lambda _e, a, w: seen.append((a, w)),
        )
    assert len(call.raised) >= 2
    assert caught.value.__cause__ is call.raised[-1]
    assert caught.value.attempts == len(call.raised)
    assert caught.value.seconds >= 0.02
    assert "upsert" in str(caught.value)
    # every failure but the last was retried, and no wait ran past the deadline
    assert [attempt for attempt, _ in seen] == list(range(len(call.raised) - 1))
    assert all(0 < wait <= 0.02 for _, wait in seen)


async def test_retry_async_gives_up_after_the_deadline_too() -> None:
    call = Always()
    backoff = Backoff(0.001, 0.002, give_up_after_s=0.02)
    with pytest.raises(GaveUp) as caught:
        await retry_async(call.call_async, what="op", backoff=backoff, transient=transient)
    assert caught.value.__cause__ is call.raised[-1]
    assert caught.value.attempts == len(call.raised)


async def test_retry_async_retries_transient_errors_then_returns() -> None:
    call = Flaky([ConnectionError("a"), ConnectionError("b"), TimeoutError("c")], result="ok")
    seen: list[tuple[BaseException, int]] = []
    out = await retry_async(
        call.call_async,
        what="op",
        backoff=FAST,
        transient=transient,
        on_retry=lambda e, a, _w: seen.append((e, a)),
    )
    assert out == "ok"
    assert call.calls == 4
    assert seen == [(call.raised[0], 0), (call.raised[1], 1), (call.raised[2], 2)]


async def test_retry_async_with_an_unset_stop_event_keeps_retrying() -> None:
    call = Flaky([ConnectionError("a"), ConnectionError("b")], result="ok")
    out = await retry_async(
        call.call_async, what="op", backoff=FAST, transient=transient, stop=asyncio.Event()
    )
    assert out == "ok"
    assert call.calls == 3


async def test_retry_async_lets_a_non_transient_error_through_at_once() -> None:
    call = Flaky([RuntimeError("bug")])
    seen: list[int] = []
    with pytest.raises(RuntimeError, match="bug"):
        await retry_async(
            call.call_async,
            what="op",
            backoff=FAST,
            transient=transient,
            on_retry=lambda _e, a, _w: seen.append(a),
        )
    assert call.calls == 1
    assert seen == []


async def test_retry_async_raises_stopped_when_stop_is_set_during_a_wait() -> None:
    call = Always()
    stop = asyncio.Event()
    waiting = asyncio.Event()
    backoff = Backoff(1000.0, 1000.0)  # the wait would outlast the test by far

    async def stopper() -> None:
        await waiting.wait()
        await asyncio.sleep(0)  # let the retry loop enter its wait
        stop.set()

    helper = asyncio.create_task(stopper())
    async with asyncio.timeout(30):
        with pytest.raises(Stopped, match="flush"):
            await retry_async(
                call.call_async,
                what="flush",
                backoff=backoff,
                transient=transient,
                on_retry=lambda _e, _a, _w: waiting.set(),
                stop=stop,
            )
    await helper
    assert len(call.raised) == 1  # nothing was tried again after the stop


async def test_on_retry_sees_attempts_counting_from_zero() -> None:
    call = Flaky([ConnectionError(str(n)) for n in range(5)], result="ok")
    attempts: list[int] = []
    waits: list[float] = []

    def on_retry(_error: BaseException, attempt: int, wait: float) -> None:
        attempts.append(attempt)
        waits.append(wait)

    await retry_async(
        call.call_async, what="op", backoff=FAST, transient=transient, on_retry=on_retry
    )
    assert attempts == [0, 1, 2, 3, 4]
    assert all(FAST.initial_s / 2 <= wait <= FAST.max_s for wait in waits)


def test_of_types_matches_subclasses_only_of_the_given_types() -> None:
    check = of_types(ConnectionError)
    assert check(ConnectionRefusedError())
    assert not check(ValueError())
    assert not check(OSError())
