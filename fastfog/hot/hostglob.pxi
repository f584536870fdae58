# Host names and leading-wildcard globs: one dictionary probe per label.
#
# index_globs (fastfog/reference/hostglob.py) builds the two dictionaries;
# the lookup walks the host's dots without Python-level loops.

from cpython.dict cimport PyDict_GetItem
from cpython.ref cimport PyObject

cdef extern from "Python.h":
    Py_ssize_t PyUnicode_FindChar(object text, Py_UCS4 ch, Py_ssize_t start, Py_ssize_t end,
                                  int direction) except -2
    object PyUnicode_Substring(object text, Py_ssize_t start, Py_ssize_t end)


cdef class HostGlobSet:
    """Which entry, if any, matches a host: the exact name first, then the longest wildcard.

    Same API as fastfog.reference.hostglob.HostGlobSet.
    """
    cdef dict _exact
    cdef dict _suffixes

    def __init__(self, entries):
        self._exact, self._suffixes = index_globs(entries)

    def __len__(self):
        return len(self._exact) + len(self._suffixes)

    def match(self, str host not None):
        """The matching entry for ``host``, or None."""
        cdef PyObject* entry = PyDict_GetItem(self._exact, host)
        cdef Py_ssize_t n, dot
        if entry != NULL:
            return <object>entry
        if not self._suffixes:
            return None
        n = len(host)
        dot = PyUnicode_FindChar(host, 0x2E, 1, n, 1)
        while dot >= 0:
            entry = PyDict_GetItem(self._suffixes, PyUnicode_Substring(host, dot + 1, n))
            if entry != NULL:
                return <object>entry
            dot = PyUnicode_FindChar(host, 0x2E, dot + 1, n, 1)
        return None
