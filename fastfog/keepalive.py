"""TCP keep-alive: how fastfog notices a peer that vanished without a FIN or a reset.

A client or origin that disappears (a terminated instance, an expired NAT
entry, a partition) sends nothing more, and a tunnel with no idle timeout
would hold both descriptors until the process ends. With keep-alive the
kernel probes a connection idle for ``idle`` seconds every ``interval``
seconds and, after ``count`` unanswered probes, fails it, so its relay closes
and logs it. The defaults are Go's (Smokescreen's): 15 s, 15 s, 9 probes.

Set on the listener, the options are inherited by every accepted socket (no
system call per connection); upstream sockets get them when dialed.
"""

import socket

DEFAULTS = {"enabled": True, "idle": 15.0, "interval": 15.0, "count": 9}


class KeepAlive:
    """The socket options for ``tcp_keepalive`` settings (a mapping; None: the defaults)."""

    __slots__ = ("options",)

    def __init__(self, settings=None):
        merged = {**DEFAULTS, **{key: value for key, value in (settings or {}).items() if value is not None}}
        if not merged["enabled"]:
            self.options = ()
            return
        self.options = (
            (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
            (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, _whole_seconds(merged["idle"])),
            (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, _whole_seconds(merged["interval"])),
            (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, merged["count"]),
        )

    def apply(self, sock):
        for level, name, value in self.options:
            sock.setsockopt(level, name, value)


def _whole_seconds(seconds):
    """The kernel counts in whole seconds, at least one."""
    return max(1, int(-(-seconds // 1)))
