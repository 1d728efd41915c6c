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
                for (int k = 0; k < 4; k++) {
                    Py_ssize_t y = 2 * r - ph + k;
                    if (y < 0 || y >= h) {
                        memset(buf[k], 0, width * sizeof(REAL));
                        continue;
                    }
                    for (Py_ssize_t j = 0; j < width; j++) {
                        Py_ssize_t x = j - pw;
                        buf[k][j] = (x >= 0 && x < w) ? s[y * w + x] : 0;
                    }
                }
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

/* dst (n, C, ho, wo) <- A^T M A (+ bias[c]) for each tile of m (16, C, n, th, tw); outputs beyond ho x wo
 * (odd sizes) are dropped. bias may be NULL. */
static void FN(wino_output)(const REAL *m, Py_ssize_t n, Py_ssize_t c_all, Py_ssize_t th, Py_ssize_t tw,
                            REAL *dst, Py_ssize_t ho, Py_ssize_t wo, const REAL *bias, Py_ssize_t c0,
                            Py_ssize_t c1)
{
    const Py_ssize_t plane = c_all * n * th * tw;
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
                    d[y0 * wo + x0] = s0[0] + s0[1] + s0[2] + b;
                    if (x0 + 1 < wo)
                        d[y0 * wo + x0 + 1] = s0[1] - s0[2] - s0[3] + b;
                    if (second_row) {
                        d[(y0 + 1) * wo + x0] = s1[0] + s1[1] + s1[2] + b;
                        if (x0 + 1 < wo)
                            d[(y0 + 1) * wo + x0 + 1] = s1[1] - s1[2] - s1[3] + b;
                    }
                }
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
static void FN(max_pool_2x2_backward)(const REAL *dy, const unsigned char *mask, Py_ssize_t h, Py_ssize_t w,
                                      REAL *dx, Py_ssize_t p0, Py_ssize_t p1)
{
    const Py_ssize_t ho = h / 2, wo = w / 2;
    for (Py_ssize_t p = p0; p < p1; p++)
        for (Py_ssize_t r = 0; r < ho; r++) {
            REAL *a = dx + (p * h + 2 * r) * w, *b = a + w;
            const REAL *g = dy + (p * ho + r) * wo;
            const unsigned char *mo = mask + (p * ho + r) * wo;
            for (Py_ssize_t q = 0; q < wo; q++) {
                unsigned char k = mo[q];
                REAL v = g[q];
                a[2 * q] = k == 0 ? v : 0;
                a[2 * q + 1] = k == 1 ? v : 0;
                b[2 * q] = k == 2 ? v : 0;
                b[2 * q + 1] = k == 3 ? v : 0;
            }
        }
}

#undef FN
#undef FN1
#undef FN2
