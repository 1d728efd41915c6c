"""Comma-separated lists given on the command line (--scales 256,384,512, --c-grid 0.1,1,10,
--mean-value 104,117,123): one parser, so every flag accepts the same forms (spaces and a trailing
comma are fine) and every error names the flag and the bad value."""
import math

from .errors import VggtoolError

_WHAT = {int: ("integers", "an integer"), float: ("numbers", "a number")}


def parse_list(text, flag, kind=int, example=None, positive=True):
    """The values of `text` (e.g. '256,384,512') as `kind` (int or float); VggtoolError naming `flag`
    when an item is not a (finite, and with `positive` strictly positive) value or the list is empty."""
    plural, single = _WHAT[kind]
    want = f"{'positive ' if positive else ''}{plural}" + (f" like {example}" if example else "")
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise VggtoolError(f"{flag} expects a comma-separated list of {want}, got '{text}'")
    values = []
    for s in items:
        try:
            v = kind(s)
        except ValueError:
            raise VggtoolError(f"{flag}: '{s}' is not {single} (in '{text}'); give {want}") from None
        if not math.isfinite(v):
            raise VggtoolError(f"{flag}: '{s}' is not a finite number (in '{text}'); give {want}")
        if positive and v <= 0:
            raise VggtoolError(f"{flag}: {s} is not positive (in '{text}'); give {want}")
        values.append(v)
    return values
