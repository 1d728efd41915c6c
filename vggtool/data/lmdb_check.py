"""A damaged LMDB is an error naming the database, never a signal or an lmdb traceback.

LMDB maps data.mdb into memory; a page past the end of a truncated file (an interrupted copy, a full
disk) kills the reader with SIGBUS when touched. The newest meta page (read at open with plain reads)
records the last page in use, so a file shorter than (last page + 1) x page size is refused before any
record is read. Pages that are present but overwritten make LMDB raise lmdb.CorruptedError (or
another lmdb.Error) while reading; `read_errors` turns those into VggtoolError.
"""
import contextlib
import os

from ..errors import VggtoolError


def check_complete(env, path):
    """Raise VggtoolError when data.mdb of the open read-only `env` at `path` is shorter than its header
    says (cheap: one stat and the meta page)."""
    import lmdb

    data = os.path.join(os.fspath(path), "data.mdb")
    try:
        need = (int(env.info()["last_pgno"]) + 1) * int(env.stat()["psize"])
        have = os.path.getsize(data)
    except (lmdb.Error, OSError) as e:
        raise VggtoolError(f"{path}: cannot read the LMDB header: {e}") from None
    if have < need:
        raise VggtoolError(f"{path}: data.mdb is {have} bytes but its header says the database uses {need}; "
                           "the file is truncated (an interrupted copy or a full disk?). Copy or convert the "
                           "database again")


@contextlib.contextmanager
def read_errors(path):
    """Turn an lmdb.Error raised while reading the database at `path` into a VggtoolError naming it."""
    import lmdb

    try:
        yield
    except lmdb.Error as e:
        raise VggtoolError(f"{path}: the LMDB database is damaged ({type(e).__name__}: {e}); convert or copy "
                           "it again") from None
