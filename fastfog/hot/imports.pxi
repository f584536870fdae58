# What the compiled core takes from fastfog's Python modules, imported once, at the first use
# of a part that needs them (the lane, a client connection, an exchange, the records): those
# modules import fastfog.hotpaths, which imports this extension, so they cannot be imported
# when it loads.

cdef bint _imported = False
# the lane (hot/opening.pxi)
cdef object _Admitted, _Opening, _Upstream, _body_unread, _count_dial, _dial_failure, _unexpected_failure
# the client connection and the exchange (hot/client.pxi, hot/exchange.pxi)
cdef object _forward, _responses, _LengthBody, _UntilClose, _LevelWatch, _SSLSocket, _x509_fields, _peer_text
cdef object _sockio_sendall
cdef Py_ssize_t _READ_SIZE, _MAX_HEAD_SIZE
# the records (hot/records.pxi)
cdef str _DECISION, _CONNECTION_CLOSE
cdef object _start_details, _forwarded_events, _tunnel_events


cdef _import_python():
    global _imported, _Admitted, _Opening, _Upstream, _body_unread, _count_dial, _dial_failure, _unexpected_failure
    global _forward, _responses, _LengthBody, _UntilClose, _LevelWatch, _SSLSocket, _x509_fields, _peer_text
    global _sockio_sendall, _READ_SIZE, _MAX_HEAD_SIZE
    global _DECISION, _CONNECTION_CLOSE, _start_details, _forwarded_events, _tunnel_events
    import ssl
    from fastfog import connection, forward, logs, responses, sockio
    from fastfog.admission import Admitted
    from fastfog.reference import records
    _Admitted, _Opening, _Upstream = Admitted, connection.Opening, connection.Upstream
    _body_unread = connection.body_unread
    _count_dial, _dial_failure, _unexpected_failure = (connection.count_dial, connection.dial_failure,
                                                       connection.unexpected_failure)
    _forward, _responses, _LevelWatch, _SSLSocket = forward, responses, sockio.LevelWatch, ssl.SSLSocket
    _LengthBody, _UntilClose = forward.LengthBody, forward.UntilClose
    _x509_fields, _peer_text, _sockio_sendall = connection.x509_fields, connection.peer_text, sockio.sendall
    _READ_SIZE, _MAX_HEAD_SIZE = connection.READ_SIZE, connection.MAX_HEAD_SIZE
    _DECISION, _CONNECTION_CLOSE = logs.DECISION, logs.CONNECTION_CLOSE
    _start_details, _forwarded_events, _tunnel_events = (records.start_details, records.forwarded_events,
                                                         records.tunnel_events)
    _imported = True
