/* A sweep's passes for one real type T (see band_kernels.c and _sweep.py): the column sums, which
 * keep their exps, from logits read or formed on the fly; the kept exps' row sums; the vector
 * updates. */

/* Exps of a chunk of clamped arguments buf[0, len) into the columns ac (and into kp, when given):
 * arguments at LO count as zeros. */
static inline void FN(chunk_exps)(const T *buf, int64_t len, T *ac, T *kp) {
    if (kp) {
#pragma omp simd
        for (int64_t k = 0; k < len; ++k) {
            const T u = buf[k];
            const T e = EXP(u);
            const T ek = u > LO ? e : 0;
            ac[k] += ek;
            kp[k] = ek;
        }
    } else {
#pragma omp simd
        for (int64_t k = 0; k < len; ++k) {
            const T u = buf[k];
            const T e = EXP(u);
            ac[k] += u > LO ? e : 0;
        }
    }
}

/* Column sums from the row layout: acc[l, j] += sum_i exp(x[l, i] + theta[l, i, j - start] - shift[l, j])
 * (arguments clamped to [LO, HI]); shift is finite. With keep (a compact band at offsets; lo and
 * hi given), each term is also stored there: a sweep's row pass then needs no exp (row_dot). */
void FN(col_sums)(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0, int64_t i1,
                  const T *x, const int64_t *start, const int64_t *lo, const int64_t *hi,
                  const T *theta, const T *shift, const int64_t *offsets, T *keep, T *acc) {
    for (int64_t l = 0; l < L; ++l) {
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t r = l * n + i, j0 = l * m + start[r];
            const T xi = x[r], *th = theta + r * W, *sh = shift + j0;
            T *ac = acc + j0;
            T buf[CHUNK];
            int64_t a, b;
            row_extent(start, lo, hi, r, W, &a, &b);
            T *kp = keep ? keep + offsets[r] - a : 0;
            for (int64_t c = a; c < b; c += CHUNK) {  /* clamp, then exp: see exp_sum_clamped */
                const int64_t len = b - c < CHUNK ? b - c : CHUNK;
#pragma omp simd
                for (int64_t k = 0; k < len; ++k) {
                    T v = (xi + th[c + k]) - sh[c + k];
                    v = v < HI ? v : HI;
                    buf[k] = v > LO ? v : LO;
                }
                FN(chunk_exps)(buf, len, ac + c, kp ? kp + c : 0);
            }
        }
    }
}

/* col_sums with the logits formed on the fly from the float64 reference, exactly as band_logits
 * forms them (theta = max(-((sd_i - td_j)^2 - f0_i) - g0_j) / gd, floor), rounded to T): the pass
 * reads no band-sized input, only writes keep (compact, at offsets; lo and hi required). */
void FN(col_sums_ref)(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0, int64_t i1,
                      const T *x, const int64_t *start, const int64_t *lo, const int64_t *hi,
                      const double *sd, const double *td, const double *f0, const double *g0,
                      const double *gd, double floor, const T *shift, const int64_t *offsets, T *keep,
                      T *acc) {
    for (int64_t l = 0; l < L; ++l) {
        const double g = gd[l];
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t r = l * n + i, j0 = l * m + start[r];
            const T xi = x[r], *sh = shift + j0;
            const double si = sd[r], fi = f0[r], *ts = td + j0, *gs = g0 + j0;
            T *ac = acc + j0;
            T buf[CHUNK];
            int64_t a, b;
            row_extent(start, lo, hi, r, W, &a, &b);
            T *kp = keep ? keep + offsets[r] - a : 0;
            for (int64_t c = a; c < b; c += CHUNK) {
                const int64_t len = b - c < CHUNK ? b - c : CHUNK;
#pragma omp simd
                for (int64_t k = 0; k < len; ++k) {
                    const double d = si - ts[c + k];
                    const double th = -((d * d - fi) - gs[c + k]) / g;
                    T v = (xi + (T)(th > floor ? th : floor)) - sh[c + k];
                    v = v < HI ? v : HI;
                    buf[k] = v > LO ? v : LO;
                }
                FN(chunk_exps)(buf, len, ac + c, kp ? kp + c : 0);
            }
        }
    }
}

/* Row sums of a compact band times a column vector: out[l, i] = sum_j keep[l, i, j] c[l, j] over
 * row i's extent (keep at offsets, as col_sums stores it). */
void FN(row_dot)(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0, int64_t i1,
                 const T *c, const int64_t *start, const int64_t *lo, const int64_t *hi,
                 const int64_t *offsets, const T *keep, T *out) {
    for (int64_t l = 0; l < L; ++l) {
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t r = l * n + i;
            const T *cs = c + l * m + start[r];
            int64_t a, b;
            row_extent(start, lo, hi, r, W, &a, &b);
            const T *kp = keep + offsets[r] - a;
            T sv[LANES] = {0};
            LANE_LOOP(k, u, a, b, { sv[u] += kp[k] * cs[k]; });
            out[r] = LANE_SUM(sv);
        }
    }
}

/* The shift of a sweep's column pass: shift = log_b - psi, 0 where that is not finite. */
void FN(sweep_shift)(int64_t len, const T *log_b, const T *psi, T *shift) {
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
        const T v = log_b[j] - psi[j];
        shift[j] = v - v == 0 ? v : 0;  /* v - v is NaN for infinities and NaNs */
    }
}

/* A sweep's column update from its shifted sums s: psi = log_b - (shift + log s) and the row
 * pass's factors c = exp(log_b) / s; unsafe[0] counts the sums outside [safe_lo, safe_hi]. */
void FN(sweep_cols)(int64_t len, const T *s, const T *shift, const T *log_b, T safe_lo, T safe_hi,
                    T *psi, T *c, int64_t *unsafe) {
    int64_t bad = 0;
#pragma omp simd reduction(+:bad)
    for (int64_t j = 0; j < len; ++j) {
        const T sj = s[j];
        bad += !(sj >= safe_lo && sj <= safe_hi);
        psi[j] = log_b[j] - (shift[j] + LOG(sj));
        c[j] = EXP(log_b[j]) / sj;
    }
    unsafe[0] = bad;
}

/* A sweep's row update from the row marginals r of (phi, psi(phi)): phi_next = phi + (log_a - log r)
 * and, per slice, the relative L1 marginal error err[l] = sum |a - r| / sum a (in double);
 * unsafe[0] counts the marginals outside [safe_lo, safe_hi]. */
void FN(sweep_rows)(int64_t L, int64_t n, const T *r, const T *phi, const T *log_a, T safe_lo, T safe_hi,
                    T *phi_next, T *err, int64_t *unsafe) {
    int64_t bad = 0;
    for (int64_t l = 0; l < L; ++l) {
        double num = 0, den = 0;
#pragma omp simd reduction(+:bad, num, den)
        for (int64_t i = l * n; i < (l + 1) * n; ++i) {
            const T ri = r[i], a = EXP(log_a[i]);
            bad += !(ri >= safe_lo && ri <= safe_hi);
            phi_next[i] = phi[i] + (log_a[i] - LOG(ri));
            num += fabs((double)a - (double)ri);
            den += (double)a;
        }
        err[l] = (T)(num / den);
    }
    unsafe[0] = bad;
}
