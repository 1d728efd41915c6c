"""Net surgery: turn a deploy net's InnerProduct layers into Convolution layers (the paper's dense testing).

The first InnerProduct that sees a spatial (N, C, H, W) input becomes an H x W convolution, where H x W
is its input size when the deploy net runs at its declared input size (7x7 after pool5 for a 224 crop);
InnerProducts fed by a vector become 1x1 convolutions. Caffe's InnerProduct flattens C, H, W in that
order, so its weights (N, C*H*W) reshape to (N, C, H, W) unchanged and the results are identical.

Naming: converted layers KEEP their names (fc6 stays fc6, not Caffe's net_surgery `fc6-conv`), so the
score blob, `--blob fc8` and layer-name based tools work the same on both nets. Their weights still
need this conversion (shapes differ), which `convolutionalize_weights` / `vggtool convolutionalize` do.
"""
import numpy as np

from ..io import prototxt
from ..backend import to_numpy
from ..errors import VggtoolError
from ..net import Net
from ..proto import caffe_pb2


def _param_of(model):
    if isinstance(model, caffe_pb2.NetParameter):
        return model
    return prototxt.read_net_param(model)


def plan(net, source="net"):
    """{InnerProduct layer name: (kernel_h, kernel_w)} from a net (or NetParameter, built in the TEST
    phase) at its declared input size."""
    if not isinstance(net, Net):
        net = Net(net, phase="TEST", source=source)
    kernels = {}
    for name, layer in net.layer_dict.items():
        if layer.type != "InnerProduct":
            continue
        p = layer.param.inner_product_param
        bottom = net.bottom_vecs[net.layer_index(name)][0]
        axis = bottom.canonical_axis(p.axis)
        if axis != 1:
            raise VggtoolError(f"{source}: layer '{name}': only InnerProduct with axis 1 can become a "
                               f"convolution (it has axis {p.axis})")
        shape = bottom.shape
        if len(shape) == 2:
            kernels[name] = (1, 1)
        elif len(shape) == 4:
            kernels[name] = (shape[2], shape[3])
        else:
            raise VggtoolError(f"{source}: layer '{name}': input of shape {shape} is neither (N, C) nor "
                               "(N, C, H, W); cannot convolutionalize it")
    return kernels


def convolutionalize_param(model, source=None, net=None):
    """(converted NetParameter, kernels) for a deploy prototxt path or NetParameter (`net`: that model
    already built, to reuse)."""
    source = source or (model if isinstance(model, str) else "net")
    net_param = _param_of(model)
    kernels = plan(net if net is not None else net_param, source)
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    for layer in out.layer:
        if layer.name not in kernels:
            continue
        ip = layer.inner_product_param
        conv = caffe_pb2.ConvolutionParameter(num_output=ip.num_output, bias_term=ip.bias_term)
        kh, kw = kernels[layer.name]
        if kh == kw:
            conv.kernel_size.append(kh)
        else:
            conv.kernel_h, conv.kernel_w = kh, kw
        if ip.HasField("weight_filler"):
            conv.weight_filler.CopyFrom(ip.weight_filler)
        if ip.HasField("bias_filler"):
            conv.bias_filler.CopyFrom(ip.bias_filler)
        layer.type = "Convolution"
        layer.ClearField("inner_product_param")
        layer.convolution_param.CopyFrom(conv)
        layer.ClearField("blobs")
    return out, kernels


def convert_ip_weights(weights, bias, num_input_channels, kernel, transpose=False):
    """InnerProduct weights (N, C*kh*kw) (or (C*kh*kw, N) when transposed) -> conv weights (N, C, kh, kw)."""
    w = np.asarray(weights)
    if transpose:
        w = w.T
    n = w.shape[0]
    w = w.reshape(n, num_input_channels, kernel[0], kernel[1]).copy()
    return w, (None if bias is None else np.asarray(bias).copy())


def convolutionalize(model, weights, source=None, device=None):
    """(converted NetParameter, converted Net with weights) from a deploy net and its caffemodel.

    The deploy net is built on the CPU; the converted net on `device` (default CPU)."""
    source = source or (model if isinstance(model, str) else "net")
    net_param = _param_of(model)
    deploy = Net(net_param, weights, phase="TEST", source=source)
    conv_param, kernels = convolutionalize_param(net_param, source, net=deploy)
    extra = {"device": device} if device is not None else {}
    conv = Net(conv_param, phase="TEST", source=source, **extra)
    for name, layer in conv.layer_dict.items():
        src = deploy.layer_dict[name]
        if name in kernels:
            bias = to_numpy(src.blobs[1].data) if len(src.blobs) > 1 else None
            w, b = convert_ip_weights(to_numpy(src.blobs[0].data), bias, layer.blobs[0].shape[1], kernels[name],
                                      src.param.inner_product_param.transpose)
            if w.shape != layer.blobs[0].shape:
                raise VggtoolError(f"{source}: layer '{name}': weights of shape {src.blobs[0].shape} do not "
                                   f"fit a convolution of shape {layer.blobs[0].shape}")
            layer.blobs[0].data = w
            if b is not None:
                layer.blobs[1].data = b
        else:
            for dst, s in zip(layer.blobs, src.blobs):
                dst.data = to_numpy(s.data)
    return conv_param, conv


def needs_surgery(net_param):
    return any(layer.type == "InnerProduct" for layer in net_param.layer)
