/* Costs of a band's window pairs for one real type T, from points already in sorted order:
 * out[l, i, k] = c(xs[l, i], xt[l, start[l, i] + k]) with xs (L, n, d), xt (L, m, d);
 * kind 0: the squared Euclidean distance sum_c (x_c - y_c)^2;
 * kind 1: the squared great-circle distance of d = 3 unit vectors, atan2(|x x y|, x . y)^2
 *         (the form that is accurate at every angle). */
void FN(window_costs)(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0, int64_t i1, int64_t d,
                      int64_t kind, const T *xs, const T *xt, const int64_t *start, T *out) {
    for (int64_t l = 0; l < L; ++l) {
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t r = l * n + i;
            const T *x = xs + r * d, *y = xt + (l * m + start[r]) * d;
            T *o = out + r * W;
            if (kind == 1) {
                const T x0 = x[0], x1 = x[1], x2 = x[2];
#pragma omp simd
                for (int64_t k = 0; k < W; ++k) {
                    const T y0 = y[3 * k], y1 = y[3 * k + 1], y2 = y[3 * k + 2];
                    const T c0 = x1 * y2 - x2 * y1, c1 = x2 * y0 - x0 * y2, c2 = x0 * y1 - x1 * y0;
                    const T sq = c0 * c0 + c1 * c1 + c2 * c2;
                    const T t = ATAN2(sq > 0 ? SQRT(sq) : 0, x0 * y0 + x1 * y1 + x2 * y2);
                    o[k] = t * t;
                }
            } else {
                for (int64_t k = 0; k < W; ++k) {
                    const T *yk = y + k * d;
                    T s = 0;
#pragma omp simd reduction(+:s)
                    for (int64_t c = 0; c < d; ++c) {
                        const T e = x[c] - yk[c];
                        s += e * e;
                    }
                    o[k] = s;
                }
            }
        }
    }
}

/* Gradient of sum_l g[l] sum_{i, k} v[l, i, k] out[l, i, k] (window_costs) with respect to the
 * points: gxs[l, i] (L, n, d) for the rows i0 <= i < i1, and added to acc (L, m, d) for the
 * target points. Entries with v = 0 (the window's padding, underflow) add nothing. */
void FN(window_costs_grad)(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0, int64_t i1, int64_t d,
                           int64_t kind, const T *xs, const T *xt, const int64_t *start, const T *v,
                           const T *g, T *gxs, T *acc) {
    for (int64_t l = 0; l < L; ++l) {
        const T gl = g[l];
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t r = l * n + i, j0 = l * m + start[r];
            const T *x = xs + r * d, *y = xt + j0 * d, *vr = v + r * W;
            T *gx = gxs + r * d, *gy = acc + j0 * d;
            if (kind == 1) {
                const T x0 = x[0], x1 = x[1], x2 = x[2];
                T g0[LANES] = {0}, g1[LANES] = {0}, g2[LANES] = {0};
                LANE_LOOP(k, u, 0, W, {
                    const T y0 = y[3 * k], y1 = y[3 * k + 1], y2 = y[3 * k + 2];
                    const T c0 = x1 * y2 - x2 * y1, c1 = x2 * y0 - x0 * y2, c2 = x0 * y1 - x1 * y0;
                    const T sq = c0 * c0 + c1 * c1 + c2 * c2;
                    const T s = sq > 0 ? SQRT(sq) : 0, c = x0 * y0 + x1 * y1 + x2 * y2;
                    const T dt = (T)2 * ATAN2(s, c) * gl * vr[k];
                    const T r2 = s * s + c * c;
                    const T r2s = r2 > 0 ? r2 : (T)1;
                    const T inv = s > 0 ? dt * c / r2s / (s > 0 ? s : (T)1) : (T)0;
                    const T dc = -dt * s / r2s;
                    const T d0 = inv * c0, d1 = inv * c1, d2 = inv * c2;
                    /* cr = x x y: d/dx = y x dcr, d/dy = dcr x x */
                    g0[u] += (y1 * d2 - y2 * d1) + dc * y0;
                    g1[u] += (y2 * d0 - y0 * d2) + dc * y1;
                    g2[u] += (y0 * d1 - y1 * d0) + dc * y2;
                    gy[3 * k] += (d1 * x2 - d2 * x1) + dc * x0;
                    gy[3 * k + 1] += (d2 * x0 - d0 * x2) + dc * x1;
                    gy[3 * k + 2] += (d0 * x1 - d1 * x0) + dc * x2;
                });
                gx[0] = LANE_SUM(g0); gx[1] = LANE_SUM(g1); gx[2] = LANE_SUM(g2);
            } else {
                for (int64_t c = 0; c < d; ++c) gx[c] = 0;
                for (int64_t k = 0; k < W; ++k) {
                    const T w = (T)2 * gl * vr[k];
                    if (w == 0) continue;
                    const T *yk = y + k * d;
                    T *gyk = gy + k * d;
#pragma omp simd
                    for (int64_t c = 0; c < d; ++c) {
                        const T e = w * (x[c] - yk[c]);
                        gx[c] += e;
                        gyk[c] -= e;
                    }
                }
            }
        }
    }
}
