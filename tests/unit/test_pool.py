"""The idle upstream connection pool, compiled and pure Python: bounds, expiry, and connections
the server closed."""

import asyncio
import time

import pytest
import uvloop
from support import tcp_pair


pytestmark = pytest.mark.netns


class Watch:
    """Stands in for the EdgeWatch that goes with a pooled socket."""

    forgotten = False
    waiting = None
    hung_up = False

    def wait_read(self, callback):
        self.waiting = callback

    def cancel(self):
        self.waiting = None

    def forget(self):
        self.forgotten = True


def test_take_returns_what_was_given_for_that_address_only(impl):
    pool = impl.UpstreamPool()
    mine, server = tcp_pair()
    watch = Watch()
    pool.give("203.0.113.10", 80, mine, watch, ("local", "remote"))
    assert pool.take("203.0.113.10", 8080) is None
    assert pool.take("203.0.113.11", 80) is None
    assert watch.waiting is not None  # idle: the pool listens for the server closing it
    assert pool.take("203.0.113.10", 80) == (mine, watch, ("local", "remote"))
    assert pool.take("203.0.113.10", 80) is None
    assert not watch.forgotten and watch.waiting is None
    mine.close()
    server.close()


def test_bounds_per_host_and_in_total(impl):
    pool = impl.UpstreamPool(max_idle=3, max_idle_per_host=2)
    pairs = [tcp_pair() for _ in range(5)]
    watches = [Watch() for _ in pairs]
    for index, (mine, _) in enumerate(pairs):
        pool.give("203.0.113.10" if index < 3 else "203.0.113.11", 80, mine, watches[index])
    assert len(pool) == 3  # two for the first host (the third was closed), one for the second
    assert pairs[2][0].fileno() == -1 and pairs[4][0].fileno() == -1
    assert [watch.forgotten for watch in watches] == [False, False, True, False, True]
    pool.close()
    assert len(pool) == 0 and pairs[0][0].fileno() == -1
    assert all(watch.forgotten for watch in watches)  # closed sockets leave the poller's table
    for _, server in pairs:
        server.close()


def test_connections_the_server_closed_are_not_handed_out(impl):
    pool = impl.UpstreamPool()
    closed_mine, closed_server = tcp_pair()
    chatty_mine, chatty_server = tcp_pair()
    pool.give("203.0.113.10", 80, closed_mine)
    pool.give("203.0.113.11", 80, chatty_mine)
    closed_server.close()
    chatty_server.send(b"unexpected")
    time.sleep(0.05)
    assert pool.take("203.0.113.10", 80) is None
    assert pool.take("203.0.113.11", 80) is None  # stray bytes: not a clean connection either
    chatty_server.close()


def test_idle_connections_expire(impl):
    pool = impl.UpstreamPool(idle_seconds=0.05)
    mine, server = tcp_pair()
    pool.give("203.0.113.10", 80, mine)
    time.sleep(0.1)
    assert pool.take("203.0.113.10", 80) is None and mine.fileno() == -1
    server.close()


def test_a_connection_the_server_closes_while_idle_is_dropped_at_once(impl):
    """Not when it is next taken: no connection lingers half-closed in the pool, holding a descriptor."""
    async def scenario():
        loop = asyncio.get_running_loop()
        poller = impl.poller_for(loop)
        pool = impl.UpstreamPool()
        pairs = [tcp_pair() for _ in range(3)]
        for mine, _ in pairs:
            pool.give("203.0.113.10", 80, mine, impl.EdgeWatch(poller, mine.fileno()))
        closing_mine, closing_server = tcp_pair()
        closing_watch = impl.EdgeWatch(poller, closing_mine.fileno())
        closing_server.close()  # closed while its response was read: never pooled
        await asyncio.sleep(0.05)
        pool.give("203.0.113.10", 80, closing_mine, closing_watch)
        assert len(pool) == 3 and closing_mine.fileno() == -1
        pairs[1][1].close()  # the server closes the middle one
        pairs[2][1].send(b"stray")  # and sends stray bytes on the newest
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(pool) == 1:
                break
        assert len(pool) == 1 and pairs[1][0].fileno() == -1 and pairs[2][0].fileno() == -1
        sock, watch, _ = pool.take("203.0.113.10", 80)
        assert sock is pairs[0][0]
        watch.forget()
        sock.close()
        for _, server in pairs:
            server.close()

    uvloop.run(asyncio.wait_for(scenario(), 10))


def test_the_last_look_tells_an_idle_connection_from_one_that_spoke_or_ended(impl):
    near, far = tcp_pair()
    assert impl.still_open(near) is True  # nothing to read
    far.send(b"x")
    time.sleep(0.05)
    assert impl.still_open(near) is False  # stray bytes: the connection is out of step
    assert near.recv(1) == b"x"  # (a look, not a read)
    assert impl.still_open(near) is True
    far.close()
    time.sleep(0.05)
    assert impl.still_open(near) is False  # the end of the stream
    near.close()
