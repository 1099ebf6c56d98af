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
