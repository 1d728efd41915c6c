"""Every layer on the GPU (CuPy) gives the CPU's forward values and gradients (skipped without a GPU)."""
import numpy as np
import pytest

from vggtool.backend import to_numpy
from vggtool.testing import layer_net

pytestmark = pytest.mark.gpu

G = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'
R = np.random.default_rng(81)
X4 = R.permutation(2 * 4 * 6 * 6).reshape(2, 4, 6, 6) * 0.01
X2 = R.standard_normal((3, 5))
LAB = np.array([0.0, 4.0, 2.0])

CASES = [
    (f'convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 stride: 2 group: 2 dilation: 1 {G} }}',
     "Convolution", {"x": X4}),
    ('pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }', "Pooling", {"x": X4}),
    ('pooling_param { pool: AVE kernel_size: 3 stride: 2 }', "Pooling", {"x": X4}),
    ('lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 }', "LRN", {"x": X4}),
    ('lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL }', "LRN", {"x": X4}),
    ('', "ReLU", {"x": X2}),
    ('', "Sigmoid", {"x": X2}),
    ('', "TanH", {"x": X2}),
    ('dropout_param { dropout_ratio: 0.3 }', "Dropout", {"x": X2}),
    (f'inner_product_param {{ num_output: 3 {G} }}', "InnerProduct", {"x": X4}),
    ('', "Softmax", {"x": X2}),
    ('', "SoftmaxWithLoss", {"x": X2, "label": LAB}),
    ('', "Accuracy", {"x": X2, "label": LAB}),
    ('', "EuclideanLoss", {"x": X2, "label": X2[::-1].copy()}),
    ('eltwise_param { operation: MAX }', "Eltwise", {"x": X2, "label": X2[::-1].copy()}),
    ('eltwise_param { operation: PROD }', "Eltwise", {"x": X2, "label": X2[::-1].copy()}),
    ('', "Flatten", {"x": X4}),
    ('concat_param { axis: 1 }', "Concat", {"x": X2, "label": X2}),
]


def run(text, inputs, device):
    net = layer_net(text, inputs, phase="TRAIN", device=device, dtype=np.float64, seed=3)
    for name, value in inputs.items():
        net.blobs[name].data = value
    last = len(net.layers) - 1
    net.forward_from_to(1, last)
    rng = np.random.default_rng(0)
    for t in net.top_vecs[last]:
        t.diff = rng.standard_normal(t.shape)
    for p in net.layers[last].blobs:
        p.diff = np.zeros(p.shape)
    if net.layers[last].type != "Accuracy":
        net.backward_from_to(last, 1)
    layer = net.layers[last]
    out = [to_numpy(t.data) for t in net.top_vecs[last]]
    out += [to_numpy(net.blobs[n].diff) for n in inputs if net.bottom_need_backward[last][list(inputs).index(n)]]
    out += [to_numpy(p.diff) for p in layer.blobs]
    return out


@pytest.mark.parametrize("param,kind,inputs", CASES, ids=[c[1] for c in CASES])
def test_gpu_matches_cpu(param, kind, inputs):
    from vggtool.backend import CPU, gpu

    bottoms = "".join(f' bottom: "{n}"' for n in inputs)
    tops = ' top: "y"'
    text = f'layer {{ name: "l" type: "{kind}"{bottoms}{tops} {param} }}'
    cpu, dev = run(text, inputs, CPU), run(text, inputs, gpu(0))
    assert len(cpu) == len(dev)
    for a, b in zip(cpu, dev):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)


def test_dropout_bits_are_the_same_on_the_gpu():
    import cupy

    from vggtool.layers.neuron import dropout_key, keep_bits

    key = dropout_key(123, "drop6", 45)
    np.testing.assert_array_equal(to_numpy(keep_bits(cupy, key, 64, (32, 4096))), keep_bits(np, key, 64, (32, 4096)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_accumulates_on_the_gpu(dtype):
    import cupy

    from vggtool.layers.gemm import gemm

    rng = np.random.default_rng(4)
    a, b, c = (rng.standard_normal(s).astype(dtype) for s in ((40, 30), (40, 50), (30, 50)))
    expected = 0.5 * (a.T.astype(np.float64) @ b) + 2.0 * c  # a transposed view, as in a weight gradient
    got = gemm(cupy.asarray(a).T, cupy.asarray(b), cupy.asarray(c), alpha=0.5, beta=2.0)
    scale = np.abs(expected).max()
    assert np.abs(to_numpy(got) - expected).max() <= 8 * np.finfo(dtype).eps * np.sqrt(40) * scale
