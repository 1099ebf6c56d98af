/* Kernels over the band for one real type T (see band_kernels.c). */

/* Sum of exp(buf[k]) over k < len, arguments at most fl counting as zeros; buf must hold
 * arguments already clamped to fl or above, in another loop: clamped and exponentiated in one
 * loop, the compiler folds the clamp into a select after exp and evaluates exp on the raw
 * argument, and the vectorised exp leaves its fast path below its underflow point (about 15x
 * slower; every entry of a far-off guess or warm start). */
static inline T FN(exp_sum_clamped)(const T *buf, int64_t len, T fl) {
    T s = 0;
#pragma omp simd reduction(+:s)
    for (int64_t k = 0; k < len; ++k) {
        const T u = buf[k];
        const T e = EXP(u);
        s += u > fl ? e : 0;
    }
    return s;
}

/* Exact log-sum-exp of v_k = xs[k] + th[k] over k in [a, b): running maximum in chunks. */
static T FN(lse_exact)(const T *xs, const T *th, int64_t a, int64_t b) {
    T buf[CHUNK];
    T mx = -INFINITY, s = 0;
    for (int64_t c = a; c < b; c += CHUNK) {
        const int64_t len = b - c < CHUNK ? b - c : CHUNK;
        T cm = -INFINITY;
#pragma omp simd reduction(max:cm)
        for (int64_t k = 0; k < len; ++k) {
            const T v = xs[c + k] + th[c + k];
            buf[k] = v;
            cm = v > cm ? v : cm;
        }
        if (cm > mx) {
            s = s > 0 ? s * EXP(mx - cm) : 0;
            mx = cm;
        }
        if (!(mx > -INFINITY)) continue;
#pragma omp simd
        for (int64_t k = 0; k < len; ++k) {
            const T v = buf[k] - mx;
            buf[k] = v > LO ? v : LO;
        }
        s += FN(exp_sum_clamped)(buf, len, LO);
    }
    return mx > -INFINITY ? mx + LOG(s) : mx;
}

/* sum_k exp(xs[k] + th[k] - sh) over [a, b), arguments clamped to [LO, HI]. */
static inline T FN(shifted_sum)(const T *xs, const T *th, T sh, int64_t a, int64_t b) {
    T buf[CHUNK];
    T s = 0;
    for (int64_t c = a; c < b; c += CHUNK) {
        const int64_t len = b - c < CHUNK ? b - c : CHUNK;
#pragma omp simd
        for (int64_t k = 0; k < len; ++k) {
            T v = (xs[c + k] + th[c + k]) - sh;
            v = v < HI ? v : HI;
            buf[k] = v > LO ? v : LO;
        }
        s += FN(exp_sum_clamped)(buf, len, LO);
    }
    return s;
}

/* Row log-sum-exp: out[l, i] = log sum_{j in extent} exp(x[l, j] + theta[l, i, j - start]).
 * With a shift (a guess of out, e.g. the previous iteration's) a row takes one pass and is
 * redone exactly only when its shifted sum leaves [SAFE_LO, SAFE_HI]. */
void FN(lse_rows)(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0, int64_t i1,
                  const T *x, const int64_t *start, const int64_t *lo, const int64_t *hi,
                  const T *theta, const T *shift, T *out) {
    for (int64_t l = 0; l < L; ++l) {
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t r = l * n + i;
            const T *xs = x + l * m + start[r], *th = theta + r * W;
            int64_t a, b;
            row_extent(start, lo, hi, r, W, &a, &b);
            if (shift) {
                const T s = FN(shifted_sum)(xs, th, shift[r], a, b);
                if (s >= SAFE_LO && s <= SAFE_HI) {
                    out[r] = shift[r] + LOG(s);
                    continue;
                }
            }
            out[r] = FN(lse_exact)(xs, th, a, b);
        }
    }
}

/* Column maxima from the row layout: acc[l, j] = max(acc[l, j], x[l, i] + theta[l, i, j - start]). */
void FN(col_max)(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0, int64_t i1,
                 const T *x, const int64_t *start, const int64_t *lo, const int64_t *hi,
                 const T *theta, T *acc) {
    for (int64_t l = 0; l < L; ++l) {
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t r = l * n + i, j0 = l * m + start[r];
            const T xi = x[r], *th = theta + r * W;
            T *ac = acc + j0;
            int64_t a, b;
            row_extent(start, lo, hi, r, W, &a, &b);
#pragma omp simd
            for (int64_t k = a; k < b; ++k) {
                const T v = xi + th[k];
                ac[k] = v > ac[k] ? v : ac[k];
            }
        }
    }
}

/* Logits out[l, i, k] = max(-((x[l, i] - y[l, j])^2 - fx[l, i] - fy[l, j]) / gamma[l], floor),
 * j = start + k, and floor outside lo <= j <= hi when lo is given; double inputs. The reduced
 * cost is a small difference of large numbers divided by a small gamma, so the row layout and
 * the transposed one (transposed != 0: x, fx are the columns) subtract in the same order,
 * ((s - t)^2 - f) - g, without FMA contraction: both layouts, and torch, hold bitwise the same
 * logit for an entry. */
void FN(band_logits)(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0, int64_t i1,
                     const double *x, const double *y, const double *fx, const double *fy,
                     const double *gamma, const int64_t *start, const int64_t *lo,
                     const int64_t *hi, int64_t transposed, double floor, T *out) {
    for (int64_t l = 0; l < L; ++l) {
        const double g = gamma[l];
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t r = l * n + i, j0 = start[r];
            const double *ys = y + l * m + j0, *fys = fy + l * m + j0;
            const double xi = x[r], fxi = fx[r];
            int64_t a = lo ? lo[r] - j0 : 0, b = lo ? hi[r] - j0 + 1 : W;
            a = a < 0 ? 0 : (a > W ? W : a);
            b = b > W ? W : (b < a ? a : b);
            T *o = out + r * W;
            for (int64_t k = 0; k < a; ++k) o[k] = (T)floor;
#pragma omp simd
            for (int64_t k = a; k < b; ++k) {
                const double d = xi - ys[k];
                const double dd = d * d;
                const double v = transposed ? -((dd - fys[k]) - fxi) / g : -((dd - fxi) - fys[k]) / g;
                o[k] = (T)(v > floor ? v : floor);
            }
            for (int64_t k = b; k < W; ++k) o[k] = (T)floor;
        }
    }
}

/* Path preconditioner: place yr, yc at their staircase positions (z, length N = n + m), solve
 * the path Laplacian with cut weights 1 / inv_cut (N - 1) by two running sums, centre, and add
 * the diagonal part: xr = x[row_pos] + yr * inv_r, xc = x[col_pos] + yc * inv_c. (The inverse
 * cut is a multiplication in the serial running sum, where a division's latency would count.)
 * dot[l] (when not NULL) = <y, x>, summed in double. */
void FN(path_precondition)(int64_t L, int64_t n, int64_t m, const int64_t *row_pos,
                           const int64_t *col_pos, const T *yr, const T *yc, const T *inv_cut,
                           const T *inv_r, const T *inv_c, T *z, T *xr, T *xc, T *dot) {
    const int64_t N = n + m;
    for (int64_t l = 0; l < L; ++l) {
        T *zl = z + l * N;
        const T *cl = inv_cut + l * (N - 1);
        const int64_t *rp = row_pos + l * n, *cp = col_pos + l * m;
        for (int64_t i = 0; i < n; ++i) zl[rp[i]] = yr[l * n + i];
        for (int64_t j = 0; j < m; ++j) zl[cp[j]] = yc[l * m + j];
        T flux = 0, x = 0, total = 0;
        for (int64_t q = 0; q < N; ++q) {
            flux += zl[q];
            zl[q] = x;
            total += x;
            if (q + 1 < N) x -= flux * cl[q];
        }
        const T mean = total / (T)N;
        double d = 0;
        for (int64_t i = 0; i < n; ++i) {
            const T v = (zl[rp[i]] - mean) + yr[l * n + i] * inv_r[l * n + i];
            xr[l * n + i] = v;
            d += (double)yr[l * n + i] * (double)v;
        }
        for (int64_t j = 0; j < m; ++j) {
            const T v = (zl[cp[j]] - mean) + yc[l * m + j] * inv_c[l * m + j];
            xc[l * m + j] = v;
            d += (double)yc[l * m + j] * (double)v;
        }
        if (dot) dot[l] = (T)d;
    }
}

/* Vector work of one conjugate-gradient iteration on the bipartite Laplacian, each a single
 * pass over the row (length n) and column (length m) vectors of every slice, with inner
 * products summed in double:
 * cg_step: x += alpha p, r -= alpha q, dot[l] = <r, r>;
 * cg_direction: p = beta p + z. */
static inline double FN(step_part)(int64_t len, T alpha, T *x, T *r, const T *p, const T *q) {
    double d = 0;
#pragma omp simd reduction(+:d)
    for (int64_t k = 0; k < len; ++k) {
        x[k] += alpha * p[k];
        const T v = r[k] - alpha * q[k];
        r[k] = v;
        d += (double)v * (double)v;
    }
    return d;
}

void FN(cg_step)(int64_t L, int64_t n, int64_t m, const T *alpha, T *xr, T *xc, T *rr, T *rc,
                 const T *pr, const T *pc, const T *qr, const T *qc, T *dot) {
    for (int64_t l = 0; l < L; ++l)
        dot[l] = (T)(FN(step_part)(n, alpha[l], xr + l * n, rr + l * n, pr + l * n, qr + l * n)
                     + FN(step_part)(m, alpha[l], xc + l * m, rc + l * m, pc + l * m, qc + l * m));
}

void FN(cg_direction)(int64_t L, int64_t n, int64_t m, const T *beta, T *pr, T *pc, const T *zr,
                      const T *zc) {
    for (int64_t l = 0; l < L; ++l) {
        const T b = beta[l];
        T *p = pr + l * n;
        const T *z = zr + l * n;
#pragma omp simd
        for (int64_t k = 0; k < n; ++k) p[k] = b * p[k] + z[k];
        p = pc + l * m;
        z = zc + l * m;
#pragma omp simd
        for (int64_t k = 0; k < m; ++k) p[k] = b * p[k] + z[k];
    }
}
