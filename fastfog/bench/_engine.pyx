# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled load generator and origins of ``fastfog bench``.

``fastfog bench`` must be able to measure a proxy faster than itself, so its
per-connection loop is C: one edge-free epoll loop per load process over raw
non-blocking sockets, connection state in a flat array indexed by descriptor,
no Python object per connection or per event. Its pure-Python twin is
``fastfog.bench.load`` (same workloads, same results); ``fastfog bench`` uses
this one when it is built.

- ``run_load``: the ``connect`` transaction (dial, CONNECT through the proxy
  unless direct, a request, the reply until the origin closes, close) and the
  ``http`` one (keep-alive GETs), closed loop over ``concurrency`` slots, or
  open loop at ``rate`` a second with each latency measured from the
  transaction's scheduled start (no coordinated omission).
- ``serve_origins``: the ``reply`` and ``http`` origins the workloads talk to.

Latencies go into ``fastfog.bench.load.Latencies``' buckets (1 µs wide below
10 ms, 100 µs wide above), counted in C.
"""

from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset
from libc.errno cimport errno, EAGAIN, EINPROGRESS, EINTR

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int, timespec*)
    int CLOCK_MONOTONIC

cdef extern from "<string.h>" nogil:
    void* memmem(const void*, size_t, const void*, size_t)

cdef extern from "<unistd.h>" nogil:
    int close(int)
    ssize_t read(int, void*, size_t)

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct sockaddr:
        pass
    struct sockaddr_storage:
        pass
    int socket(int, int, int)
    int connect(int, const sockaddr*, socklen_t)
    int bind(int, const sockaddr*, socklen_t)
    int listen(int, int)
    int accept4(int, sockaddr*, socklen_t*, int)
    int setsockopt(int, int, int, const void*, socklen_t)
    int getsockopt(int, int, int, void*, socklen_t*)
    ssize_t send(int, const void*, size_t, int)
    ssize_t recv(int, void*, size_t, int)
    int shutdown(int, int)
    int AF_INET, AF_INET6, SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC, SOL_SOCKET, SO_ERROR
    int SO_REUSEADDR, SO_REUSEPORT, SO_LINGER, MSG_NOSIGNAL, SHUT_WR

cdef extern from "<netinet/in.h>" nogil:
    int IPPROTO_TCP
    struct in_addr:
        pass
    struct in6_addr:
        pass
    struct sockaddr_in:
        unsigned short sin_family
        unsigned short sin_port
        in_addr sin_addr
    struct sockaddr_in6:
        unsigned short sin6_family
        unsigned short sin6_port
        in6_addr sin6_addr
    unsigned short htons(unsigned short)

cdef extern from "<netinet/tcp.h>" nogil:
    int TCP_NODELAY

cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int, const char*, void*)

cdef extern from "<sys/epoll.h>" nogil:
    union epoll_data:
        int fd
        unsigned long long u64
    struct epoll_event:
        unsigned int events
        epoll_data data
    int epoll_create1(int)
    int epoll_ctl(int, int, int, epoll_event*)
    int epoll_wait(int, epoll_event*, int, int)
    int EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP, EPOLL_CTL_ADD, EPOLL_CTL_MOD, EPOLL_CTL_DEL

cdef extern from "<sys/timerfd.h>" nogil:
    struct itimerspec:
        timespec it_interval
        timespec it_value
    int timerfd_create(int, int)
    int timerfd_settime(int, int, const itimerspec*, itimerspec*)
    int TFD_NONBLOCK, TFD_CLOEXEC, TFD_TIMER_ABSTIME

cdef extern from "<sys/resource.h>" nogil:
    struct rlimit:
        unsigned long rlim_cur
        unsigned long rlim_max
    int getrlimit(int, rlimit*)
    int RLIMIT_NOFILE

cdef enum:
    EVENTS = 256
    READ_SIZE = 65536
    HEAD_MAX = 127
    # Latency buckets: must match fastfog.bench.load.Latencies.
    FINE_US = 10000        # 1 µs buckets below 10 ms
    COARSE_US = 100        # then 100 µs buckets
    BUCKETS = 110000       # up to 10 s; slower ones go in the last

cdef enum:  # connection states: a client's
    DIALING = 1
    HEAD = 2               # waiting for the proxy's answer to CONNECT
    REPLY = 3              # reading the origin's reply (until it closes)
    RESPONSE = 4           # reading an HTTP response
    # an origin's
    LISTENER_REPLY = 10
    LISTENER_HTTP = 11
    SERVE_REPLY = 12
    SERVE_HTTP = 13

TUNNEL, HTTP = 0, 1

cdef struct Conn:
    int state
    long long started      # ns: the transaction's (scheduled) start
    long long received
    long long expected     # HTTP: bytes of the response in all (head and body), -1 unknown
    int head_len
    char head[HEAD_MAX + 1]


cdef inline int _family(sockaddr_storage* address) noexcept nogil:
    return (<sockaddr_in*>address).sin_family


cdef inline long long now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <long long>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline int bucket_of(long long ns) noexcept nogil:
    cdef long long us = ns // 1000
    if us < FINE_US:
        return <int>us
    us = FINE_US + (us - FINE_US) // COARSE_US
    return <int>(us if us < BUCKETS else BUCKETS - 1)


def latency_bucket(long long ns):
    """The bucket a latency of ``ns`` goes in (for the tests: load.Latencies.bucket_ns's twin)."""
    return bucket_of(ns if ns > 0 else 0)


cdef int address_of(object address, sockaddr_storage* out, socklen_t* length) except -1:
    """(host literal, port) → a socket address."""
    host, port = address
    cdef bytes text = host.encode("ascii")
    cdef sockaddr_in* four = <sockaddr_in*>out
    cdef sockaddr_in6* six = <sockaddr_in6*>out
    memset(out, 0, sizeof(sockaddr_storage))
    if inet_pton(AF_INET, text, &four.sin_addr) == 1:
        four.sin_family = AF_INET
        four.sin_port = htons(port)
        length[0] = sizeof(sockaddr_in)
    elif inet_pton(AF_INET6, text, &six.sin6_addr) == 1:
        six.sin6_family = AF_INET6
        six.sin6_port = htons(port)
        length[0] = sizeof(sockaddr_in6)
    else:
        raise ValueError(f"not an IP address: {host!r}")
    return 0


cdef int descriptor_limit() noexcept:
    cdef rlimit limit
    getrlimit(RLIMIT_NOFILE, &limit)
    return <int>(limit.rlim_cur if limit.rlim_cur < 1048576 else 1048576)


cdef class _Loop:
    """What one run's epoll loop shares: the epoll set, the connections by descriptor, a read buffer."""
    cdef int epoll
    cdef Conn* conns
    cdef int capacity
    cdef char* buffer

    def __cinit__(self):
        self.epoll = epoll_create1(0)
        self.capacity = descriptor_limit()
        self.conns = <Conn*>calloc(self.capacity, sizeof(Conn))
        self.buffer = <char*>calloc(READ_SIZE, 1)
        if self.epoll < 0 or self.conns == NULL or self.buffer == NULL:
            raise MemoryError("cannot set up the load loop")

    def __dealloc__(self):
        cdef int fd
        if self.conns != NULL:
            for fd in range(self.capacity):
                if self.conns[fd].state:
                    close(fd)
            free(self.conns)
        free(self.buffer)
        if self.epoll >= 0:
            close(self.epoll)

    cdef int watch(self, int fd, unsigned int events, int op) noexcept nogil:
        cdef epoll_event event
        event.events = events
        event.data.u64 = 0
        event.data.fd = fd
        return epoll_ctl(self.epoll, op, fd, &event)

    cdef void drop(self, int fd) noexcept nogil:
        self.conns[fd].state = 0
        close(fd)  # also leaves the epoll set


cdef class _Load(_Loop):
    cdef sockaddr_storage target
    cdef socklen_t target_length
    cdef bytes head_bytes, request_bytes
    cdef const char* head
    cdef Py_ssize_t head_size
    cdef const char* request
    cdef Py_ssize_t request_size
    cdef long long reply_size
    cdef int kind
    cdef long long deadline
    cdef long long done
    cdef long long* histogram
    cdef dict errors
    cdef int active

    def __cinit__(self):
        self.histogram = <long long*>calloc(BUCKETS, sizeof(long long))
        if self.histogram == NULL:
            raise MemoryError()
        self.errors = {}

    def __dealloc__(self):
        free(self.histogram)

    cdef void error(self, str kind):
        self.errors[kind] = self.errors.get(kind, 0) + 1

    cdef int start(self, long long started):
        """Open one transaction (its start time given: now, or its slot in an open loop)."""
        cdef int one = 1
        cdef int fd = socket(_family(&self.target), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
        if fd < 0:
            self.error(f"socket: errno {errno}")
            return 0
        if fd >= self.capacity:
            close(fd)
            self.error("out of descriptors")
            return 0
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(int))
        if connect(fd, <sockaddr*>&self.target, self.target_length) < 0 and errno != EINPROGRESS:
            self.error(f"connect: errno {errno}")
            close(fd)
            return 0
        cdef Conn* conn = &self.conns[fd]
        conn.state = DIALING
        conn.started = started
        conn.received = 0
        conn.expected = -1
        conn.head_len = 0
        self.watch(fd, EPOLLOUT, EPOLL_CTL_ADD)
        self.active += 1
        return 1

    cdef void finished(self, int fd, bint ok, str why):
        """A transaction ended (``ok``, or failed ``why``): count it, close, and in a closed
        loop start the next one."""
        cdef long long now = now_ns()
        if ok:
            self.done += 1
            self.histogram[bucket_of(now - self.conns[fd].started)] += 1
        else:
            self.error(why)
        self.drop(fd)
        self.active -= 1

    cdef int send_all(self, int fd, const char* data, Py_ssize_t size) noexcept:
        """Small writes on a fresh socket: all at once, or the transaction fails."""
        return send(fd, data, size, MSG_NOSIGNAL) == size

    cdef bint on_event(self, int fd, unsigned int events):
        """Handle one event; False when the transaction on ``fd`` ended (its slot is free)."""
        cdef Conn* conn = &self.conns[fd]
        cdef int err = 0
        cdef socklen_t err_length = sizeof(int)
        cdef ssize_t count
        cdef char* end
        if conn.state == DIALING:
            if events & (EPOLLERR | EPOLLHUP):
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &err_length)
                self.finished(fd, False, f"connect: errno {err}")
                return False
            self.watch(fd, EPOLLIN, EPOLL_CTL_MOD)
            if self.kind == TUNNEL and self.head != NULL:
                conn.state = HEAD
                ok = self.send_all(fd, self.head, self.head_size)
            else:
                conn.state = REPLY if self.kind == TUNNEL else RESPONSE
                ok = self.send_all(fd, self.request, self.request_size)
            if not ok:
                self.finished(fd, False, "send")
                return False
            return True
        while True:
            count = recv(fd, self.buffer, READ_SIZE, 0)
            if count < 0:
                if errno == EAGAIN:
                    return True
                if errno == EINTR:
                    continue
                self.finished(fd, False, f"recv: errno {errno}")
                return False
            if count == 0:
                if conn.state == REPLY and conn.received >= self.reply_size:
                    self.finished(fd, True, None)
                else:
                    self.finished(fd, False, "closed early")
                return False
            if conn.state == HEAD:
                if not self.read_head(fd, conn, count):
                    return False
            elif conn.state == REPLY:
                conn.received += count
            else:
                if not self.read_response(fd, conn, count):
                    return False

    cdef bint read_head(self, int fd, Conn* conn, ssize_t count):
        """The proxy's answer to CONNECT: 200, then the request goes through the tunnel."""
        cdef ssize_t take = count if count < HEAD_MAX - conn.head_len else HEAD_MAX - conn.head_len
        cdef char* end
        memcpy(conn.head + conn.head_len, self.buffer, take)
        conn.head_len += take
        end = <char*>memmem(conn.head, conn.head_len, b"\r\n\r\n", 4)
        if end == NULL:
            if conn.head_len >= HEAD_MAX:
                self.finished(fd, False, "proxy answer too long")
                return False
            return True
        if not (conn.head_len >= 12 and (conn.head[9] == 0x32 and conn.head[10] == 0x30 and conn.head[11] == 0x30)):
            self.finished(fd, False, "proxy answered " + conn.head[:12].decode("latin-1"))
            return False
        conn.received = (conn.head + conn.head_len) - (end + 4) + (count - take)
        conn.state = REPLY
        if not self.send_all(fd, self.request, self.request_size):
            self.finished(fd, False, "send")
            return False
        return True

    cdef bint read_response(self, int fd, Conn* conn, ssize_t count):
        """A keep-alive response: its head (for Content-Length), then its body; then the next GET."""
        cdef ssize_t take
        cdef char* end
        cdef char* at
        cdef long long length = 0
        cdef long long now
        if conn.expected < 0:
            take = count if count < HEAD_MAX - conn.head_len else HEAD_MAX - conn.head_len
            memcpy(conn.head + conn.head_len, self.buffer, take)
            conn.head_len += take
            conn.head[conn.head_len] = 0
            end = <char*>memmem(conn.head, conn.head_len, b"\r\n\r\n", 4)
            if end == NULL:
                if conn.head_len >= HEAD_MAX:
                    self.finished(fd, False, "response head too long")
                    return False
                conn.received += count
                return True
            if not (conn.head[9] == 0x32 and conn.head[10] == 0x30 and conn.head[11] == 0x30):
                self.finished(fd, False, "answered " + conn.head[:12].decode("latin-1"))
                return False
            at = <char*>memmem(conn.head, end - conn.head, b"Content-Length: ", 16)
            if at == NULL:
                self.finished(fd, False, "no content-length")
                return False
            at += 16
            while 0x30 <= at[0] <= 0x39:  # digits
                length = length * 10 + (at[0] - 0x30)
                at += 1
            conn.expected = (end + 4 - conn.head) + length
        conn.received += count
        if conn.received < conn.expected:
            return True
        if conn.received > conn.expected:
            self.finished(fd, False, "more than one response")
            return False
        now = now_ns()
        self.done += 1
        self.histogram[bucket_of(now - conn.started)] += 1
        if now >= self.deadline:
            self.drop(fd)
            self.active -= 1
            return False
        conn.started = now
        conn.received = 0
        conn.expected = -1
        conn.head_len = 0
        if not self.send_all(fd, self.request, self.request_size):
            self.finished(fd, False, "send")
            return False
        return True

    cdef object latency_counts(self):
        cdef int index
        return {index: self.histogram[index] for index in range(BUCKETS) if self.histogram[index]}


def run_load(int kind, target, head, bytes request, long long reply_size, int concurrency, double seconds,
             double rate=0.0):
    """Run one workload (``kind`` TUNNEL or HTTP) against ``target`` (host literal, port) for
    ``seconds``: ``head`` is the CONNECT head (None: direct). Closed loop over ``concurrency``
    slots, or open loop at ``rate`` transactions a second (latency from the scheduled start).
    Returns {"done", "errors", "latency_counts"}."""
    cdef _Load run = _Load()
    cdef epoll_event events[EVENTS]
    cdef int ready, index, fd, timeout_ms
    cdef long long now, started = now_ns(), interval = 0, next_start = 0
    cdef int timer = -1
    cdef itimerspec when
    cdef unsigned long long expirations
    address_of(target, &run.target, &run.target_length)
    run.kind = kind
    run.head_bytes = head
    run.request_bytes = request
    run.head = NULL if head is None else <const char*>run.head_bytes
    run.head_size = 0 if head is None else len(head)
    run.request = <const char*>run.request_bytes
    run.request_size = len(request)
    run.reply_size = reply_size
    run.deadline = started + <long long>(seconds * 1e9)
    if rate > 0:  # an absolute timer at each next start: precise to the ns, and the loop never spins
        interval = <long long>(1e9 / rate)
        next_start = started
        timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        memset(&when, 0, sizeof(itimerspec))
        run.watch(timer, EPOLLIN, EPOLL_CTL_ADD)
    else:
        for index in range(concurrency):
            run.start(started)
    while True:
        now = now_ns()
        if rate > 0:
            while next_start <= now and next_start < run.deadline:
                run.start(next_start)
                next_start += interval
            if next_start < run.deadline:
                when.it_value.tv_sec = next_start // 1000000000
                when.it_value.tv_nsec = next_start % 1000000000
                timerfd_settime(timer, TFD_TIMER_ABSTIME, &when, NULL)
        if now >= run.deadline and (run.active == 0 or now >= run.deadline + 10 * 1000000000):
            break
        timeout_ms = 10 if rate <= 0 or next_start >= run.deadline else 100
        with nogil:
            ready = epoll_wait(run.epoll, events, EVENTS, timeout_ms)
        for index in range(ready):
            fd = events[index].data.fd
            if fd == timer:
                read(timer, &expirations, 8)
                continue
            if run.conns[fd].state == 0:
                continue
            if not run.on_event(fd, events[index].events) and rate <= 0 and now_ns() < run.deadline:
                run.start(now_ns())
    for fd in range(run.capacity):  # still open after the grace period: count and close
        if run.conns[fd].state:
            run.error("unfinished at the deadline")
            run.drop(fd)
    if timer >= 0:
        close(timer)
    return {"done": run.done, "errors": run.errors, "latency_counts": run.latency_counts()}


cdef class _Origins(_Loop):
    cdef bytes reply_bytes, response_bytes
    cdef long long request_size

    cdef int listen_on(self, address, int state) except -1:
        cdef sockaddr_storage where
        cdef socklen_t length
        cdef int one = 1
        address_of(address, &where, &length)
        cdef int fd = socket(_family(&where), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(int))
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(int))
        if bind(fd, <sockaddr*>&where, length) < 0 or listen(fd, 4096) < 0:
            close(fd)
            raise OSError(errno, f"cannot listen on {address}")
        self.conns[fd].state = state
        self.watch(fd, EPOLLIN, EPOLL_CTL_ADD)
        return fd

    cdef void accept_all(self, int listener, int state) noexcept:
        cdef int fd, one = 1
        while True:
            fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd < 0:
                return
            if fd >= self.capacity:
                close(fd)
                continue
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(int))
            self.conns[fd].state = state
            self.conns[fd].received = 0
            memset(self.conns[fd].head, 0, 4)
            self.watch(fd, EPOLLIN, EPOLL_CTL_ADD)

    cdef void serve(self, int fd) noexcept:
        cdef Conn* conn = &self.conns[fd]
        cdef ssize_t count
        cdef int heads, index
        cdef char* data = self.buffer
        while True:
            count = recv(fd, data, READ_SIZE, 0)
            if count < 0:
                if errno == EAGAIN:
                    return
                if errno == EINTR:
                    continue
                self.drop(fd)
                return
            if count == 0:
                self.drop(fd)
                return
            if conn.state == SERVE_REPLY:
                conn.received += count
                if conn.received >= self.request_size:
                    send(fd, <const char*>self.reply_bytes, len(self.reply_bytes), MSG_NOSIGNAL)
                    self.drop(fd)
                    return
                continue
            heads = 0  # GET heads end in CRLF CRLF; one may straddle two reads (head keeps its tail)
            for index in range(count):
                conn.head[0] = conn.head[1]
                conn.head[1] = conn.head[2]
                conn.head[2] = conn.head[3]
                conn.head[3] = data[index]
                if conn.head[0] == 13 and conn.head[1] == 10 and conn.head[2] == 13 and conn.head[3] == 10:  # CRLF CRLF
                    heads += 1
            for index in range(heads):
                if send(fd, <const char*>self.response_bytes, len(self.response_bytes), MSG_NOSIGNAL) < 0:
                    self.drop(fd)
                    return


def serve_origins(reply_address, http_address, long long request_size, bytes reply, bytes response, int stop_fd):
    """Serve the ``reply`` origin (read ``request_size`` bytes, answer ``reply``, close) and the
    ``http`` one (``response`` to every GET head) until ``stop_fd`` becomes readable."""
    cdef _Origins origins = _Origins()
    cdef epoll_event events[EVENTS]
    cdef int ready, index, fd, state
    origins.reply_bytes, origins.response_bytes, origins.request_size = reply, response, request_size
    cdef int reply_listener = origins.listen_on(reply_address, LISTENER_REPLY)
    cdef int http_listener = origins.listen_on(http_address, LISTENER_HTTP)
    origins.watch(stop_fd, EPOLLIN, EPOLL_CTL_ADD)
    while True:
        with nogil:
            ready = epoll_wait(origins.epoll, events, EVENTS, -1)
        for index in range(ready):
            fd = events[index].data.fd
            if fd == stop_fd:
                return
            state = origins.conns[fd].state
            if state == LISTENER_REPLY:
                origins.accept_all(fd, SERVE_REPLY)
            elif state == LISTENER_HTTP:
                origins.accept_all(fd, SERVE_HTTP)
            elif state:
                origins.serve(fd)
