"""Sets of host names and leading-wildcard globs, in pure Python.

An entry is an exact name (``example.com``) or ``*.`` and a name
(``*.example.com``), which matches every subdomain of that name at any depth,
never the name itself. Hosts given to ``match`` are already normalised
(lowercase ASCII, no trailing dot) by the caller; entries are compared as
given. A lookup costs one dictionary probe per label, whatever the set's size.
``index_globs`` is the build step, shared with the compiled twin in
``fastfog/hot/hostglob.pxi``.
"""


def index_globs(entries):
    """Entries → ({exact name: entry}, {wildcard suffix: entry}); ValueError for a bad glob."""
    exact, suffixes = {}, {}
    for entry in entries:
        if type(entry) is not str:
            raise TypeError(f"a host glob is a str, not {type(entry).__name__}")
        if entry.startswith("*."):
            suffix = entry[2:]
            if not suffix or "*" in suffix:
                raise ValueError(f"invalid host glob {entry!r}")
            suffixes.setdefault(suffix, entry)
        elif not entry or "*" in entry:
            raise ValueError(f"invalid host glob {entry!r}: '*' may only start a glob, as '*.'")
        else:
            exact.setdefault(entry, entry)
    return exact, suffixes


class HostGlobSet:
    """Which entry, if any, matches a host: the exact name first, then the longest wildcard."""

    __slots__ = ("_exact", "_suffixes")

    def __init__(self, entries):
        self._exact, self._suffixes = index_globs(entries)

    def __len__(self):
        return len(self._exact) + len(self._suffixes)

    def match(self, host):
        """The matching entry for ``host``, or None."""
        if not isinstance(host, str):
            raise TypeError(f"a host is a str, not {type(host).__name__}")
        entry = self._exact.get(host)
        if entry is not None or not self._suffixes:
            return entry
        dot = host.find(".", 1)
        while dot >= 0:
            entry = self._suffixes.get(host[dot + 1:])
            if entry is not None:
                return entry
            dot = host.find(".", dot + 1)
        return None
