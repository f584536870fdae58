# Taking connections off a listener: the twin of fastfog/reference/accept.py, whose
# docstring gives the API. accept4 makes each socket non-blocking as it is taken.

cdef extern from "<sys/socket.h>":
    int c_accept4 "accept4"(int fd, sockaddr* address, socklen_t* length, int flags) nogil
    enum:
        SOCK_CLOEXEC

cdef extern from "<netdb.h>":
    int getnameinfo(const sockaddr* address, socklen_t length, char* host, socklen_t host_length, char* service,
                    socklen_t service_length, int flags) nogil
    enum:
        NI_NUMERICHOST
        NI_MAXHOST

from fastfog.reference.accept import accept_batch as _accept_batch_reference


cdef tuple _peer_address(sockaddr_storage* address, socklen_t length):
    """The address as socket.accept gives it: (host, port), or (host, port, flowinfo, scope_id)."""
    cdef char host[NI_MAXHOST]
    cdef sockaddr_in6* v6
    if address.ss_family == AF_INET:
        inet_ntop(AF_INET, &(<sockaddr_in*>address).sin_addr, host, NI_MAXHOST)
        return (host.decode("ascii"), ntohs((<sockaddr_in*>address).sin_port))
    v6 = <sockaddr_in6*>address
    # getnameinfo, as Python's own: a link-local address keeps its zone ("fe80::1%eth0").
    if getnameinfo(<sockaddr*>address, length, host, NI_MAXHOST, NULL, 0, NI_NUMERICHOST) != 0:
        inet_ntop(AF_INET6, &v6.sin6_addr, host, NI_MAXHOST)
    return (host.decode("ascii"), ntohs(v6.sin6_port), ntohl(v6.sin6_flowinfo), v6.sin6_scope_id)


cdef object _family_of = _socket_type.socket.family  # the C attribute (socket.py's property makes an IntEnum)


def accept_batch(listener, int limit, take):
    cdef int family = _family_of.__get__(listener)
    cdef int listening = listener.fileno()
    cdef int fd, index = 0
    cdef sockaddr_storage address
    cdef socklen_t length
    if family != AF_INET and family != AF_INET6:  # (a UNIX listener, say: taken the plain way)
        return _accept_batch_reference(listener, limit, take)
    while index < limit:
        length = sizeof(address)
        fd = c_accept4(listening, <sockaddr*>&address, &length, SOCK_NONBLOCK | SOCK_CLOEXEC)
        if fd < 0:
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                return index, None
            return index, OSError(errno, strerror(errno).decode())
        index += 1
        try:
            # SOCK_NONBLOCK tells the socket object what accept4 made the descriptor: no
            # system call to make it so.
            sock = _socket_type.socket(family, SOCK_STREAM | SOCK_NONBLOCK, 0, fd)
        except OSError as err:  # gone already (it is checked with getsockname): the next one
            close(fd)
            return index, err
        take(sock, _peer_address(&address, length))
    return index, None
