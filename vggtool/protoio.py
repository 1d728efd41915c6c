"""Reading and writing Caffe's files: text prototxt, binary protos, atomic writes.

Every read error names the file (and, for text, the line and column); every write goes to a temporary
file in the same folder that is renamed over the target only once complete.
"""
import os

from google.protobuf import message as pb_message
from google.protobuf import text_format

from .atomic_files import atomic_write_chunks
from .errors import VggtoolError
from .proto import caffe_pb2
from .upgrade import upgrade_net, upgrade_solver


def _read_bytes(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
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
    return message


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


def atomic_write_bytes(path, data):
    """Write `data` to `path` through a temporary file and a rename: readers never see half a file."""
    atomic_write_chunks(path, [data])


def write_binary_proto(path, message):
    atomic_write_bytes(path, message.SerializeToString())


def write_text_proto(path, message):
    atomic_write_bytes(path, text_format.MessageToString(message).encode("utf-8"))
