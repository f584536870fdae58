"""Metric series in pure Python: the twins of fastfog/hot/series.pxi.

A series is one metric with one set of labels. ``metrics.Metrics`` keeps its
counts in these objects and turns them into text only when it is scraped;
the connection path holds the series it updates (a tunnel's, per role and
project) and updates them with one call each, no dict look-up per event.

- ``Count``: a counter; ``add(n)``, ``value``.
- ``Histogram(bounds)``: counts per bucket (a value goes to the first bound
  it does not exceed, as ``bisect_left``; past the last bound only the
  total count has it), their sum and count; ``slots()`` gives them as
  ``[count per bound..., sum, count]``. The sum stays an int while every
  value observed is an int (byte counts print as integers).
- ``TunnelSeries``: what one closing tunnel adds to its role and project's
  series (cn.close, cn.active_at_termination, cn.duration, cn.bytes_in,
  cn.bytes_out), in one call.
"""

MAX_BOUNDS = 32  # as many bucket bounds as a histogram takes (the compiled twin's SERIES_MAX_BOUNDS)


class Count:
    __slots__ = ("value",)

    def __init__(self, value=0):
        self.value = value

    def add(self, n=1):
        self.value += n


class Histogram:
    __slots__ = ("bounds", "_counts", "_whole", "_fraction", "_floats", "_count")

    def __init__(self, bounds):
        self.bounds = tuple(bounds)
        if len(self.bounds) > MAX_BOUNDS:
            raise ValueError(f"at most {MAX_BOUNDS} bucket bounds")
        self._counts = [0] * len(self.bounds)
        self._whole, self._fraction, self._floats, self._count = 0, 0.0, False, 0

    def observe(self, value):
        bounds = self.bounds
        low, high = 0, len(bounds)
        while low < high:  # bisect_left, written out as the compiled twin has it
            middle = (low + high) // 2
            if bounds[middle] < value:
                low = middle + 1
            else:
                high = middle
        if low < len(bounds):
            self._counts[low] += 1
        if type(value) is int:
            self._whole += value
        else:
            self._fraction += value
            self._floats = True
        self._count += 1

    @property
    def count(self):
        return self._count

    @property
    def sum(self):
        return self._whole + self._fraction if self._floats else self._whole

    def slots(self):
        return [*self._counts, self.sum, self._count]


class TunnelSeries:
    __slots__ = ("closes", "active", "duration", "bytes_in", "bytes_out")

    def __init__(self, closes, active, duration, bytes_in, bytes_out):
        self.closes, self.active = closes, active
        self.duration, self.bytes_in, self.bytes_out = duration, bytes_in, bytes_out

    def closed(self, duration, bytes_in, bytes_out, active_at_termination):
        self.closes.add(1)
        if active_at_termination:
            self.active.add(1)
        self.duration.observe(float(duration))
        self.bytes_in.observe(int(bytes_in))
        self.bytes_out.observe(int(bytes_out))
