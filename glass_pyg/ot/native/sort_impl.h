/* Stable sort of float rows with their permutation (what torch.sort(stable=True) returns), by a
 * least-significant-digit radix sort on order-preserving integer keys: one pass to count all the
 * digits, then one scatter per byte that is not the same for every entry of the row. Linear in
 * the row length; a comparison sort with an index payload is several times slower at 2^20.
 *
 * The key of x maps the float order onto the unsigned one: negative numbers have every bit
 * flipped, the others the sign bit set. Both zeros take the key of +0 (they compare equal, so
 * their original order is kept, as a comparison sort keeps it). Rows hold no NaN (the callers
 * check for finite scores first). */

static inline uint64_t sort_key_f64(double x) {
    union { double f; uint64_t u; } v = {x == 0 ? 0.0 : x};
    return (v.u >> 63) ? ~v.u : v.u | 0x8000000000000000ull;
}

static inline uint64_t sort_key_f32(float x) {
    union { float f; uint32_t u; } v = {x == 0 ? 0.0f : x};
    return (v.u >> 31) ? (uint32_t)~v.u : v.u | 0x80000000u;
}

/* Rows l0 <= l < l1 of x (L, n), n < 2^32, into out (sorted values) and perm (int64: out[l, i] =
 * x[l, perm[l, i]]); work holds 3 n uint64 for this call's rows (keys twice, indices twice).
 * Byte digits: their 256 counters and write streams stay in the first-level cache; 10 to 16 bit
 * digits (fewer scatters, more buckets) measured no faster at 2^20. */
#define SORT_BITS 8
#define SORT_BUCKETS (1 << SORT_BITS)
#define DEFINE_RADIX_SORT(T, NAME, KEY, KEYBITS)                                               \
void NAME(int64_t L, int64_t n, int64_t l0, int64_t l1, const T *x, T *out, int64_t *perm,    \
          uint64_t *work) {                                                                   \
    (void)L;                                                                                  \
    enum { DIGITS = (KEYBITS + SORT_BITS - 1) / SORT_BITS };                                  \
    uint64_t *key = work, *key2 = work + n;                                                   \
    uint32_t *idx = (uint32_t *)(work + 2 * n), *idx2 = idx + n;                              \
    static __thread int64_t count[DIGITS][SORT_BUCKETS];                                      \
    for (int64_t l = l0; l < l1; ++l) {                                                       \
        const T *xl = x + l * n;                                                              \
        for (int b = 0; b < DIGITS; ++b)                                                      \
            for (int d = 0; d < SORT_BUCKETS; ++d) count[b][d] = 0;                           \
        for (int64_t i = 0; i < n; ++i) {                                                     \
            const uint64_t k = KEY(xl[i]);                                                    \
            key[i] = k;                                                                       \
            idx[i] = (uint32_t)i;                                                             \
            for (int b = 0; b < DIGITS; ++b) ++count[b][(k >> (SORT_BITS * b)) & (SORT_BUCKETS - 1)]; \
        }                                                                                     \
        uint64_t *ks = key, *kd = key2;                                                       \
        uint32_t *is = idx, *id = idx2;                                                       \
        for (int b = 0; b < DIGITS; ++b) {                                                    \
            int64_t *c = count[b];                                                            \
            const int shift = SORT_BITS * b;                                                  \
            if (c[(ks[0] >> shift) & (SORT_BUCKETS - 1)] == n) continue;  /* one digit: in order */ \
            int64_t pos = 0;                                                                  \
            for (int d = 0; d < SORT_BUCKETS; ++d) { const int64_t k = c[d]; c[d] = pos; pos += k; } \
            for (int64_t i = 0; i < n; ++i) {                                                 \
                const uint64_t k = ks[i];                                                     \
                const int64_t p = c[(k >> shift) & (SORT_BUCKETS - 1)]++;                     \
                kd[p] = k;                                                                    \
                id[p] = is[i];                                                                \
            }                                                                                 \
            uint64_t *t = ks; ks = kd; kd = t;                                                \
            uint32_t *u = is; is = id; id = u;                                                \
        }                                                                                     \
        T *ol = out + l * n;                                                                  \
        int64_t *pl = perm + l * n;                                                           \
        for (int64_t i = 0; i < n; ++i) {                                                     \
            pl[i] = (int64_t)is[i];                                                           \
            ol[i] = xl[is[i]];                                                                \
        }                                                                                     \
    }                                                                                         \
}
DEFINE_RADIX_SORT(double, radix_sort_f64, sort_key_f64, 64)
DEFINE_RADIX_SORT(float, radix_sort_f32, sort_key_f32, 32)
