"""Record i (in key order) of an LMDB without reading its key list up front, as Caffe's cursor reads.

The count comes from the LMDB stat. Each thread walks its own cursor: the record after the last one it
read is the cursor's next. A jump (another thread's chunk of the batch, a resume, a test round, the wrap
to record 0) seeks by key: convert_imageset (vggtool's and Caffe's) names record i '%08d_<name>', so
record i is one B-tree search away. With other keys a short jump forward (or from the first record) is
walked with next(); only a long jump (a resume, say) reads the key list, once. Numbered keys with gaps or
repeats (seen when a read does not land on the expected number) also fall back to the key list.
"""
import logging
import threading

from ..errors import VggtoolError
from .datum import record_key
from .lmdb_check import read_errors

log = logging.getLogger("vggtool.data")


def numbered_prefix(i):
    """The start of record i's key as convert_imageset writes it (datum.record_key)."""
    return record_key(i, "")


class LmdbRecords:
    """`count`, `get(i)` -> (key, value) of record i (0 <= i < count); safe to call from several threads."""

    WALK = 4096  # the longest jump walked with next() when the keys are not numbered

    def __init__(self, env, source):
        self.env, self.source = env, source
        with read_errors(source):
            self.count = int(env.stat()["entries"])
        self.keys = None  # only for databases whose keys are not numbered 0 .. count-1
        self._lock = threading.Lock()
        self._local = threading.local()
        self.numbered = False
        if self.count:
            with read_errors(source), env.begin() as txn:
                cursor = txn.cursor()
                first = cursor.key() if cursor.first() else b""
                last = cursor.key() if cursor.last() else b""
            self.numbered = first.startswith(numbered_prefix(0)) and last.startswith(numbered_prefix(self.count - 1))

    def _cursor(self):
        state = getattr(self._local, "state", None)
        if state is None:
            txn = self.env.begin(buffers=False)  # one long read transaction per thread, as before
            state = self._local.state = [txn, txn.cursor(), None]
        return state

    def get(self, i):
        with read_errors(self.source):
            state = self._cursor()
            cursor, pos = state[1], state[2]
            if pos != i:
                state[2] = None  # unknown until the move succeeds
                self._move(cursor, pos, i)
                state[2] = i
            return cursor.key(), cursor.value()

    def key(self, i):
        return self.get(i)[0]

    def _move(self, cursor, pos, i):
        if pos is not None and i == pos + 1:
            if cursor.next() and self._can_be(cursor.key(), i):
                return
            pos = None  # the cursor moved: not at pos any more
        if self.numbered:
            prefix = numbered_prefix(i)
            if cursor.set_range(prefix) and cursor.key().startswith(prefix):
                return
            self._use_key_list(f"no key starts with {prefix.decode()}")
        elif self.keys is None and self._walk(cursor, pos, i):
            return
        if not cursor.set_key(self._key_list()[i]):
            raise VggtoolError(f"{self.source}: record {i} ({self.keys[i][:40]!r}) vanished: the database "
                               f"changed while it was being read")

    def _can_be(self, key, i):
        """Whether the key the cursor moved to can be record i's."""
        if self.numbered and not key.startswith(numbered_prefix(i)):
            self._use_key_list(f"record {i} has the key {key[:40]!r}")
            return False
        return self.keys is None or self.keys[i] == key

    def _walk(self, cursor, pos, i):
        """Unnumbered keys: reach record i with next() from the cursor or from the first record, if that
        takes at most WALK steps (the other threads' chunks of a batch, the other replicas' shares)."""
        if pos is not None and pos < i:
            steps = i - pos
        else:
            steps = i
            if steps > self.WALK or not cursor.first():
                return False
        if steps > self.WALK:
            return False
        for _ in range(steps):
            if not cursor.next():
                return False
        return True

    def _key_list(self):
        with self._lock:
            if self.keys is None:
                with self.env.begin() as txn:
                    self.keys = list(txn.cursor().iternext(keys=True, values=False))
            return self.keys

    def _use_key_list(self, why):
        """Numbered keys were assumed and a read proved otherwise: from now on, the key list."""
        if self.numbered:
            log.warning("%s: the keys are not numbered 0..%d as convert_imageset writes them (%s); reading the "
                        "key list", self.source, self.count - 1, why)
        self._key_list()
        self.numbered = False
