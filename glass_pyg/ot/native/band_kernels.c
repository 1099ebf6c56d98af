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
}

DEFINE_KERNELS(double, f64, exp, log, -700.0)
DEFINE_KERNELS(float, f32, expf, logf, -87.0f)
