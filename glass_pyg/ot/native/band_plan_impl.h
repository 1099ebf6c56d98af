/* Kernels that make or read the plan, for a compute type T and a storage type P of the plan
 * (P = T, or P = float with T = double: half the memory traffic; sums stay in T).
 *
 * The plan is either padded, W entries per row (offsets NULL), or compact: row r's extent
 * only, at offsets[r] (the extents' running sum; lo and hi must be given). Within a row the
 * entry of window offset k is then at base[k] with base = p + offsets[r] - a. */

/* Plan entries: out[l, i, k] = exp(x[l, i] + y[l, j] + theta[l, i, k]), j = start + k, on the
 * extent (0 where the argument is at most max(floor, LO)), 0 elsewhere in a padded window;
 * row_sum[l, i] (when not NULL) = the sum of the entries before rounding to P. */
void PFN(exp_rows)(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0, int64_t i1,
                   const T *x, const T *y, const int64_t *start, const int64_t *lo,
                   const int64_t *hi, const int64_t *offsets, const T *theta, T floor, P *out,
                   T *row_sum) {
    const T fl = floor > LO ? floor : LO;
    for (int64_t l = 0; l < L; ++l) {
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t r = l * n + i;
            const T *ys = y + l * m + start[r], *th = theta + r * W;
            const T xi = x[r];
            int64_t a, b;
            row_extent(start, lo, hi, r, W, &a, &b);
            P *o = out + row_base(offsets, r, W, a);
            if (!offsets)
                for (int64_t k = 0; k < a; ++k) o[k] = 0;
            T s = 0, buf[CHUNK];
            for (int64_t c = a; c < b; c += CHUNK) {  /* clamp, then exp: see exp_sum_clamped */
                const int64_t len = b - c < CHUNK ? b - c : CHUNK;
#pragma omp simd
                for (int64_t k = 0; k < len; ++k) {
                    const T v = xi + ys[c + k] + th[c + k];
                    buf[k] = v > fl ? v : fl;
                }
#pragma omp simd reduction(+:s)
                for (int64_t k = 0; k < len; ++k) {
                    const T u = buf[k];
                    const T e = EXP(u);
                    const T pe = u > fl ? e : 0;
                    o[c + k] = (P)pe;
                    s += pe;
                }
            }
            if (!offsets)
                for (int64_t k = b > a ? b : a; k < W; ++k) o[k] = 0;
            if (row_sum) row_sum[r] = s;
        }
    }
}

/* Plan entries from a sweep's kept column exps (see col_sums): out[l, i, k] = keep[l, i, k] c[l, j]
 * scale[l], j = start + k, on the extent (0 where it is at most tiny), 0 elsewhere in a padded window
 * (out_offsets NULL) or compact at out_offsets; row_sum[l, i] and acc[l, j] (each when not NULL)
 * receive and accumulate the row and column sums of the entries before rounding to P. keep is
 * compact at offsets. */
void PFN(kept_plan)(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0, int64_t i1,
                    const T *c, const int64_t *start, const int64_t *lo, const int64_t *hi,
                    const int64_t *offsets, const T *keep, const T *scale, T tiny,
                    const int64_t *out_offsets, P *out, T *row_sum, T *acc) {
    for (int64_t l = 0; l < L; ++l) {
        const T sc = scale[l];
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t r = l * n + i;
            const T *cs = c + l * m + start[r];
            int64_t a, b;
            row_extent(start, lo, hi, r, W, &a, &b);
            const T *kp = keep + offsets[r] - a;
            P *o = out + row_base(out_offsets, r, W, a);
            if (!out_offsets)
                for (int64_t k = 0; k < a; ++k) o[k] = 0;
            T sv[LANES] = {0};
            if (acc) {
                T *ac = acc + l * m + start[r];
                LANE_LOOP(k, u, a, b, {
                    const T v = kp[k] * cs[k] * sc;
                    const T pv = v > tiny ? v : 0;
                    o[k] = (P)pv;
                    sv[u] += pv;
                    ac[k] += pv;
                });
            } else {
                LANE_LOOP(k, u, a, b, {
                    const T v = kp[k] * cs[k] * sc;
                    const T pv = v > tiny ? v : 0;
                    o[k] = (P)pv;
                    sv[u] += pv;
                });
            }
            const T s = LANE_SUM(sv);
            if (!out_offsets)
                for (int64_t k = b > a ? b : a; k < W; ++k) o[k] = 0;
            if (row_sum) row_sum[r] = s;
        }
    }
}

/* Both products of the bipartite Laplacian's off-diagonal block, from the row layout in one
 * pass: yr[l, i] = sum_k p[l, i, k] xc[l, j] and yc[l, j] += p[l, i, k] xr[l, i], j = start + k.
 * yc accumulates. Entries below tiny count as zeros (products with them go subnormal, which is
 * many times slower), so the plan is read as it is, never copied to clean it. */
void PFN(band_matvec)(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0, int64_t i1,
                      const P *p, const int64_t *start, const int64_t *lo, const int64_t *hi,
                      const int64_t *offsets, T tiny, const T *xr, const T *xc, T *yr, T *yc) {
    for (int64_t l = 0; l < L; ++l) {
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t r = l * n + i, j0 = l * m + start[r];
            const T *xs = xc + j0;
            T *ys = yc + j0;
            const T xi = xr[r];
            int64_t a, b;
            row_extent(start, lo, hi, r, W, &a, &b);
            const P *pr = p + row_base(offsets, r, W, a);
            T sv[LANES] = {0};
            LANE_LOOP(k, u, a, b, {
                const T pk = (T)pr[k] >= tiny ? (T)pr[k] : 0;
                sv[u] += pk * xs[k];
                ys[k] += pk * xi;
            });
            yr[r] = LANE_SUM(sv);
        }
    }
}

/* The bipartite Laplacian in difference form, in one pass over the row layout:
 * qr[l, i] = sum_k p (xr_i - xc_j), acc[l, j] -= p (xr_i - xc_j) (j = start + k; columns
 * accumulate), acc[L m + l] += sum p (xr_i - xc_j)^2, the quadratic form. The products
 * diag(sums) x - P x cancel to a small fraction of x when x is smooth along the staircase (the
 * adjoint's solution at large n), and their rounding then stalls CG; the differences do not
 * cancel, and the quadratic form is a sum of squares, never negative. Entries below tiny count
 * as zeros. */
void PFN(band_laplacian)(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0, int64_t i1,
                         const P *p, const int64_t *start, const int64_t *lo, const int64_t *hi,
                         const int64_t *offsets, T tiny, const T *xr, const T *xc, T *qr, T *acc) {
    for (int64_t l = 0; l < L; ++l) {
        double form = 0;
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t r = l * n + i, j0 = l * m + start[r];
            const T *xs = xc + j0;
            T *ys = acc + j0;
            const T xi = xr[r];
            int64_t a, b;
            row_extent(start, lo, hi, r, W, &a, &b);
            const P *pr = p + row_base(offsets, r, W, a);
            T sv[LANES] = {0}, fv[LANES] = {0};
            LANE_LOOP(k, u, a, b, {
                const T pk = (T)pr[k] >= tiny ? (T)pr[k] : 0;
                const T d = xi - xs[k];
                const T e = pk * d;
                sv[u] += e;
                fv[u] += e * d;
                ys[k] -= e;
            });
            qr[r] = LANE_SUM(sv);
            form += LANE_SUM(fv);
        }
        acc[L * m + l] += (T)form;
    }
}

/* Path cut differences: entry (i, j) of p adds p * |pos_i - pos_j| at min(pos_i, pos_j) and
 * subtracts it at max(pos_i, pos_j) of diff[l, :] (length n + m, accumulated); entries below
 * tiny count as zeros. */
void PFN(band_cut_diff)(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0, int64_t i1,
                        const P *p, const int64_t *start, const int64_t *lo, const int64_t *hi,
                        const int64_t *offsets, T tiny, const int64_t *row_pos, const int64_t *col_pos,
                        T *diff) {
    for (int64_t l = 0; l < L; ++l) {
        T *dl = diff + l * (n + m);
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t r = l * n + i, pr = row_pos[r];
            const int64_t *pc = col_pos + l * m + start[r];
            int64_t a, b;
            row_extent(start, lo, hi, r, W, &a, &b);
            const P *pi = p + row_base(offsets, r, W, a);
            T below = 0, above = 0;
            for (int64_t k = a; k < b; ++k) {
                if (pi[k] == 0 || (T)pi[k] < tiny) continue;
                if (pc[k] < pr) {  /* columns before the row on the path */
                    const T w = (T)pi[k] * (T)(pr - pc[k]);
                    dl[pc[k]] += w;
                    below += w;
                } else {
                    const T w = (T)pi[k] * (T)(pc[k] - pr);
                    dl[pc[k]] -= w;
                    above += w;
                }
            }
            dl[pr] += above - below;
        }
    }
}

/* Transport cost per row: out[l, i] = sum_k p[l, i, k] (x[l, i] - y[l, j])^2, j = start + k,
 * over the extent. */
void PFN(row_cost)(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0, int64_t i1,
                   const P *p, const int64_t *start, const int64_t *lo, const int64_t *hi,
                   const int64_t *offsets, const T *x, const T *y, T *out) {
    for (int64_t l = 0; l < L; ++l) {
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t r = l * n + i;
            const T *ys = y + l * m + start[r];
            const T xi = x[r];
            int64_t a, b;
            row_extent(start, lo, hi, r, W, &a, &b);
            const P *pr = p + row_base(offsets, r, W, a);
            T sv[LANES] = {0};
            LANE_LOOP(k, u, a, b, {
                const T d = xi - ys[k];
                sv[u] += (T)pr[k] * (d * d);
            });
            out[r] = LANE_SUM(sv);
        }
    }
}

/* The gradient of sum_l g_l sum_i row_cost[l, i] over a padded plan: gp[l, i, k] = g_l (x_i - y_j)^2 on the
 * whole window, gx[l, i] = sum_k e and acc[l, j] -= e over the extent, e = 2 g_l p (x_i - y_j). */
void PFN(row_cost_grad)(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0, int64_t i1,
                        const P *p, const int64_t *start, const int64_t *lo, const int64_t *hi,
                        const T *x, const T *y, const T *g, P *gp, T *gx, T *acc) {
    for (int64_t l = 0; l < L; ++l) {
        const T gl = g[l];
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t r = l * n + i;
            const T *ys = y + l * m + start[r];
            T *ac = acc + l * m + start[r];
            const T xi = x[r];
            const P *pr = p + r * W;
            P *o = gp + r * W;
#pragma omp simd
            for (int64_t k = 0; k < W; ++k) {
                const T d = xi - ys[k];
                o[k] = (P)(gl * d * d);
            }
            int64_t a, b;
            row_extent(start, lo, hi, r, W, &a, &b);
            T sv[LANES] = {0};
            LANE_LOOP(k, u, a, b, {
                const T e = (T)2 * gl * (T)pr[k] * (xi - ys[k]);
                sv[u] += e;
                ac[k] -= e;
            });
            gx[r] = LANE_SUM(sv);
        }
    }
}

/* Mass of the entries pi[k], a <= k < b, that count: at least tiny (and not 0). */
static inline double PFN(counted_mass)(const P *pi, int64_t a, int64_t b, T tiny) {
    double sv[LANES] = {0};
    LANE_LOOP(k, u, a, b, {
        const double v = (double)pi[k];
        sv[u] += (v != 0 && (T)pi[k] >= tiny) ? v : 0;
    });
    return LANE_SUM(sv);
}

/* Near couplings of the staircase: entry (i, j) of p whose nodes lie 1 <= d <= STAIR_K apart on
 * the staircase (positions row_pos, col_pos) is written, divided by scale[l], to
 * w[l, min(pos_i, pos_j), d - 1] (float w (L, n + m, STAIR_K), zero-initialised by the caller;
 * every pair of nodes is one entry, so rows can be split between threads). Entries below tiny,
 * scaled ones below STAIR_MIN and farther pairs are left out; acc (2 L, per thread)
 * accumulates each slice's total mass and the mass of the farther pairs. A row's column
 * positions increase along its window, so its near entries are one run, found by counting; the
 * far ones on either side are only summed. */
void PFN(staircase_weights)(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0, int64_t i1,
                            const P *p, const int64_t *start, const int64_t *lo, const int64_t *hi,
                            const int64_t *offsets, T tiny, const int64_t *row_pos,
                            const int64_t *col_pos, const T *scale, float *w, T *acc) {
    const int64_t N = n + m;
    for (int64_t l = 0; l < L; ++l) {
        float *wl = w + l * N * STAIR_K;
        const double inv = 1 / (double)scale[l];
        double total = 0, far = 0;
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t r = l * n + i, pr = row_pos[r];
            const int64_t *pc = col_pos + l * m + start[r];
            int64_t a, b;
            row_extent(start, lo, hi, r, W, &a, &b);
            const P *pi = p + row_base(offsets, r, W, a);
            /* [k1, k2): the entries with |pc - pr| <= STAIR_K, counted (branch-free) */
            int64_t c1[LANES] = {0}, c2[LANES] = {0};
            LANE_LOOP(k, u, a, b, {
                c1[u] += pc[k] < pr - STAIR_K;
                c2[u] += pc[k] <= pr + STAIR_K;
            });
            const int64_t k1 = a + LANE_SUM(c1), k2 = a + LANE_SUM(c2);
            const double fr = PFN(counted_mass)(pi, a, k1, tiny) + PFN(counted_mass)(pi, k2, b, tiny);
            /* summed apart, in lanes: a running sum in the loop below chains its adds */
            const double near = PFN(counted_mass)(pi, k1, k2, tiny);
            for (int64_t k = k1; k < k2; ++k) {
                const double v = (double)pi[k];
                const int ok = v != 0 && (T)pi[k] >= tiny;
                const int64_t d = pc[k] > pr ? pc[k] - pr : pr - pc[k];
                const double sv = v * inv;
                /* each slot is one pair's: writing 0 for a pair left out keeps it 0 */
                if (d > 0) wl[(pc[k] < pr ? pc[k] : pr) * STAIR_K + d - 1] = ok && sv >= STAIR_MIN ? (float)sv : 0.0f;
            }
            far += fr;
            total += fr + near;
        }
        acc[2 * l] += (T)total;
        acc[2 * l + 1] += (T)far;
    }
}

/* A padded plan's extents, compact at offsets: out[offsets[r] + k - a] = p[r, k] for a <= k < b,
 * entries below tiny written as 0. */
void PFN(compact_rows)(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0, int64_t i1,
                      const P *p, const int64_t *start, const int64_t *lo, const int64_t *hi,
                      const int64_t *offsets, T tiny, P *out) {
    (void)m;
    for (int64_t l = 0; l < L; ++l) {
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t r = l * n + i;
            int64_t a, b;
            row_extent(start, lo, hi, r, W, &a, &b);
            const P *pr = p + r * W;
            P *o = out + offsets[r] - a;
#pragma omp simd
            for (int64_t k = a; k < b; ++k) o[k] = (T)pr[k] >= tiny ? pr[k] : 0;
        }
    }
}

/* Row and column sums of p * g over the extents (p, g padded (L, n, W), of the plan's type): qr[l, i] = sum_k p g,
 * acc[l, j] += p g (j = start + k). */
void PFN(product_sums)(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0, int64_t i1,
                      const P *p, const P *g, const int64_t *start, const int64_t *lo, const int64_t *hi,
                      T *qr, T *acc) {
    for (int64_t l = 0; l < L; ++l) {
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t r = l * n + i;
            const P *pr = p + r * W, *gr = g + r * W;
            T *ac = acc + l * m + start[r];
            int64_t a, b;
            row_extent(start, lo, hi, r, W, &a, &b);
            T sv[LANES] = {0};
            LANE_LOOP(k, u, a, b, {
                const T w = (T)pr[k] * (T)gr[k];
                sv[u] += w;
                ac[k] += w;
            });
            qr[r] = LANE_SUM(sv);
        }
    }
}

/* The implicit gradient's pass over the band, from the adjoint solution (u, v): on each row's
 * extent d = p (g - u_i - v_j) is the gradient of the logit theta_ij; with theta = -(s_i - t_j)^2 / gamma
 * (reduced by the reference dual, which is constant here) it gives
 *     grad_s[l, i] = -sum_k e,  acc[l, j] += e,  e = 2 d (s_i - t_j) / gamma_l,
 *     acc[L m + l] -= sum_k d theta_ij / gamma_l,
 * theta_ij being the solver's logit exactly as band_logits forms it (from the float64 reference
 * sd, td, f0, g0, gd, floored, rounded to T). acc holds grad_t (L, m), then grad_gamma (L). */
void PFN(implicit_grad)(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0, int64_t i1,
                       const P *p, const P *g, const int64_t *start, const int64_t *lo, const int64_t *hi,
                       const T *u, const T *v, const T *s, const T *t, const T *gamma,
                       const double *sd, const double *td, const double *f0, const double *g0,
                       const double *gd, double floor, T *grad_s, T *acc) {
    for (int64_t l = 0; l < L; ++l) {
        const T gl = gamma[l];
        const double gdl = gd[l];
        double dg = 0;
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t r = l * n + i, j0 = l * m + start[r];
            const P *pr = p + r * W, *gr = g + r * W;
            const T *vs = v + j0, *ts = t + j0;
            const double *tds = td + j0, *g0s = g0 + j0;
            const T ui = u[r], si = s[r];
            const double sdi = sd[r], f0i = f0[r];
            T *ac = acc + j0;
            int64_t a, b;
            row_extent(start, lo, hi, r, W, &a, &b);
            T es[LANES] = {0};
            double ds[LANES] = {0};
            LANE_LOOP(k, u, a, b, {
                const T d = (T)pr[k] * ((T)gr[k] - ui - vs[k]);
                const T e = d * (T)2 * (si - ts[k]) / gl;
                es[u] += e;
                ac[k] += e;
                const double x = sdi - tds[k];
                double th = -((x * x - f0i) - g0s[k]) / gdl;
                th = th > floor ? th : floor;
                ds[u] += (double)d * (double)(T)th;
            });
            grad_s[r] = -LANE_SUM(es);
            dg += LANE_SUM(ds);
        }
        acc[L * m + l] -= (T)(dg / (double)gl);
    }
}
