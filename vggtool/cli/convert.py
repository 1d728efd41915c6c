"""`vggtool convert`: VGG weights between a .caffemodel and torchvision's state dict (.safetensors; .pth
read with torch if installed), folding the two input conventions into conv1_1 (vggtool.interop.torchvision)."""
import os

from ..errors import VggtoolError
from ..listargs import parse_list

HELP = "convert VGG weights between .caffemodel and torchvision's layout (.safetensors; .pth read-only)"

CAFFE_EXT = (".caffemodel",)
TORCH_EXT = (".safetensors", ".pth", ".pt")


def add_arguments(parser):
    parser.add_argument("--net", "--model", dest="net", required=True,
                        help="the Caffe net of the weights (e.g. netdefs/vgg_d/deploy.prototxt; A, B, D or E)")
    parser.add_argument("--from", dest="source", required=True, help="weights to read: .caffemodel, .safetensors "
                        "or (with torch installed) .pth")
    parser.add_argument("--to", dest="target", required=True, help="weights to write: .caffemodel or .safetensors")
    parser.add_argument("--torch-mean", default="0.485,0.456,0.406",
                        help="torchvision's input mean, R,G,B on 0-1 pixels (default ImageNet's)")
    parser.add_argument("--torch-std", default="0.229,0.224,0.225",
                        help="torchvision's input std, R,G,B on 0-1 pixels (default ImageNet's)")
    parser.add_argument("--caffe-mean", default=None,
                        help="the Caffe model's mean, B,G,R on 0-255 pixels (default 255 x the torch mean, "
                             "103.53,116.28,123.675: exact on the image border too)")
    parser.add_argument("--no-fold", action="store_true",
                        help="copy conv1_1 unchanged (the model keeps the input convention it was trained with)")


def _kind(path, flag):
    if path.endswith(CAFFE_EXT):
        return "caffe"
    if path.endswith(TORCH_EXT):
        return "torch"
    raise VggtoolError(f"{flag} {path}: give a .caffemodel, .safetensors or .pth file")


def run(args):
    from ..interop import torchvision as tc
    from ..net import Net
    src, dst = _kind(args.source, "--from"), _kind(args.target, "--to")
    if src == dst:
        raise VggtoolError(f"--from and --to are both {src} files: convert between .caffemodel and .safetensors")
    if dst == "torch" and not args.target.endswith(".safetensors"):
        raise VggtoolError(f"--to {args.target}: write .safetensors (a .pth is a pickle; torch reads safetensors "
                           "with safetensors.torch.load_file)")
    for flag, path in (("--net", args.net), ("--from", args.source)):
        if not os.path.exists(path):
            raise VggtoolError(f"{flag}: {path} does not exist")
    conv = tc.Conventions(parse_list(args.torch_mean, "--torch-mean", float, positive=False),
                          parse_list(args.torch_std, "--torch-std", float),
                          None if args.caffe_mean is None else parse_list(args.caffe_mean, "--caffe-mean", float,
                                                                          positive=False))
    fold = not args.no_fold
    if src == "caffe":
        net = Net(args.net, args.source, phase="TEST")
        arch, state = tc.caffe_to_torchvision(net, conv, fold)
        first = state["features.0.weight"]
        meta = {"format": "pt", "arch": arch, "converted_by": "vggtool convert",
                "input": conv.describe().split("; ")[0] if fold else
                "unchanged from the caffemodel: its own convention (Caffe's: BGR 0-255 minus its mean)"}
        tc.write_safetensors(args.target, state, meta)
    else:
        net = Net(args.net, phase="TEST")
        state = tc.read_state_dict(args.source)
        arch = tc.torchvision_to_caffe(state, net, conv, fold, source=args.source)
        first = state["features.0.weight"]
        net.save(args.target)
    print(f"{arch} (configuration {tc.PAPER_CONFIG[arch]}): wrote {args.target}")
    if not fold:
        print("conv1_1 copied unchanged: the converted model expects the same input as the source model")
        return 0
    print(f"conv1_1 folded: {conv.describe()}")
    if conv.exact_on_border():
        print("the fold is exact on the whole image: both conventions pad with the same pixel (the mean)")
    else:
        print(f"the fold is exact in the image interior; on its one-pixel border conv1_1's outputs may differ by "
              f"up to {tc.border_bound(first, conv):.4g} (zero padding is the Caffe mean in one convention and "
              "the torchvision mean in the other; --caffe-mean 255 x the torch mean removes this)")
    return 0
