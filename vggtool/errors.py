"""The one exception type for mistakes a user can make (bad files, bad flags, shapes that do not fit).

The CLI prints its message alone, without a traceback, and exits non-zero.
"""


class VggtoolError(Exception):
    """An error caused by user input: the message names the file, line, layer or blob."""
