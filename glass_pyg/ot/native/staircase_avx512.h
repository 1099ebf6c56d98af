/* The staircase factor's elimination (staircase_impl.h, factor_node) for float64 vectors with
 * AVX-512: the next sixteen nodes' rows of weights, sixteen floats each, stay in registers.
 *
 * Eliminating node p adds a multiple of its ratios, shifted, to each of the fifteen rows after
 * it, and node p + 1 reads its row at once. In memory the processor cannot forward those shifted
 * stores to the next node's loads, and each node waits for its predecessor's stores. Here row
 * p + k is register k: the update is a lane shift and a multiply-add per row, and moving on to the
 * next node renames the registers. The pivot and the ratios are formed in double as there; the
 * updates are fused multiply-adds in float, so the factor agrees with the generic code to float
 * rounding. */
#include <immintrin.h>

/* the sixteen lanes of v in double, as two vectors of eight */
static inline void stair_halves(__m512 v, __m512d *lo, __m512d *hi) {
    *lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    *hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

static inline double stair_sum16(__m512 v) {
    __m512d lo, hi;
    stair_halves(v, &lo, &hi);
    return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
}

/* (float)(v * inv) per lane, the product in double */
static inline __m512 stair_scale16(__m512 v, double inv) {
    const __m512d s = _mm512_set1_pd(inv);
    __m512d lo, hi;
    stair_halves(v, &lo, &hi);
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(_mm512_mul_pd(lo, s))),
                              _mm512_cvtpd_ps(_mm512_mul_pd(hi, s)), 1);
}

/* One slice: w (N, 16) weights in, ratios out; first, inv_pivot (N,) as factor_node. */
static void stair_factor_avx512(int64_t N, float *w, double floor, double scale, double *first,
                                double *inv_pivot) {
    const __m512 zero = _mm512_setzero_ps();
    __m512 v[STAIR_K];
#pragma GCC unroll 16
    for (int k = 0; k < STAIR_K; ++k) v[k] = k < N ? _mm512_loadu_ps(w + k * STAIR_K) : zero;
    for (int64_t p = 0; p < N; ++p) {
        const int64_t kk = N - 1 - p < STAIR_K ? N - 1 - p : STAIR_K;
        const double piv = stair_sum16(v[0]);  /* the lanes past the last node hold zeros */
        float *wp = w + p * STAIR_K;
        if (!(piv >= floor) || kk == 0) {
            _mm512_storeu_ps(wp, kk > 0 ? _mm512_mask_mov_ps(zero, 0x1, _mm512_set1_ps(1.0f)) : zero);
            first[p] = kk > 0 ? 1 : 0;
            inv_pivot[p] = 0;
        } else {
            const double inv = 1 / piv;
            const __m512 r = stair_scale16(v[0], inv);
            _mm512_storeu_ps(wp, r);
            /* row p + k gains w_{p, p+k} times the ratios to the nodes after p + k */
#pragma GCC unroll 16
            for (int k = 1; k < STAIR_K; ++k) {
                const __m512 c = _mm512_permutexvar_ps(_mm512_set1_epi32(k - 1), v[0]);
                const __m512 shifted = _mm512_castsi512_ps(
                    _mm512_alignr_epi32(_mm512_castps_si512(zero), _mm512_castps_si512(r), k));
                v[k] = _mm512_fmadd_ps(c, shifted, v[k]);
            }
            first[p] = 1 - stair_sum16(_mm512_mask_mov_ps(r, 0x1, zero));
            inv_pivot[p] = inv / scale;
        }
#pragma GCC unroll 16
        for (int k = 0; k + 1 < STAIR_K; ++k) v[k] = v[k + 1];
        v[STAIR_K - 1] = p + STAIR_K < N ? _mm512_loadu_ps(w + (p + STAIR_K) * STAIR_K) : zero;
    }
}
