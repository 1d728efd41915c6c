/* Kernels of _kernels.c for one element type; included once per type with REAL and SUFFIX defined.
 *
 * Layouts (all contiguous, C order):
 *   images  (n, C, H, W)             blobs, as the layers hold them
 *   tiles   (16, C, n, th, tw)       Winograd F(2x2, 3x3) transformed tiles, xi = 4 * row + column
 * Every function handles the channels [c0, c1) only, so callers can split a call over threads.
 */
#define FN2(name, suffix) name##_##suffix
#define FN1(name, suffix) FN2(name, suffix)
#define FN(name) FN1(name, SUFFIX)

/* buf[0, width) <- row y of the plane s (h x w) zero-padded on the left by pw (zeros outside the plane) */
static void FN(padded_row)(const REAL *s, Py_ssize_t h, Py_ssize_t w, Py_ssize_t y, Py_ssize_t pw,
                           Py_ssize_t width, REAL *buf)
{
    if (y < 0 || y >= h) {
        memset(buf, 0, width * sizeof(REAL));
        return;
    }
    for (Py_ssize_t j = 0; j < width; j++) {
        Py_ssize_t x = j - pw;
        buf[j] = (x >= 0 && x < w) ? s[y * w + x] : 0;
    }
}

/* tiles <- B^T d B for each 4x4 input tile d (stride 2) of src zero-padded by (ph, pw). row: scratch of
 * 8 * (2 * tw + 2) elements. */
static void FN(wino_input)(const REAL *src, Py_ssize_t n, Py_ssize_t c_all, Py_ssize_t h, Py_ssize_t w,
                           Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t th, Py_ssize_t tw, Py_ssize_t c0,
                           Py_ssize_t c1, REAL *tiles, REAL *row)
{
    const Py_ssize_t width = 2 * tw + 2, plane = c_all * n * th * tw;
    REAL *buf[4] = {row, row + width, row + 2 * width, row + 3 * width};
    REAL *t[4] = {row + 4 * width, row + 5 * width, row + 6 * width, row + 7 * width};
    for (Py_ssize_t c = c0; c < c1; c++)
        for (Py_ssize_t img = 0; img < n; img++) {
            const REAL *s = src + (img * c_all + c) * h * w;
            REAL *out = tiles + (c * n + img) * th * tw;
            for (Py_ssize_t r = 0; r < th; r++) {
                /* the four padded input rows 2r - ph .. 2r - ph + 3 of this tile row */
                for (int k = 0; k < 4; k++)
                    FN(padded_row)(s, h, w, 2 * r - ph + k, pw, width, buf[k]);
                /* row pass: the four rows of B^T d, over the whole padded width */
                for (Py_ssize_t j = 0; j < width; j++) {
                    REAL d0 = buf[0][j], d1 = buf[1][j], d2 = buf[2][j], d3 = buf[3][j];
                    t[0][j] = d0 - d2;
                    t[1][j] = d1 + d2;
                    t[2][j] = d2 - d1;
                    t[3][j] = d1 - d3;
                }
                /* column pass: (B^T d) B, one output plane per element of the 4x4 tile */
                for (int a = 0; a < 4; a++) {
                    const REAL *e = t[a];
                    REAL *o0 = out + (4 * a) * plane + r * tw, *o1 = o0 + plane, *o2 = o1 + plane, *o3 = o2 + plane;
                    for (Py_ssize_t q = 0; q < tw; q++) {
                        REAL e0 = e[2 * q], e1 = e[2 * q + 1], e2 = e[2 * q + 2], e3 = e[2 * q + 3];
                        o0[q] = e0 - e2;
                        o1[q] = e1 + e2;
                        o2[q] = e2 - e1;
                        o3[q] = e1 - e3;
                    }
                }
            }
        }
}

/* mask[0, len) <- row > 0, the fused ReLU's mask of positive outputs (its backward's), while the row is in cache */
static void FN(mask_row)(const REAL *RESTRICT row, unsigned char *RESTRICT mask, Py_ssize_t len)
{
    for (Py_ssize_t j = 0; j < len; j++)
        mask[j] = row[j] > 0;
}

/* dst (n, C, ho, wo) <- A^T M A (+ bias[c]) for each tile of m (16, C, n, th, tw); outputs beyond ho x wo
 * (odd sizes) are dropped. bias may be NULL; rectify: max(., 0) after the bias (a fused ReLU); mask, if not
 * NULL (same layout as dst): where the output is positive, for that ReLU's backward. */
static void FN(wino_output)(const REAL *m, Py_ssize_t n, Py_ssize_t c_all, Py_ssize_t th, Py_ssize_t tw,
                            REAL *dst, Py_ssize_t ho, Py_ssize_t wo, const REAL *bias, int rectify,
                            unsigned char *mask, Py_ssize_t c0, Py_ssize_t c1)
{
    const Py_ssize_t plane = c_all * n * th * tw;
    const REAL lo = rectify ? 0 : -(REAL)INFINITY; /* CLAMP_BELOW: max(v, 0) or v itself */
    for (Py_ssize_t c = c0; c < c1; c++) {
        REAL b = bias ? bias[c] : 0;
        for (Py_ssize_t img = 0; img < n; img++) {
            const REAL *in = m + (c * n + img) * th * tw;
            REAL *d = dst + (img * c_all + c) * ho * wo;
            for (Py_ssize_t r = 0; r < th; r++) {
                Py_ssize_t y0 = 2 * r;
                int second_row = y0 + 1 < ho;
                for (Py_ssize_t q = 0; q < tw; q++) {
                    const REAL *p = in + r * tw + q;
                    REAL s0[4], s1[4]; /* rows of A^T M */
                    for (int k = 0; k < 4; k++) {
                        REAL m0 = p[k * plane], m1 = p[(4 + k) * plane], m2 = p[(8 + k) * plane],
                             m3 = p[(12 + k) * plane];
                        s0[k] = m0 + m1 + m2;
                        s1[k] = m1 - m2 - m3;
                    }
                    Py_ssize_t x0 = 2 * q;
                    REAL v00 = s0[0] + s0[1] + s0[2] + b, v01 = s0[1] - s0[2] - s0[3] + b,
                         v10 = s1[0] + s1[1] + s1[2] + b, v11 = s1[1] - s1[2] - s1[3] + b;
                    d[y0 * wo + x0] = CLAMP_BELOW(v00, lo);
                    if (x0 + 1 < wo)
                        d[y0 * wo + x0 + 1] = CLAMP_BELOW(v01, lo);
                    if (second_row) {
                        d[(y0 + 1) * wo + x0] = CLAMP_BELOW(v10, lo);
                        if (x0 + 1 < wo)
                            d[(y0 + 1) * wo + x0 + 1] = CLAMP_BELOW(v11, lo);
                    }
                }
                if (mask)
                    FN(mask_row)(d + y0 * wo, mask + (d - dst) + y0 * wo, (second_row ? 2 : 1) * wo);
            }
        }
    }
}

/* dm (16, C, n, th, tw) <- A dY A^T for each 2x2 tile of dy (n, C, ho, wo), zero beyond ho x wo: the
 * adjoint of wino_output (the weight gradient's path). row: scratch of 6 * 2 * tw elements. */
static void FN(wino_output_adjoint)(const REAL *dy, Py_ssize_t n, Py_ssize_t c_all, Py_ssize_t ho, Py_ssize_t wo,
                                    Py_ssize_t th, Py_ssize_t tw, REAL *dm, Py_ssize_t c0, Py_ssize_t c1,
                                    REAL *row)
{
    const Py_ssize_t plane = c_all * n * th * tw, width = 2 * tw;
    REAL *g0 = row, *g1 = row + width;
    REAL *t[4] = {row + 2 * width, row + 3 * width, row + 4 * width, row + 5 * width};
    for (Py_ssize_t c = c0; c < c1; c++)
        for (Py_ssize_t img = 0; img < n; img++) {
            const REAL *g = dy + (img * c_all + c) * ho * wo;
            REAL *out = dm + (c * n + img) * th * tw;
            for (Py_ssize_t r = 0; r < th; r++) {
                /* the tile row's two dY rows, zero-extended to 2 * tw columns (and rows) */
                memset(row, 0, 2 * width * sizeof(REAL));
                memcpy(g0, g + 2 * r * wo, wo * sizeof(REAL));
                if (2 * r + 1 < ho)
                    memcpy(g1, g + (2 * r + 1) * wo, wo * sizeof(REAL));
                /* rows of A dY */
                for (Py_ssize_t j = 0; j < width; j++) {
                    t[0][j] = g0[j];
                    t[1][j] = g0[j] + g1[j];
                    t[2][j] = g0[j] - g1[j];
                    t[3][j] = -g1[j];
                }
                /* (A dY) A^T, one output plane per element of the 4x4 tile */
                for (int a = 0; a < 4; a++) {
                    const REAL *e = t[a];
                    REAL *o0 = out + (4 * a) * plane + r * tw, *o1 = o0 + plane, *o2 = o1 + plane, *o3 = o2 + plane;
                    for (Py_ssize_t q = 0; q < tw; q++) {
                        REAL e0 = e[2 * q], e1 = e[2 * q + 1];
                        o0[q] = e0;
                        o1[q] = e0 + e1;
                        o2[q] = e0 - e1;
                        o3[q] = -e1;
                    }
                }
            }
        }
}

/* ---- Winograd F(4x4, 3x3): 6x6 input tiles with stride 4, tiles (36, C, n, th, tw), xi = 6 * row + column.
 * B^T, G and A^T as in Lavin & Gray (2015) (interpolation points 0, 1, -1, 2, -2); see conv/winograd_transforms.py. */

/* in[x], or 0 outside [0, w) */
static REAL FN(pixel_or_zero)(const REAL *in, Py_ssize_t w, Py_ssize_t x)
{
    return (x >= 0 && x < w) ? in[x] : 0;
}

/* d[p * q1 + q] <- column 4q + p of row y of the plane s (h x w) zero-padded by pw on the left (zero outside
 * the plane), for the 4 phases p and q < q1: a padded row split by column mod 4, so that the column pass
 * of F(4x4) (stride-4 tiles) reads unit-stride arrays. Where four columns 4q - pw .. 4q - pw + 3 lie inside
 * the row, four q at a time are one 4x4 transpose of 16 consecutive pixels (SSE, float32). */
static void FN(deinterleaved_row)(const REAL *s, Py_ssize_t h, Py_ssize_t w, Py_ssize_t y, Py_ssize_t pw,
                                  Py_ssize_t q1, REAL *d)
{
    if (y < 0 || y >= h) {
        memset(d, 0, 4 * q1 * sizeof(REAL));
        return;
    }
    const REAL *in = s + y * w;
    Py_ssize_t a = (pw + 3) / 4, b = w + pw >= 4 ? (w + pw - 4) / 4 + 1 : 0; /* [a, b): all four inside */
    if (b > q1)
        b = q1;
    if (b < a)
        b = a;
    Py_ssize_t mid = a;
#if REAL_IS_FLOAT && defined(__SSE2__)
    for (; mid + 4 <= b; mid += 4) {
        const float *src = in + 4 * mid - pw;
        __m128 r0 = _mm_loadu_ps(src), r1 = _mm_loadu_ps(src + 4), r2 = _mm_loadu_ps(src + 8),
               r3 = _mm_loadu_ps(src + 12);
        _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
        _mm_storeu_ps(d + mid, r0);
        _mm_storeu_ps(d + q1 + mid, r1);
        _mm_storeu_ps(d + 2 * q1 + mid, r2);
        _mm_storeu_ps(d + 3 * q1 + mid, r3);
    }
#endif
    for (int p = 0; p < 4; p++) { /* the rest, [0, a) and [mid, q1), one pixel at a time */
        REAL *o = d + p * q1;
        for (Py_ssize_t q = 0; q < a; q++)
            o[q] = FN(pixel_or_zero)(in, w, 4 * q + p - pw);
        for (Py_ssize_t q = mid; q < q1; q++)
            o[q] = FN(pixel_or_zero)(in, w, 4 * q + p - pw);
    }
}

/* F(4x4)'s 1-d input transform B^T, element-wise over n positions: t_k[j] from the six inputs d_0..d_5[j].
 * Both passes use it: over the rows of a tile row (d_k: the six image rows) and over its columns (d_k:
 * columns 4q + k, from the rows split by column mod 4). (Restrict parameters, so that it vectorises.) */
static void FN(wino4_input_1d)(const REAL *RESTRICT d0, const REAL *RESTRICT d1, const REAL *RESTRICT d2,
                               const REAL *RESTRICT d3, const REAL *RESTRICT d4, const REAL *RESTRICT d5,
                               REAL *RESTRICT t0, REAL *RESTRICT t1, REAL *RESTRICT t2, REAL *RESTRICT t3,
                               REAL *RESTRICT t4, REAL *RESTRICT t5, Py_ssize_t n)
{
    for (Py_ssize_t j = 0; j < n; j++) {
        REAL a0 = d0[j], a1 = d1[j], a2 = d2[j], a3 = d3[j], a4 = d4[j], a5 = d5[j];
        t0[j] = 4 * a0 - 5 * a2 + a4;
        t1[j] = -4 * (a1 + a2) + a3 + a4;
        t2[j] = 4 * (a1 - a2) - a3 + a4;
        t3[j] = 2 * (a3 - a1) - a2 + a4;
        t4[j] = 2 * (a1 - a3) - a2 + a4;
        t5[j] = 4 * a1 - 5 * a3 + a5;
    }
}

/* B^T d B for the 6x6 input tiles d (stride 4) of tile rows [r0, r1) of one image plane set: channels
 * [c0, c1) of img (C_all, h, w), zero-padded by (ph, pw). Tile (xi, c, r, q) goes to
 * out[xi * plane + c * cstride + (r - r0) * tw + q]: the whole-chunk layout (36, C, n, th, tw) or one block's
 * (36, C, rows * tw). row: scratch of 48 * (tw + 1) elements. Each tile row's six padded input rows are split
 * by column mod 4 (deinterleaved_row), so both passes run over unit-stride arrays; the arithmetic is that
 * of the straightforward loops, in the same order. */
static void FN(wino4_input_rows)(const REAL *img, Py_ssize_t h, Py_ssize_t w, Py_ssize_t ph, Py_ssize_t pw,
                                 Py_ssize_t tw, Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t r0, Py_ssize_t r1,
                                 REAL *out, Py_ssize_t plane, Py_ssize_t cstride, REAL *row)
{
    const Py_ssize_t q1 = tw + 1, width = 4 * q1;
    REAL *buf[6], *t[6];
    for (int k = 0; k < 6; k++)
        t[k] = row + (6 + k) * width;
    for (Py_ssize_t c = c0; c < c1; c++) {
        const REAL *s = img + c * h * w;
        REAL *oc = out + c * cstride - r0 * tw;
        for (int k = 0; k < 6; k++)
            buf[k] = row + k * width;
        for (Py_ssize_t r = r0; r < r1; r++) {
            /* rows 4r + 4 and 4r + 5 of a tile row are rows 0 and 1 of the next: split once */
            int fresh = 0;
            if (r > r0) {
                REAL *free0 = buf[0], *free1 = buf[1], *free2 = buf[2], *free3 = buf[3];
                buf[0] = buf[4], buf[1] = buf[5], buf[2] = free0, buf[3] = free1, buf[4] = free2, buf[5] = free3;
                fresh = 2;
            }
            for (int k = fresh; k < 6; k++)
                FN(deinterleaved_row)(s, h, w, 4 * r - ph + k, pw, q1, buf[k]);
            FN(wino4_input_1d)(buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], t[0], t[1], t[2], t[3], t[4], t[5],
                               width); /* B^T d, element-wise: the column order does not matter */
            for (int a = 0; a < 6; a++) { /* (B^T d) B: columns 4q + k of row a are e_{k mod 4}[q + k / 4] */
                const REAL *e = t[a];
                REAL *o = oc + (6 * a) * plane + r * tw;
                FN(wino4_input_1d)(e, e + q1, e + 2 * q1, e + 3 * q1, e + 1, e + q1 + 1, o, o + plane, o + 2 * plane,
                                   o + 3 * plane, o + 4 * plane, o + 5 * plane, tw);
            }
        }
    }
}

/* tiles (36, C, n, th, tw) <- B^T d B for each 6x6 input tile d (stride 4) of src zero-padded by (ph, pw),
 * channels [c0, c1). row: scratch of 48 * (tw + 1) elements. */
static void FN(wino4_input)(const REAL *src, Py_ssize_t n, Py_ssize_t c_all, Py_ssize_t h, Py_ssize_t w,
                            Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t th, Py_ssize_t tw, Py_ssize_t c0,
                            Py_ssize_t c1, REAL *tiles, REAL *row)
{
    for (Py_ssize_t img = 0; img < n; img++)
        FN(wino4_input_rows)(src + img * c_all * h * w, h, w, ph, pw, tw, c0, c1, 0, th, tiles + img * th * tw,
                             c_all * n * th * tw, n * th * tw, row);
}

/* The first pass of F(4x4)'s output transform (pass1): the four rows of A^T M over tw tiles, from the six planes
 * p0..p5 of one column of the 6x6 tile. (A function with restrict parameters, so that it vectorises.) */
static void FN(wino4_output_pass1)(const REAL *RESTRICT p0, const REAL *RESTRICT p1, const REAL *RESTRICT p2,
                                  const REAL *RESTRICT p3, const REAL *RESTRICT p4, const REAL *RESTRICT p5,
                                  REAL *RESTRICT s0, REAL *RESTRICT s1, REAL *RESTRICT s2, REAL *RESTRICT s3,
                                  Py_ssize_t tw)
{
    for (Py_ssize_t q = 0; q < tw; q++) {
        REAL m1 = p1[q], m2 = p2[q], m3 = p3[q], m4 = p4[q];
        s0[q] = p0[q] + m1 + m2 + m3 + m4;
        s1[q] = m1 - m2 + 2 * (m3 - m4);
        s2[q] = m1 + m2 + 4 * (m3 + m4);
        s3[q] = m1 - m2 + 8 * (m3 - m4) + p5[q];
    }
}

/* The second pass of F(4x4)'s output transform: one output row of `full` whole tiles from the row i of
 * A^T M (e0..e5 over the tiles), + b, then clamped below by lo (0: a fused ReLU; -inf: none). */
static void FN(wino4_output_columns)(const REAL *RESTRICT e0, const REAL *RESTRICT e1, const REAL *RESTRICT e2,
                                     const REAL *RESTRICT e3, const REAL *RESTRICT e4, const REAL *RESTRICT e5,
                                     REAL *RESTRICT drow, Py_ssize_t full, REAL b, REAL lo)
{
    for (Py_ssize_t q = 0; q < full; q++) {
        REAL v1 = e1[q], v2 = e2[q], v3 = e3[q], v4 = e4[q];
        REAL o0 = e0[q] + v1 + v2 + v3 + v4 + b, o1 = v1 - v2 + 2 * (v3 - v4) + b,
             o2 = v1 + v2 + 4 * (v3 + v4) + b, o3 = v1 - v2 + 8 * (v3 - v4) + e5[q] + b;
        drow[4 * q] = CLAMP_BELOW(o0, lo);
        drow[4 * q + 1] = CLAMP_BELOW(o1, lo);
        drow[4 * q + 2] = CLAMP_BELOW(o2, lo);
        drow[4 * q + 3] = CLAMP_BELOW(o3, lo);
    }
}

/* A^T M A (+ bias[c]) of the tiles of tile rows [r0, r1), channels [c0, c1), into one image's planes
 * d (C_all, ho, wo); tile (xi, c, r, q) is m[xi * plane + c * cstride + (r - r0) * tw + q] (the whole-chunk
 * layout or one block's, as in wino4_input_rows); outputs beyond ho x wo are dropped. bias may be NULL;
 * lo: 0 for a fused ReLU, -inf for none; mask (NULL or d's layout): output > 0. row: scratch of 24 * tw
 * elements. A row of tiles at a time, so every pass reads the 36 planes with unit stride. */
static void FN(wino4_output_rows)(const REAL *m, Py_ssize_t plane, Py_ssize_t cstride, Py_ssize_t tw,
                                  Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t r0, Py_ssize_t r1, REAL *d,
                                  Py_ssize_t ho, Py_ssize_t wo, const REAL *bias, REAL lo, unsigned char *mask,
                                  REAL *row)
{
    for (Py_ssize_t c = c0; c < c1; c++) {
        REAL b = bias ? bias[c] : 0;
        const REAL *in = m + c * cstride - r0 * tw;
        REAL *dc = d + c * ho * wo;
        for (Py_ssize_t r = r0; r < r1; r++) {
            /* s[i][k] = row i of A^T M for tile column k, over the row of tiles */
            for (int k = 0; k < 6; k++) {
                const REAL *p = in + k * plane + r * tw;
                REAL *o = row + k * tw;
                FN(wino4_output_pass1)(p, p + 6 * plane, p + 12 * plane, p + 18 * plane, p + 24 * plane,
                                       p + 30 * plane, o, o + 6 * tw, o + 12 * tw, o + 18 * tw, tw);
            }
            for (int i = 0; i < 4 && 4 * r + i < ho; i++) {
                const REAL *e0 = row + (6 * i) * tw, *e1 = e0 + tw, *e2 = e1 + tw, *e3 = e2 + tw,
                           *e4 = e3 + tw, *e5 = e4 + tw;
                REAL *drow = dc + (4 * r + i) * wo;
                Py_ssize_t full = wo / 4; /* tiles whose 4 columns all lie inside the output */
                FN(wino4_output_columns)(e0, e1, e2, e3, e4, e5, drow, full, b, lo);
                if (full < tw) {
                    Py_ssize_t q = full;
                    REAL v1 = e1[q], v2 = e2[q], v3 = e3[q], v4 = e4[q];
                    REAL o[4] = {e0[q] + v1 + v2 + v3 + v4, v1 - v2 + 2 * (v3 - v4), v1 + v2 + 4 * (v3 + v4),
                                 v1 - v2 + 8 * (v3 - v4) + e5[q]};
                    for (Py_ssize_t j = 0; j < wo - 4 * q; j++) {
                        REAL v = o[j] + b;
                        drow[4 * q + j] = CLAMP_BELOW(v, lo);
                    }
                }
                if (mask)
                    FN(mask_row)(drow, mask + (drow - d), wo);
            }
        }
    }
}

/* dst (n, C, ho, wo) <- A^T M A (+ bias[c]) for each tile of m (36, C, n, th, tw), channels [c0, c1);
 * outputs beyond ho x wo are dropped. bias may be NULL; rectify: max(., 0) after the bias; mask (NULL or
 * dst's layout): output > 0. row: scratch of 24 * tw elements. */
static void FN(wino4_output)(const REAL *m, Py_ssize_t n, Py_ssize_t c_all, Py_ssize_t th, Py_ssize_t tw,
                             REAL *dst, Py_ssize_t ho, Py_ssize_t wo, const REAL *bias, int rectify,
                             unsigned char *mask, Py_ssize_t c0, Py_ssize_t c1, REAL *row)
{
    const REAL lo = rectify ? 0 : -(REAL)INFINITY; /* CLAMP_BELOW: max(v, 0) or v itself */
    for (Py_ssize_t img = 0; img < n; img++)
        FN(wino4_output_rows)(m + img * th * tw, c_all * n * th * tw, n * th * tw, tw, c0, c1, 0, th,
                              dst + img * c_all * ho * wo, ho, wo, bias, lo,
                              mask ? mask + img * c_all * ho * wo : NULL, row);
}

/* GEMM through a CBLAS function pointer (NumPy's OpenBLAS, found by vggtool/layers/gemm.py): row-major
 * c (m x n, ldc) <- a (m x k, lda) @ b (k x n, ldb); wide: the ILP64 interface (64-bit integers). */
typedef void (*FN(gemm64_fn))(int, int, int, long long, long long, long long, REAL, const REAL *, long long,
                               const REAL *, long long, REAL, REAL *, long long);
typedef void (*FN(gemm32_fn))(int, int, int, int, int, int, REAL, const REAL *, int, const REAL *, int, REAL,
                               REAL *, int);

static void FN(gemm_nn)(void *fn, int wide, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const REAL *a,
                        Py_ssize_t lda, const REAL *b, Py_ssize_t ldb, REAL *c, Py_ssize_t ldc)
{
    if (wide)
        ((FN(gemm64_fn))fn)(101, 111, 111, m, n, k, 1, a, lda, b, ldb, 0, c, ldc);
    else
        ((FN(gemm32_fn))fn)(101, 111, 111, (int)m, (int)n, (int)k, 1, a, lda, b, ldb, 0, c, (int)ldc);
}

/* F(4x4) correlation of src (n, Ci, h, w) zero-padded by (ph, pw) with u (36, Co, Ci), block by block:
 * block b is tile rows [r0, r0 + rows) of image b / per_image, and its transformed input, its 36 GEMMs and
 * its output transform run while the block's tiles are in cache (the unfused path writes all of a chunk's
 * tiles to memory and reads them back twice). Blocks [b0, b1). dst (n, Co, ho, wo), bias, rectify and mask
 * as in wino4_output. v: 36 * Ci * rows * tw elements, the block's transformed input; keep (NULL or
 * (36, Ci, n, th, tw)): it is also copied there (the forward cache of a TRAIN net) after the GEMMs. mbuf:
 * 36 * Co * rows * tw elements; row: 48 * (tw + 1). */
static void FN(wino4_fused)(void *gemm, int wide, const REAL *src, Py_ssize_t n, Py_ssize_t ci, Py_ssize_t h,
                            Py_ssize_t w, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t th, Py_ssize_t tw,
                            const REAL *u, Py_ssize_t co, REAL *dst, Py_ssize_t ho, Py_ssize_t wo,
                            const REAL *bias, int rectify, unsigned char *mask, Py_ssize_t rows, Py_ssize_t b0,
                            Py_ssize_t b1, REAL *keep, REAL *v, REAL *mbuf, REAL *row)
{
    const REAL lo = rectify ? 0 : -(REAL)INFINITY;
    const Py_ssize_t per_image = (th + rows - 1) / rows;
    for (Py_ssize_t b = b0; b < b1; b++) {
        Py_ssize_t img = b / per_image, r0 = (b % per_image) * rows;
        Py_ssize_t r1 = r0 + rows < th ? r0 + rows : th, tb = (r1 - r0) * tw;
        FN(wino4_input_rows)(src + img * ci * h * w, h, w, ph, pw, tw, 0, ci, r0, r1, v, ci * tb, tb, row);
        for (int xi = 0; xi < 36; xi++)
            FN(gemm_nn)(gemm, wide, co, tb, ci, u + xi * co * ci, ci, v + xi * ci * tb, tb, mbuf + xi * co * tb, tb);
        if (keep) /* the block's rows of tiles into the chunk's layout, from cache */
            for (Py_ssize_t k = 0; k < 36 * ci; k++)
                memcpy(keep + k * n * th * tw + img * th * tw + r0 * tw, v + k * tb, tb * sizeof(REAL));
        FN(wino4_output_rows)(mbuf, co * tb, tb, tw, 0, co, r0, r1, dst + img * co * ho * wo, ho, wo, bias, lo,
                              mask ? mask + img * co * ho * wo : NULL, row);
    }
}

/* F(4x4)'s 1-d output adjoint A, element-wise over n positions: t_k[j] from the four inputs g_0..g_3[j].
 * Both passes of wino4_output_adjoint use it: over the rows of a tile row and over its columns (split by
 * column mod 4). */
static void FN(wino4_adjoint_1d)(const REAL *RESTRICT g0, const REAL *RESTRICT g1, const REAL *RESTRICT g2,
                                 const REAL *RESTRICT g3, REAL *RESTRICT t0, REAL *RESTRICT t1, REAL *RESTRICT t2,
                                 REAL *RESTRICT t3, REAL *RESTRICT t4, REAL *RESTRICT t5, Py_ssize_t n)
{
    for (Py_ssize_t j = 0; j < n; j++) {
        REAL a0 = g0[j], a1 = g1[j], a2 = g2[j], a3 = g3[j];
        t0[j] = a0;
        t1[j] = a0 + a1 + a2 + a3;
        t2[j] = a0 - a1 + a2 - a3;
        t3[j] = a0 + 2 * a1 + 4 * a2 + 8 * a3;
        t4[j] = a0 - 2 * a1 + 4 * a2 - 8 * a3;
        t5[j] = a3;
    }
}

/* dm (36, C, n, th, tw) <- A dY A^T for each 4x4 tile of dy (n, C, ho, wo), zero beyond ho x wo (the
 * adjoint of wino4_output). row: scratch of 10 * 4 * tw elements. dY's rows are split by column mod 4 as
 * they are read (deinterleaved_row), so both passes run over unit-stride arrays. */
static void FN(wino4_output_adjoint)(const REAL *dy, Py_ssize_t n, Py_ssize_t c_all, Py_ssize_t ho, Py_ssize_t wo,
                                     Py_ssize_t th, Py_ssize_t tw, REAL *dm, Py_ssize_t c0, Py_ssize_t c1,
                                     REAL *row)
{
    const Py_ssize_t plane = c_all * n * th * tw, width = 4 * tw;
    REAL *g[4], *t[6];
    for (int k = 0; k < 4; k++)
        g[k] = row + k * width;
    for (int k = 0; k < 6; k++)
        t[k] = row + (4 + k) * width;
    for (Py_ssize_t c = c0; c < c1; c++)
        for (Py_ssize_t img = 0; img < n; img++) {
            const REAL *src = dy + (img * c_all + c) * ho * wo;
            REAL *out = dm + (c * n + img) * th * tw;
            for (Py_ssize_t r = 0; r < th; r++) {
                for (int k = 0; k < 4; k++)
                    FN(deinterleaved_row)(src, ho, wo, 4 * r + k, 0, tw, g[k]);
                FN(wino4_adjoint_1d)(g[0], g[1], g[2], g[3], t[0], t[1], t[2], t[3], t[4], t[5], width);
                for (int a = 0; a < 6; a++) {
                    REAL *o = out + (6 * a) * plane + r * tw;
                    FN(wino4_adjoint_1d)(t[a], t[a] + tw, t[a] + 2 * tw, t[a] + 3 * tw, o, o + plane, o + 2 * plane,
                                         o + 3 * plane, o + 4 * plane, o + 5 * plane, tw);
                }
            }
        }
}

/* 2x2, stride 2 max pooling of planes [p0, p1) of x (planes, h, w), h and w even: y (planes, h/2, w/2) and
 * the window index of the maximum (0..3, rows then columns, first maximum wins as in Caffe). */
static void FN(max_pool_2x2)(const REAL *x, Py_ssize_t h, Py_ssize_t w, REAL *y, unsigned char *mask,
                             Py_ssize_t p0, Py_ssize_t p1)
{
    const Py_ssize_t ho = h / 2, wo = w / 2;
    for (Py_ssize_t p = p0; p < p1; p++)
        for (Py_ssize_t r = 0; r < ho; r++) {
            const REAL *a = x + (p * h + 2 * r) * w, *b = a + w;
            REAL *yo = y + (p * ho + r) * wo;
            unsigned char *mo = mask + (p * ho + r) * wo;
            for (Py_ssize_t q = 0; q < wo; q++) {
                REAL best = a[2 * q];
                unsigned char k = 0;
                if (a[2 * q + 1] > best) { best = a[2 * q + 1]; k = 1; }
                if (b[2 * q] > best) { best = b[2 * q]; k = 2; }
                if (b[2 * q + 1] > best) { best = b[2 * q + 1]; k = 3; }
                yo[q] = best;
                mo[q] = k;
            }
        }
}

/* dx (planes, h, w) <- dy routed to each window's maximum, zero elsewhere (planes [p0, p1)). */
/* One output row pair of max_pool_2x2_backward: rows a and b of dx from the pooled row g and its window
 * indices mo (restrict parameters, so that it vectorises). */
static void FN(max_pool_2x2_backward_row)(const REAL *RESTRICT g, const unsigned char *RESTRICT mo,
                                          REAL *RESTRICT a, REAL *RESTRICT b, Py_ssize_t wo)
{
    for (Py_ssize_t q = 0; q < wo; q++) {
        unsigned char k = mo[q];
        REAL v = g[q];
        a[2 * q] = k == 0 ? v : 0;
        a[2 * q + 1] = k == 1 ? v : 0;
        b[2 * q] = k == 2 ? v : 0;
        b[2 * q + 1] = k == 3 ? v : 0;
    }
}

static void FN(max_pool_2x2_backward)(const REAL *dy, const unsigned char *mask, Py_ssize_t h, Py_ssize_t w,
                                      REAL *dx, Py_ssize_t p0, Py_ssize_t p1)
{
    const Py_ssize_t ho = h / 2, wo = w / 2;
    for (Py_ssize_t p = p0; p < p1; p++)
        for (Py_ssize_t r = 0; r < ho; r++) {
            REAL *a = dx + (p * h + 2 * r) * w;
            FN(max_pool_2x2_backward_row)(dy + (p * ho + r) * wo, mask + (p * ho + r) * wo, a, a + w, wo);
        }
}

/* im2col for small maps (IM2COL_SMALL_WIDTH): each image plane is copied once into a zero-bordered plane,
 * from which every tap gathers its ho * wo values through a table of offsets made once per call: one flat
 * loop per tap, no bounds tests. Row by row with bounds (below) mispredicts the short, varying loops of 2-
 * to 8-wide rows. Returns 0 when out of memory. */
static int FN(im2col_small)(const REAL *src, Py_ssize_t n, Py_ssize_t c_all, Py_ssize_t h, Py_ssize_t w,
                            Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                            Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t ho, Py_ssize_t wo,
                            Py_ssize_t c0, Py_ssize_t c1, REAL *cols)
{
    const Py_ssize_t hp = h + 2 * ph, wp = w + 2 * pw, plane = ho * wo, taps = kh * kw;
    REAL *pad = calloc((size_t)(hp * wp), sizeof(REAL));
    Py_ssize_t *offset = malloc((size_t)(taps * plane) * sizeof(Py_ssize_t));
    if (pad == NULL || offset == NULL) {
        free(pad);
        free(offset);
        return 0;
    }
    for (Py_ssize_t i = 0; i < kh; i++)
        for (Py_ssize_t j = 0; j < kw; j++)
            for (Py_ssize_t oy = 0; oy < ho; oy++)
                for (Py_ssize_t ox = 0; ox < wo; ox++)
                    offset[(i * kw + j) * plane + oy * wo + ox] = (oy * sh + i * dh) * wp + j * dw + ox * sw;
    for (Py_ssize_t c = c0; c < c1; c++)
        for (Py_ssize_t img = 0; img < n; img++) {
            const REAL *s = src + (img * c_all + c) * h * w;
            for (Py_ssize_t y = 0; y < h; y++) {  /* the interior; the border stays zero */
                REAL *d = pad + (y + ph) * wp + pw;
                for (Py_ssize_t x = 0; x < w; x++) d[x] = s[y * w + x];
            }
            for (Py_ssize_t t = 0; t < taps; t++) {
                REAL *out = cols + ((c * taps + t) * n + img) * plane;
                const Py_ssize_t *at = offset + t * plane;
                for (Py_ssize_t k = 0; k < plane; k++) out[k] = pad[at[k]];
            }
        }
    free(pad);
    free(offset);
    return 1;
}

/* Column matrix of im2col, straight from the images: cols (C, kh, kw, n, ho, wo) <- for each tap (i, j) the
 * input pixel (oy * sh - ph + i * dh, ox * sw - pw + j * dw) of src (n, C, h, w), zero outside the image
 * (channels [c0, c1)). One pass instead of a padded copy and kh * kw strided copies. */
static void FN(im2col)(const REAL *src, Py_ssize_t n, Py_ssize_t c_all, Py_ssize_t h, Py_ssize_t w,
                       Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                       Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t ho, Py_ssize_t wo, Py_ssize_t c0, Py_ssize_t c1,
                       REAL *cols)
{
    if (wo < IM2COL_SMALL_WIDTH &&
        FN(im2col_small)(src, n, c_all, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, c0, c1, cols))
        return;
    for (Py_ssize_t c = c0; c < c1; c++)
        for (Py_ssize_t i = 0; i < kh; i++)
            for (Py_ssize_t j = 0; j < kw; j++) {
                const Py_ssize_t x0 = j * dw - pw;
                Py_ssize_t lo, hi;
                inside_columns(x0, w, sw, wo, &lo, &hi);
                REAL *out = cols + ((c * kh + i) * kw + j) * n * ho * wo;
                for (Py_ssize_t img = 0; img < n; img++) {
                    const REAL *s = src + (img * c_all + c) * h * w;
                    for (Py_ssize_t oy = 0; oy < ho; oy++, out += wo) {
                        const Py_ssize_t y = oy * sh - ph + i * dh;
                        if (y < 0 || y >= h) {
                            memset(out, 0, wo * sizeof(REAL));
                            continue;
                        }
                        const REAL *row = s + y * w;
                        for (Py_ssize_t ox = 0; ox < lo; ox++) out[ox] = 0;
                        if (sw == 1)
                            memcpy(out + lo, row + x0 + lo, (hi - lo) * sizeof(REAL));
                        else
                            for (Py_ssize_t ox = lo; ox < hi; ox++) out[ox] = row[x0 + ox * sw];
                        for (Py_ssize_t ox = hi; ox < wo; ox++) out[ox] = 0;
                    }
                }
            }
}

/* The adjoint of im2col: dst (n, C, h, w) <- the sum over taps of cols (C, kh, kw, n, ho, wo) scattered back to
 * their input pixels (channels [c0, c1)); taps are added in (i, j) order, as NumPy's col2im adds them. */
static void FN(col2im)(const REAL *cols, Py_ssize_t n, Py_ssize_t c_all, Py_ssize_t h, Py_ssize_t w,
                       Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                       Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t ho, Py_ssize_t wo, Py_ssize_t c0, Py_ssize_t c1,
                       REAL *dst)
{
    for (Py_ssize_t c = c0; c < c1; c++)
        for (Py_ssize_t img = 0; img < n; img++)
            memset(dst + (img * c_all + c) * h * w, 0, h * w * sizeof(REAL));
    for (Py_ssize_t c = c0; c < c1; c++)
        for (Py_ssize_t i = 0; i < kh; i++)
            for (Py_ssize_t j = 0; j < kw; j++) {
                const Py_ssize_t x0 = j * dw - pw;
                Py_ssize_t lo, hi;
                inside_columns(x0, w, sw, wo, &lo, &hi);
                const REAL *in = cols + ((c * kh + i) * kw + j) * n * ho * wo;
                for (Py_ssize_t img = 0; img < n; img++) {
                    REAL *d = dst + (img * c_all + c) * h * w;
                    for (Py_ssize_t oy = 0; oy < ho; oy++, in += wo) {
                        const Py_ssize_t y = oy * sh - ph + i * dh;
                        if (y < 0 || y >= h)
                            continue;
                        REAL *row = d + y * w + x0 + lo * sw;
                        if (sw == 1)
                            for (Py_ssize_t ox = lo; ox < hi; ox++) row[ox - lo] += in[ox];
                        else
                            for (Py_ssize_t ox = lo; ox < hi; ox++) row[(ox - lo) * sw] += in[ox];
                    }
                }
            }
}

/* Caffe's SGD step on elements [lo, hi) of one parameter: g = g * scale (iter_size > 1), g += w * decay (L2),
 * h = h * momentum + g * rate, g = h (the update value, as Caffe leaves it in the diff), w -= g. The same
 * operations in the same order and precision as the NumPy update (vggtool.solvers.sgd), so the results are
 * the same bits; one pass over the arrays instead of one per operation. */
static void FN(sgd_update)(REAL *RESTRICT w, REAL *RESTRICT g, REAL *RESTRICT h, Py_ssize_t lo, Py_ssize_t hi,
                           int scaled, REAL scale, int decayed, REAL decay, REAL momentum, REAL rate)
{
    for (Py_ssize_t i = lo; i < hi; i++) {
        REAL gi = g[i];
        if (scaled)
            gi = gi * scale;
        if (decayed)
            gi = gi + w[i] * decay;
        REAL hv = h[i] * momentum;
        hv = hv + gi * rate;
        h[i] = hv;
        g[i] = hv;
        w[i] = w[i] - hv;
    }
}

/* 1 when every element of x[lo, hi) is finite (v - v is NaN exactly for an infinity or a NaN), else 0. */
static int FN(all_finite)(const REAL *x, Py_ssize_t lo, Py_ssize_t hi)
{
    int bad = 0;
    for (Py_ssize_t i = lo; i < hi; i++) {
        const REAL d = x[i] - x[i];
        bad |= d != d;
    }
    return !bad;
}

#undef FN
#undef FN1
#undef FN2
