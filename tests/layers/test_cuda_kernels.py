"""The named CUDA kernels (vggtool/layers/cuda_kernels.py): their source run on the CPU as C (cuda_twin.py)
against the C kernels and the NumPy code; compiled by NVRTC where CuPy is installed; on a GPU, layers with
them against the same layers without them."""
import numpy as np
import pytest
from cuda_twin import run as run_twin
from cuda_twin import twin
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vggtool import backend, config
from vggtool.layers import cuda_kernels, kernels
from vggtool.layers.conv import winograd as winograd_algo
from vggtool.layers.conv.geometry import ConvGeometry, write_output
from vggtool.testing import layer_net

DTYPES = [np.float32, np.float64]


@pytest.fixture(autouse=True)
def needs_a_compiler():
    if twin() is None:
        pytest.skip("no C compiler to run the CUDA kernels' source on the CPU")


def tied_values(rng, shape, dtype, nan=True):
    """Small integers (many ties inside 2x2 windows), some NaN."""
    x = rng.integers(-3, 4, shape).astype(dtype)
    if nan:
        x.reshape(-1)[rng.choice(x.size, max(1, x.size // 20), replace=False)] = np.nan
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 6, 8), (1, 1, 2, 2), (3, 2, 10, 4)])
def test_max_pool_2x2_kernels_equal_the_c_and_numpy_pooling(rng, dtype, shape):
    """Forward (values and the first-maximum window index, ties and NaN as Caffe and the C kernel treat them)
    and backward (dY routed to the recorded maximum)."""
    x = tied_values(rng, shape, dtype)
    n, c, h, w = shape
    y, mask = np.full((n, c, h // 2, w // 2), 7, dtype), np.full((n, c, h // 2, w // 2), 9, np.uint8)
    run_twin("max_pool_2x2_forward", dtype, x, y, mask, y.size, h, w)
    q = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
    want_mask = np.zeros(y.shape, np.uint8)
    want = q[..., 0].copy()
    for k in (1, 2, 3):  # strictly greater replaces: the first maximum stays, NaN in front stays
        better = q[..., k] > want
        want = np.where(better, q[..., k], want)
        want_mask = np.where(better, k, want_mask).astype(np.uint8)
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(mask, want_mask)
    if kernels.built():
        yc, mc = np.empty_like(y), np.empty_like(mask)
        kernels.max_pool_2x2(x, yc, mc)
        np.testing.assert_array_equal(y, yc)
        np.testing.assert_array_equal(mask, mc)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = np.full(x.shape, np.nan, dtype)
    run_twin("max_pool_2x2_backward", dtype, dy, mask, dx, dx.size, h, w)
    want_dx = np.zeros(x.shape, dtype)
    ii, jj = np.meshgrid(np.arange(h // 2), np.arange(w // 2), indexing="ij")
    for a in range(n):
        for b in range(c):
            want_dx[a, b, 2 * ii + mask[a, b] // 2, 2 * jj + mask[a, b] % 2] = dy[a, b]
    np.testing.assert_array_equal(dx, want_dx)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias, rectify, with_mask", [(True, True, True), (True, False, False), (False, True, False),
                                                      (False, False, True)])
def test_output_pass_kernel_equals_write_output(rng, dtype, bias, rectify, with_mask):
    """Channel-major GEMM output -> (n, C, H, W), + bias, max(., 0), the positive mask; NaN kept."""
    n, c, h, w = 3, 4, 5, 6
    out = rng.standard_normal((c, n, h, w)).astype(dtype)
    out.reshape(-1)[::17] = np.nan
    b = rng.standard_normal(c).astype(dtype) if bias else None
    y, want = np.full((n, c, h, w), 5, dtype), np.empty((n, c, h, w), dtype)
    mask, want_mask = np.full(y.shape, 9, np.uint8), np.zeros(y.shape, np.uint8)
    run_twin("write_output", dtype, out, y, b if bias else y, mask if with_mask else y, y.size, n, c, h * w, bias,
             rectify, with_mask)
    with config.override(num_threads=1):
        write_output(np, out, want, b, rectify, want_mask if with_mask else None)
    np.testing.assert_array_equal(y, want)
    if with_mask:
        np.testing.assert_array_equal(mask, want_mask)
    else:
        assert (mask == 9).all()  # not written


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 11),
       kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)), stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       pad=st.tuples(st.integers(0, 2), st.integers(0, 2)), dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2 ** 16))
def test_im2col_and_col2im_kernels_equal_the_c_kernels(n, c, h, w, kernel, stride, pad, dilation, dtype, seed):
    """im2col: the same columns as the C kernel (and the NumPy padded copies); col2im (a gather, one thread
    per pixel): the C kernel's scatter-add to rounding, exactly the adjoint (<im2col x, z> = <x, col2im z>)."""
    geom = ConvGeometry(kernel, stride, pad, dilation)
    ho, wo = geom.output_shape(h, w)
    assume(ho >= 1 and wo >= 1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    cols = np.full((c, kernel[0], kernel[1], n, ho, wo), np.nan, dtype)
    args = (n, c, h, w, *kernel, *stride, *pad, *dilation, ho, wo)
    run_twin("im2col", dtype, x, cols, cols.size, *args)
    padded = np.zeros((c, n, h + 2 * pad[0], w + 2 * pad[1]), dtype)
    padded[:, :, pad[0]:pad[0] + h, pad[1]:pad[1] + w] = x.transpose(1, 0, 2, 3)
    want = np.empty_like(cols)
    with config.override(num_threads=1):
        geom.im2col(np, padded, want, ho, wo)
    np.testing.assert_array_equal(cols, want)
    z = rng.standard_normal(cols.shape).astype(dtype)
    back = np.full(x.shape, np.nan, dtype)
    run_twin("col2im", dtype, z, back, back.size, *args)
    if kernels.built():
        want_back = np.full(x.shape, np.nan, dtype)
        kernels.col2im(z, geom, want_back)
        scale = np.abs(z).max() * kernel[0] * kernel[1]
        eps = np.finfo(dtype).eps
        np.testing.assert_allclose(back, want_back, rtol=0, atol=8 * eps * scale)
    lhs = np.sum(cols.astype(np.float64) * z)
    rhs = np.sum(x.astype(np.float64) * back.astype(np.float64))
    assert abs(lhs - rhs) <= 1e-5 * np.sum(np.abs(cols.astype(np.float64) * z)) + 1e-300


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("h, w, pad", [(7, 9, 1), (8, 8, 0), (5, 3, 2), (1, 1, 1), (14, 14, 1), (30, 13, 1)])
@pytest.mark.parametrize("tile", [2, 4])
def test_winograd_kernels_give_the_c_kernels_bits(rng, tile, dtype, h, w, pad):
    """F(2x2)'s and F(4x4)'s input transform, output transform (+ bias, fused ReLU, mask) and the output's
    adjoint: the C kernels' arithmetic in their order, so the same bits, on outputs that are not multiples
    of the tile."""
    if not kernels.built():
        pytest.skip("the C kernels were not built (no C compiler at install time)")
    n, c, co = 2, 3, 4
    ho, wo = h + 2 * pad - 2, w + 2 * pad - 2
    th, tw = -(-ho // tile), -(-wo // tile)
    planes = (tile + 2) ** 2
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    v, want_v = np.full((planes, c, n, th, tw), np.nan, dtype), np.full((planes, c, n, th, tw), np.nan, dtype)
    run_twin(f"wino{tile}_input", dtype, x, v, c * n * th * tw, n, c, h, w, pad, pad, th, tw)
    kernels.wino_input(x, (pad, pad), want_v)
    np.testing.assert_array_equal(v, want_v)
    m = rng.standard_normal((planes, co, n, th, tw)).astype(dtype)
    b = rng.standard_normal(co).astype(dtype)
    for bias, rectify, with_mask in [(b, True, True), (None, False, False), (b, False, True)]:
        y, want_y = np.full((n, co, ho, wo), np.nan, dtype), np.full((n, co, ho, wo), np.nan, dtype)
        mask, want_mask = np.full(y.shape, 9, np.uint8), np.full(y.shape, 9, np.uint8)
        run_twin(f"wino{tile}_output", dtype, m, y, y if bias is None else bias, mask if with_mask else y, co * n * th * tw,
                 n, co, th, tw, ho, wo, bias is not None, rectify, with_mask)
        kernels.wino_output(m, want_y, bias, rectify, want_mask if with_mask else None)
        np.testing.assert_array_equal(y, want_y)
        np.testing.assert_array_equal(mask, want_mask)
    dy = rng.standard_normal((n, co, ho, wo)).astype(dtype)
    dm, want_dm = np.full(m.shape, np.nan, dtype), np.full(m.shape, np.nan, dtype)
    run_twin(f"wino{tile}_output_adjoint", dtype, dy, dm, co * n * th * tw, n, co, ho, wo, th, tw)
    kernels.wino_output_adjoint(dy, want_dm)
    np.testing.assert_array_equal(dm, want_dm)


def test_the_kernels_compile_with_nvrtc():
    """The CUDA text compiles for sm_80 where CuPy's NVRTC is installed (no GPU needed)."""
    try:
        from cupy_backends.cuda.libs import nvrtc
        program = nvrtc.createProgram(cuda_kernels.source(), "vggtool_kernels.cu", [], [])
    except Exception as e:  # no CuPy, or no NVRTC library
        pytest.skip(f"CuPy's NVRTC is not usable here: {type(e).__name__}: {e}")
    try:
        nvrtc.compileProgram(program, ["-arch=compute_80"])
    except Exception:
        pytest.fail("NVRTC rejected the kernels:\n" + nvrtc.getProgramLog(program))
    assert len(nvrtc.getPTX(program)) > 1000


def test_the_kernels_are_only_used_on_cupy_arrays_and_when_on():
    x = np.zeros((1, 1, 2, 2), np.float32)
    assert not cuda_kernels.usable(x)  # NumPy arrays never
    with config.override(cuda_kernels=False):
        assert not cuda_kernels.enabled()
    assert config.Settings.from_environ({"VGGTOOL_NO_CUDA_KERNELS": "1"}).cuda_kernels is False
    with pytest.raises(TypeError, match="max_pool_2x2_forward takes 6 arguments, got 2"):
        cuda_kernels.launch("max_pool_2x2_forward", np.float32, x, x)


POOL_CONV = """
layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 5 kernel_size: 3 pad: 1
        stride: 1 vggtool_algorithm: "im2col" weight_filler { type: "gaussian" std: 0.5 }
        bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "r" type: "ReLU" bottom: "y" top: "y" }
layer { name: "p" type: "Pooling" bottom: "y" top: "z" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "c2" type: "Convolution" bottom: "z" top: "u" convolution_param { num_output: 3 kernel_h: 3
        kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 vggtool_algorithm: "im2col"
        weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "w" type: "Convolution" bottom: "z" top: "v" convolution_param { num_output: 4 kernel_size: 3 pad: 1
        vggtool_algorithm: "winograd2" weight_filler { type: "gaussian" std: 0.5 }
        bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "rw" type: "ReLU" bottom: "v" top: "v" }
layer { name: "w4" type: "Convolution" bottom: "y" top: "t" convolution_param { num_output: 2 kernel_size: 3 pad: 1
        vggtool_algorithm: "winograd4" weight_filler { type: "gaussian" std: 0.5 }
        bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "rt" type: "ReLU" bottom: "t" top: "t" }
"""


def emulate_the_kernels(monkeypatch, calls):
    """The layers' GPU branches on NumPy arrays: cuda_kernels.usable accepts contiguous NumPy arrays, each
    launch runs the kernel's C twin with exactly the arguments it would pass to CuPy, the C kernels off."""
    monkeypatch.setattr(kernels, "usable", lambda *arrays: False)
    monkeypatch.setattr(winograd_algo, "c_transforms", lambda conv, m, *arrays: False)  # F(4x4) too
    monkeypatch.setattr(cuda_kernels, "usable",
                        lambda *arrays: all(isinstance(a, np.ndarray) and a.flags.c_contiguous for a in arrays))

    def function(xp, name, dtype):
        def kernel(grid, block, values):
            assert grid[0] >= 1 and block == (cuda_kernels.BLOCK,)
            assert all(type(v) is np.int64 for (kind, _), v in zip(cuda_kernels.KERNELS[name][0], values)
                       if kind == "i64"), "integers go to CuPy as int64, for the kernels' long long"
            calls.append(name)
            run_twin(name, dtype, *values)
        return kernel

    monkeypatch.setattr(cuda_kernels, "_function", function)


@pytest.mark.parametrize("share", [False, True], ids=["own buffers", "pooled (ReLU mask in the output pass)"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_layers_gpu_branches_with_the_kernels_emulated_on_the_cpu(rng, monkeypatch, dtype, share):
    """Conv (im2col, bias + fused ReLU) -> 2x2 max pool -> a strided conv (col2im for dX) and an F(2x2)
    Winograd conv + ReLU, and an F(4x4) conv + ReLU on the first conv's output: forward and backward through
    the branches a GPU net takes, every kernel emulated, against the same net on the C and NumPy code."""
    x = rng.standard_normal((2, 3, 8, 10))
    dy = {"u": rng.standard_normal((2, 3, 2, 4)), "v": rng.standard_normal((2, 4, 4, 5)),
          "t": rng.standard_normal((2, 2, 8, 10))}
    results, calls = {}, []
    for emulated in (False, True):
        with monkeypatch.context() as m:
            if emulated:
                emulate_the_kernels(m, calls)
            net = layer_net(POOL_CONV, {"x": x}, dtype=dtype, seed=3)
            if share:
                net.share_memory()
            net.blobs["x"].data[...] = x
            net.forward()
            tops = [net.blobs[name].data.copy() for name in dy]
            for name, diff in dy.items():
                net.blobs[name].diff[...] = diff
            net.backward()
            results[emulated] = tops + [net.blobs["x"].diff.copy()] + [
                net.layer_dict[name].blobs[0].diff.copy() for name in ("c", "c2", "w", "w4")]
    assert set(cuda_kernels.KERNELS) == set(calls)  # every kernel ran
    eps = np.finfo(dtype).eps
    what = ["u", "v", "t", "input gradient", "dW c", "dW c2", "dW w", "dW w4"]
    for a, b, what in zip(results[True], results[False], what):
        np.testing.assert_allclose(a, b, rtol=0, atol=32 * eps * np.abs(b).max(), err_msg=what)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_on_a_gpu_the_kernels_give_the_generic_cupy_results(rng, dtype):
    """The net of the emulated test (im2col with fused bias + ReLU, 2x2 max pool, col2im, F(2x2) Winograd)
    on the GPU, with the named kernels and without them: the same outputs and gradients, and the CPU's."""
    x = rng.standard_normal((2, 3, 8, 10))
    results = {}
    for name, device, on in (("cpu", backend.CPU, True), ("gpu", backend.gpu(0), True), ("gpu-generic", backend.gpu(0), False)):
        with config.override(cuda_kernels=on):
            net = layer_net(POOL_CONV, {"x": x}, device=device, dtype=dtype, seed=3)
            net.blobs["x"].data[...] = device.asarray(x.astype(dtype))
            net.forward()
            for top in ("u", "v", "t"):
                net.blobs[top].diff[...] = device.asarray(np.ones(net.blobs[top].shape, dtype))
            net.backward()
            results[name] = [backend.to_numpy(a) for a in (net.blobs["u"].data, net.blobs["v"].data,
                                                          net.blobs["t"].data, net.blobs["x"].diff,
                                                          net.layer_dict["c"].blobs[0].diff,
                                                          net.layer_dict["w"].blobs[0].diff,
                                                          net.layer_dict["w4"].blobs[0].diff)]
    eps = np.finfo(dtype).eps
    for a, b, c in zip(results["gpu"], results["gpu-generic"], results["cpu"]):
        np.testing.assert_allclose(a, b, rtol=0, atol=64 * eps * np.abs(b).max())
        np.testing.assert_allclose(a, c, rtol=0, atol=64 * eps * np.abs(c).max())
