"""Exceptions shared by the compiled core and its pure-Python twin."""


class HeadError(ValueError):
    """An HTTP head that can never be valid; ``str(err)`` is a short reason."""
