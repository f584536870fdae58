"""The reusable timeout of a client connection's phases (hotpaths.Deadline), compiled and pure
Python, on a real uvloop loop."""

import asyncio

import uvloop



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
        handle = deadline._handle
        await asyncio.sleep(0.02)
        deadline.set(0.1, lambda: calls.append(loop.time() - started))  # now due at 0.12
        assert deadline._handle is handle  # the loop's timer was not made again
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
        assert cancelled._handle is None
        await asyncio.sleep(0.1)
        assert calls == []
        cleared.set(0.03, lambda: calls.append("set again"))  # a cleared deadline serves again
        await asyncio.sleep(0.1)
        assert calls == ["set again"]

    run(scenario)
