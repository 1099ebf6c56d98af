/* The staircase factor's elimination (staircase_impl.h, factor_node) for float64 vectors with
 * AVX-512, for STAIR_K = 32 (the substitutions take staircase_avx2.h: eight-wide registers measured no
 * faster there, the solve being bound by its reads of the factor).
 *
 * Eliminating node p adds a multiple of its ratios, shifted, to each of the rows after it, and node
 * p + 1 reads its row at once. Done in place in w, the processor cannot forward those shifted
 * stores to the next node's loads, and each node waits for its predecessor's stores. Here the rows
 * lie in a ring where each is loaded and stored whole, at one place (forwarded), and the shift is
 * a lane rotation in registers. The pivot and the ratios are formed in double as there; the
 * updates are fused multiply-adds in float, so the factor agrees with the generic code to float
 * rounding. */
#if STAIR_K != 32
#error "staircase_avx512.h is written for STAIR_K = 32"
#endif
#include <immintrin.h>

/* the sixteen lanes of v in double, as two vectors of eight */
static inline void stair_halves(__m512 v, __m512d *lo, __m512d *hi) {
    *lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    *hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

/* (float)(v * inv) per lane, the product in double */
static inline __m512 stair_scale16(__m512 v, double inv) {
    const __m512d s = _mm512_set1_pd(inv);
    __m512d lo, hi;
    stair_halves(v, &lo, &hi);
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(_mm512_mul_pd(lo, s))),
                              _mm512_cvtpd_ps(_mm512_mul_pd(hi, s)), 1);
}

/* the 32 lanes of a row (lo: 0-15, hi: 16-31) in double, summed */
static inline double stair_sum32(__m512 lo, __m512 hi) {
    __m512d a, b, c, d;
    stair_halves(lo, &a, &b);
    stair_halves(hi, &c, &d);
    return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(a, b), _mm512_add_pd(c, d)));
}

/* lane k - 1 of the row (lo, hi), in all lanes */
#define STAIR_LANE(lo, hi, k) _mm512_permutexvar_ps(_mm512_set1_epi32(((k) - 1) & 15), (k) <= 16 ? (lo) : (hi))
/* lanes k .. 15 of b, then lanes 0 .. k - 1 of a (k constant) */
#define STAIR_ALIGN(a, b, k) _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b), (k)))

/* One slice: w (N, 32) weights in, ratios out; first, inv_pivot (N,) as factor_node. Rows p .. p + 31
 * lie in a ring of 32 rows (row q in slot q mod 32): eliminating node p adds a multiple of its ratios,
 * shifted, to each of the 31 rows after it, every load and store of a row at the same place and size
 * (the processor forwards those), and the next row is read into the slot that node p frees. */
static void stair_factor_avx512(int64_t N, float *w, double floor, double scale, double *first,
                                double *inv_pivot) {
    const __m512 zero = _mm512_setzero_ps();
    __m512 ring[STAIR_K][2] __attribute__((aligned(64)));
    for (int k = 0; k < STAIR_K; ++k) {
        ring[k][0] = k < N ? _mm512_loadu_ps(w + k * STAIR_K) : zero;
        ring[k][1] = k < N ? _mm512_loadu_ps(w + k * STAIR_K + 16) : zero;
    }
    for (int64_t p = 0; p < N; ++p) {
        const int64_t kk = N - 1 - p < STAIR_K ? N - 1 - p : STAIR_K;
        const int slot = (int)(p & (STAIR_K - 1));
        const __m512 vlo = ring[slot][0], vhi = ring[slot][1];
        const double piv = stair_sum32(vlo, vhi);  /* the lanes past the last node hold zeros */
        float *wp = w + p * STAIR_K;
        if (!(piv >= floor) || kk == 0) {
            _mm512_storeu_ps(wp, kk > 0 ? _mm512_mask_mov_ps(zero, 0x1, _mm512_set1_ps(1.0f)) : zero);
            _mm512_storeu_ps(wp + 16, zero);
            first[p] = kk > 0 ? 1 : 0;
            inv_pivot[p] = 0;
        } else {
            const double inv = 1 / piv;
            const __m512 rlo = stair_scale16(vlo, inv), rhi = stair_scale16(vhi, inv);
            _mm512_storeu_ps(wp, rlo);
            _mm512_storeu_ps(wp + 16, rhi);
            /* row p + k gains w_{p, p+k} times the ratios to the nodes after p + k */
#define STAIR_UPDATE(k) do {                                                                        \
                __m512 *q = ring[(slot + (k)) & (STAIR_K - 1)];                                      \
                const __m512 c = STAIR_LANE(vlo, vhi, k);                                            \
                const __m512 slo = (k) < 16 ? STAIR_ALIGN(rhi, rlo, (k) & 15)                        \
                                 : (k) == 16 ? rhi : STAIR_ALIGN(zero, rhi, (k) & 15);               \
                q[0] = _mm512_fmadd_ps(c, slo, q[0]);                                                \
                if ((k) < 16) q[1] = _mm512_fmadd_ps(c, STAIR_ALIGN(zero, rhi, (k) & 15), q[1]);     \
            } while (0)
            STAIR_UPDATE(1); STAIR_UPDATE(2); STAIR_UPDATE(3); STAIR_UPDATE(4); STAIR_UPDATE(5);
            STAIR_UPDATE(6); STAIR_UPDATE(7); STAIR_UPDATE(8); STAIR_UPDATE(9); STAIR_UPDATE(10);
            STAIR_UPDATE(11); STAIR_UPDATE(12); STAIR_UPDATE(13); STAIR_UPDATE(14); STAIR_UPDATE(15);
            STAIR_UPDATE(16); STAIR_UPDATE(17); STAIR_UPDATE(18); STAIR_UPDATE(19); STAIR_UPDATE(20);
            STAIR_UPDATE(21); STAIR_UPDATE(22); STAIR_UPDATE(23); STAIR_UPDATE(24); STAIR_UPDATE(25);
            STAIR_UPDATE(26); STAIR_UPDATE(27); STAIR_UPDATE(28); STAIR_UPDATE(29); STAIR_UPDATE(30);
            STAIR_UPDATE(31);
#undef STAIR_UPDATE
            first[p] = 1 - stair_sum32(_mm512_mask_mov_ps(rlo, 0x1, zero), rhi);
            inv_pivot[p] = inv / scale;
        }
        /* the slot of row p takes row p + 32 */
        ring[slot][0] = p + STAIR_K < N ? _mm512_loadu_ps(w + (p + STAIR_K) * STAIR_K) : zero;
        ring[slot][1] = p + STAIR_K < N ? _mm512_loadu_ps(w + (p + STAIR_K) * STAIR_K + 16) : zero;
    }
}
#undef STAIR_LANE
#undef STAIR_ALIGN

