/* Gated chart scores of points on S^2 (glass_pyg.nn.SphereProjection) for one real type T, and
 * their gradient. For a point x, a slice l and its anchors a_k with tangent directions u_k
 * (pair p = l K + k of the (L K, 3) arrays) and gate widths w_p = exp(logw_p):
 *     theta = atan2(|x x a|, x . a),  along = x . u - (x . a)(a . u),
 *     proj_k = R tanh(theta / R) along / |x x a|   (1 or 0 times along where |x x a| <= 1e-12,
 *                                                   by the sign of x . a),
 *     g = softmax_k(-theta_k^2 / (2 w_k^2)),  out[i, l] = sum_k g_k proj_k.
 * Points are taken CHART_BLOCK at a time, coordinates apart, so each (slice, anchor) pair is one
 * vectorised loop over the block's points (atan2, tanh and exp from the vector math library).
 * K is at most CHART_MAX_K. */

/* Per-anchor quantities of a block of nb points for slice l: theta, |x x a|, x . a, along, the
 * factor, tanh(theta / R), the scores proj and the gates g ([k * CHART_BLOCK + j] each); out[j]. */
typedef struct {
    T th[CHART_MAX_K * CHART_BLOCK], s[CHART_MAX_K * CHART_BLOCK], c[CHART_MAX_K * CHART_BLOCK];
    T along[CHART_MAX_K * CHART_BLOCK], fac[CHART_MAX_K * CHART_BLOCK], h[CHART_MAX_K * CHART_BLOCK];
    T proj[CHART_MAX_K * CHART_BLOCK], g[CHART_MAX_K * CHART_BLOCK], out[CHART_BLOCK];
    T x0[CHART_BLOCK], x1[CHART_BLOCK], x2[CHART_BLOCK];
} FN(chart_work);

static void FN(chart_load)(FN(chart_work) *w, const T *x, int64_t i0, int64_t nb) {
    for (int64_t j = 0; j < nb; ++j) {
        w->x0[j] = x[3 * (i0 + j)];
        w->x1[j] = x[3 * (i0 + j) + 1];
        w->x2[j] = x[3 * (i0 + j) + 2];
    }
}

static void FN(chart_block)(FN(chart_work) *w, int64_t nb, const T *a, const T *u, const T *logw, T R,
                            int64_t K) {
    const T *x0 = w->x0, *x1 = w->x1, *x2 = w->x2;
    T mx[CHART_BLOCK], tot[CHART_BLOCK];
    for (int64_t j = 0; j < nb; ++j) { mx[j] = -INFINITY; tot[j] = 0; w->out[j] = 0; }
    for (int64_t k = 0; k < K; ++k) {
        const T a0 = a[3 * k], a1 = a[3 * k + 1], a2 = a[3 * k + 2];
        const T u0 = u[3 * k], u1 = u[3 * k + 1], u2 = u[3 * k + 2];
        const T au = a0 * u0 + a1 * u1 + a2 * u2, wk = EXP(logw[k]), w2 = (T)1 / (wk * wk);
        T *th = w->th + k * CHART_BLOCK, *s = w->s + k * CHART_BLOCK, *c = w->c + k * CHART_BLOCK;
        T *along = w->along + k * CHART_BLOCK, *fac = w->fac + k * CHART_BLOCK, *h = w->h + k * CHART_BLOCK;
        T *proj = w->proj + k * CHART_BLOCK, *z = w->g + k * CHART_BLOCK;
#pragma omp simd
        for (int64_t j = 0; j < nb; ++j) {
            const T c0 = x1[j] * a2 - x2[j] * a1, c1 = x2[j] * a0 - x0[j] * a2, c2 = x0[j] * a1 - x1[j] * a0;
            const T sq = c0 * c0 + c1 * c1 + c2 * c2;
            const T sj = sq > 0 ? SQRT(sq) : 0;
            const T cj = x0[j] * a0 + x1[j] * a1 + x2[j] * a2;
            const T t = ATAN2(sj, cj), hj = TANH(t / R);
            const T al = (x0[j] * u0 + x1[j] * u1 + x2[j] * u2) - cj * au;
            const T f = sj <= (T)1e-12 ? (T)(cj > 0) : R * hj / sj;
            th[j] = t; s[j] = sj; c[j] = cj; h[j] = hj; along[j] = al; fac[j] = f;
            proj[j] = f * al;
            z[j] = (T)-0.5 * t * t * w2;
            mx[j] = z[j] > mx[j] ? z[j] : mx[j];
        }
    }
    for (int64_t k = 0; k < K; ++k) {
        T *z = w->g + k * CHART_BLOCK;
#pragma omp simd
        for (int64_t j = 0; j < nb; ++j) { z[j] = EXP(z[j] - mx[j]); tot[j] += z[j]; }
    }
    for (int64_t k = 0; k < K; ++k) {
        T *g = w->g + k * CHART_BLOCK;
        const T *proj = w->proj + k * CHART_BLOCK;
#pragma omp simd
        for (int64_t j = 0; j < nb; ++j) { g[j] /= tot[j]; w->out[j] += g[j] * proj[j]; }
    }
}

void FN(chart_scores)(int64_t N, int64_t L, int64_t K, int64_t i0, int64_t i1, const T *x, const T *a,
                      const T *u, const T *logw, T R, T *out) {
    (void)N;
    FN(chart_work) work, *w = &work;  /* about 64 KiB at CHART_MAX_K = 32 */
    for (int64_t b = i0; b < i1; b += CHART_BLOCK) {
        const int64_t nb = i1 - b < CHART_BLOCK ? i1 - b : CHART_BLOCK;
        FN(chart_load)(w, x, b, nb);
        for (int64_t l = 0; l < L; ++l) {
            FN(chart_block)(w, nb, a + 3 * l * K, u + 3 * l * K, logw + l * K, R, K);
            for (int64_t j = 0; j < nb; ++j) out[(b + j) * L + l] = w->out[j];
        }
    }
}

/* Gradient of sum_{i, l} G[i, l] out[i, l]: gx[i] (N, 3) for the points i0 <= i < i1 (gx may be
 * NULL), and, added to acc (7 L K values: the anchors' (L K, 3), the directions' (L K, 3), then
 * logw's (L K)), the parameters'. Follows the forward's branches: no gradient through the factor
 * where |x x a| <= 1e-12, none through |x x a| where it is 0. */
void FN(chart_scores_backward)(int64_t N, int64_t L, int64_t K, int64_t i0, int64_t i1, const T *x,
                                  const T *a, const T *u, const T *logw, T R, const T *G, T *gx, T *acc) {
    (void)N;
    const int64_t P = L * K;
    T *ga = acc, *gu = acc + 3 * P, *gw = acc + 6 * P;
    FN(chart_work) work, *w = &work;
    T dx0[CHART_BLOCK], dx1[CHART_BLOCK], dx2[CHART_BLOCK], Gj[CHART_BLOCK];
    for (int64_t b = i0; b < i1; b += CHART_BLOCK) {
        const int64_t nb = i1 - b < CHART_BLOCK ? i1 - b : CHART_BLOCK;
        FN(chart_load)(w, x, b, nb);
        const T *x0 = w->x0, *x1 = w->x1, *x2 = w->x2;
        for (int64_t j = 0; j < nb; ++j) { dx0[j] = 0; dx1[j] = 0; dx2[j] = 0; }
        for (int64_t l = 0; l < L; ++l) {
            FN(chart_block)(w, nb, a + 3 * l * K, u + 3 * l * K, logw + l * K, R, K);
            for (int64_t j = 0; j < nb; ++j) Gj[j] = G[(b + j) * L + l];
            for (int64_t k = 0; k < K; ++k) {
                const int64_t p = l * K + k;
                const T a0 = a[3 * p], a1 = a[3 * p + 1], a2 = a[3 * p + 2];
                const T u0 = u[3 * p], u1 = u[3 * p + 1], u2 = u[3 * p + 2];
                const T au = a0 * u0 + a1 * u1 + a2 * u2, wk = EXP(logw[p]), w2 = (T)1 / (wk * wk);
                const T *th = w->th + k * CHART_BLOCK, *s = w->s + k * CHART_BLOCK, *c = w->c + k * CHART_BLOCK;
                const T *along = w->along + k * CHART_BLOCK, *fac = w->fac + k * CHART_BLOCK;
                const T *h = w->h + k * CHART_BLOCK, *proj = w->proj + k * CHART_BLOCK;
                const T *g = w->g + k * CHART_BLOCK, *out = w->out;
                T ga0 = 0, ga1 = 0, ga2 = 0, gu0 = 0, gu1 = 0, gu2 = 0, gwk = 0;
#pragma omp simd reduction(+:ga0, ga1, ga2, gu0, gu1, gu2, gwk)
                for (int64_t j = 0; j < nb; ++j) {
                    const T t = th[j], sj = s[j], cj = c[j];
                    const T dproj = Gj[j] * g[j];
                    const T dz = dproj * (proj[j] - out[j]);
                    T dth = -dz * t * w2;
                    gwk += dz * t * t * w2;
                    const T dfac = dproj * along[j], dalong = dproj * fac[j];
                    const int tiny = sj <= (T)1e-12;
                    const T sd = tiny ? (T)1 : sj;
                    dth += tiny ? (T)0 : dfac * ((T)1 - h[j] * h[j]) / sd;
                    T ds = tiny ? (T)0 : -dfac * R * h[j] / (sd * sd);
                    const T r2 = sj * sj + cj * cj;
                    ds += dth * cj / r2;
                    const T dc = -dth * sj / r2 - dalong * au;
                    const T dxu = dalong, dau = -dalong * cj;
                    const T inv = sj > 0 ? ds / (sj > 0 ? sj : (T)1) : (T)0;
                    const T c0 = x1[j] * a2 - x2[j] * a1, c1 = x2[j] * a0 - x0[j] * a2, c2 = x0[j] * a1 - x1[j] * a0;
                    const T d0 = inv * c0, d1 = inv * c1, d2 = inv * c2;
                    /* cr = x x a: d/dx = a x dcr, d/da = dcr x x */
                    dx0[j] += (a1 * d2 - a2 * d1) + dc * a0 + dxu * u0;
                    dx1[j] += (a2 * d0 - a0 * d2) + dc * a1 + dxu * u1;
                    dx2[j] += (a0 * d1 - a1 * d0) + dc * a2 + dxu * u2;
                    ga0 += (d1 * x2[j] - d2 * x1[j]) + dc * x0[j] + dau * u0;
                    ga1 += (d2 * x0[j] - d0 * x2[j]) + dc * x1[j] + dau * u1;
                    ga2 += (d0 * x1[j] - d1 * x0[j]) + dc * x2[j] + dau * u2;
                    gu0 += dxu * x0[j] + dau * a0;
                    gu1 += dxu * x1[j] + dau * a1;
                    gu2 += dxu * x2[j] + dau * a2;
                }
                ga[3 * p] += ga0; ga[3 * p + 1] += ga1; ga[3 * p + 2] += ga2;
                gu[3 * p] += gu0; gu[3 * p + 1] += gu1; gu[3 * p + 2] += gu2;
                gw[p] += gwk;
            }
        }
        if (gx)
            for (int64_t j = 0; j < nb; ++j) {
                gx[3 * (b + j)] = dx0[j];
                gx[3 * (b + j) + 1] = dx1[j];
                gx[3 * (b + j) + 2] = dx2[j];
            }
    }
}
