"""Which convolution code runs, in how many chunks, and which forward data a TRAIN net keeps.

- `choose_algorithm`: the algorithm a layer asked for (prototxt `vggtool_algorithm`, else the net's
  `settings.conv_algorithm`) resolved against what its shape allows; for 'auto', the CPU thresholds
  below (their measurements: README, "Speed").
- `plan_chunks`: the one chunk planner; each algorithm states its scratch bytes per image.
- `CacheBudget`: the net-wide budget (settings.conv_cache_mb) for the forward column matrices or
  transformed tiles kept for the weight gradient; `ForwardCache`: one layer's kept data.
"""
import numpy as np

from .. import cuda_kernels, kernels
from .winograd_transforms import tiles

WORKSPACE_BYTES = 64 << 20  # im2col columns / shifted-GEMM padded input and output of one chunk
WINOGRAD_BYTES = 128 << 20  # transformed input + output tiles of one chunk
# The workspace slot of a forward's channel-major GEMM output (im2col, shifted) and of a backward's
# channel-major dY: the two are never in use at once (a backward's dX correlation finishes before or
# starts after its dY pass), so they share one buffer (VGG-16 batch 8: 98 MiB less).
GEMM_SLOT = "conv_gemm"

# 'auto' takes Winograd where the GEMM work per transformed value, C * Cout / (C + Cout), reaches this:
# the GEMMs shrink (2.25x for F(2x2), 4x for F(4x4)) while the transforms cost ~ (C + Cout) per tile.
WINOGRAD_MIN_GEMM_SHARE = 32
# ... and, with NumPy transforms (no C kernels), only from this share: they cost more per tile.
WINOGRAD_NUMPY_MIN_GEMM_SHARE = 160
# ... as F(4x4) where the output is at least this many pixels on each side (4x4 tiles pad small maps).
WINOGRAD4_MIN_SIZE = 28
# ... and not at all where the output is smaller than this on a side: there the transforms' and the 16
# GEMMs' per-call costs outweigh the multiplications saved (the laptop-scale D of `vggtool reproduce`,
# batch 32, ms forward+backward F(2x2) vs im2col: 2x2 outputs 2.7 vs 1.4, 4x4 about 4.2 vs 3.2 and 1.9
# vs 1.7, 8x8 3.0-3.7 vs 3.6, 16x16 3.2 vs 4.7; VGG-16's conv5_1 at 14x14, batch 8: 55 vs 78).
WINOGRAD_MIN_SIZE = 8
# 'auto' takes the shifted GEMMs from this many input channels (with K = C per GEMM, fewer leave the
# GEMMs memory-bound on the output) and this input area (the per-tap GEMMs are too small below it).
SHIFTED_MIN_CHANNELS = 16
SHIFTED_MIN_AREA = 28 * 28

WINOGRAD_TILE = {"winograd2": 2, "winograd4": 4}  # output tile m of F(m x m, 3 x 3)

# F(4x4) layers with few channels run fused: per block of tile rows of one image, the input transform,
# the 36 GEMMs and the output transform back to back while the block is in cache, the blocks split over
# the threads. The chunked path writes a whole chunk's transformed tiles and GEMM outputs to memory and
# reads them back, and with K = Ci small its GEMMs wait on memory. Fused where the transformed weights
# (36 * Co * Ci values, read by every block) take at most this many bytes, and in a TRAIN forward, which
# also copies each block's transformed input out to the forward cache, at most the second (VGG-16 batch 8,
# TRAIN forward fused / chunked: conv1_2 0.88, conv2_1 0.95, conv2_2 1.00, conv3_x 1.02-1.13)...
WINOGRAD_FUSED_MAX_WEIGHT_BYTES = 10 << 20
WINOGRAD_FUSED_KEEP_MAX_WEIGHT_BYTES = 5 << 19
# ... with blocks of enough tile rows for each GEMM to have at least this many columns (VGG-16 batch 8,
# per layer, fused / chunked: conv1_2 0.68-0.72, conv2_1 0.77-0.86, conv2_2 0.82-0.93, conv3_x 0.86-1.06
# with blocks of about this many tiles; blocks of 42 tiles made conv3_x 1.05x slower; conv4_x, 37.7 MB of
# weights per block and 49 tiles per image, ran 1.1-1.6x slower fused).
WINOGRAD_FUSED_MIN_TILES = 160


def winograd_fused_rows(xp, tile, ci, co, th, tw, itemsize, keep=False):
    """Tile rows per fused block for an F(tile x tile) correlation Ci -> Co with th x tw tiles per image
    (keep: its transformed input is kept for the weight gradient), or 0 where it runs chunked (F(2x2),
    CuPy, no C kernels, weights too large to reread per block)."""
    limit = WINOGRAD_FUSED_KEEP_MAX_WEIGHT_BYTES if keep else WINOGRAD_FUSED_MAX_WEIGHT_BYTES
    if tile != 4 or xp is not np or not kernels.enabled() or 36 * ci * co * itemsize > limit:
        return 0
    return min(th, -(-WINOGRAD_FUSED_MIN_TILES // tw))

# im2col's weight gradient dW (Co, K) = dY (Co, L) @ col^T (L, K) is computed as dW^T = col @ dY^T and
# added transposed where the reduction L is at least this many times K: OpenBLAS ran that orientation in
# 0.53-0.94x the time for the laptop-scale nets' layers and VGG-16's conv1_1 (1 and 2 threads), and in
# 1.05-1.44x where L < K / 2 (VGG-16 conv5-like 512 x 4608 x 1568; 64 x 576 x 128).
DW_TRANSPOSED_MIN_REDUCTION = 0.5


def weight_gradient_transposed(xp, k, reduction):
    """Compute im2col's dW as (col @ dY^T)^T (see DW_TRANSPOSED_MIN_REDUCTION); NumPy only (not measured
    on a GPU)."""
    return xp is np and reduction >= DW_TRANSPOSED_MIN_REDUCTION * k


def plan_chunks(n, bytes_per_image, budget):
    """Consecutive (n0, n1) ranges covering n images, each needing at most `budget` scratch bytes (at
    least one image per chunk)."""
    step = max(1, min(n, budget // max(bytes_per_image, 1)))
    return [(s, min(n, s + step)) for s in range(0, n, step)]


def winograd_applicable(geom, group):
    return ((geom.kh, geom.kw, geom.sh, geom.sw, geom.dh, geom.dw) == (3, 3, 1, 1, 1, 1) and group == 1
            and geom.ph <= 2 and geom.pw <= 2)


def shifted_applicable(geom):
    return ((geom.sh, geom.sw) == (1, 1) and not geom.is_pointwise()
            and geom.ph <= geom.dh * (geom.kh - 1) and geom.pw <= geom.dw * (geom.kw - 1))  # dX's pad >= 0


def c_kernels_usable(layer):
    """The C Winograd transforms can run this layer (NumPy arrays, kernels built and enabled)."""
    return layer.xp is np and kernels.enabled() and layer.dtype in (np.float32, np.float64)


def cuda_kernels_usable(layer):
    """The named CUDA kernels can run this layer's transforms (a GPU layer, kernels on, float32/64)."""
    return layer.xp is not np and cuda_kernels.enabled() and layer.dtype in (np.float32, np.float64)


def choose_algorithm(layer, requested):
    """'im2col', 'shifted', 'winograd2' or 'winograd4' for `layer` (geom, group, channels, num_output,
    bottom_shape, xp, dtype) asked for `requested` (a canonical name from vggtool.config). F(4x4) runs
    only with the C kernels (CPU) or the named CUDA kernels (GPU); without them 'winograd4' gives
    'winograd2'."""
    geom = layer.geom
    if requested in WINOGRAD_TILE and winograd_applicable(geom, layer.group):
        f4 = c_kernels_usable(layer) or cuda_kernels_usable(layer)
        return "winograd4" if requested == "winograd4" and f4 else "winograd2"
    if requested == "shifted" and shifted_applicable(geom):
        return "shifted"
    if requested != "auto":
        return "im2col"
    return _auto(layer)


def _auto(layer):
    geom, shape, c, co = layer.geom, layer.bottom_shape, layer.channels, layer.num_output
    share = c * co / (c + co)  # GEMM work per transformed value
    cpu = layer.xp is np  # the thresholds were measured on the CPU: on a GPU 'auto' keeps im2col
    out = geom.output_shape(shape[2], shape[3]) if shape is not None else None
    large_enough = out is None or min(out) >= WINOGRAD_MIN_SIZE
    if winograd_applicable(geom, layer.group) and cpu and layer.dtype == np.float32 and large_enough:
        if c_kernels_usable(layer) and share >= WINOGRAD_MIN_GEMM_SHARE:
            return "winograd4" if out is not None and min(out) >= WINOGRAD4_MIN_SIZE else "winograd2"
        if not c_kernels_usable(layer) and share >= WINOGRAD_NUMPY_MIN_GEMM_SHARE:
            return "winograd2"
    if (cpu and shifted_applicable(geom) and c >= SHIFTED_MIN_CHANNELS and shape is not None
            and shape[2] * shape[3] >= SHIFTED_MIN_AREA):
        return "shifted"
    return "im2col"


def cache_elements_per_image(algorithm, geom, channels, ho, wo):
    """Elements per image of what the forward keeps for dW: transformed input tiles (Winograd) or the
    column matrix (im2col); the shifted GEMMs keep nothing (their dW reads the input)."""
    if algorithm in WINOGRAD_TILE:
        m = WINOGRAD_TILE[algorithm]
        th, tw = tiles(ho, wo, m)
        return (m + 2) ** 2 * channels * th * tw
    if algorithm == "shifted":
        return 0
    return channels * geom.kh * geom.kw * ho * wo


class CacheBudget:
    """Bytes of forward data the TRAIN layers of one net keep for backward, claimed by layer name.

    A net holds one (`net.conv_cache`); each reshape replaces its layer's claim, so the total follows
    the current shapes. The limit comes with each claim (the net's settings.conv_cache_mb)."""

    def __init__(self):
        self._claims = {}

    def claim(self, name, nbytes, limit_bytes):
        """Record `nbytes` for `name` if the total stays within the limit; returns whether it did."""
        self._claims.pop(name, None)
        if nbytes <= 0 or sum(self._claims.values()) + nbytes > limit_bytes:
            return False
        self._claims[name] = nbytes
        return True

    def claimed(self):
        return sum(self._claims.values())


class ForwardCache:
    """One layer's forward data kept for its weight gradient: im2col columns or Winograd's transformed
    input tiles, for all images of the batch (`per_image` elements each).

    `enabled`: planned at reshape (within the budget, for `algorithm`); `valid`: the last forward filled it.
    In a net whose memory is pooled (vggtool.net.pool) the storage is a region of the net's arena
    (`use_storage`, `pooled`) that other buffers reuse once the layer's backward has read it (`release`)."""

    def __init__(self):
        self.enabled, self.valid = False, False
        self.algorithm, self.per_image, self.images_planned = None, 0, 0
        self.itemsize = 4
        self.pooled = False
        self._array = None

    def plan(self, algorithm, per_image, enabled, images=0, itemsize=4):
        self.algorithm, self.per_image, self.enabled, self.valid = algorithm, per_image, enabled, False
        self.images_planned, self.itemsize = images, itemsize
        if not enabled:
            self._array = None

    @property
    def nbytes(self):
        """Bytes of the cache for the planned batch (0 when not enabled)."""
        return self.per_image * self.images_planned * self.itemsize if self.enabled else 0

    def use_storage(self, flat):
        """Keep the cache in `flat` (the pool's region, at least nbytes long)."""
        self._array = flat
        self.valid = False

    def release(self):
        """The layer's backward has read the cache: in a pool its bytes now belong to other buffers."""
        if self.pooled:
            self.valid = False

    def images(self, layer, n0, n1, n):
        """The flat slice holding images n0..n1 (room for all n images is allocated on first use)."""
        size = self.per_image * n
        if self._array is None or self._array.size < size:
            with layer.device:
                self._array = layer.xp.empty(max(size, 1), dtype=layer.dtype)
        return self._array[self.per_image * n0:self.per_image * n1]
