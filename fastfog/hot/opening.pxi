# A request's way to its upstream, compiled: from admission's verdict to a connected
# upstream, with the dial made by system calls from C. Twin: fastfog/reference/opening.py.
#
# The lane carries a CONNECT or a forwarded request that is admitted, dialed
# directly (no upstream proxy), not held for an access-request webhook, and whose
# host is an IP literal or a name the DNS cache answers with an address the
# policy allows. It checks all of that before it does anything that leaves a
# trace; any other request goes to connection.Opening with admission's verdict,
# and is served exactly as the pure-Python build serves it. Past that point the
# lane makes Opening's calls in Opening's order: records.decided, the resolver
# and address metrics, a pooled connection or the dial and its metrics, and for
# a dial that fails or times out, the same answer through the same functions;
# then ``done(upstream, answer, close)``, as Opening calls it.

cdef extern from "<sys/socket.h>":
    ctypedef unsigned int socklen_t
    cdef struct sockaddr:
        unsigned short sa_family
    cdef struct sockaddr_storage:
        unsigned short ss_family
    int c_connect "connect"(int fd, const sockaddr* address, socklen_t length) nogil
    int c_setsockopt "setsockopt"(int fd, int level, int name, const void* value, socklen_t length) nogil
    int c_getsockopt "getsockopt"(int fd, int level, int name, void* value, socklen_t* length) nogil
    int c_getsockname "getsockname"(int fd, sockaddr* address, socklen_t* length) nogil
    enum:
        SOCK_STREAM
        SOCK_NONBLOCK
        SOL_SOCKET
        SO_ERROR

cdef extern from "<netinet/in.h>":
    cdef struct in_addr:
        uint32_t s_addr
    cdef struct in6_addr:
        unsigned char s6_addr[16]
    cdef struct sockaddr_in:
        unsigned short sin_family
        unsigned short sin_port
        in_addr sin_addr
    cdef struct sockaddr_in6:
        unsigned short sin6_family
        unsigned short sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id
    unsigned short htons(unsigned short value) nogil
    unsigned short ntohs(unsigned short value) nogil
    uint32_t ntohl(uint32_t value) nogil
    enum:
        IPPROTO_TCP
        INET6_ADDRSTRLEN

cdef extern from "<netinet/tcp.h>":
    enum:
        TCP_NODELAY

cdef extern from "<arpa/inet.h>":
    const char* inet_ntop(int af, const void* src, char* dst, socklen_t size) nogil

from libc.errno cimport EINPROGRESS, ETIMEDOUT
from libc.string cimport memset

import _socket as _socket_type  # the C socket type: socket.socket's Python-level __init__ costs more

cdef str _address_text(const sockaddr_storage* address):
    """A socket address as connection.peer_text writes it: ``ip:port`` or ``[v6]:port``."""
    cdef char text[INET6_ADDRSTRLEN]
    if address.ss_family == AF_INET:
        inet_ntop(AF_INET, &(<const sockaddr_in*>address).sin_addr, text, INET6_ADDRSTRLEN)
        return _peer_text((text.decode("ascii"), ntohs((<const sockaddr_in*>address).sin_port)))
    inet_ntop(AF_INET6, &(<const sockaddr_in6*>address).sin6_addr, text, INET6_ADDRSTRLEN)
    return _peer_text((text.decode("ascii"), ntohs((<const sockaddr_in6*>address).sin6_port)))


def open_upstream(proxy, conn, head, dict fields, bint connect, bint reuse, done):
    """Decide, resolve, classify and dial for one request, then ``done(upstream, answer, close)``
    (see connection.Opening, whose arguments these are)."""
    if not _imported:
        _import_python()
    try:
        verdict = proxy.admission.admit(conn, head, connect)
    except Exception as err:  # a bug: this request's 500, as Opening answers it
        done(None, _unexpected_failure(proxy, head, fields, None, 0, err), True)
        return
    if type(verdict) is not _Admitted or verdict.via is not None:
        _Opening(proxy, conn, head, fields, connect, done, reuse).admitted(verdict)
        return
    cdef double lookup_started = _monotonic()
    host = verdict.host
    cdef bint named = host.address is None
    try:
        hooks = proxy.records.webhooks
        if hooks is not None and hooks.wants_access_request(verdict.role):
            addresses = None
        elif named:
            addresses = proxy.resolver.cached(host.name)
        else:
            addresses = (host.name,)
        pick = proxy.policy.pick(addresses, verdict.port) if addresses is not None else None
    except Exception:  # a cached lookup failure (or a bug): Opening meets it again, and answers it
        pick = None
    if pick is None or not pick.allowed:
        _Opening(proxy, conn, head, fields, connect, done, reuse).admitted(verdict)
        return
    _LaneOpening(proxy, conn, head, fields, connect, reuse, done, verdict, pick, named, lookup_started).open()


cdef inline bint _head_body_unread(object head) except -1:
    """connection.body_unread(head), read from a compiled head's fields."""
    cdef _Head fields
    if type(head) is RequestHead:
        fields = <_Head>head
        return fields.content_length or fields.chunked or not fields.keep_alive
    return _body_unread(head)


@cython.final
cdef class _LaneOpening:
    """One lane request from its verdict to its upstream: a pooled connection or the dial."""
    cdef object proxy
    cdef object conn
    cdef object head
    cdef dict fields
    cdef bint connect
    cdef bint reuse
    cdef bint close  # whether a failure's answer closes the connection
    cdef object done
    cdef object verdict
    cdef object pick
    cdef bint named
    cdef double lookup_started
    cdef int lookup_ms
    cdef object sock
    cdef int fd
    cdef int family
    cdef EdgeWatch watch
    cdef Deadline deadline  # the dial's (connect_timeout), or None
    cdef double dial_started

    def __init__(self, proxy, conn, head, dict fields, bint connect, bint reuse, done, verdict, pick, bint named,
                 double lookup_started):
        self.proxy, self.conn, self.head, self.fields = proxy, conn, head, fields
        self.connect, self.reuse, self.done = connect, reuse, done
        self.close = connect or _head_body_unread(head)  # as Opening's: a CONNECT's failures always close
        self.verdict, self.pick, self.named, self.lookup_started = verdict, pick, named, lookup_started
        self.fd = -1

    cdef open(self):
        proxy = self.proxy
        try:
            # What Opening._admitted and _resolved leave behind, in their order.
            proxy.records.decided(self.fields, self.verdict)
            metrics = proxy.metrics
            if self.named:
                metrics.incr("resolver.attempts_total")
            elapsed_ms = (_monotonic() - self.lookup_started) * 1000
            self.lookup_ms = <int>elapsed_ms
            if self.conn.closed:
                self._abandon()
                return
            if self.named:
                metrics.observe("resolver.lookup_time", elapsed_ms)
            metrics.incr(self.pick.address_class.metric)
            if self.reuse:
                pooled = proxy.pool.take(self.pick.address, self.verdict.port)
                if pooled is not None:
                    self.sock, self.watch, names = pooled
                    self.fd = self.sock.fileno()
                    self.dial_started = _monotonic()
                    self._ended(0, names)
                    return
            self._connect()
        except Exception as err:  # a bug: contained to this request, as Opening contains its own
            self._unexpected(err)

    cdef _connect(self):
        cdef sockaddr_storage address
        cdef socklen_t length
        cdef int one = 1, value, error
        text = (<str>self.pick.address).encode("ascii")
        memset(&address, 0, sizeof(address))
        if inet_pton(AF_INET, text, &(<sockaddr_in*>&address).sin_addr) == 1:
            self.family = AF_INET
            (<sockaddr_in*>&address).sin_family = AF_INET
            (<sockaddr_in*>&address).sin_port = htons(self.verdict.port)
            length = sizeof(sockaddr_in)
        elif inet_pton(AF_INET6, text, &(<sockaddr_in6*>&address).sin6_addr) == 1:
            self.family = AF_INET6
            (<sockaddr_in6*>&address).sin6_family = AF_INET6
            (<sockaddr_in6*>&address).sin6_port = htons(self.verdict.port)
            length = sizeof(sockaddr_in6)
        else:
            raise ValueError(f"not an address: {self.pick.address!r}")
        # The socket object is made first: made from a descriptor, it would ask the kernel for
        # the socket's name (a system call) to check that it is one. Non-blocking from its
        # creation: no separate call to make it so.
        self.sock = _socket_type.socket(self.family, SOCK_STREAM | SOCK_NONBLOCK)
        self.fd = self.sock.fileno()
        c_setsockopt(self.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
        for level, name, option in self.proxy.keepalive.options:
            value = option
            c_setsockopt(self.fd, level, name, &value, sizeof(value))
        self.dial_started = _monotonic()
        if c_connect(self.fd, <sockaddr*>&address, length) == 0:
            self._ended(0, None)
            return
        error = errno
        if error != EINPROGRESS and error != EAGAIN and error != EINTR:
            self._ended(error, None)
            return
        proxy = self.proxy
        timeout = proxy.config.connect_timeout
        if timeout:
            self.deadline = Deadline(proxy.loop)
            self.deadline.set(timeout, self._timed_out)
        # The connect's end is one edge (writable, or an error) on the proxy's own epoll set,
        # where the relay then takes the socket over.
        self.watch = EdgeWatch(proxy.poller, self.fd)
        self.watch.readable = False  # nothing can have arrived yet: wait for an edge that says so
        self.watch.wait_write(self._dialed)

    def _dialed(self):
        cdef int error = 0
        cdef socklen_t length = sizeof(error)
        try:
            if self.deadline is not None:
                self.deadline.cancel()
            # Only an edge that said error or hang-up can carry a failed connect: ask for it then.
            if self.watch.hung_up and c_getsockopt(self.fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0:
                error = errno
            self._ended(error, None)
        except Exception as err:
            self._unexpected(err)

    def _timed_out(self):
        try:
            self._close_upstream()
            _count_dial(self.proxy, ETIMEDOUT, self.dial_started)
            self._failed(None)
        except Exception as err:
            self._unexpected(err)

    cdef _ended(self, int error, tuple pooled_names):
        """The dial's end (``error``, an errno or 0), or a pooled connection's names."""
        cdef sockaddr_storage local
        cdef socklen_t length = sizeof(local)
        proxy, conn, fields = self.proxy, self.conn, self.fields
        if pooled_names is None:
            _count_dial(proxy, error, self.dial_started)
        if error:
            self._close_upstream()
            self._failed(error)
            return
        if conn.closed:
            self._close_upstream()
            self._abandon()
            return
        if self.watch is None and not self.connect:  # connected at once, without an edge
            self.watch = EdgeWatch(proxy.poller, self.fd)
        address, port = self.pick.address, self.verdict.port
        if pooled_names is not None:
            names = pooled_names
        else:
            if c_getsockname(self.fd, <sockaddr*>&local, &length) != 0:
                raise OSError(errno, strerror(errno).decode())
            # The remote end is the address dialed (canonical text already): no need to ask the kernel.
            names = (_address_text(&local), _peer_text((address, port)))
        fields["outbound_local_addr"], fields["outbound_remote_addr"] = names
        connect_ms = <int>((_monotonic() - self.dial_started) * 1000)
        verdict = self.verdict
        upstream = _Upstream(self.sock, self.watch, verdict.decision, self.lookup_ms, connect_ms, address, None, port,
                             pooled_names is not None, verdict.role, verdict.requested, names)
        self.done(upstream, None, False)

    cdef _failed(self, error):
        status, message = _dial_failure(error, self.pick.address, self.verdict.port)
        proxy = self.proxy
        answer = proxy.records.failed(self.head, self.fields, self.verdict.decision, self.lookup_ms, status, message,
                                      self.close)
        self._answer(answer, self.close)

    cdef _unexpected(self, err):
        self._close_upstream()
        if self.deadline is not None:
            self.deadline.cancel()
        decision = self.verdict.decision
        self._answer(_unexpected_failure(self.proxy, self.head, self.fields, decision, self.lookup_ms, err), True)

    cdef _abandon(self):
        """The client went away (or shutdown closed it) meanwhile: release, and close it."""
        self._answer(None, True)

    cdef _answer(self, answer, bint close):
        self.proxy.limits.release(self.verdict.role)
        self.done(None, answer, close)

    cdef _close_upstream(self):
        if self.watch is not None:
            self.watch.forget()
            self.watch = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            self.fd = -1
