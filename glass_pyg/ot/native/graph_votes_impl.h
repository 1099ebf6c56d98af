/* Neighbourhood votes of a matching between two graphs, the largest `keep` of every row.
 *
 * With A_s (n x n) and A_t (m x m) symmetric 0/1 adjacencies in CSR and a matching perm
 * (perm[k] the target of source node k, -1 when unmatched), row i of W = A_s Pi A_t^T counts,
 * for every target j, the neighbours k of i whose partner perm[k] is a neighbour of j. Row i
 * is accumulated in a dense counter of length m (reused, so it stays in cache); then the
 * `keep` largest counts are written, ties at the boundary going to the smaller columns, by a
 * histogram of the counts (at most deg(i)). Column indices are int32: A_t's rows are read once per
 * neighbour, and at half the bytes they stay in cache longer. Rows i0 <= i < i1; per-thread workspaces:
 * acc (m, zero on entry and on exit), touched (m + 1: a column is written before it is known to
 * be new), ties (m), hist (max degree of A_s + 2, zero likewise).
 * Outputs (n, keep): out_cols (-1 past the row's entries) and out_vals. */
#include <stdlib.h>

static int cmp_int64(const void *a, const void *b) {
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

void votes_topk(int64_t n, int64_t m, int64_t keep, int64_t i0, int64_t i1, const int64_t *s_ptr,
                const int32_t *s_idx, const int64_t *perm, const int64_t *t_ptr, const int32_t *t_idx,
                int32_t *acc, int64_t *touched, int64_t *ties_buf, int64_t *hist, int64_t *out_cols,
                int32_t *out_vals) {
    (void)n; (void)m;
    for (int64_t i = i0; i < i1; ++i) {
        int64_t cnt = 0, top = 0;
        for (int64_t e = s_ptr[i]; e < s_ptr[i + 1]; ++e) {
            const int64_t j = perm[s_idx[e]];
            if (j < 0) continue;
            for (int64_t f = t_ptr[j]; f < t_ptr[j + 1]; ++f) {  /* branch-free: most columns repeat */
                const int64_t c = t_idx[f];
                touched[cnt] = c;
                cnt += (acc[c]++ == 0);
            }
        }
        int64_t *oc = out_cols + i * keep;
        int32_t *ov = out_vals + i * keep;
        if (cnt <= keep) {
            for (int64_t q = 0; q < cnt; ++q) { oc[q] = touched[q]; ov[q] = acc[touched[q]]; }
            for (int64_t q = cnt; q < keep; ++q) { oc[q] = -1; ov[q] = 0; }
        } else {
            /* the threshold count: the largest v with at least `keep` entries >= v */
            int32_t vmax = 0;
            for (int64_t q = 0; q < cnt; ++q) {
                const int32_t v = acc[touched[q]];
                hist[v] += 1;
                if (v > vmax) vmax = v;
            }
            int64_t above = 0;
            int32_t thr = vmax;
            while (above + hist[thr] < keep) { above += hist[thr]; --thr; }
            int64_t ties = 0;
            for (int64_t q = 0; q < cnt; ++q) {
                const int64_t c = touched[q];
                const int32_t v = acc[c];
                if (v > thr) { oc[top] = c; ov[top] = v; ++top; }
                else if (v == thr) ties_buf[ties++] = c;
            }
            qsort(ties_buf, (size_t)ties, sizeof(int64_t), cmp_int64);
            for (int64_t q = 0; top < keep; ++q, ++top) { oc[top] = ties_buf[q]; ov[top] = thr; }
            for (int32_t v = 0; v <= vmax; ++v) hist[v] = 0;
        }
        for (int64_t q = 0; q < cnt; ++q) acc[touched[q]] = 0;
    }
}
