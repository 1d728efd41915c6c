"""Which layers a forward runs as one pass: a Convolution whose output an in-place ReLU (negative_slope 0)
rectifies right after it. The convolution then writes max(., 0) in its own output pass (while the
values are in cache) and the ReLU skips its pass over memory (settings.fuse_relu).

The blob's values are the same as unfused: Caffe's in-place ReLU leaves no pre-ReLU copy to read. The
net fuses a pair only within one forward that runs both layers (Net.forward_from_to), so a forward that
ends at the convolution still leaves its pre-ReLU output, as Caffe's does, and never with debug_info
(Caffe's per-layer lines show the convolution's own output).
"""


def fusable_relus(net):
    """{index of a Convolution: the ReLU layer that may be fused into its forward}."""
    pairs = {}
    if not net.settings.fuse_relu:
        return pairs
    for i in range(len(net.layers) - 1):
        conv, relu = net.layers[i], net.layers[i + 1]
        if conv.type != "Convolution" or relu.type != "ReLU" or not hasattr(conv, "rectify_output"):
            continue
        if len(net.top_vecs[i]) != 1 or relu.param.relu_param.negative_slope != 0:
            continue
        out = net.top_vecs[i][0]
        if net.bottom_vecs[i + 1][0] is out and net.top_vecs[i + 1][0] is out:  # in place on the conv's output
            pairs[i] = relu
    return pairs
