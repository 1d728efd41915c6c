"""`vggtool draw`: the net as a graph picture, like Caffe's python/draw_net.py (same arguments)."""
import os

from ..errors import VggtoolError
from .plot import image_format

HELP = "draw a net prototxt as a graph (PNG, PDF, SVG, ...), like Caffe's draw_net.py"


def add_arguments(parser):
    parser.add_argument("input_net_proto_file", help="net prototxt")
    parser.add_argument("output_image_file", help="picture to write; the format comes from the extension")
    parser.add_argument("--rankdir", default="LR", choices=("LR", "RL", "TB", "BT"),
                        help="direction of the graph: left-right (default), right-left, top-bottom, bottom-top")
    parser.add_argument("--phase", default="ALL", type=str.upper, choices=("TRAIN", "TEST", "ALL"),
                        help="draw only the layers of this phase (default ALL)")
    parser.add_argument("--display_lrm", action="store_true",
                        help="show the lr_mult of convolution and inner product layers")


def run(args):
    from ..io import files, prototxt
    from ..proto import caffe_pb2
    from ..pycaffe import draw

    if not os.path.exists(args.input_net_proto_file):
        raise VggtoolError(f"{args.input_net_proto_file} does not exist")
    files.check_output_path(args.output_image_file, "output_image_file")
    image_format(args.output_image_file, "output_image_file")
    net = prototxt.read_net_param(args.input_net_proto_file)
    phase = None if args.phase == "ALL" else caffe_pb2.Phase.Value(args.phase)
    print(f"Drawing net to {args.output_image_file}")
    draw.draw_net_to_file(net, args.output_image_file, args.rankdir, phase, args.display_lrm)
    return 0
