# Relaying a tunnel between two TCP sockets: copy, then splice(2).
#
# The same machine as fastfog/reference/relay.py, whose docstring describes it
# (the edge-triggered EdgePoller and TLS sockets included); here each edge is one
# call into C that moves the bytes with recv/send/splice/shutdown system calls and
# touches Python only to close. A TLS socket is read and written through its
# OpenSSL connection (ssl.SSLSocket._sslobj: ssl.py's Python frames around it only
# check what fastfog's own sockets always are), reading into the same scratch
# buffer as recv does.

from libc.errno cimport EAGAIN, EEXIST, EINTR, errno
from libc.limits cimport LLONG_MAX
from libc.string cimport strerror
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

cdef extern from "<fcntl.h>":
    ssize_t splice(int fd_in, void *off_in, int fd_out, void *off_out, size_t length,
                   unsigned int flags) nogil
    int fcntl(int fd, int cmd, ...) nogil
    enum:
        SPLICE_F_MOVE
        SPLICE_F_NONBLOCK
        F_SETPIPE_SZ
        O_NONBLOCK
        O_CLOEXEC

cdef extern from "<unistd.h>":
    int pipe2(int *fds, int flags) nogil
    int close(int fd) nogil

cdef extern from "<sys/epoll.h>":
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64
    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags) nogil
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event) nogil
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout) nogil
    enum:
        EPOLL_CLOEXEC
        EPOLL_CTL_ADD
        EPOLL_CTL_MOD
        EPOLL_CTL_DEL
        EPOLLIN
        EPOLLOUT
        EPOLLRDHUP
        EPOLLERR
        EPOLLHUP
        EPOLLET

cdef extern from "<sys/socket.h>":
    ssize_t recv(int fd, void *buf, size_t length, int flags) nogil
    ssize_t send(int fd, const void *buf, size_t length, int flags) nogil
    int c_shutdown "shutdown"(int fd, int how) nogil
    enum:
        SHUT_WR
        MSG_NOSIGNAL
        MSG_PEEK
        MSG_DONTWAIT

from cpython.buffer cimport PyBUF_WRITE
from cpython.memoryview cimport PyMemoryView_FromMemory

import socket as _socket
import ssl as _ssl
import struct as _struct
import weakref as _weakref

from fastfog.reference.relay import error_text as _error_text

cdef enum:
    SPLICE_CHUNK = 1 << 20
    RELAY_PIPE_SIZE = 1 << 20
    RELAY_BULK = 1 << 20
    RELAY_BUDGET = 16 << 20
    RELAY_COPY_LIMIT = 64 << 10
    RELAY_COPY_CHUNK = 64 << 10
    POLLER_BATCH = 128

# Copied bytes pass through here: the loop runs one callback at a time, so one buffer serves all
# (a TLS socket's reads too, through the view).
cdef char relay_scratch[RELAY_COPY_CHUNK]
cdef object relay_scratch_view = PyMemoryView_FromMemory(relay_scratch, RELAY_COPY_CHUNK, PyBUF_WRITE)

cdef enum:
    RELAY_FAILED = -1000000  # a TLS call failed and the relay is closed already (not an errno)

cdef unsigned int RELAY_FLAGS = SPLICE_F_NONBLOCK | SPLICE_F_MOVE
cdef uint32_t READ_EVENTS = EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR
cdef uint32_t WRITE_EVENTS = EPOLLOUT | EPOLLHUP | EPOLLERR
cdef uint32_t HANGUP_EVENTS = EPOLLRDHUP | EPOLLHUP | EPOLLERR
cdef bytes LINGER_RESET = _struct.pack("ii", 1, 0)


cdef inline double _monotonic() noexcept nogil:
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return now.tv_sec + now.tv_nsec * 1e-9


cdef class EdgeWatch


cdef class EdgePoller:
    """Edge-triggered readiness for many sockets through one registration with the loop
    (same API as fastfog.reference.relay.EdgePoller, which documents it)."""
    cdef int epfd
    cdef object loop_ref  # the loop holds us (our reader); we must not hold it
    cdef dict owners
    cdef epoll_event events[POLLER_BATCH]

    def __cinit__(self, loop):
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, strerror(errno).decode())
        self.loop_ref = _weakref.ref(loop)
        self.owners = {}
        loop.add_reader(self.epfd, self.dispatch)

    @property
    def loop(self):
        return self.loop_ref()

    cpdef add(self, int fd, object owner):
        cdef epoll_event event
        event.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
        event.data.u64 = 0
        event.data.fd = fd
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &event) != 0:
            # Registered already (handed over by an earlier owner): re-arming reports its state anew.
            if errno != EEXIST or epoll_ctl(self.epfd, EPOLL_CTL_MOD, fd, &event) != 0:
                raise OSError(errno, strerror(errno).decode())
        self.owners[fd] = owner

    cpdef remove(self, int fd):
        cdef epoll_event event
        if self.owners.pop(fd, None) is not None:
            epoll_ctl(self.epfd, EPOLL_CTL_DEL, fd, &event)

    cpdef forget(self, int fd):
        self.owners.pop(fd, None)

    cpdef adopt(self, int fd, object owner):
        self.owners[fd] = owner

    def dispatch(self):
        cdef int count = epoll_wait(self.epfd, self.events, POLLER_BATCH, 0)
        cdef int index, fd
        for index in range(count):
            fd = self.events[index].data.fd
            owner = self.owners.get(fd)
            if owner is None:
                continue
            if type(owner) is SpliceRelay:
                (<SpliceRelay>owner).on_events(fd, self.events[index].events)
                continue
            try:
                if type(owner) is EdgeWatch:
                    (<EdgeWatch>owner).edge(self.events[index].events)
                else:
                    owner.on_events(fd, self.events[index].events)
            except Exception as err:  # a bug in one owner: the rest of the batch still runs
                self.loop_ref().call_exception_handler({"message": "error in an edge handler", "exception": err})

    def __dealloc__(self):
        if self.epfd >= 0:
            close(self.epfd)


cdef class EdgeWatch:
    """One plain socket's readiness from its poller's edges (same API as
    fastfog.reference.relay.EdgeWatch, which documents it)."""
    cdef EdgePoller _poller
    cdef readonly int fd
    cdef public bint readable
    cdef public bint writable
    cdef readonly bint hung_up
    cdef object _on_read
    cdef object _on_write

    def __init__(self, EdgePoller poller, int fd):
        self._poller, self.fd = poller, fd
        self.readable = self.writable = True
        poller.add(fd, self)

    def on_events(self, fd, mask):
        self.edge(mask)

    cdef edge(self, uint32_t mask):
        if mask & HANGUP_EVENTS:
            self.hung_up = True
        if mask & READ_EVENTS:
            self.readable = True
            callback = self._on_read
            if callback is not None:
                self._on_read = None
                callback()
        if mask & WRITE_EVENTS:
            self.writable = True
            callback = self._on_write
            if callback is not None:
                self._on_write = None
                callback()

    cpdef wait_read(self, callback):
        self.readable = False
        self._on_read = callback

    cpdef wait_write(self, callback):
        self.writable = False
        self._on_write = callback

    cpdef receive(self, sock, Py_ssize_t size, callback):
        if not self.readable:
            self.wait_read(callback)
            return None
        try:
            data = sock.recv(size)
        except BlockingIOError:
            self.wait_read(callback)
            return None
        if 0 < len(data) < size and not self.hung_up:
            self.readable = False
        return data

    cpdef cancel(self):
        self._on_read = self._on_write = None

    cpdef remove(self):
        self._on_read = self._on_write = None
        self._poller.remove(self.fd)

    cpdef forget(self):
        self._on_read = self._on_write = None
        self._poller.forget(self.fd)


# Any watch (an EdgeWatch, or sockio.LevelWatch over TLS): an EdgeWatch's methods are called at C level.

cdef inline object _watch_receive(object watch, object sock, Py_ssize_t size, object callback):
    if type(watch) is EdgeWatch:
        return (<EdgeWatch>watch).receive(sock, size, callback)
    return watch.receive(sock, size, callback)


cdef inline bint _watch_writable(object watch) except -1:
    if type(watch) is EdgeWatch:
        return (<EdgeWatch>watch).writable
    return bool(watch.writable)


cdef inline _watch_wait_write(object watch, object callback):
    if type(watch) is EdgeWatch:
        (<EdgeWatch>watch).wait_write(callback)
    else:
        watch.wait_write(callback)


cdef inline _watch_cancel(object watch):
    if type(watch) is EdgeWatch:
        (<EdgeWatch>watch).cancel()
    else:
        watch.cancel()


cpdef bint still_open(sock) except -1:
    """Whether an idle connection can still carry a request (same API as
    fastfog.reference.relay.still_open): a peek that finds nothing, without an exception."""
    cdef char byte
    cdef int fd = sock.fileno()
    cdef ssize_t found = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT)
    while found < 0 and errno == EINTR:
        found = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT)
    return found < 0 and errno == EAGAIN  # (EWOULDBLOCK is EAGAIN on Linux)


@cython.final
cdef class PerLoop:
    """One object per event loop (same API as fastfog.reference.relay.PerLoop)."""
    cdef object _made
    cdef object _make
    cdef tuple _last

    def __init__(self, make):
        self._made, self._make, self._last = _weakref.WeakKeyDictionary(), make, (None, None)

    cpdef get(self, loop):
        cdef tuple last = self._last
        if last[0] is loop:
            return last[1]
        found = self._made.get(loop)
        if found is None:
            found = self._made[loop] = self._make(loop)
        self._last = (loop, found)
        return found


cdef PerLoop _pollers = PerLoop(EdgePoller)


cpdef EdgePoller poller_for(loop):
    """The EdgePoller of ``loop``, made on first use."""
    return <EdgePoller>_pollers.get(loop)


cdef inline object _tls_of(object sock):
    return sock._sslobj if isinstance(sock, _ssl.SSLSocket) else None


cdef class _SpliceDirection:
    """One way through the tunnel: src socket → (user space, later a pipe) → dst socket."""
    cdef SpliceRelay relay
    cdef object src
    cdef object dst
    cdef object src_tls  # a TLS socket's OpenSSL connection, or None: a plain socket
    cdef object dst_tls
    cdef long long copy_limit  # bytes copied before splicing (never, with a TLS socket)
    cdef int src_fd
    cdef int dst_fd
    cdef int pipe_r
    cdef int pipe_w
    cdef Py_ssize_t in_pipe
    cdef bytes pending
    cdef Py_ssize_t pending_sent
    cdef bint eof
    cdef bint done
    cdef bint src_ready
    cdef bint dst_ready
    cdef bint scheduled
    cdef bint grown
    cdef long long moved

    def __cinit__(self):
        self.pipe_r = self.pipe_w = -1
        self.dst_ready = True  # a fresh connection takes bytes; EAGAIN says otherwise

    cdef int open(self, SpliceRelay relay, object src, object dst, bytes pending) except -1:
        self.relay = relay
        self.src, self.dst = src, dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.src_tls, self.dst_tls = _tls_of(src), _tls_of(dst)
        self.copy_limit = RELAY_COPY_LIMIT if self.src_tls is None and self.dst_tls is None else LLONG_MAX
        self.pending = pending
        return 0

    cdef int open_pipe(self) noexcept:
        """The direction has outgrown copying: from now on, splice. 0, or -errno."""
        cdef int fds[2]
        if pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0:
            return -errno
        self.pipe_r, self.pipe_w = fds[0], fds[1]
        return 0

    cdef ssize_t receive(self) noexcept:
        """One read of src into the scratch buffer: bytes read (0 at end of stream), -errno
        (-EAGAIN: nothing to read, or no whole TLS record yet), or RELAY_FAILED."""
        cdef ssize_t received
        if self.src_tls is None:
            while True:
                received = recv(self.src_fd, relay_scratch, RELAY_COPY_CHUNK, 0)
                if received >= 0:
                    return received
                if errno != EINTR:
                    return -errno
        try:
            return self.src_tls.read(RELAY_COPY_CHUNK, relay_scratch_view)  # 0 after close_notify
        except (_ssl.SSLWantReadError, _ssl.SSLWantWriteError):
            return -EAGAIN
        except (_ssl.SSLZeroReturnError, _ssl.SSLEOFError):  # close_notify after fastfog's own (the
            return 0                                              # other way ended first), or none at all
        except Exception as err:
            self.relay.fail(err)
            return RELAY_FAILED

    cdef ssize_t copy(self) noexcept:
        """One read, sent on at once; what dst does not take waits in ``pending``. Bytes
        received (0 at end of stream), or as receive()."""
        cdef ssize_t received, sent, n
        received = self.receive()
        if received <= 0:
            return received
        if self.dst_tls is not None:  # drain() writes it through OpenSSL
            self.pending = PyBytes_FromStringAndSize(relay_scratch, received)
            self.pending_sent = 0
            return received
        sent = 0
        while sent < received:
            n = send(self.dst_fd, relay_scratch + sent, received - sent, MSG_NOSIGNAL)
            if n < 0:
                if errno == EINTR:
                    continue
                if errno != EAGAIN:
                    return -errno
                break
            sent += n
        self.moved += sent
        if sent < received:
            self.pending = PyBytes_FromStringAndSize(relay_scratch + sent, received - sent)
            self.pending_sent = 0
        return received

    cdef ssize_t send_tls(self) noexcept:
        """Write the rest of ``pending`` through dst's OpenSSL connection (whole, or not at all):
        bytes written, -EAGAIN (no room yet), or RELAY_FAILED."""
        data = self.pending if self.pending_sent == 0 else self.pending[self.pending_sent:]
        try:
            return self.dst_tls.write(data)
        except (_ssl.SSLWantWriteError, _ssl.SSLWantReadError):
            return -EAGAIN
        except Exception as err:
            self.relay.fail(err)
            return RELAY_FAILED

    cdef ssize_t drain(self) noexcept:
        """Move pending bytes, then the pipe, into dst: 1 done, 0 dst full, -errno on error (or
        RELAY_FAILED)."""
        cdef ssize_t n
        cdef const char* data
        while self.pending is not None and self.pending_sent < len(self.pending):
            if self.dst_tls is not None:
                n = self.send_tls()
                if n < 0:
                    return 0 if n == -EAGAIN else n
                self.pending_sent += n
                self.moved += n
                continue
            data = PyBytes_AS_STRING(self.pending)
            n = send(self.dst_fd, data + self.pending_sent, len(self.pending) - self.pending_sent, MSG_NOSIGNAL)
            if n < 0:
                if errno == EINTR:
                    continue
                return 0 if errno == EAGAIN else -errno
            self.pending_sent += n
            self.moved += n
        self.pending = None
        while self.in_pipe > 0:
            n = splice(self.pipe_r, NULL, self.dst_fd, NULL, <size_t>self.in_pipe, RELAY_FLAGS)
            if n < 0:
                if errno == EINTR:
                    continue
                return 0 if errno == EAGAIN else -errno
            self.in_pipe -= n
            self.moved += n
        return 1

    cdef void pump(self) noexcept:
        """Move bytes until src has none, dst takes none, or the budget is spent."""
        cdef SpliceRelay relay = self.relay
        cdef ssize_t received, drained
        cdef long long budget = relay.budget
        while not relay.closed:
            if self.pending is not None or self.in_pipe > 0:
                if not self.dst_ready:
                    return
                drained = self.drain()
                if drained < 0:
                    relay.abort(-drained)
                    return
                if drained == 0:
                    self.dst_ready = False
                    return
            if self.eof:
                self.maybe_finish()
                return
            if not self.src_ready:
                return
            if budget <= 0:
                if not self.scheduled:
                    self.scheduled = True
                    try:
                        relay._loop.call_soon(self.resume)
                    except Exception:  # a closed loop: nothing will run again anyway
                        pass
                return
            if self.pipe_r < 0 and self.moved < self.copy_limit:
                received = self.copy()
                if received == -EAGAIN:
                    self.src_ready = False
                    return
                if received < 0:
                    relay.abort(-received)
                    return
            else:
                if self.pipe_r < 0:
                    drained = self.open_pipe()
                    if drained < 0:
                        relay.abort(-drained)
                        return
                received = splice(self.src_fd, NULL, self.pipe_w, NULL, SPLICE_CHUNK, RELAY_FLAGS)
                if received < 0:
                    if errno == EINTR:
                        continue
                    if errno == EAGAIN:
                        self.src_ready = False
                        return
                    relay.abort(errno)
                    return
                self.in_pipe += received
            if received == 0:
                self.eof = True
                continue
            budget -= received
            if not self.grown and self.pipe_w >= 0 and self.moved >= RELAY_BULK:
                self.grown = True
                fcntl(self.pipe_w, F_SETPIPE_SZ, <int>RELAY_PIPE_SIZE)

    def resume(self):
        self.scheduled = False
        self.pump()

    cdef void maybe_finish(self) noexcept:
        if self.eof and self.in_pipe == 0 and self.pending is None and not self.done:
            if self.dst_tls is not None:  # read what the peer sent first: see the reference's docstring
                self.relay.read_before_close_notify(self)
                if self.relay.closed:  # (failed meanwhile)
                    return
            self.done = True
            if self.dst_tls is None:
                c_shutdown(self.dst_fd, SHUT_WR)  # an error here means the peer is gone: the other side will see
            else:
                try:
                    self.dst.shutdown(_socket.SHUT_WR)  # close_notify, then the TCP half-close
                except Exception:
                    pass
            self.relay.direction_done()

    cdef void close_pipe(self) noexcept:
        if self.pipe_r >= 0:
            close(self.pipe_r)
            close(self.pipe_w)
            self.pipe_r = self.pipe_w = -1

    def __dealloc__(self):
        self.close_pipe()


cdef class SpliceRelay:
    """Relays between two connected, non-blocking sockets on an event loop.

    Same API as fastfog.reference.relay.SpliceRelay.
    """
    cdef object _loop
    cdef readonly object client
    cdef readonly object upstream
    cdef int _client_fd
    cdef int _upstream_fd
    cdef object _on_close
    cdef EdgePoller _poller
    cdef _SpliceDirection _outbound
    cdef _SpliceDirection _inbound
    cdef public object error
    cdef readonly bint closed
    cdef public double last_activity
    cdef public long long budget

    def __init__(self, loop, client, upstream, on_close, first_bytes=b""):
        self._loop = loop
        self.budget = RELAY_BUDGET  # bytes a direction moves before it lets other connections run
        self.client, self.upstream = client, upstream
        self._client_fd, self._upstream_fd = client.fileno(), upstream.fileno()
        self._on_close = on_close
        self._outbound = _SpliceDirection()
        self._inbound = _SpliceDirection()
        self._outbound.open(self, client, upstream, bytes(first_bytes) if first_bytes else None)
        self._inbound.open(self, upstream, client, None)
        self.last_activity = _monotonic()

    @property
    def bytes_out(self):
        return self._outbound.moved

    @property
    def bytes_in(self):
        return self._inbound.moved

    def start(self, EdgeWatch upstream_watch=None):
        """Begin relaying; first_bytes are sent to the upstream before the client is read."""
        self._poller = poller_for(self._loop)
        try:
            self._poller.add(self._client_fd, self)
            if upstream_watch is None:
                self._poller.add(self._upstream_fd, self)
            else:  # registered by its dial: taken over as it stands, no system call
                self._inbound.src_ready = upstream_watch.readable
                upstream_watch.cancel()
                self._poller.adopt(self._upstream_fd, self)
        except OSError as err:
            self.abort(err.errno)
            return
        self._outbound.pump()  # first_bytes; the sockets' first edges come with the next events

    def close(self, reason=None):
        """Close both sockets now (shutdown, idle timeout); ``reason`` becomes ``error``."""
        if not self.closed:
            if reason is not None and self.error is None:
                self.error = reason
            self.close_all()

    cdef void on_events(self, int fd, uint32_t mask) noexcept:
        # noexcept: an error here (a bug in on_close, say) is reported, and the other
        # sockets of the same batch still get their events.
        cdef _SpliceDirection reading, writing
        if self.closed:
            return
        self.last_activity = _monotonic()
        if fd == self._client_fd:
            reading, writing = self._outbound, self._inbound
        else:
            reading, writing = self._inbound, self._outbound
        if mask & READ_EVENTS:
            reading.src_ready = True
            reading.pump()
        if mask & WRITE_EVENTS and not self.closed:
            writing.dst_ready = True
            writing.pump()

    cdef void read_before_close_notify(self, _SpliceDirection finished) noexcept:
        cdef _SpliceDirection reverse = self._inbound if finished is self._outbound else self._outbound
        if not reverse.eof:
            reverse.src_ready = True  # a read that finds nothing only says EAGAIN
            reverse.pump()

    cdef void direction_done(self):
        if self._outbound.done and self._inbound.done:
            self.close_all()

    cdef void abort(self, int error_number):
        if not self.closed:  # (closed already after RELAY_FAILED)
            self.reset(strerror(error_number).decode())

    cdef void fail(self, object err):
        """A TLS call on one of the sockets raised ``err``."""
        self.reset(_error_text(err) if isinstance(err, OSError) else f"{type(err).__name__}: {err}")

    cdef void reset(self, str error):
        if self.closed:
            return
        if self.error is None:
            self.error = error
        for sock in (self.client, self.upstream):  # reset both peers: neither may think it got everything
            try:
                sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, LINGER_RESET)
            except OSError:
                pass
        self.close_all()

    cdef void close_all(self):
        if self.closed:
            return
        self.closed = True
        if self._poller is not None:
            self._poller.forget(self._client_fd)
            self._poller.forget(self._upstream_fd)
        self._outbound.close_pipe()
        self._inbound.close_pipe()
        self.client.close()
        self.upstream.close()
        self._on_close(self)
