"""Shifted GEMMs: stride-1 convolution without a column matrix.

With the padded chunk flattened per channel, X (C, n*Hp*Wp), output position p (over the padded grid;
positions outside the valid Ho x Wo corner are garbage and dropped) is
    Y[:, p] = sum over taps (i, j) of W[:, :, i, j] @ X[:, p + i*dh*Wp + j*dw],
i.e. kh*kw GEMMs with K = C on column-shifted views of X, accumulated in place (gemm beta=1).
The weight gradient is the same sum read the other way, dW[:, :, i, j] += dY_p @ X_shifted^T with dY
laid out on the padded grid and zero at the garbage positions; dX is the forward correlation of dY
with the flipped, transposed kernel. Nothing is kept from the forward pass.
"""
from ..gemm import gemm
from ..threads import split_run
from . import policy
from .geometry import pad_channel_major, write_output


def chunks(conv, n, cin, cout, hp, wp):
    return policy.plan_chunks(n, (cin + cout) * hp * wp * conv.dtype.itemsize, policy.WORKSPACE_BYTES)


def grouped_weight(conv):
    g = conv.geom
    return conv.blobs[0].data.reshape(conv.group, conv.num_output // conv.group, -1, g.kh, g.kw)


def _padded(conv, x, geom):
    """(C, n*Hp*Wp) zero-padded, channel-major, flattened copy of x (n, C, H, W), and (Hp, Wp)."""
    c, n, h, w = x.shape[1], x.shape[0], x.shape[2], x.shape[3]
    hp, wp = h + 2 * geom.ph, w + 2 * geom.pw
    with conv.profiler.section("shifted_pad"):
        padded = conv.workspace("conv_pad", (c, n, hp, wp))
        pad_channel_major(conv.xp, x, padded, geom.ph, geom.pw)
    return padded.reshape(c, -1), hp, wp


def _taps(geom, wp, length):
    """(i, j, flat shift) per tap and the number of output positions all taps can read."""
    taps = [(i, j, i * geom.dh * wp + j * geom.dw) for i in range(geom.kh) for j in range(geom.kw)]
    return taps, length - taps[-1][2]


def correlate(conv, x, y, geom, weight, bias, section="shifted", rectify=False, mask=None):
    """y (N, Co, Ho, Wo) <- stride-1 correlation of x (N, C, H, W) with weight (groups, Co/g, C/g, kh, kw)
    (+ bias; rectify: then max(., 0))."""
    groups, cog, cg = weight.shape[:3]
    co = groups * cog
    ho, wo = y.shape[2], y.shape[3]
    # per tap a contiguous (Co/g, C/g) matrix: the GEMMs' A operands
    wk = conv.xp.ascontiguousarray(weight.transpose(0, 3, 4, 1, 2))
    n_all, c, h, w = x.shape
    for n0, n1 in chunks(conv, n_all, c, co, h + 2 * geom.ph, w + 2 * geom.pw):
        flat, hp, wp = _padded(conv, x[n0:n1], geom)
        taps, valid = _taps(geom, wp, flat.shape[1])
        out = conv.workspace(policy.GEMM_SLOT, (co, flat.shape[1]))
        with conv.profiler.section(section + "_gemm"):
            for gi in range(groups):
                xs, os_ = flat[gi * cg:(gi + 1) * cg], out[gi * cog:(gi + 1) * cog, :valid]
                for t, (i, j, s) in enumerate(taps):
                    gemm(wk[gi, i, j], xs[:, s:s + valid], os_, beta=0.0 if t == 0 else 1.0)
        with conv.profiler.section(section + "_out_copy"):
            write_output(conv.xp, out.reshape(co, n1 - n0, hp, wp)[:, :, :ho, :wo], y[n0:n1], bias, rectify,
                         None if mask is None else mask[n0:n1])


def forward(conv, x, y):
    correlate(conv, x, y, conv.geom, grouped_weight(conv), conv.blobs[1].data if conv.bias_term else None,
              rectify=conv.rectify_output, mask=conv.rectify_mask)


def backward_data(conv, dy, dx):
    """dx <- dy correlated with the flipped, transposed kernel over the transposed geometry."""
    wt = grouped_weight(conv)[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4)
    correlate(conv, dy, dx, conv.geom.transposed(), wt, None, "shifted_bw_dx")


def _stacked_columns(conv, flat, geom, kw):
    """X3 (C*kw, span): the kw column shifts of flat (C, L) stacked (rows (c, j))."""
    c = flat.shape[0]
    span = flat.shape[1] - (kw - 1) * geom.dw
    x3 = conv.workspace("shifted_x3", (c, kw, span))

    def stack(c0, c1):
        for j in range(kw):
            x3[c0:c1, j] = flat[c0:c1, j * geom.dw:j * geom.dw + span]

    split_run(stack, c, x3.size, conv.xp)
    return x3.reshape(c * kw, span)


def _padded_dy(conv, dyc, hp, wp):
    """dY of one chunk (n, Co, Ho, Wo) on the padded grid, channel-major (Co, n*Hp*Wp), zero elsewhere."""
    co, n, ho, wo = dyc.shape[1], dyc.shape[0], dyc.shape[2], dyc.shape[3]
    dyp = conv.workspace(policy.GEMM_SLOT, (co, n, hp, wp))

    def part(c0, c1):  # garbage positions must be zero: they multiply real inputs
        d = dyp[c0:c1]
        d[:, :, ho:] = 0
        d[:, :, :ho, wo:] = 0
        d[:, :, :ho, :wo] = dyc[:, c0:c1].transpose(1, 0, 2, 3)

    split_run(part, co, dyp.size, conv.xp)
    return dyp.reshape(co, -1)


def backward_weights(conv, x, dy_all):
    """blobs[0].diff += dW, one kernel row at a time: dW[:, :, i, :] = dY (on the padded grid) @ X3_i^T,
    X3_i being X3 shifted by i rows. Stacking the kw taps gives GEMMs with kw times larger N (per-tap
    GEMMs with N = C ran slower for the same work), and X3 costs kw copies of the input, not kh*kw."""
    geom, groups, co = conv.geom, conv.group, conv.num_output
    cog, cg = co // groups, conv.channels // groups
    n_all, c, h, w = x.shape
    kh, kw = geom.kh, geom.kw
    dwk = conv.workspace("shifted_dw", (groups, kh, cg * kw, cog), zero=True)
    for n0, n1 in chunks(conv, n_all, (kw + 1) * c, co, h + 2 * geom.ph, w + 2 * geom.pw):
        flat, hp, wp = _padded(conv, x[n0:n1], geom)
        taps, valid = _taps(geom, wp, flat.shape[1])
        with conv.profiler.section("shifted_bw_x3"):
            x3 = _stacked_columns(conv, flat, geom, kw)
        with conv.profiler.section("shifted_bw_dy_pad"):
            dyf = _padded_dy(conv, dy_all[n0:n1], hp, wp)
        with conv.profiler.section("shifted_bw_gemm_dw"):
            for gi in range(groups):
                ds, xs = dyf[gi * cog:(gi + 1) * cog, :valid], x3[gi * cg * kw:(gi + 1) * cg * kw]
                for i in range(kh):
                    r = i * geom.dh * wp
                    gemm(xs[:, r:r + valid], ds.T, dwk[gi, i])
    # (groups, kh, cg, kw, cog) -> (groups, cog, cg, kh, kw)
    conv.blobs[0].diff += dwk.reshape(groups, kh, cg, kw, cog).transpose(0, 4, 2, 1, 3).reshape(
        conv.blobs[0].diff.shape)
