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
                    seed=0, params=True, extra="", device=CPU, dtype=np.float64):
    """Raise AssertionError when analytic and numerical gradients of the last layer disagree.

    inputs: {blob name: array}; check: names of inputs to check (default all); tolerance is relative to
    max(1, |analytic|, |numeric|), as in Caffe's checker. Central differences run on the CPU in float64;
    another `device` or `dtype` then runs the same layer (same weights, same top gradients) there, and its
    outputs and analytic gradients must equal the float64 ones to a few of its dtype's epsilons times sqrt
    of the terms summed, relative to each array's largest value. Returns the net of `device` and `dtype`.
    """
    net = layer_net(layer_text, inputs, phase=phase, seed=seed, extra=extra)
    check = list(inputs) if check is None else list(check)
    rng = np.random.default_rng(seed)
    tops = net.top_vecs[len(net.layers) - 1]
    run_forward(net, inputs)
    weights = [rng.standard_normal(t.shape) if t.shape else np.array(rng.standard_normal()) for t in tops]
    analytic = analytic_gradients(net, inputs, weights, check, params)
    inputs = {k: np.array(v, dtype=np.float64) for k, v in inputs.items()}
    failures = []
    for (kind, key), grad in analytic.items():
        target = inputs[key] if kind == "input" else net.layers[-1].blobs[key].data
        flat = target.reshape(-1)
        idx = np.arange(flat.size) if flat.size <= max_checks else rng.choice(flat.size, max_checks, replace=False)
        for i in idx:
            old = flat[i]
            flat[i] = old + eps
            plus = objective(net, inputs, weights)
            flat[i] = old - eps
            minus = objective(net, inputs, weights)
            flat[i] = old
            numeric = (plus - minus) / (2 * eps)
            a = grad.reshape(-1)[i]
            if abs(a - numeric) > tol * max(1.0, abs(a), abs(numeric)):
                failures.append(f"{kind} {key}[{np.unravel_index(i, grad.shape)}]: analytic {a:.8g} numeric {numeric:.8g}")
    if failures:
        raise AssertionError(f"{len(failures)} gradient mismatch(es):\n" + "\n".join(failures[:20]))
    if device == CPU and np.dtype(dtype) == np.float64:
        return net
    return check_against(net, analytic, layer_text, inputs, weights, check, params, phase, seed, extra, device,
                         dtype)


def run_forward(net, inputs):
    for name, value in inputs.items():
        net.blobs[name].data[...] = net.device.asarray(value)
    net.forward_from_to(1, len(net.layers) - 1)


def objective(net, inputs, weights):
    """L = sum_j <top_j, R_j>, in float64 on the host."""
    run_forward(net, inputs)
    tops = net.top_vecs[len(net.layers) - 1]
    return sum(float(np.sum(to_numpy(t.data).astype(np.float64) * w)) for t, w in zip(tops, weights))


def analytic_gradients(net, inputs, weights, check, params):
    """{("input", name) or ("param", k): dL/d(that)} from one forward and backward."""
    last = len(net.layers) - 1
    run_forward(net, inputs)
    for t, w in zip(net.top_vecs[last], weights):
        t.diff[...] = net.device.asarray(w)
    for p in net.layers[last].blobs:
        p.diff[...] = 0
    net.backward_from_to(last, 1)
    grads = {("input", n): to_numpy(net.blobs[n].diff).astype(np.float64) for n in check}
    if params:
        grads.update({("param", k): to_numpy(p.diff).astype(np.float64) for k, p in enumerate(net.layers[last].blobs)})
    return grads


def check_against(ref_net, ref_grads, layer_text, inputs, weights, check, params, phase, seed, extra, device, dtype):
    """The layer on `device` in `dtype`, with ref_net's weights, gives ref_net's outputs and gradients."""
    net = layer_net(layer_text, inputs, phase=phase, device=device, dtype=dtype, seed=seed, extra=extra)
    last = len(net.layers) - 1
    for mine, ref in zip(net.layers[last].blobs, ref_net.layers[last].blobs):
        mine.data[...] = device.asarray(ref.data)
    grads = analytic_gradients(net, inputs, weights, check, params)
    run_forward(ref_net, inputs)
    terms = max([np.size(v) for v in inputs.values()] + [t.count for t in net.top_vecs[last]])
    bound = 8 * np.finfo(dtype).eps * np.sqrt(terms)
    pairs = [(f"top {i}", to_numpy(t.data), to_numpy(r.data)) for i, (t, r) in
             enumerate(zip(net.top_vecs[last], ref_net.top_vecs[last]))]
    pairs += [(f"{kind} {key} gradient", grads[(kind, key)], ref) for (kind, key), ref in ref_grads.items()]
    for what, got, ref in pairs:
        scale = float(np.abs(ref).max()) if np.size(ref) else 0.0
        err = float(np.abs(got.astype(np.float64) - ref).max()) if np.size(ref) else 0.0
        if err > bound * max(scale, np.finfo(dtype).tiny):
            raise AssertionError(f"{what} on {device.name} in {np.dtype(dtype).name}: max difference {err:.3g} "
                                 f"from float64 on the CPU, more than {bound:.3g} x the largest value {scale:.3g}")
    return net
