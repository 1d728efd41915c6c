"""Weights between a Caffe VGG net (.caffemodel) and torchvision's VGG state dict (safetensors; .pth read-only).

torchvision's `vgg11/13/16/19` are configurations A, B, D and E: `features` is a Sequential of Conv2d(3x3,
pad 1) + ReLU pairs and MaxPool2d(2, 2), so the i-th convolution is `features.N` with N counting those
modules; `classifier` is Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear: fc6/fc7/fc8 are
`classifier.0/.3/.6`. Linear's weight (out, in) is Caffe's InnerProduct weight (num_output, K), and both
flatten pool5 as C, H, W, so all tensors but conv1_1's copy unchanged (a convolutionalised fc6 is reshaped).

Input conventions. Caffe's VGG sees BGR pixels in 0-255 minus a per-channel mean; torchvision's sees RGB in
0-1, minus `mean`, divided by `std` (ImageNet's 0.485, 0.456, 0.406 and 0.229, 0.224, 0.225 by default).
With x_t[c] = (p[c] / 255 - mean[c]) / std[c] and x_c[c'] = p[c'] - caffe_mean[c'] (c' the BGR index of
RGB channel c), x_t[c] = x_c[c'] / (255 std[c]) + o[c], o[c] = (caffe_mean[c'] / 255 - mean[c]) / std[c],
so conv1_1 on Caffe's input is torchvision's conv1 with
    W_caffe[:, c'] = W_torch[:, c] / (255 std[c]),   b_caffe = b_torch + sum over c, taps of W_torch[:, c] o[c].
That is exact wherever the 3x3 window lies inside the image. On the image border, the zero padding of each
side is a different pixel: 0 in torchvision's space is the pixel 255 * mean, 0 in Caffe's is caffe_mean.
The default caffe_mean is therefore 255 * mean (B, G, R = 103.53, 116.28, 123.675): then o = 0, the two
paddings are the same pixel and the fold is exact everywhere (up to float32 rounding of the weights).
Another caffe_mean (e.g. VGG's published 103.939, 116.779, 123.68) is exact in the interior only; on the
border conv1_1's outputs differ by at most `border_bound` (reported by the CLI).

Float32 note: the fold multiplies conv1_1's weights by 255 std, which float32 cannot always undo, so a
folded round trip (caffemodel -> safetensors -> caffemodel) is bit-exact for every tensor but conv1_1's
weights, which come back within one unit in the last place; without the fold (fold=False) it is bit-exact.
"""
import os

import numpy as np

from ..backend import to_numpy
from ..errors import VggtoolError

TORCH_MEAN = (0.485, 0.456, 0.406)  # RGB, on 0-1 pixels
TORCH_STD = (0.229, 0.224, 0.225)

CFGS = {  # torchvision.models.vgg's configurations
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
PAPER_CONFIG = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}
CLASSIFIER_INDICES = (0, 3, 6)
CLASSIFIER_INPUT = 512 * 7 * 7  # torchvision's AdaptiveAvgPool2d((7, 7)) before classifier.0


class Conventions:
    """The two input conventions the fold connects. torch_mean/torch_std: RGB, on 0-1 pixels;
    caffe_mean: B, G, R on 0-255 pixels (default 255 * torch_mean, which makes the fold exact on borders)."""

    def __init__(self, torch_mean=TORCH_MEAN, torch_std=TORCH_STD, caffe_mean=None):
        self.torch_mean = np.asarray(torch_mean, dtype=np.float64)
        self.torch_std = np.asarray(torch_std, dtype=np.float64)
        if self.torch_mean.shape != (3,) or self.torch_std.shape != (3,):
            raise VggtoolError("the torchvision mean and std need 3 values each (R, G, B)")
        if np.any(self.torch_std <= 0):
            raise VggtoolError(f"the torchvision std must be positive, got {tuple(self.torch_std)}")
        default = 255 * self.torch_mean[::-1]
        self.caffe_mean = default if caffe_mean is None else np.asarray(caffe_mean, dtype=np.float64)
        if self.caffe_mean.shape != (3,):
            raise VggtoolError("the Caffe mean needs 3 values (B, G, R)")

    def offset(self):
        """o[c] (RGB): torchvision's input for the pixel that is 0 in Caffe's input (the Caffe mean)."""
        return (self.caffe_mean[::-1] / 255 - self.torch_mean) / self.torch_std

    def exact_on_border(self):
        return bool(np.all(self.offset() == 0))

    def describe(self):
        fmt = lambda a: ", ".join(f"{v:g}" for v in a)  # noqa: E731
        return (f"torchvision input: RGB in [0, 1], minus mean ({fmt(self.torch_mean)}), divided by std "
                f"({fmt(self.torch_std)}); Caffe input: BGR in [0, 255] minus mean ({fmt(self.caffe_mean)})")


def _fold_arrays(conv):
    o = conv.offset()[None, :, None, None]
    scale = (255 * conv.torch_std)[None, :, None, None]
    return o, scale


def fold_into_caffe(weight, bias, conv):
    """torchvision's conv1 (out, 3 RGB, kh, kw) and bias -> Caffe's conv1_1 on BGR - caffe_mean (same dtype;
    computed in float64)."""
    o, scale = _fold_arrays(conv)
    w = np.asarray(weight, dtype=np.float64)
    b = np.asarray(bias, dtype=np.float64)
    folded_b = b + (w * o).sum(axis=(1, 2, 3))
    folded_w = (w / scale)[:, ::-1]  # RGB -> BGR input channels
    return folded_w.astype(weight.dtype), folded_b.astype(bias.dtype)


def unfold_from_caffe(weight, bias, conv):
    """The inverse of fold_into_caffe: Caffe's conv1_1 -> torchvision's conv1."""
    o, scale = _fold_arrays(conv)
    w = np.asarray(weight, dtype=np.float64)[:, ::-1] * scale  # BGR -> RGB
    b = np.asarray(bias, dtype=np.float64) - (w * o).sum(axis=(1, 2, 3))
    return w.astype(weight.dtype), b.astype(bias.dtype)


def border_bound(torch_weight, conv):
    """Largest possible difference, at the image border, between conv1_1's outputs under the two
    conventions (0 when caffe_mean = 255 * torch_mean): the padded taps' share of sum |W_torch| |o|."""
    o = np.abs(conv.offset())[None, :, None, None]
    return float((np.abs(np.asarray(torch_weight, dtype=np.float64)) * o).sum(axis=(1, 2, 3)).max())


def _first_index(cfg):
    """features.N of each convolution in a torchvision cfg (Conv2d + ReLU per number, MaxPool2d per 'M')."""
    out, n = [], 0
    for v in cfg:
        if v == "M":
            n += 1
        else:
            out.append(n)
            n += 2
    return out


def _conv_geometry_ok(layer):
    g = layer.geom
    return ((g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw) == (3, 3, 1, 1, 1, 1, 1, 1)
            and layer.group == 1 and layer.bias_term)


def layer_map(net):
    """(torchvision arch, [(Caffe layer name, torchvision prefix)]) for a VGG net of configuration A, B, D or
    E (deploy or convolutionalised), or a VggtoolError saying what has no torchvision counterpart."""
    from ..layers.pooling import MAX
    cfg, convs, classifier = [], [], []
    previous = None
    for name, layer in net.layer_dict.items():
        kind = layer.type
        in_features = cfg.count("M") < 5
        if kind in ("Input", "Split", "Dropout", "Softmax"):
            pass
        elif kind == "Convolution" and in_features:
            if not _conv_geometry_ok(layer):
                raise VggtoolError(f"{net.source}: layer '{name}': torchvision's VGG has only 3x3, pad 1, stride 1 "
                                   "convolutions with a bias (configuration C's 1x1 layers have no counterpart)")
            cfg.append(layer.num_output)
            convs.append(name)
        elif kind == "ReLU" and in_features:
            if previous != "Convolution":
                raise VggtoolError(f"{net.source}: layer '{name}': a ReLU that does not follow a convolution")
        elif kind == "Pooling" and in_features:
            if not (layer.method == MAX and (layer.kh, layer.kw, layer.sh, layer.sw, layer.ph, layer.pw)
                    == (2, 2, 2, 2, 0, 0)) or layer.global_pooling:
                raise VggtoolError(f"{net.source}: layer '{name}': torchvision's VGG pools 2x2, stride 2, MAX")
            cfg.append("M")
        elif kind in ("InnerProduct", "Convolution"):
            classifier.append(name)
        elif kind == "ReLU":
            pass
        else:
            raise VggtoolError(f"{net.source}: layer '{name}' ({kind}) has no counterpart in torchvision's VGG "
                               "(configurations A, B, D, E = vgg11, vgg13, vgg16, vgg19)")
        previous = kind
    arch = next((a for a, c in CFGS.items() if c == cfg), None)
    if arch is None:
        raise VggtoolError(f"{net.source}: the convolutions and pools {cfg} are none of torchvision's VGG "
                           "configurations A, B, D, E (vgg11, vgg13, vgg16, vgg19)")
    if len(classifier) != 3:
        raise VggtoolError(f"{net.source}: torchvision's VGG has 3 fully-connected layers, the net has "
                           f"{len(classifier)} ({', '.join(classifier) or 'none'})")
    pairs = [(c, f"features.{i}") for c, i in zip(convs, _first_index(cfg))]
    pairs += [(c, f"classifier.{i}") for c, i in zip(classifier, CLASSIFIER_INDICES)]
    return arch, pairs


def _classifier_weight(net, name):
    """A classifier layer's weight as torchvision's Linear (out, in)."""
    layer = net.layer_dict[name]
    w = to_numpy(layer.blobs[0].data)
    if layer.type == "InnerProduct" and layer.transpose:
        w = w.T
    return np.ascontiguousarray(w.reshape(w.shape[0], -1))


def caffe_to_torchvision(net, conv=None, fold=True):
    """(arch, {torchvision key: float32 array}) from a vggtool Net holding VGG weights."""
    conv = conv or Conventions()
    arch, pairs = layer_map(net)
    state = {}
    for i, (name, prefix) in enumerate(pairs):
        layer = net.layer_dict[name]
        if prefix.startswith("classifier"):
            w = _classifier_weight(net, name)
            if prefix == "classifier.0" and w.shape[1] != CLASSIFIER_INPUT:
                raise VggtoolError(f"{net.source}: layer '{name}' takes {w.shape[1]} inputs; torchvision's "
                                   f"classifier.0 takes 512 x 7 x 7 = {CLASSIFIER_INPUT} (a 224 x 224 deploy net)")
        else:
            w = to_numpy(layer.blobs[0].data)
        b = to_numpy(layer.blobs[1].data)
        if i == 0 and fold:
            w, b = unfold_from_caffe(w, b, conv)
        state[f"{prefix}.weight"] = np.ascontiguousarray(w, dtype=np.float32)
        state[f"{prefix}.bias"] = np.ascontiguousarray(b, dtype=np.float32)
    return arch, state


def torchvision_to_caffe(state, net, conv=None, fold=True, source="state dict"):
    """Load torchvision VGG tensors into `net` (a vggtool Net of the same configuration). Returns arch."""
    conv = conv or Conventions()
    arch, pairs = layer_map(net)
    expected = {f"{p}.{k}" for _, p in pairs for k in ("weight", "bias")}
    missing = sorted(expected - set(state), key=_key_order)
    extra = sorted(set(state) - expected, key=_key_order)
    if extra:
        hint = " (batch-norm statistics: the _bn variants have no Caffe counterpart)" \
            if any("running_" in k for k in extra) else ""
        raise VggtoolError(f"{source}: tensors {', '.join(extra[:6])}{' ...' if len(extra) > 6 else ''} have no "
                           f"place in {arch} (configuration {PAPER_CONFIG[arch]}){hint}")
    if missing:
        raise VggtoolError(f"{source}: {arch} needs {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}, "
                           "which the file does not have")
    for i, (name, prefix) in enumerate(pairs):
        layer = net.layer_dict[name]
        w = np.asarray(state[f"{prefix}.weight"], dtype=np.float32)  # float16 files fold in float32 too
        b = np.asarray(state[f"{prefix}.bias"], dtype=np.float32)
        if i == 0 and fold:
            w, b = fold_into_caffe(w, b, conv)
        if layer.type == "InnerProduct" and layer.transpose:
            w = w.T
        target = layer.blobs[0].shape
        if w.size != int(np.prod(target)) or (prefix.startswith("features") and w.shape != target):
            raise VggtoolError(f"{source}: {prefix}.weight has shape {tuple(w.shape)}; layer '{name}' of the net "
                               f"needs {target}")
        if b.shape != layer.blobs[1].shape:
            raise VggtoolError(f"{source}: {prefix}.bias has shape {tuple(b.shape)}; layer '{name}' of the net "
                               f"needs {layer.blobs[1].shape}")
        layer.blobs[0].data = np.ascontiguousarray(w, dtype=np.float32).reshape(target)
        layer.blobs[1].data = np.ascontiguousarray(b, dtype=np.float32)
    return arch


def _key_order(key):
    parts = key.split(".")
    return (parts[0], int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1, key)


# -- files ---------------------------------------------------------------------------------------------------

def _safetensors_numpy():
    try:
        import safetensors.numpy
    except ImportError:
        raise VggtoolError("reading and writing .safetensors needs the 'safetensors' package: pip install "
                           "safetensors (or pip install 'vggtool[convert]')") from None
    return safetensors.numpy


def read_state_dict(path):
    """{key: numpy array} from a .safetensors file, or from a .pth/.pt file when torch is installed (read
    with torch.load(weights_only=True): tensors only, no code from the file runs)."""
    if not os.path.exists(path):
        raise VggtoolError(f"{path} does not exist")
    if path.endswith((".pth", ".pt")):
        return _read_pth(path)
    st = _safetensors_numpy()
    try:
        return dict(st.load_file(path))
    except Exception as e:  # a corrupt header or a dtype NumPy lacks (bfloat16)
        raise VggtoolError(f"{path}: cannot read it as safetensors: {e}") from None


def _read_pth(path):
    try:
        import torch
    except ImportError:
        raise VggtoolError(f"{path}: reading a .pth file needs torch (pip install torch); or convert it to "
                           ".safetensors where torch is installed") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise VggtoolError(f"{path}: torch.load(weights_only=True) refused it: {e}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VggtoolError(f"{path}: expected a state dict (names -> tensors)")
    return {k: v.detach().to(torch.float32).cpu().numpy() for k, v in obj.items()}


def write_safetensors(path, state, metadata=None):
    """Write {key: array} as safetensors, atomically."""
    from ..atomic_files import atomic_write_bytes
    st = _safetensors_numpy()
    tensors = {k: np.ascontiguousarray(v) for k, v in sorted(state.items(), key=lambda kv: _key_order(kv[0]))}
    atomic_write_bytes(path, st.save(tensors, metadata=metadata))
