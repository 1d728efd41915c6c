"""Numerical gradient checking for layers (central differences in float64), used by every layer test.

`check_gradients(layer_text, inputs)` builds a net of an Input layer feeding the layer under test
(force_backward on), takes L = sum_j <top_j, R_j> with fixed random R_j, and compares the analytic
gradients of L (from backward) with central differences, for the chosen inputs and every parameter.
"""
import numpy as np

from .backend import CPU, to_numpy
from .net import Net
from .io.prototxt import parse_net_text


def layer_net(layer_text, inputs, phase="TRAIN", device=CPU, dtype=np.float64, seed=0, extra=""):
    """A net: Input (tops = the names of `inputs`, shapes from the arrays) -> the layer(s) in `layer_text`."""
    tops = "".join(f' top: "{name}"' for name in inputs)
    shapes = "".join("shape {" + "".join(f" dim: {d}" for d in np.shape(a)) + " }" for a in inputs.values())
    text = f'force_backward: true\n{extra}\nlayer {{ name: "input" type: "Input"{tops} input_param {{ {shapes} }} }}\n{layer_text}'
    net = Net(parse_net_text(text, "<gradient check>"), phase=phase, device=device, dtype=dtype, seed=seed)
    return net


def check_gradients(layer_text, inputs, check=None, phase="TRAIN", eps=1e-6, tol=1e-6, max_checks=150,
                    seed=0, params=True, extra=""):
    """Raise AssertionError when analytic and numerical gradients of the last layer disagree.

    inputs: {blob name: array}; check: names of inputs to check (default all); tolerance is relative to
    max(1, |analytic|, |numeric|), as in Caffe's checker.
    """
    net = layer_net(layer_text, inputs, phase=phase, seed=seed, extra=extra)
    check = list(inputs) if check is None else list(check)
    layer_idx = len(net.layers) - 1
    tops = net.top_vecs[layer_idx]
    rng = np.random.default_rng(seed)

    def run_forward():
        for name, value in inputs.items():
            net.blobs[name].data[...] = value
        net.forward_from_to(1, layer_idx)

    run_forward()
    weights = [rng.standard_normal(t.shape) if t.shape else np.array(rng.standard_normal()) for t in tops]

    def objective():
        run_forward()
        return sum(float(np.sum(to_numpy(t.data) * w)) for t, w in zip(tops, weights))

    # Analytic gradients.
    run_forward()
    for t, w in zip(tops, weights):
        t.diff[...] = w
    for p in net.layers[layer_idx].blobs:
        p.diff[...] = 0
    net.backward_from_to(layer_idx, 1)
    analytic = {("input", n): to_numpy(net.blobs[n].diff).copy() for n in check}
    if params:
        for k, p in enumerate(net.layers[layer_idx].blobs):
            analytic[("param", k)] = to_numpy(p.diff).copy()

    failures = []
    for (kind, key), grad in analytic.items():
        if kind == "input":
            target = inputs[key] = np.array(inputs[key], dtype=np.float64)
        else:
            target = net.layers[layer_idx].blobs[key].data
        flat = target.reshape(-1)
        idx = np.arange(flat.size)
        if flat.size > max_checks:
            idx = rng.choice(flat.size, max_checks, replace=False)
        for i in idx:
            old = flat[i]
            flat[i] = old + eps
            plus = objective()
            flat[i] = old - eps
            minus = objective()
            flat[i] = old
            numeric = (plus - minus) / (2 * eps)
            a = grad.reshape(-1)[i]
            scale = max(1.0, abs(a), abs(numeric))
            if abs(a - numeric) > tol * scale:
                failures.append(f"{kind} {key}[{np.unravel_index(i, grad.shape)}]: analytic {a:.8g} numeric {numeric:.8g}")
    if failures:
        raise AssertionError(f"{len(failures)} gradient mismatch(es):\n" + "\n".join(failures[:20]))
    return net
