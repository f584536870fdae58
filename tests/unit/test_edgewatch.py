"""A socket's readiness from the edge poller (EdgeWatch), compiled and pure Python, over real
TCP sockets on loopback; and the loop-registration twin used for TLS sockets (LevelWatch)."""

import asyncio
import errno
import socket
import struct

import pytest
import uvloop
from support import tcp_pair

from fastfog.sockio import LevelWatch

pytestmark = pytest.mark.netns  # loopback of the test namespace


def run(scenario):
    """Run ``scenario(loop)``; an error reported to the loop's handler fails the test too."""
    reported = []

    async def watched():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, context: reported.append(context))
        return await asyncio.wait_for(scenario(loop), 10)

    result = uvloop.run(watched())
    assert reported == []
    return result


async def called(future):
    return await asyncio.wait_for(future, 2)


def waiter(loop):
    """A callback for wait_read/wait_write and the future it resolves, counting its calls."""
    future = loop.create_future()
    calls = []

    def callback():
        calls.append(1)
        if not future.done():
            future.set_result(len(calls))

    return callback, future, calls


def test_a_read_wait_is_called_back_once_at_the_next_arrival(impl):
    async def scenario(loop):
        mine, theirs = tcp_pair()
        watch = impl.EdgeWatch(impl.poller_for(loop), mine.fileno())
        assert watch.readable and watch.writable  # a new watch believes both: its owner tries first
        callback, future, calls = waiter(loop)
        assert watch.receive(mine, 100, callback) is None  # EAGAIN: it waits now
        assert not watch.readable
        await asyncio.sleep(0.05)
        assert calls == []  # nothing arrived: no call
        theirs.send(b"first")
        await called(future)
        assert watch.readable and watch.receive(mine, 100, callback) == b"first"
        theirs.send(b"second")  # nobody waits: the edge is remembered, not lost
        await asyncio.sleep(0.05)
        assert calls == [1] and watch.readable
        assert watch.receive(mine, 100, callback) == b"second"
        assert not watch.readable  # a read shorter than asked: drained, until the next edge says otherwise
        on_third, third_arrived, _ = waiter(loop)
        assert watch.receive(mine, 100, on_third) is None  # asked while drained: no read, a wait
        theirs.send(b"third")
        await called(third_arrived)
        assert watch.receive(mine, 100, on_third) == b"third"
        assert calls == [1]
        watch.forget()
        mine.close()
        theirs.close()

    run(scenario)


def test_an_end_of_stream_that_came_with_the_last_bytes_is_not_lost(impl):
    """The peer sends and hangs up at once: one edge announces both, and a short read of the
    bytes must not make the watch wait for an edge that will never come."""
    async def scenario(loop):
        mine, theirs = tcp_pair()
        watch = impl.EdgeWatch(impl.poller_for(loop), mine.fileno())
        callback, future, _ = waiter(loop)
        assert watch.receive(mine, 100, callback) is None
        theirs.send(b"last words")
        theirs.shutdown(socket.SHUT_WR)
        await asyncio.sleep(0.05)  # both have arrived before the edge is handled
        await called(future)
        assert watch.receive(mine, 100, callback) == b"last words"
        assert watch.readable  # the end of the stream is still to be read
        assert watch.receive(mine, 100, callback) == b""
        watch.forget()
        mine.close()
        theirs.close()

    run(scenario)


def test_a_connect_ends_in_one_edge_that_tells_success_from_failure(impl):
    """The dial trusts ``hung_up``: only a failed connect's edge sets it (then SO_ERROR says why)."""
    async def scenario(loop):
        listening = socket.create_server(("127.0.0.1", 0))
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: a connect to it is refused
        outcomes = []
        for target in (listening.getsockname(), closed.getsockname()):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            assert sock.connect_ex(target) == errno.EINPROGRESS
            watch = impl.EdgeWatch(impl.poller_for(loop), sock.fileno())
            callback, future, _ = waiter(loop)
            watch.wait_write(callback)
            await called(future)
            outcomes.append((watch.hung_up, sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
            watch.forget()
            sock.close()
        assert outcomes == [(False, 0), (True, errno.ECONNREFUSED)]
        listening.close()
        closed.close()

    run(scenario)


def test_a_write_wait_is_called_back_when_a_full_socket_drains(impl):
    async def scenario(loop):
        mine, theirs = tcp_pair()
        watch = impl.EdgeWatch(impl.poller_for(loop), mine.fileno())
        sent = 0
        with pytest.raises(BlockingIOError):
            while True:
                sent += mine.send(b"x" * 65536)
        callback, future, calls = waiter(loop)
        watch.wait_write(callback)
        assert not watch.writable
        await asyncio.sleep(0.05)
        assert calls == []
        received = 0
        while received < sent:
            try:
                received += len(theirs.recv(1 << 20))
            except BlockingIOError:
                await asyncio.sleep(0.001)
        await called(future)
        assert watch.writable
        watch.forget()
        mine.close()
        theirs.close()

    run(scenario)


def test_a_reset_wakes_both_waits(impl):
    async def scenario(loop):
        mine, theirs = tcp_pair()
        watch = impl.EdgeWatch(impl.poller_for(loop), mine.fileno())
        with pytest.raises(BlockingIOError):
            while True:  # full: a writer waits too
                mine.send(b"x" * 65536)
        on_read, read_called, _ = waiter(loop)
        on_write, write_called, _ = waiter(loop)
        watch.wait_read(on_read)
        watch.wait_write(on_write)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        theirs.close()  # a reset
        await called(read_called)
        await called(write_called)
        with pytest.raises(ConnectionResetError):
            mine.recv(100)
        watch.forget()
        mine.close()

    run(scenario)


def test_cancel_and_remove_stop_the_calls(impl):
    async def scenario(loop):
        mine, theirs = tcp_pair()
        poller = impl.poller_for(loop)
        watch = impl.EdgeWatch(poller, mine.fileno())
        callback, _, calls = waiter(loop)
        watch.wait_read(callback)
        watch.cancel()
        theirs.send(b"ignored")
        await asyncio.sleep(0.05)
        assert calls == [] and watch.readable  # the edge still counts; nobody is called
        assert mine.recv(100) == b"ignored"
        watch.wait_read(callback)
        watch.remove()  # the socket leaves the poller (to a relay of another kind, say)
        theirs.send(b"unseen")
        await asyncio.sleep(0.05)
        assert calls == []
        mine.close()
        theirs.close()

    run(scenario)


def test_a_registered_socket_changes_hands_and_its_present_state_comes_as_an_edge(impl):
    """A socket already in the poller (an earlier owner never removed it) can be added again:
    the new owner gets its state at once, so bytes that arrived before it are not stranded."""
    async def scenario(loop):
        mine, theirs = tcp_pair()
        poller = impl.poller_for(loop)
        first = impl.EdgeWatch(poller, mine.fileno())
        theirs.send(b"waiting")
        await asyncio.sleep(0.05)  # the edge went to the first owner
        first.cancel()
        second = impl.EdgeWatch(poller, mine.fileno())
        callback, future, _ = waiter(loop)
        second.wait_read(callback)  # as an owner that believes the socket drained
        await called(future)
        assert mine.recv(100) == b"waiting"
        second.forget()
        mine.close()
        theirs.close()

    run(scenario)


def test_the_level_watch_calls_back_once_per_wait_and_leaves_no_registration():
    async def scenario(loop):
        mine, theirs = tcp_pair()
        watch = LevelWatch(loop, mine.fileno())
        callback, future, calls = waiter(loop)
        watch.wait_read(callback)
        theirs.send(b"data")
        await called(future)
        await asyncio.sleep(0.05)
        assert calls == [1]  # still readable (unread), but called once per wait
        assert watch.receive(mine, 2, callback) == b"da"
        assert watch.readable  # a TLS socket can hold bytes no readiness announces: always try
        assert watch.receive(mine, 100, callback) == b"ta"
        assert watch.receive(mine, 100, callback) is None  # EAGAIN: it waits
        watch.cancel()
        theirs.send(b"more")
        other, other_called, other_calls = waiter(loop)  # the socket's next user registers its own
        loop.add_reader(mine.fileno(), other)
        await called(other_called)
        watch.cancel()  # late or repeated: never takes the next user's registration away
        await asyncio.sleep(0.05)
        assert len(other_calls) > 1 and calls == [1]
        loop.remove_reader(mine.fileno())
        mine.close()
        theirs.close()

    run(scenario)
