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
 * band_kernels_impl.h holds the kernels once for a real type T; it is included twice.
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

#define T double
#define FN(name) name##_f64
#define EXP exp
#define LOG log
#define LO (-700.0)
#define HI 700.0
#define SAFE_LO 1e-250
#define SAFE_HI 1e250
#include "band_kernels_impl.h"
#undef T
#undef FN
#undef EXP
#undef LOG
#undef LO
#undef HI
#undef SAFE_LO
#undef SAFE_HI

#define T float
#define FN(name) name##_f32
#define EXP expf
#define LOG logf
#define LO (-87.0f)
#define HI 87.0f
#define SAFE_LO 1e-20f
#define SAFE_HI 1e20f
#include "band_kernels_impl.h"

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
