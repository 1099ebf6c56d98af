/* Band kernels of the banded 1-D Sinkhorn solver: one pass per windowed reduction.
 *
 * A band stores, for each of n rows (per slice l of L), W entries that pair
 * row i with the columns start[l, i] .. start[l, i] + W - 1 of a length-m
 * vector. Every function handles the rows i0 <= i < i1 of every slice, so
 * callers can split the rows between threads.
 *
 * Arguments of exp below LO underflow (exp(LO) is about 1e-304 in double and
 * 1e-38 in single precision) and are treated as exact zeros: vectorised exp
 * leaves its fast path for arguments past the underflow point.
 */
#include <math.h>
#include <stdint.h>

#if defined(__GLIBC__)
/* glibc's libmvec provides SIMD variants of exp (linked through libm). */
#pragma omp declare simd notinbranch
double exp(double);
#pragma omp declare simd notinbranch
float expf(float);
#endif

#define CHUNK 512

#define DEFINE_KERNELS(T, SUF, EXP, LOG, LO)                                                 \
/* out[l, i] = log sum_k exp(x[l, start[l, i] + k] + theta[l, i, k]) */                    \
void lse_windows_##SUF(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0, int64_t i1, \
                       const T *x, const int64_t *start, const T *theta, T *out) {           \
    T buf[CHUNK];                                                                            \
    for (int64_t l = 0; l < L; ++l) {                                                       \
        for (int64_t i = i0; i < i1; ++i) {                                                 \
            const T *xs = x + l * m + start[l * n + i];                                      \
            const T *th = theta + (l * n + i) * W;                                           \
            T mx = -INFINITY, s = 0;                                                         \
            for (int64_t c = 0; c < W; c += CHUNK) {                                        \
                const int64_t len = W - c < CHUNK ? W - c : CHUNK;                           \
                T cm = -INFINITY;                                                            \
                _Pragma("omp simd reduction(max:cm)")                                        \
                for (int64_t k = 0; k < len; ++k) {                                          \
                    const T v = xs[c + k] + th[c + k];                                       \
                    buf[k] = v;                                                              \
                    cm = v > cm ? v : cm;                                                    \
                }                                                                            \
                if (cm > mx) {                                                               \
                    s = s > 0 ? s * EXP(mx - cm) : 0;                                        \
                    mx = cm;                                                                 \
                }                                                                            \
                if (!(mx > -INFINITY)) continue;                                             \
                _Pragma("omp simd reduction(+:s)")                                           \
                for (int64_t k = 0; k < len; ++k) {                                          \
                    const T v = buf[k] - mx;                                                 \
                    const T e = EXP(v > (LO) ? v : (LO));                                    \
                    s += v > (LO) ? e : 0;                                                   \
                }                                                                            \
            }                                                                                \
            out[l * n + i] = mx > -INFINITY ? mx + LOG(s) : mx;                              \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
                                                                                             \
/* out[l, i, k] = exp(x[l, i] + y[l, start[l, i] + k] + theta[l, i, k]) */                 \
void exp_windows_##SUF(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0, int64_t i1, \
                       const T *x, const T *y, const int64_t *start, const T *theta,         \
                       T *out) {                                                             \
    for (int64_t l = 0; l < L; ++l) {                                                       \
        for (int64_t i = i0; i < i1; ++i) {                                                 \
            const T *ys = y + l * m + start[l * n + i];                                      \
            const T *th = theta + (l * n + i) * W;                                           \
            T *o = out + (l * n + i) * W;                                                    \
            const T xi = x[l * n + i];                                                       \
            _Pragma("omp simd")                                                              \
            for (int64_t k = 0; k < W; ++k) {                                                \
                const T v = xi + ys[k] + th[k];                                              \
                const T e = EXP(v > (LO) ? v : (LO));                                        \
                o[k] = v > (LO) ? e : 0;                                                     \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
                                                                                             \
/* out[l, i] = sum_k p[l, i, k] * x[l, start[l, i] + k] */                                  \
void window_dot_##SUF(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0, int64_t i1,  \
                      const T *p, const T *x, const int64_t *start, T *out) {                \
    for (int64_t l = 0; l < L; ++l) {                                                       \
        for (int64_t i = i0; i < i1; ++i) {                                                 \
            const T *xs = x + l * m + start[l * n + i];                                      \
            const T *pr = p + (l * n + i) * W;                                               \
            T s = 0;                                                                         \
            _Pragma("omp simd reduction(+:s)")                                               \
            for (int64_t k = 0; k < W; ++k) s += pr[k] * xs[k];                             \
            out[l * n + i] = s;                                                              \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
                                                                                             \
/* out[l, i, k] = max(-((x[l, i] - y[l, j])^2 - fx[l, i] - fy[l, j]) / gamma[l], floor) with  \
 * j = start[l, i] + k, and floor outside lo[l, i] <= j <= hi[l, i] when lo is given.        \
 * Inputs in double whatever the output type. The reduced cost is a small difference of    \
 * large numbers divided by a small gamma, so the row layout and the transposed layout     \
 * (transposed != 0: x, fx are the columns) subtract in the same order, ((s - t)^2 - f) - g, \
 * without FMA contraction: both layouts hold bitwise the same logit for an entry. */       \
void band_logits_##SUF(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0, int64_t i1, \
                       const double *x, const double *y, const double *fx, const double *fy, \
                       const double *gamma, const int64_t *start, const int64_t *lo,         \
                       const int64_t *hi, int64_t transposed, double floor, T *out) {        \
    for (int64_t l = 0; l < L; ++l) {                                                       \
        const double g = gamma[l];                                                           \
        for (int64_t i = i0; i < i1; ++i) {                                                 \
            const int64_t r = l * n + i, j0 = start[r];                                      \
            const double *ys = y + l * m + j0, *fys = fy + l * m + j0;                       \
            const double xi = x[r], fxi = fx[r];                                             \
            const int64_t a = lo ? lo[r] - j0 : 0, b = lo ? hi[r] - j0 : W - 1;              \
            T *o = out + r * W;                                                              \
            _Pragma("omp simd")                                                              \
            for (int64_t k = 0; k < W; ++k) {                                                \
                const double d = xi - ys[k];                                                 \
                const double dd = d * d;                                                     \
                double v = transposed ? -((dd - fys[k]) - fxi) / g : -((dd - fxi) - fys[k]) / g; \
                v = v > floor ? v : floor;                                                   \
                o[k] = (T)(k >= a && k <= b ? v : floor);                                    \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
                                                                                             \
/* Zero the entries of p below tiny (in place) and return the row sums. */                  \
void clean_rows_##SUF(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0, int64_t i1,  \
                      T *p, T tiny, T *sums) {                                               \
    (void)m;                                                                                 \
    for (int64_t l = 0; l < L; ++l) {                                                       \
        for (int64_t i = i0; i < i1; ++i) {                                                 \
            T *pr = p + (l * n + i) * W;                                                     \
            T s = 0;                                                                         \
            _Pragma("omp simd reduction(+:s)")                                               \
            for (int64_t k = 0; k < W; ++k) {                                                \
                const T v = pr[k] < tiny ? 0 : pr[k];                                        \
                pr[k] = v;                                                                   \
                s += v;                                                                      \
            }                                                                                \
            sums[l * n + i] = s;                                                             \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
                                                                                             \
/* Path cut differences: each entry p[l, i, k] (row i, column j = start + k) adds          \
 * p * |pos_r - pos_c| at min(pos_r, pos_c) and subtracts it at max(pos_r, pos_c) of        \
 * diff[l, :] (length n + m, accumulated). Not split between threads. */                   \
void band_cut_diff_##SUF(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0,           \
                         int64_t i1, const T *p, const int64_t *start,                       \
                         const int64_t *row_pos, const int64_t *col_pos, T *diff) {          \
    for (int64_t l = 0; l < L; ++l) {                                                       \
        T *dl = diff + l * (n + m);                                                          \
        for (int64_t i = i0; i < i1; ++i) {                                                 \
            const int64_t r = l * n + i, pr = row_pos[r];                                    \
            const int64_t *pc = col_pos + l * m + start[r];                                  \
            const T *pi = p + r * W;                                                         \
            for (int64_t k = 0; k < W; ++k) {                                                \
                if (pi[k] == 0) continue;                                                    \
                const int64_t a = pr < pc[k] ? pr : pc[k], b = pr < pc[k] ? pc[k] : pr;      \
                const T w = pi[k] * (T)(b - a);                                              \
                dl[a] += w;                                                                  \
                dl[b] -= w;                                                                  \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
                                                                                             \
/* The bipartite products of a band held in row layout, in one pass over p:                \
 * yr[l, i] = sum_k p[l, i, k] xc[l, j] and yc[l, j] += p[l, i, k] xr[l, i], j = start + k.  \
 * yc is accumulated (zero it first); threads need their own yc. */                         \
void band_matvec_##SUF(int64_t L, int64_t n, int64_t m, int64_t W, int64_t i0, int64_t i1, \
                       const T *p, const int64_t *start, const T *xr, const T *xc, T *yr,    \
                       T *yc) {                                                              \
    for (int64_t l = 0; l < L; ++l) {                                                       \
        for (int64_t i = i0; i < i1; ++i) {                                                 \
            const int64_t r = l * n + i, j0 = l * m + start[r];                              \
            const T *pr = p + r * W, *xs = xc + j0;                                          \
            T *ys = yc + j0;                                                                 \
            const T xi = xr[r];                                                              \
            T s = 0;                                                                         \
            _Pragma("omp simd reduction(+:s)")                                               \
            for (int64_t k = 0; k < W; ++k) {                                                \
                s += pr[k] * xs[k];                                                          \
                ys[k] += pr[k] * xi;                                                         \
            }                                                                                \
            yr[r] = s;                                                                       \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
                                                                                             \
/* Path preconditioner: place yr, yc at their staircase positions (z, length N = n + m),   \
 * solve the path Laplacian with cut weights cut (N - 1) by two running sums, centre, and   \
 * add the diagonal part: xr = x[row_pos] + yr * inv_r, xc = x[col_pos] + yc * inv_c. */     \
void path_precondition_##SUF(int64_t L, int64_t n, int64_t m, const int64_t *row_pos,      \
                             const int64_t *col_pos, const T *yr, const T *yc, const T *cut, \
                             const T *inv_r, const T *inv_c, T *z, T *xr, T *xc) {           \
    const int64_t N = n + m;                                                                 \
    for (int64_t l = 0; l < L; ++l) {                                                       \
        T *zl = z + l * N;                                                                   \
        const T *cl = cut + l * (N - 1);                                                     \
        const int64_t *rp = row_pos + l * n, *cp = col_pos + l * m;                          \
        for (int64_t i = 0; i < n; ++i) zl[rp[i]] = yr[l * n + i];                          \
        for (int64_t j = 0; j < m; ++j) zl[cp[j]] = yc[l * m + j];                          \
        T flux = 0, x = 0, total = 0;                                                        \
        for (int64_t q = 0; q < N; ++q) {                                                    \
            flux += zl[q];                                                                   \
            zl[q] = x;                                                                       \
            total += x;                                                                      \
            if (q + 1 < N) x -= flux / cl[q];                                                \
        }                                                                                    \
        const T mean = total / (T)N;                                                         \
        for (int64_t i = 0; i < n; ++i)                                                      \
            xr[l * n + i] = (zl[rp[i]] - mean) + yr[l * n + i] * inv_r[l * n + i];          \
        for (int64_t j = 0; j < m; ++j)                                                      \
            xc[l * m + j] = (zl[cp[j]] - mean) + yc[l * m + j] * inv_c[l * m + j];          \
    }                                                                                        \
}

DEFINE_KERNELS(double, f64, exp, log, -700.0)
DEFINE_KERNELS(float, f32, expf, logf, -87.0f)
