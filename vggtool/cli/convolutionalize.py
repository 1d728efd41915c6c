"""`vggtool convolutionalize`: net surgery, InnerProduct -> Convolution (see vggtool.vgg.surgery)."""
import os

from ..io import files, prototxt
from ..vgg import surgery
from ..errors import VggtoolError

HELP = "convert a deploy net's fully-connected layers to convolutions (for dense evaluation)"


def add_arguments(parser):
    parser.add_argument("--net", "--model", dest="net", required=True,
                        help="deploy prototxt (with an Input layer of the crop size)")
    parser.add_argument("--weights", required=True, help="its .caffemodel")
    parser.add_argument("--out-net", required=True, help="converted prototxt to write")
    parser.add_argument("--out-weights", required=True, help="converted .caffemodel to write")


def run(args):
    for flag, path in (("--net", args.net), ("--weights", args.weights)):
        if not os.path.exists(path):
            raise VggtoolError(f"{flag}: {path} does not exist")
    files.check_output_path(args.out_net, "--out-net")
    files.check_output_path(args.out_weights, "--out-weights")
    param = prototxt.read_net_param(args.net)
    if not surgery.needs_surgery(param):
        raise VggtoolError(f"{args.net}: no InnerProduct layer to convert")
    conv_param, conv = surgery.convolutionalize(param, args.weights, args.net)
    prototxt.write_text_proto(args.out_net, conv_param)
    conv.save(args.out_weights)
    for layer in conv_param.layer:
        if layer.type == "Convolution" and any(l.name == layer.name and l.type == "InnerProduct"
                                               for l in param.layer):
            k = layer.convolution_param
            size = f"{k.kernel_size[0]}x{k.kernel_size[0]}" if len(k.kernel_size) else f"{k.kernel_h}x{k.kernel_w}"
            print(f"{layer.name}: InnerProduct -> Convolution {size}, {k.num_output} outputs")
    print(f"wrote {args.out_net} and {args.out_weights}")
    return 0
