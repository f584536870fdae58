# cython: language_level=3
"""fastfog's compiled hot paths.

One extension, split into readable parts under ``fastfog/hot/``. Each part has
a pure-Python twin of the same API in ``fastfog/reference/``; the property
tests hold the two to the same answers. Only per-byte and per-lookup work is
here: build steps (parsing CIDR entries, indexing globs) are the reference's
own Python, called from here, so they are written once.
"""

cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_DecodeASCII, PyUnicode_DecodeLatin1
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memchr, memcmp, memcpy, strlen

import os

from fastfog.errors import HeadError
from fastfog.reference.cidr import compile_ranges
from fastfog.reference.hostglob import index_globs


cdef extern from "<sys/socket.h>":
    enum:
        AF_INET
        AF_INET6

cdef extern from "<arpa/inet.h>":
    int inet_pton(int af, const char *src, void *dst) nogil


include "hot/httphead.pxi"
include "hot/cidr.pxi"
include "hot/hostglob.pxi"
include "hot/relay.pxi"
include "hot/buffered.pxi"
include "hot/record.pxi"
include "hot/clienthello.pxi"
include "hot/forwardhead.pxi"
include "hot/series.pxi"
include "hot/limits.pxi"  # (after relay.pxi: its clock)
include "hot/pool.pxi"  # (after relay.pxi: its clock and its watches)
include "hot/conntrack.pxi"  # (after limits.pxi: its tunnel counts)
include "hot/imports.pxi"
include "hot/deadline.pxi"
include "hot/opening.pxi"  # (after deadline.pxi: a dial's deadline)
include "hot/client.pxi"
include "hot/exchange.pxi"
include "hot/records.pxi"
include "hot/accept.pxi"  # (after opening.pxi: it uses its socket declarations)
