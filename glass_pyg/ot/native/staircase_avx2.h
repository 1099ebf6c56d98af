/* The staircase factor's two substitutions (staircase_impl.h) for float64 vectors with AVX2 and
 * FMA, keeping each slice's STAIR_K pending values in STAIR_K / 4 registers instead of memory.
 *
 * In memory, each node's step reads values that the previous node's step has just written at
 * shifted offsets; the processor cannot forward such stores to the loads, and every node waits
 * for its predecessor's stores to complete. Here the forward substitution carries the
 * contributions still to add to nodes p .. p + STAIR_K - 1 in registers (shifted down one lane per
 * node), the backward one the solved values of nodes p + 2 .. p + STAIR_K + 1; the nearest node,
 * p + 1, is a scalar, so the dependence from one node to the next is one multiply-add. Two slices
 * are interleaved, as in the generic code. Sums are formed in another order than there; the
 * results agree to rounding. */
#include <immintrin.h>

/* [a1, a2, a3, b0]: the four lanes after a, from a and the next register b */
static inline __m256d stair_down(__m256d a, __m256d b) {
    return _mm256_permute4x64_pd(_mm256_blend_pd(a, b, 0x1), _MM_SHUFFLE(0, 3, 2, 1));
}

/* [p3, c0, c1, c2]: the four lanes before c, from c and the previous register p */
static inline __m256d stair_up(__m256d p, __m256d c) {
    return _mm256_permute4x64_pd(_mm256_blend_pd(c, p, 0x8), _MM_SHUFFLE(2, 1, 0, 3));
}

static inline double stair_hsum(__m256d v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

#define STAIR_NV (STAIR_K / 4)  /* registers of four pending values */

typedef struct { __m256d v[STAIR_NV]; double near; } stair_regs;

/* Forward step at node p: z_p = z[p] + pending_p; the pending values of p + 1 .. p + STAIR_K gain
 * ratio * z_p (the first ratio in double); z[p] = z_p / pivot_p. */
static inline void stair_forward_step(stair_regs *a, double *zl, const float *rw, double first, double ip,
                                      int64_t p) {
    const __m256d zero = _mm256_setzero_pd();
    const double zp = zl[p] + _mm256_cvtsd_f64(a->v[0]);
    const __m256d bz = _mm256_set1_pd(zp);
#pragma GCC unroll 16
    for (int k = 0; k < STAIR_NV; ++k) {
        __m256d r = _mm256_cvtps_pd(_mm_loadu_ps(rw + 4 * k));
        if (k == 0) r = _mm256_blend_pd(r, _mm256_set1_pd(first), 0x1);
        const __m256d next = k + 1 < STAIR_NV ? a->v[k + 1] : zero;
        a->v[k] = _mm256_fmadd_pd(bz, r, stair_down(a->v[k], next));
    }
    zl[p] = zp * ip;
}

/* Backward step at node p: z_p += first * z_{p+1} + sum_{d >= 1} ratio_d z_{p+1+d}. The ratios
 * 1 .. STAIR_K - 1 are read from rw + 1 (STAIR_K floats: the last, the next node's first, is
 * masked out). */
static inline void stair_backward_step(stair_regs *w, double *zl, const float *rw, double first, int64_t p) {
    const __m256d zero = _mm256_setzero_pd();
    __m256d s0 = zero, s1 = zero;
#pragma GCC unroll 16
    for (int k = 0; k < STAIR_NV; ++k) {
        __m256d r = _mm256_cvtps_pd(_mm_loadu_ps(rw + 1 + 4 * k));
        if (k + 1 == STAIR_NV) r = _mm256_blend_pd(r, zero, 0x8);
        if (k % 2 == 0) s0 = _mm256_fmadd_pd(r, w->v[k], s0);
        else s1 = _mm256_fmadd_pd(r, w->v[k], s1);
    }
    const double zp = zl[p] + (stair_hsum(_mm256_add_pd(s0, s1)) + first * w->near);
#pragma GCC unroll 16
    for (int k = STAIR_NV - 1; k > 0; --k) w->v[k] = stair_up(w->v[k - 1], w->v[k]);
    w->v[0] = stair_up(_mm256_set1_pd(w->near), w->v[0]);
    w->near = zp;
    zl[p] = zp;
}

/* Both substitutions of slices l0 <= l < l1 (z holds y at the staircase positions, (L, Z)); on
 * return z holds the solve before centring, z[N - 1] = 0 (the grounded last node). */
static void stair_substitute_avx2(int64_t N, int64_t Z, int64_t l0, int64_t l1, const float *ratio,
                                  const double *first, const double *inv_pivot, double *z) {
    for (int64_t l = l0; l < l1; l += 2) {
        const int pair = l + 1 < l1;
        const int64_t m = pair ? l + 1 : l;  /* the second slice of the pair (the first again if none) */
        double *za = z + l * Z, *zb = z + m * Z;
        const float *ra = ratio + l * N * STAIR_K, *rb = ratio + m * N * STAIR_K;
        const double *fa = first + l * N, *fb = first + m * N, *ia = inv_pivot + l * N, *ib = inv_pivot + m * N;
        stair_regs a, b;
        for (int k = 0; k < STAIR_NV; ++k) a.v[k] = _mm256_setzero_pd();
        a.near = 0;
        b = a;
        for (int64_t p = 0; p < N - 1; ++p) {
            stair_forward_step(&a, za, ra + p * STAIR_K, fa[p], ia[p], p);
            if (pair) stair_forward_step(&b, zb, rb + p * STAIR_K, fb[p], ib[p], p);
        }
        za[N - 1] = 0;
        zb[N - 1] = 0;
        stair_regs wa, wb;
        for (int k = 0; k < STAIR_NV; ++k) wa.v[k] = _mm256_setzero_pd();
        wa.near = 0;
        wb = wa;
        for (int64_t p = N - 2; p >= 0; --p) {
            stair_backward_step(&wa, za, ra + p * STAIR_K, fa[p], p);
            if (pair) stair_backward_step(&wb, zb, rb + p * STAIR_K, fb[p], p);
        }
    }
}
