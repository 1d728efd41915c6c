"""Input and output paths: reading a file with a bound on its size, finding a file that another file
names (Caffe resolves against the working directory; vggtool also looks beside the naming file), and
checking an output path before any work is done; the files of the source checkout (netdefs/, solver/)."""
import os
import stat
from pathlib import Path

from ..errors import VggtoolError

# Protobuf's own limit on one serialised message (a signed 32-bit size); also the most any file read
# here may hold, so a huge file or an endless one (/dev/zero, a pipe) is refused instead of filling memory.
MAX_PROTO_BYTES = 2**31 - 1


def read_bounded(path, what, limit=MAX_PROTO_BYTES):
    """The bytes of the regular file `path`, at most `limit` of them; errors name `what` and the path."""
    try:
        # stat before open: opening a FIFO would wait for a writer
        if not stat.S_ISREG(os.stat(path).st_mode) and not os.path.isdir(path):
            raise VggtoolError(f"{what} {path} is not a regular file (a device, pipe or socket)")
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_size > limit:
                raise VggtoolError(f"{what} {path} is {st.st_size} bytes, more than the {limit} a protobuf "
                                   "message can hold")
            data = f.read(limit + 1)  # bounded even if the file grows while it is read
            if len(data) > limit:
                raise VggtoolError(f"{what} {path} holds more than the {limit} bytes a protobuf message can hold")
            return data
    except FileNotFoundError:
        raise VggtoolError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise VggtoolError(f"{what} path is a directory, not a file: {path}") from None
    except OSError as e:
        raise VggtoolError(f"cannot read {what} file {path}: {e.strerror}") from None


def find_beside(path, naming_file, keep_folders=True, files_only=False):
    """`path` as given (relative to the working directory, as Caffe reads it) if it exists, else the same
    path taken relative to the folder of `naming_file` (the solver, net or snapshot that names it), else
    None. With keep_folders=False only its base name is looked for there (a snapshot's learned_net was
    written relative to the training run's directory, which may not be this one). files_only: a folder
    of that name does not count."""
    exists = os.path.isfile if files_only else os.path.exists
    if exists(path):
        return path
    if naming_file is None:
        return None
    name = path if keep_folders else os.path.basename(path)
    beside = os.path.join(os.path.dirname(os.path.abspath(naming_file)), name)
    return beside if exists(beside) else None


def check_output_path(path, what="output", folder=False):
    """Fail before any work is done when `path` cannot be the output: its parent folder must exist, and
    an output file must not be an existing folder (an output folder must not be an existing file)."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise VggtoolError(f"{what} {path}: the folder {parent} does not exist")
    if not folder and os.path.isdir(path):
        raise VggtoolError(f"{what} {path} is an existing folder; give a file name")
    if folder and os.path.exists(path) and not os.path.isdir(path):
        raise VggtoolError(f"{what} {path} is an existing file, not a folder")


def checkout_file(*parts, command):
    """A file of the source checkout beside the package (netdefs/, solver/), which `pip install -e .` keeps
    in place; `command` names what needs it in the error."""
    path = Path(__file__).resolve().parents[2].joinpath(*parts)
    if not path.exists():
        raise VggtoolError(f"{path} not found: run {command} from a source checkout installed with "
                           "`pip install -e .`")
    return path
