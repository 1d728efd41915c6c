"""`vggtool export`: a deploy net and its weights to an ONNX model (see vggtool.interop.onnx)."""
import os

import numpy as np

from ..errors import VggtoolError

HELP = "export a deploy net with its weights to ONNX (opset 17, dynamic batch; dynamic H, W when convolutional)"


def add_arguments(parser):
    parser.add_argument("--net", "--model", dest="net", required=True, help="deploy prototxt")
    parser.add_argument("--weights", required=True, help="its .caffemodel")
    parser.add_argument("--onnx", required=True, help="ONNX file to write")
    parser.add_argument("--convolutionalize", action="store_true",
                        help="turn the fully-connected layers into convolutions first (dense evaluation at any "
                             "input size: dynamic height and width)")
    parser.add_argument("--outputs", default=None,
                        help="comma-separated blobs to expose as outputs (default: the net's outputs)")
    parser.add_argument("--fixed-size", action="store_true",
                        help="keep the Input layer's height and width even for a convolutional net")


def run(args):
    from ..interop import onnx as onnx_export
    for flag, path in (("--net", args.net), ("--weights", args.weights)):
        if not os.path.exists(path):
            raise VggtoolError(f"{flag}: {path} does not exist")
    outputs = [b for b in args.outputs.split(",") if b] if args.outputs else None
    model = onnx_export.export(args.net, args.weights, args.onnx, convolutionalize=args.convolutionalize,
                               outputs=outputs, dynamic_spatial=False if args.fixed_size else None)
    graph = model.graph
    ops = sorted({n.op_type for n in graph.node})

    def dims(v):
        return "x".join(d.dim_param or str(d.dim_value) for d in v.type.tensor_type.shape.dim)

    print(f"wrote {args.onnx}: opset {model.opset_import[0].version}, {len(graph.node)} nodes ({', '.join(ops)}), "
          f"{sum(int(np.prod(t.dims)) for t in graph.initializer if t.data_type == 1):,} parameters")
    for v in graph.input:
        print(f"input  {v.name}: {dims(v)}")
    for v in graph.output:
        print(f"output {v.name}")
    return 0
