"""Caffe's text files: prototxt nets and solvers, parsed with errors naming the file, line and column,
upgraded to today's schema on read (upgrade.py); written atomically."""
from google.protobuf import text_format

from ..atomic_files import atomic_write_bytes
from ..errors import VggtoolError
from ..proto import caffe_pb2
from . import wire
from .files import read_bounded
from .upgrade import upgrade_net, upgrade_solver


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
    data = read_bounded(path, what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise VggtoolError(f"{path}: not a text prototxt (it is not UTF-8 text; is it a binary file?)") from None
    return parse_text(text, message, source=str(path))


def read_net_param(path_or_text, is_text=None):
    """A NetParameter from a .prototxt (text) or .caffemodel (binary) path, upgraded to today's format."""
    path = str(path_or_text)
    if is_text is None:
        is_text = not path.endswith((".caffemodel", ".binaryproto", ".pb"))
    if not is_text:
        return wire.read_caffemodel(path)
    net = read_text_proto(path, caffe_pb2.NetParameter(), "net prototxt")
    upgrade_net(net, source=path)
    return net


def parse_net_text(text, source="<string>"):
    net = parse_text(text, caffe_pb2.NetParameter(), source)
    upgrade_net(net, source=source)
    return net


def read_solver_param(path):
    solver = read_text_proto(str(path), caffe_pb2.SolverParameter(), "solver prototxt")
    return upgrade_solver(solver)


def write_text_proto(path, message):
    atomic_write_bytes(path, text_format.MessageToString(message).encode("utf-8"))
