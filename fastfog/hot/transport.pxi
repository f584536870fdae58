# What the compiled transport (hot/client.pxi, hot/exchange.pxi) takes from fastfog's Python
# modules, imported at first use (_import_transport): those modules import fastfog.hotpaths,
# which imports this extension, so they cannot be imported when it loads.

cdef object _forward = None
cdef object _responses, _LengthBody, _UntilClose, _LevelWatch, _SSLSocket, _x509_fields, _peer_text
cdef object _sockio_sendall
cdef Py_ssize_t _READ_SIZE, _MAX_HEAD_SIZE


cdef _import_transport():
    global _forward, _responses, _LengthBody, _UntilClose, _LevelWatch, _SSLSocket, _x509_fields
    global _peer_text, _sockio_sendall, _READ_SIZE, _MAX_HEAD_SIZE
    import ssl
    from fastfog import connection, forward, responses, sockio
    from fastfog.sockio import LevelWatch
    _responses, _LevelWatch, _SSLSocket = responses, LevelWatch, ssl.SSLSocket
    _LengthBody, _UntilClose = forward.LengthBody, forward.UntilClose
    _x509_fields, _peer_text, _sockio_sendall = connection.x509_fields, connection.peer_text, sockio.sendall
    _READ_SIZE, _MAX_HEAD_SIZE = connection.READ_SIZE, connection.MAX_HEAD_SIZE
    _forward = forward  # last: it says the rest is here
