/* Band kernels of the banded 1-D Sinkhorn solver: one pass per reduction over the band.
 *
 * A band stores, for each of n rows (per slice l of L), W entries that pair row i with
 * the columns j = start[l, i] + k, k < W, of a length-m vector. Row i's entries that
 * belong to the plan are the columns lo[l, i] <= j <= hi[l, i] (its extent, inside the
 * window); kernels that take lo and hi visit only those (NULL lo: the whole window).
 * Every kernel handles the rows i0 <= i < i1 of every slice, so callers split the rows
 * between threads; kernels that accumulate into columns need one accumulator per thread.
 *
 * Arguments of exp below LO underflow and count as exact zeros (vectorised exp leaves
 * its fast path past the underflow point); above HI they are clamped, which only
 * happens when a guessed shift is far off and the caller redoes the row exactly.
 *
 * band_kernels_impl.h holds the kernels once for a real type T; it is included twice, as is
 * sweep_impl.h (a sweep's passes).
 * band_plan_impl.h holds the kernels that write or read the plan, for a compute type T and
 * the plan's storage type P; it is included for (double, double), (double, float) and
 * (float, float).
 */
#include <math.h>
#include <stdint.h>

#if defined(__GLIBC__)
/* glibc's libmvec provides SIMD variants of exp and log (linked through libm). */
#pragma omp declare simd notinbranch
double exp(double);
#pragma omp declare simd notinbranch
float expf(float);
#pragma omp declare simd notinbranch
double log(double);
#pragma omp declare simd notinbranch
float logf(float);
#pragma omp declare simd notinbranch
double atan2(double, double);
#pragma omp declare simd notinbranch
float atan2f(float, float);
#pragma omp declare simd notinbranch
double tanh(double);
#pragma omp declare simd notinbranch
float tanhf(float);
#endif

#define CHUNK 512
/* Sums over a row's extent in LANES partial sums (acc[u]): LANE_LOOP(k, u, a, b, body) runs the body
 * for k in [a, b), LANES entries at a time in vector lanes u, the remainder in lane 0, and
 * LANE_SUM adds the lanes as a tree. An omp simd reduction lowers to an array of lanes that it
 * adds one after the other through memory after the loop: a chain of 16 dependent additions
 * per reduction and row, which cost more than the rows themselves (31 entries on average). */
#define LANES 8
#define LANE_SUM(v) ((((v)[0] + (v)[4]) + ((v)[1] + (v)[5])) + (((v)[2] + (v)[6]) + ((v)[3] + (v)[7])))
#define LANE_LOOP(k, u, a, b, ...) do {                                      \
        int64_t k = (a);                                                     \
        for (; k + LANES <= (b); k += LANES) {                               \
            const int64_t k##_base = k;                                      \
            _Pragma("omp simd")                                              \
            for (int u = 0; u < LANES; ++u) {                                \
                const int64_t k = k##_base + u;                              \
                __VA_ARGS__                                                  \
            }                                                                \
        }                                                                    \
        for (; k < (b); ++k) {                                               \
            const int u = 0;                                                 \
            __VA_ARGS__                                                      \
        }                                                                    \
    } while (0)
/* bandwidth of the staircase preconditioner (a multiple of 8; staircase_avx512.h is written for
 * 32), and the smallest weight (relative to the largest row or column sum) it keeps in its float
 * storage */
#define STAIR_K 32
#define STAIR_MIN 1e-30
#define CHART_MAX_K 32
#define CHART_BLOCK 32

/* First and one-past-last window offsets of row r's extent. */
static inline void row_extent(const int64_t *start, const int64_t *lo, const int64_t *hi, int64_t r,
                              int64_t W, int64_t *a, int64_t *b) {
    if (!lo) { *a = 0; *b = W; return; }
    *a = lo[r] - start[r];
    *b = hi[r] - start[r] + 1;
    if (*a < 0) *a = 0;
    if (*b > W) *b = W;
}

/* Offset of the entry of window offset 0 of row r (extent starting at window offset a) in a
 * padded (offsets NULL) or compact plan. */
static inline int64_t row_base(const int64_t *offsets, int64_t r, int64_t W, int64_t a) {
    return offsets ? offsets[r] - a : r * W;
}


#define T double
#define FN(name) name##_f64
#define EXP exp
#define LOG log
#define SQRT sqrt
#define ATAN2 atan2
#define TANH tanh
#define LO (-700.0)
#define HI 700.0
#define SAFE_LO 1e-250
#define SAFE_HI 1e250
#include "band_kernels_impl.h"
#include "sweep_impl.h"
#include "sphere_chart_impl.h"
#include "window_costs_impl.h"
/* the staircase factor's passes with float64 vectors keep their sliding windows in registers */
#if defined(__AVX2__) && defined(__FMA__)
#define STAIR_AVX2 1
#include "staircase_avx2.h"
#else
#define STAIR_AVX2 0
#endif
#if defined(__AVX512F__) && defined(__AVX512DQ__)
#define STAIR_AVX512 1
#include "staircase_avx512.h"
#else
#define STAIR_AVX512 0
#endif
#include "staircase_impl.h"
#undef STAIR_AVX2
#undef STAIR_AVX512
#define STAIR_AVX2 0
#define STAIR_AVX512 0
#define P double
#define PFN(name) name##_f64
#include "band_plan_impl.h"
#undef P
#undef PFN
/* plans stored in float32 for float64 solves (the Newton operator) */
#define P float
#define PFN(name) name##_f64p32
#include "band_plan_impl.h"
#undef P
#undef PFN
#undef T
#undef FN
#undef EXP
#undef LOG
#undef SQRT
#undef ATAN2
#undef TANH
#undef LO
#undef HI
#undef SAFE_LO
#undef SAFE_HI

#define T float
#define FN(name) name##_f32
#define EXP expf
#define LOG logf
#define SQRT sqrtf
#define ATAN2 atan2f
#define TANH tanhf
#define LO (-87.0f)
#define HI 87.0f
#define SAFE_LO 1e-20f
#define SAFE_HI 1e20f
#include "band_kernels_impl.h"
#include "sweep_impl.h"
#include "sphere_chart_impl.h"
#include "window_costs_impl.h"
#include "staircase_impl.h"
#define P float
#define PFN(name) name##_f32
#include "band_plan_impl.h"
#undef P
#undef PFN

/* searchsorted for sorted queries by one merge: out[l, i] = number of seq[l, :] entries
 * below val[l, i] (right = 0) or at most val[l, i] (right != 0); val non-decreasing. */
#define DEFINE_SORTED_SEARCH(T, NAME)                                                         \
void NAME(int64_t L, int64_t ns, int64_t nv, const T *seq, const T *val, int64_t right,     \
          int64_t *out) {                                                                    \
    for (int64_t l = 0; l < L; ++l) {                                                       \
        const T *sl = seq + l * ns, *vl = val + l * nv;                                      \
        int64_t j = 0;                                                                       \
        for (int64_t i = 0; i < nv; ++i) {                                                   \
            const T v = vl[i];                                                               \
            if (right) while (j < ns && sl[j] <= v) ++j;                                     \
            else while (j < ns && sl[j] < v) ++j;                                            \
            out[l * nv + i] = j;                                                             \
        }                                                                                    \
    }                                                                                        \
}
DEFINE_SORTED_SEARCH(double, sorted_search_f64)
DEFINE_SORTED_SEARCH(int64_t, sorted_search_i64)

/* Band extents: for every row i, the farthest columns from anchor_lo[i] (leftwards) and
 * anchor_hi[i] (rightwards) where
 *     v(i, j) = phi_i + psi_j - ((s_i - t_j)^2 - f0_i - g0_j) / gamma - ca_i - cb_j >= thr,
 * v being unimodal along the row and above thr at the anchors. Galloping search then
 * bisection, from the previous row's end where it lies past the anchor: a few evaluations per
 * row where consecutive ends are near (sorted scores), O(log extent) at most. phi, psi, ca, cb
 * may be NULL (zero). */
static inline double band_value(const double *s, const double *t, const double *f0, const double *g0,
                                double g, const double *phi, const double *psi, const double *ca,
                                const double *cb, int64_t r, int64_t cj) {
    const double d = s[r] - t[cj];
    const double theta = -((d * d - f0[r]) - g0[cj]) / g;
    double v = ((phi ? phi[r] : 0.0) + (psi ? psi[cj] : 0.0)) + theta;
    return v - (ca ? ca[r] : 0.0) - (cb ? cb[cj] : 0.0);
}

void band_extent(int64_t L, int64_t n, int64_t m, const double *s, const double *t, const double *f0,
                 const double *g0, const double *gamma, const double *phi, const double *psi,
                 const double *ca, const double *cb, double thr, const int64_t *anchor_lo,
                 const int64_t *anchor_hi, int64_t *out_lo, int64_t *out_hi) {
    for (int64_t l = 0; l < L; ++l) {
        const double g = gamma[l];
        for (int64_t i = 0; i < n; ++i) {
            const int64_t r = l * n + i;
            for (int side = 0; side < 2; ++side) {
                const int64_t dir = side ? 1 : -1, limit = side ? m - 1 : 0;
                int64_t ok = side ? anchor_hi[r] : anchor_lo[r];  /* pred holds here */
                int64_t step = 1, bad = -1;
                /* the previous row's end, when it lies past the anchor, is a guess within a few
                 * columns: past it when pred holds there, else the end lies between */
                const int64_t guess = i == 0 ? ok : (side ? out_hi[r - 1] : out_lo[r - 1]);
                if ((guess - ok) * dir > 0) {
                    if (band_value(s, t, f0, g0, g, phi, psi, ca, cb, r, l * m + guess) >= thr) ok = guess;
                    else {
                        bad = guess;  /* gallop back towards the anchor, then bisect */
                        while ((bad - ok) * dir > 1) {
                            const int64_t j = (bad - step * dir - ok) * dir > 0 ? bad - step * dir : ok;
                            if (j == ok) break;
                            if (band_value(s, t, f0, g0, g, phi, psi, ca, cb, r, l * m + j) >= thr) { ok = j; break; }
                            bad = j;
                            step *= 2;
                        }
                        step = 1;
                    }
                }
                while (bad < 0 && ok != limit) {  /* gallop */
                    int64_t j = ok + dir * step;
                    if ((side && j > limit) || (!side && j < limit)) j = limit;
                    if (band_value(s, t, f0, g0, g, phi, psi, ca, cb, r, l * m + j) >= thr) {
                        ok = j;
                        step *= 2;
                    } else {
                        bad = j;
                        break;
                    }
                }
                while (bad >= 0 && (bad - ok) * dir > 1) {  /* bisect between ok and bad */
                    const int64_t mid = ok + (bad - ok) / 2;
                    if (band_value(s, t, f0, g0, g, phi, psi, ca, cb, r, l * m + mid) >= thr) ok = mid;
                    else bad = mid;
                }
                if (side) out_hi[r] = ok; else out_lo[r] = ok;
            }
        }
    }
}

/* torch.logaddexp's scalar formula. */
static inline double logaddexp_f64(double a, double b) {
    if (isinf(a) && a == b) return a;
    const double mx = a > b ? a : b;
    return mx + log1p(exp(-fabs(a - b)));
}

/* The reduced cost of each node's staircase link for temperature gamma (the torch route:
 * glass_pyg.ot._band._relaxed_links; the same operations in the same order). Node i of one side
 * (scores x (L, n), cells starting at xs, ending at the next start or 1) links to the other side's
 * cells p = parent[l, i] and q = p + 1 (scores y (L, m), starts ys); out[l, i] is 0 where there is
 * no link. */
void link_relaxation(int64_t L, int64_t n, int64_t m, const double *x, const double *y, const double *xs,
                     const double *ys, const int64_t *parent, const double *gamma, double *out) {
    const double log4 = 1.3862943611198906, log2 = 0.6931471805599453;  /* Python's math.log(4), log(2) */
    for (int64_t l = 0; l < L; ++l) {
        const double g = gamma[l];
        const double *xl = x + l * n, *yl = y + l * m, *xsl = xs + l * n, *ysl = ys + l * m;
        for (int64_t i = 0; i < n; ++i) {
            const int64_t r = l * n + i, p = parent[r], q = p + 1;
            out[r] = 0.0;
            if (i == 0 || p < 0 || q >= m) continue;
            const double x_end = i + 1 < n ? xsl[i + 1] : 1.0, p_end = ysl[q], q_end = q + 1 < m ? ysl[q + 1] : 1.0;
            double eps = p_end - xsl[i];
            eps = eps < 0.0 ? 0.0 : eps;
            const double m1 = xsl[i] - (xsl[i - 1] > ysl[p] ? xsl[i - 1] : ysl[p]);
            const double m2 = (x_end < q_end ? x_end : q_end) - ysl[q];
            if (!(m1 > 0.0) || !(m2 > 0.0)) continue;
            const double gap = 2.0 * (xl[i] - xl[i - 1]) * (yl[q] - yl[p]);
            const double log_e = log(eps) - 0.5 * (log(m1) + log(m2));
            const double log_c = -gap / g;
            const double log_root = 0.5 * logaddexp_f64(2.0 * log_e, log_c + log4);
            const double log_u = logaddexp_f64(log_e, log_root) - log2;
            double v = -g * log_u;
            if (isnan(v) || v == -INFINITY) v = 0.0;
            v = v < 0.0 ? 0.0 : v;
            out[r] = v < 0.5 * gap ? v : 0.5 * gap;
        }
    }
}

/* The band's certificate (glass_pyg.ot._certificate.certify): per slice, the bound on the mass
 * outside the band and whether it holds; log(P_ij / (a_i b_j)) is band_value's. Row i keeps the columns lo..hi; past each edge the
 * first omitted density must not exceed that of the nearest kept column with a strictly smaller
 * (right edge) or larger (left edge) score, and then bounds every omitted entry of the row.
 * first, last, cum (L, m) are scratch. */
void certify_band(int64_t L, int64_t n, int64_t m, const double *s, const double *t, const double *f0,
                  const double *g0, const double *gamma, const double *phi, const double *psi,
                  const double *log_a, const double *log_b, const double *b, const int64_t *lo,
                  const int64_t *hi, int64_t *first, int64_t *last, double *cum, double *bound,
                  int64_t *ok) {
    for (int64_t l = 0; l < L; ++l) {
        const int64_t c0 = l * m;
        const double g = gamma[l];
        double acc = 0.0;
        for (int64_t j = 0; j < m; ++j) {  /* tie groups of the sorted scores, running sums of b */
            first[c0 + j] = j > 0 && t[c0 + j] == t[c0 + j - 1] ? first[c0 + j - 1] : j;
            acc += b[c0 + j];
            cum[c0 + j] = acc;
        }
        for (int64_t j = m - 1; j >= 0; --j)
            last[c0 + j] = j + 1 < m && t[c0 + j] == t[c0 + j + 1] ? last[c0 + j + 1] : j;
        double total = 0.0;
        int64_t holds = 1;
        for (int64_t i = 0; i < n; ++i) {
            const int64_t r = l * n + i, start = lo[r], end = hi[r];
            const double a = exp(log_a[r]);
            if (end < m - 1) {
                const int64_t out = end + 1, in = first[c0 + out] - 1;
                const double d_out = band_value(s, t, f0, g0, g, phi, psi, log_a, log_b, r, c0 + out);
                const double d_in = band_value(s, t, f0, g0, g, phi, psi, log_a, log_b, r, c0 + (in > 0 ? in : 0));
                if (!(d_out <= d_in && in >= start)) holds = 0;
                total += exp(d_out) * a * (cum[c0 + m - 1] - cum[c0 + end]);
            }
            if (start > 0) {
                const int64_t out = start - 1, in = last[c0 + out] + 1;
                const double d_out = band_value(s, t, f0, g0, g, phi, psi, log_a, log_b, r, c0 + out);
                const double d_in = band_value(s, t, f0, g0, g, phi, psi, log_a, log_b, r,
                                                c0 + (in < m - 1 ? in : m - 1));
                if (!(d_out <= d_in && in <= end)) holds = 0;
                total += exp(d_out) * a * (cum[c0 + start] - b[c0 + start]);
            }
        }
        bound[l] = total;
        ok[l] = holds;
    }
}

#include "graph_votes_impl.h"
#include "sort_impl.h"
