"""Progress that suits where it goes: a tqdm bar on a terminal; in a pipe or a log file, a plain line now
and then (every tenth of the work, and at least every minute), so `vggtool test ... | cat` or a log does
not fill with carriage-return updates."""
import math
import sys
import time

PLAIN_INTERVAL_S = 60.0


def progress(iterable=None, total=None, desc="", unit="it", disable=False, stream=None, **tqdm_kwargs):
    """A tqdm-like progress object (iterate it, or update(n); set_postfix; close / with)."""
    stream = sys.stderr if stream is None else stream
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    isatty = getattr(stream, "isatty", None)
    if not disable and isatty is not None and isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream, **tqdm_kwargs)
    return PlainProgress(iterable, total, desc, unit, disable, stream)


class PlainProgress:
    """Progress as whole lines: `desc: n/total unit (rate unit/s, postfix)`."""

    def __init__(self, iterable, total, desc, unit, disable, stream):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.disable, self.stream = disable, stream
        self.n = 0
        self.postfix = ""
        self.start = self.last_time = time.monotonic()
        self.step = max(1, math.ceil(total / 10)) if total else None
        self.next_n = self.step
        self.closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def set_postfix(self, **values):
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n=1):
        self.n += n
        now = time.monotonic()
        due = (self.next_n is not None and self.n >= self.next_n) or now - self.last_time >= PLAIN_INTERVAL_S
        if due and not (self.total and self.n >= self.total):  # the last line comes from close()
            self._line(now)
        while self.next_n is not None and self.n >= self.next_n:
            self.next_n += self.step

    def _line(self, now):
        self.last_time = now
        if self.disable:
            return
        rate = self.n / max(now - self.start, 1e-9)
        of = f"/{self.total}" if self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        self.stream.write(f"{self.desc}: {self.n}{of} {self.unit} ({rate:.1f} {self.unit}/s{extra})\n")
        self.stream.flush()

    def close(self):
        if not self.closed:
            self.closed = True
            if self.n:
                self._line(time.monotonic())
