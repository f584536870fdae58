"""Connection deadlines on one timer structure per loop (hotpaths.Deadline, hotpaths.Timers),
compiled and pure Python: on a real uvloop loop, and both side by side on a loop whose clock
the test moves."""

import asyncio
import heapq
import itertools

import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st
from support import IMPLEMENTATIONS



def run(scenario):
    async def main():
        return await asyncio.wait_for(scenario(asyncio.get_running_loop()), 10)

    return uvloop.run(main())


def test_a_deadline_calls_back_once_when_it_passes(impl):
    async def scenario(loop):
        calls = []
        deadline = impl.Deadline(loop)
        started = loop.time()
        deadline.set(0.05, lambda: calls.append(loop.time() - started))
        await asyncio.sleep(0.2)
        assert len(calls) == 1 and 0.045 <= calls[0] < 0.2

    run(scenario)


def test_moving_a_deadline_later_keeps_one_timer_and_calls_back_at_the_new_time(impl):
    async def scenario(loop):
        calls = []
        deadline = impl.Deadline(loop)
        started = loop.time()
        deadline.set(0.05, lambda: calls.append("first"))
        handle = impl.timers_for(loop).handle
        await asyncio.sleep(0.02)
        deadline.set(0.1, lambda: calls.append(loop.time() - started))  # now due at 0.12
        assert impl.timers_for(loop).handle is handle  # the loop's timer was not made again
        await asyncio.sleep(0.06)
        assert calls == []  # the timer fired at 0.05 and was set again for the rest
        await asyncio.sleep(0.15)
        assert len(calls) == 1 and 0.115 <= calls[0] < 0.25

    run(scenario)


def test_an_earlier_deadline_is_not_missed(impl):
    async def scenario(loop):
        calls = []
        deadline = impl.Deadline(loop)
        deadline.set(10, lambda: calls.append("late"))
        deadline.set(0.03, lambda: calls.append("early"))
        await asyncio.sleep(0.15)
        assert calls == ["early"]

    run(scenario)


def test_clear_cancel_and_zero_stop_the_call(impl):
    async def scenario(loop):
        calls = []
        cleared, cancelled, zero = impl.Deadline(loop), impl.Deadline(loop), impl.Deadline(loop)
        for deadline in (cleared, cancelled, zero):
            deadline.set(0.03, lambda: calls.append("called"))
        cleared.clear()
        cancelled.cancel()
        zero.set(0, lambda: calls.append("never"))  # 0: no deadline
        assert len(impl.timers_for(loop)) == 2  # cancelled: its place given up; the others' stay, to serve again
        await asyncio.sleep(0.1)
        assert calls == []
        cleared.set(0.03, lambda: calls.append("set again"))  # a cleared deadline serves again
        await asyncio.sleep(0.1)
        assert calls == ["set again"]

    run(scenario)


def test_many_deadlines_share_one_loop_timer_and_come_in_order(impl):
    async def scenario(loop):
        calls, deadlines = [], [impl.Deadline(loop) for _ in range(50)]
        for index in (7, 3, 41, 0, 19, 33, 12, 48, 25, 5):
            deadlines[index].set(0.01 + index * 0.002, lambda index=index: calls.append(index))
        timers = impl.timers_for(loop)
        assert len(timers) == 10 and timers.handle is not None
        await asyncio.sleep(0.3)
        assert calls == [0, 3, 5, 7, 12, 19, 25, 33, 41, 48] and len(timers) == 0  # done: gone

    run(scenario)


def test_a_callback_that_raises_is_reported_and_the_others_still_come(impl):
    async def scenario(loop):
        reported, calls = [], []
        loop.set_exception_handler(lambda loop, context: reported.append(context["exception"]))
        first, second = impl.Deadline(loop), impl.Deadline(loop)
        first.set(0.02, lambda: 1 / 0)
        second.set(0.02, lambda: calls.append("second"))
        await asyncio.sleep(0.1)
        assert calls == ["second"] and [type(err) for err in reported] == [ZeroDivisionError]

    run(scenario)


class ManualLoop:
    """A loop's timers on a clock the test moves: ``advance`` runs what falls due, in order."""

    def __init__(self):
        self.now, self.timers, self.order = 100.0, [], itertools.count()
        self.fired = []

    def time(self):
        return self.now

    def call_at(self, when, callback):
        handle = Handle(when, next(self.order), callback)
        heapq.heappush(self.timers, handle)
        return handle

    def live(self):
        return sum(not handle.cancelled for handle in self.timers)

    def advance(self, seconds):
        end = self.now + seconds
        while self.timers and self.timers[0].when <= end:
            handle = heapq.heappop(self.timers)
            if not handle.cancelled:
                self.now = max(self.now, handle.when)
                handle.callback()
        self.now = end

    def call_exception_handler(self, context):
        raise AssertionError(context)


class Handle:
    def __init__(self, when, order, callback):
        self.when, self.order, self.callback, self.cancelled = when, order, callback, False

    def __lt__(self, other):
        return (self.when, self.order) < (other.when, other.order)

    def cancel(self):
        self.cancelled = True


operations = st.lists(st.one_of(
    st.tuples(st.just("set"), st.integers(0, 5), st.sampled_from([0, 0.5, 1, 1.5, 2, 3, 7])),
    st.tuples(st.just("clear"), st.integers(0, 5), st.just(0)),
    st.tuples(st.just("cancel"), st.integers(0, 5), st.just(0)),
    st.tuples(st.just("advance"), st.just(0), st.sampled_from([0.25, 0.5, 1, 2.5]))), max_size=40)


def model(operations):
    """What should be seen: for each operation, the deadlines called back (by index, at their
    due time, in time order)."""
    now, pending, seen = 100.0, {}, []
    for step, index, value in operations:
        fired = []
        if step == "set" and value:
            pending[index] = now + value
        elif step == "advance":
            now += value
            fired = sorted((when, index) for index, when in pending.items() if when <= now)
            for _, index in fired:
                del pending[index]
        else:
            pending.pop(index, None)
        seen.append([(index, when) for when, index in fired])
    return seen


@settings(max_examples=200, deadline=None)
@given(operations=operations)
def test_both_implementations_call_back_each_deadline_at_its_time(operations):
    def play(impl):
        loop, seen, fired = ManualLoop(), [], []  # fired: the calls during the current operation
        deadlines = [impl.Deadline(loop) for _ in range(6)]
        for step, index, value in operations:
            fired.clear()
            if step == "set":
                deadlines[index].set(value, lambda index=index: fired.append((index, loop.now)))
            elif step == "advance":
                loop.advance(value)
            else:
                getattr(deadlines[index], step)()
            assert loop.live() <= 1  # one loop timer, whatever the number of deadlines
            assert len(impl.timers_for(loop)) <= len(deadlines)  # a place each at most
            seen.append(sorted(fired, key=lambda call: (call[1], call[0])))
        return seen

    expected = model(operations)
    for impl in IMPLEMENTATIONS.values():
        assert play(impl) == expected
