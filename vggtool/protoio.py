"""Reading and writing Caffe's files: text prototxt, binary protos, atomic writes.

Every read error names the file (and, for text, the line and column); every write goes to a temporary
file in the same folder that is renamed over the target only once complete.
"""
import os
import stat

from google.protobuf import message as pb_message
from google.protobuf import text_format

from .atomic_files import atomic_write_chunks
from .errors import VggtoolError
from .proto import caffe_pb2
from .upgrade import upgrade_net, upgrade_solver


# Protobuf's own limit on one serialised message (a signed 32-bit size); also the most any file read
# here may hold, so a huge file or an endless one (/dev/zero, a pipe) is refused instead of filling memory.
MAX_PROTO_BYTES = 2**31 - 1


def _read_bytes(path, what, limit=MAX_PROTO_BYTES):
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


def parse_text(text, message, source="<string>"):
    """Parse prototxt `text` into `message`; errors say `source:line:column: problem`."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        line, col = e.GetLine(), e.GetColumn()
        detail = str(e)
        # The runtime prefixes "line:col : "; keep only the explanation.
        if line is not None and detail.startswith(f"{line}:"):
            detail = detail.split(" : ", 1)[-1]
        where = f"{source}:{line}:{col}" if line is not None else source
        raise VggtoolError(f"{where}: {detail}") from None
    return message


def read_text_proto(path, message, what="prototxt"):
    data = _read_bytes(path, what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise VggtoolError(f"{path}: not a text prototxt (it is not UTF-8 text; is it a binary file?)") from None
    return parse_text(text, message, source=str(path))


def read_binary_proto(path, message, what="binary proto"):
    data = _read_bytes(path, what)
    try:
        message.ParseFromString(data)
    except pb_message.DecodeError as e:
        raise VggtoolError(f"{path}: not a valid {what} (truncated or corrupt: {e})") from None
    bad = _non_text_string(message)
    if bad:
        raise VggtoolError(f"{path}: not a valid {what}: its field {bad} is not UTF-8 text (corrupt file?)")
    return message


def _non_text_string(message, prefix=""):
    """The name of the first string field holding bytes that are not UTF-8 (proto2 parses them and hands
    them over as bytes, which would fail far from here, in a path or a name), or None."""
    for field, value in message.ListFields():
        name = prefix + field.name
        if field.type == field.TYPE_MESSAGE:
            for sub in (value if _is_repeated(field) else [value]):
                bad = _non_text_string(sub, name + ".")
                if bad:
                    return bad
        elif field.type == field.TYPE_STRING:
            if any(isinstance(v, bytes) for v in (value if _is_repeated(field) else [value])):
                return name
    return None


def _is_repeated(field):
    flag = getattr(field, "is_repeated", None)  # newer protobuf runtimes; older ones have `label`
    return bool(flag) if flag is not None else field.label == field.LABEL_REPEATED


def read_net_param(path_or_text, is_text=None):
    """A NetParameter from a .prototxt (text) or .caffemodel (binary) path, upgraded to today's format."""
    net = caffe_pb2.NetParameter()
    path = str(path_or_text)
    if is_text is None:
        is_text = not path.endswith((".caffemodel", ".binaryproto", ".pb"))
    if is_text:
        read_text_proto(path, net, "net prototxt")
    else:
        read_binary_proto(path, net, "caffemodel")
    upgrade_net(net, source=path)
    return net


def parse_net_text(text, source="<string>"):
    net = parse_text(text, caffe_pb2.NetParameter(), source)
    upgrade_net(net, source=source)
    return net


def read_solver_param(path):
    solver = read_text_proto(str(path), caffe_pb2.SolverParameter(), "solver prototxt")
    return upgrade_solver(solver)


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


def atomic_write_bytes(path, data):
    """Write `data` to `path` through a temporary file and a rename: readers never see half a file."""
    atomic_write_chunks(path, [data])


def write_binary_proto(path, message):
    atomic_write_bytes(path, message.SerializeToString())


def write_text_proto(path, message):
    atomic_write_bytes(path, text_format.MessageToString(message).encode("utf-8"))
