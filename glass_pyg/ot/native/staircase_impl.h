/* Factor and solve of the staircase preconditioner, for a real type T of the vectors (see
 * glass_pyg/ot/_laplacian.py): the Laplacian of the plan's couplings between nodes at most
 * STAIR_K apart in staircase order, eliminated in that order. The factor is stored in float
 * (half the memory traffic of the solve, which reads it twice), from weights scaled to at most
 * about 1.
 *
 * Elimination keeps the weights, never a diagonal: node p's pivot is the sum of its remaining
 * weights to later nodes, and eliminating it adds w_pq w_pr / pivot to the weight between
 * q and r (the Schur complement of a Laplacian is the Laplacian of these weights). All terms
 * are positive, so nothing cancels and weak couplings keep their relative accuracy. The
 * ratios w_pq / pivot of a node sum to 1: the solve moves a node's residual on to later
 * nodes whole (its first ratio is kept in T as 1 less the others), since mass lost in the
 * float rounding of the ratios, divided by a weak pivot, would swamp the solution. */

/* Eliminate node p of one slice (weights wl (N, STAIR_K)); see staircase_factor. */
#if !STAIR_AVX512
static inline void FN(factor_node)(float *wl, int64_t N, int64_t p, double floor, double scale, T *fr, T *ip) {
    float *wp = wl + p * STAIR_K;
    const int64_t kk = N - 1 - p < STAIR_K ? N - 1 - p : STAIR_K;
    double piv = 0;
    for (int64_t d = 0; d < kk; ++d) piv += wp[d];
    if (!(piv >= floor) || kk == 0) {
        for (int64_t d = 0; d < STAIR_K; ++d) wp[d] = 0;
        if (kk > 0) wp[0] = 1;
        fr[p] = kk > 0 ? 1 : 0;
        ip[p] = 0;
        return;
    }
    const double inv = 1 / piv;
    float orig[STAIR_K];
    for (int64_t d = 0; d < STAIR_K; ++d) {
        orig[d] = wp[d];
        wp[d] = (float)((double)wp[d] * inv);
    }
    for (int64_t d1 = 0; d1 + 1 < kk; ++d1) {
        const float c = orig[d1];
        if (c == 0) continue;
        float *wq = wl + (p + d1 + 1) * STAIR_K - d1 - 1;  /* wq[d2]: weight to node p + d2 + 1 */
#pragma omp simd
        for (int64_t d2 = d1 + 1; d2 < kk; ++d2) wq[d2] += c * wp[d2];
    }
    T rest = 0;
    for (int64_t d = 1; d < STAIR_K; ++d) rest += (T)wp[d];
    fr[p] = 1 - rest;
    ip[p] = (T)(inv / scale);
}

#endif

/* In place on w (L, N, STAIR_K): row p becomes the ratios w_{p, p+d} / pivot_p, and first[l, p]
 * 1 less the float ratios to nodes p + 2 ...; inv_pivot[l, p] = 1 / (pivot_p scale[l]). A pivot
 * below floor[l] (scaled) is not trusted: the node is tied rigidly to the next (ratio 1 to it,
 * inv_pivot 0: grounded, its diagonal inverse is added in the solve). The last node has no later
 * nodes: its inv_pivot 0 grounds the Laplacian's null space. Slices l0 <= l < l1 (interleaving
 * them node by node, as the solve does, measured slower here). */
void FN(staircase_factor)(int64_t L, int64_t N, int64_t l0, int64_t l1, float *w, const T *floor,
                          const T *scale, T *first, T *inv_pivot) {
    (void)L;
    for (int64_t l = l0; l < l1; ++l) {
#if STAIR_AVX512
        stair_factor_avx512(N, w + l * N * STAIR_K, (double)floor[l], (double)scale[l], first + l * N,
                            inv_pivot + l * N);
#else
        for (int64_t p = 0; p < N; ++p)
            FN(factor_node)(w + l * N * STAIR_K, N, p, (double)floor[l], (double)scale[l], first + l * N,
                            inv_pivot + l * N);
#endif
    }
}

/* x = M^+ y for the factor above: place yr, yc at their staircase positions (z, N + STAIR_K: the
 * tail stays zero, so every node's loops run the full bandwidth), solve forward (unit lower
 * factor), scale by the inverse pivots, solve backward, centre, and add the diagonal inverse at
 * the grounded nodes (inverse pivot 0, the last node apart): xr = x[row_pos] + yr inv_r there (and
 * the columns alike). dot[l] (when
 * not NULL) = <y, x>, summed in double. Slices l0 <= l < l1, interleaved node by node: each
 * slice's substitution is a chain of dependent steps, and independent chains overlap. */
void FN(staircase_precondition)(int64_t L, int64_t n, int64_t m, int64_t l0, int64_t l1,
                                const float *ratio, const T *first, const T *inv_pivot,
                                const int64_t *row_pos, const int64_t *col_pos, const T *yr,
                                const T *yc, const T *inv_r, const T *inv_c, T *z, T *xr, T *xc,
                                T *dot) {
    (void)L;
    const int64_t N = n + m, Z = N + STAIR_K;
    for (int64_t l = l0; l < l1; ++l) {
        T *zl = z + l * Z;
        const int64_t *rp = row_pos + l * n, *cp = col_pos + l * m;
        for (int64_t i = 0; i < n; ++i) zl[rp[i]] = yr[l * n + i];
        for (int64_t j = 0; j < m; ++j) zl[cp[j]] = yc[l * m + j];
        for (int64_t d = 0; d < STAIR_K; ++d) zl[N + d] = 0;
    }
#if STAIR_AVX2
    stair_substitute_avx2(N, Z, l0, l1, ratio, first, inv_pivot, z);
#else
    for (int64_t p = 0; p < N - 1; ++p) {
        for (int64_t l = l0; l < l1; ++l) {
            T *zl = z + l * Z;
            const T zp = zl[p];
            const float *rw = ratio + (l * N + p) * STAIR_K;
            T *zn = zl + p + 1;
            zn[0] += first[l * N + p] * zp;
#pragma omp simd
            for (int64_t d = 1; d < STAIR_K; ++d) zn[d] += (T)rw[d] * zp;
            zl[p] = zp * inv_pivot[l * N + p];
        }
    }
    for (int64_t l = l0; l < l1; ++l) {
        z[l * Z + N - 1] = 0;  /* the last node: grounded */
        for (int64_t d = 0; d < STAIR_K; ++d) z[l * Z + N + d] = 0;
    }
    for (int64_t p = N - 2; p >= 0; --p) {
        for (int64_t l = l0; l < l1; ++l) {
            T *zl = z + l * Z;
            const float *rw = ratio + (l * N + p) * STAIR_K;
            const T *zn = zl + p + 1;
            T s = first[l * N + p] * zn[0];
#pragma omp simd reduction(+:s)
            for (int64_t d = 1; d < STAIR_K; ++d) s += (T)rw[d] * zn[d];
            zl[p] += s;
        }
    }
#endif
    for (int64_t l = l0; l < l1; ++l) {
        T *zl = z + l * Z;
        const T *ip = inv_pivot + l * N;
        const int64_t *rp = row_pos + l * n, *cp = col_pos + l * m;
        T total = 0;
        for (int64_t p = 0; p < N; ++p) total += zl[p];
        const T mean = total / (T)N;
        double d = 0;
        for (int64_t i = 0; i < n; ++i) {
            const T g = ip[rp[i]] == 0 && rp[i] < N - 1 ? yr[l * n + i] * inv_r[l * n + i] : 0;
            const T v = (zl[rp[i]] - mean) + g;
            xr[l * n + i] = v;
            d += (double)yr[l * n + i] * (double)v;
        }
        for (int64_t j = 0; j < m; ++j) {
            const T g = ip[cp[j]] == 0 && cp[j] < N - 1 ? yc[l * m + j] * inv_c[l * m + j] : 0;
            const T v = (zl[cp[j]] - mean) + g;
            xc[l * m + j] = v;
            d += (double)yc[l * m + j] * (double)v;
        }
        if (dot) dot[l] = (T)d;
    }
}
