"""Log lines in glog's classic format, `I1122 13:34:39.680987  4242 solver.cpp:289] message`, the form
Caffe's tools/extra/parse_log.py (and plots built on it) read. Written to stderr like glog, and to a file."""
import datetime
import os
import sys


def fmt(x):
    """A number as C++'s default ostream prints it (6 significant digits)."""
    return f"{float(x):.6g}"


class GLog:
    def __init__(self, path=None, stream=True):
        self.path = path
        self.stream = stream
        self._file = open(path, "a", encoding="utf-8") if path else None

    def line(self, where, message, severity="I"):
        now = datetime.datetime.now()
        text = f"{severity}{now:%m%d %H:%M:%S.%f} {os.getpid():>5} {where}] {message}\n"
        if self.stream:
            sys.stderr.write(text)
            sys.stderr.flush()
        if self._file:
            self._file.write(text)
            self._file.flush()

    def info(self, where, message):
        self.line(where, message, "I")

    def warning(self, where, message):
        self.line(where, message, "W")

    def error(self, where, message):
        self.line(where, message, "E")

    def close(self):
        if self._file:
            self._file.close()
            self._file = None
