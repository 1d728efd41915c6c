"""Writing files and folders atomically, with the permissions the user's umask asks for.

A file (snapshot, model, binaryproto, score file) is written to a temporary file in the target's folder,
flushed to disk, given the mode 0666 & ~umask (what Caffe's std::ofstream gets; mkstemp alone makes it
0600, unreadable to the rest of a cluster group), renamed over the target, and the rename made durable by
syncing the folder. Readers see either the old file or the whole new one.

Temporary names are `.tmp-<target name>~<host>~<pid>~<random>`: hidden, never ending in the target's
extension (so no glob for `*.caffemodel` or `*_iter_*.solverstate` picks one up), and recognisable as
left by a process that died (same host, pid no longer running), which remove_stale_temporaries deletes.
"""
import os
import shutil
import socket
import tempfile
import threading

from .errors import VggtoolError

TEMP_PREFIX = ".tmp-"
_SEP = "~"
_UMASK_LOCK = threading.Lock()


def current_umask():
    """The process umask, read without changing it where Linux allows (/proc), else by a guarded swap."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode(base=0o666):
    return base & ~current_umask()


def _host():
    return socket.gethostname().replace(_SEP, "_").replace(os.sep, "_") or "host"


def temporary_prefix(path):
    """The start of a temporary name for `path` (in its folder) owned by this process."""
    return f"{TEMP_PREFIX}{os.path.basename(path)}{_SEP}{_host()}{_SEP}{os.getpid()}{_SEP}"


def is_temporary(name):
    return os.path.basename(name).startswith(TEMP_PREFIX)


def _owner(name):
    """(host, pid) of a temporary name this module made, else None."""
    parts = name[len(TEMP_PREFIX):].rsplit(_SEP, 3)
    if not name.startswith(TEMP_PREFIX) or len(parts) != 4 or not parts[2].isdigit():
        return None
    return parts[1], int(parts[2])


def _running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: a process of another user holds the pid
        return True
    return True


def remove_stale_temporaries(target):
    """Delete the temporaries of `target`-like names (same folder, names starting with target's name) that
    a process of this host left when it died; those of running processes and other hosts are kept.
    Returns the removed paths."""
    folder = os.path.dirname(os.path.abspath(target))
    start = TEMP_PREFIX + os.path.basename(target)
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    here = _host()
    for name in names:
        owner = _owner(name) if name.startswith(start) else None
        if owner is None or owner[0] != here or owner[1] == os.getpid() or _running(owner[1]):
            continue
        path = os.path.join(folder, name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            removed.append(path)
        except OSError:
            pass
    return removed


def fsync_folder(folder):
    """Make a rename in `folder` durable (a no-op where the file system cannot sync folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_chunks(path, chunks):
    """Write the bytes-like pieces one after the other to `path`, atomically (see the module docstring)."""
    def fill(fd, _tmp):
        with os.fdopen(fd, "wb", closefd=False) as f:
            for chunk in chunks:
                f.write(chunk)

    atomic_write_with(path, fill)


def atomic_write_bytes(path, data):
    """Write `data` to `path` through a temporary file and a rename: readers never see half a file."""
    atomic_write_chunks(path, [data])


def atomic_write_with(path, fill):
    """Write `path` atomically (see the module docstring) by `fill(fd, tmp_path)`, which writes the whole
    content into the temporary file, through its open descriptor or by name (e.g. h5py, which wants a
    path); the mode, fsync, rename and folder sync are done here."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise VggtoolError(f"cannot write {path}: it is an existing folder")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), dir=folder)
    try:
        try:
            try:
                os.fchmod(fd, file_mode())
            except OSError:  # a file system without permissions (some network or FUSE mounts): keep its default
                pass
            fill(fd, tmp)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_folder(folder)


def temporary_folder(path):
    """A fresh temporary folder name beside `path` (not created), for a database built then renamed."""
    folder = os.path.dirname(os.path.abspath(path))
    return os.path.join(folder, temporary_prefix(path) + "db")
