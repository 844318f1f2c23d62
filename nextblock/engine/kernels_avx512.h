/* AVX-512 VNNI kernels of the int8 engine (included by int8_engine.c when the CPU has
 * avx512f/bw/vl and avx512_vnni): exp, SiLU, activation quantisation, the GEMM tiles and
 * the attention passes, 16 lanes at a time.
 *
 * Activations go in as unsigned bytes (q + 128) so that one vpdpbusd multiplies 64 of them
 * by 64 signed weights; comp = 128 * the group's weight sum undoes the offset, so the int32
 * group sums are those of q . w exactly, as in the AVX2 and portable kernels. */
#include <immintrin.h>

/* exp(x) as 2^n * p(f), |f| <= 1/2, p of degree 7 (relative error about 1e-7): the same
 * operations for every element, so results do not depend on where an element sits. */
static inline __m512 exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504089f));
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, n);
    static const float c[8] = {1.0f, 0.693147180560f, 0.240226506959f, 0.0555041086648f,
                               0.00961812910763f, 0.00133335581464f, 0.000154035303933f,
                               0.0000152527338040f};
    __m512 p = _mm512_set1_ps(c[7]);
    for (int i = 6; i >= 0; i--) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c[i]));
    return _mm512_scalef_ps(p, n);
}

static void silu_mul(const float *g, const float *u, float *out, int n) {
    for (int i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 x = _mm512_maskz_loadu_ps(k, g + i), y = _mm512_maskz_loadu_ps(k, u + i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), x));
        __m512 r = _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
        _mm512_mask_storeu_ps(out + i, k, _mm512_mul_ps(r, y));
    }
}

/* One row to unsigned bytes (q + 128), q = round-half-even(x * 127 / absmax) with one scale
 * per group of 64 inputs, written to sx[k / 64]. */
static void quant_row(const float *x, uint8_t *q, float *sx, int d, int kp) {
    for (int g0 = 0; g0 < kp; g0 += NB_GROUP) {
        __m512 mx = _mm512_setzero_ps();
        for (int i = g0; i < g0 + NB_GROUP; i += 16) {
            __mmask16 k = i >= d ? 0 : d - i >= 16 ? 0xFFFF : (__mmask16)((1u << (d - i)) - 1);
            mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_maskz_loadu_ps(k, x + i)));
        }
        float m = _mm512_reduce_max_ps(mx);
        __m512 inv = _mm512_set1_ps(m > 0.0f ? 127.0f / m : 0.0f);
        for (int i = g0; i < g0 + NB_GROUP; i += 16) {
            __mmask16 k = i >= d ? 0 : d - i >= 16 ? 0xFFFF : (__mmask16)((1u << (d - i)) - 1);
            __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), inv));
            _mm_storeu_si128((__m128i *)(q + i),
                             _mm512_cvtepi32_epi8(_mm512_add_epi32(v, _mm512_set1_epi32(128))));
        }
        sx[g0 / NB_GROUP] = m / 127.0f;
    }
}

/* ---- int8 GEMM tiles -------------------------------------------------------------------- */
#ifndef NB_PF
#define NB_PF 160  /* weight lines prefetched ahead (hardware prefetch stops at pages) */
#endif
/* MR rows x 32 channels; P independent int32 sums per output (latency hiding for few rows;
 * integer addition is exact, so the split changes no bit). */
#define NB_TILE(MR, P)                                                                     \
    static void tile##MR(const QLinear *L, const uint8_t *x, const float *sx, int c,       \
                         float *y, int ldy) {                                              \
        int kg = L->k / 4, ng = L->k / NB_GROUP;                                           \
        __m512 f[MR][2];                                                                   \
        for (int r = 0; r < MR; r++) f[r][0] = f[r][1] = _mm512_setzero_ps();              \
        for (int gi = 0; gi < ng; gi++) {                                                  \
            __m512i a0[MR][P], a1[MR][P];                                                  \
            for (int r = 0; r < MR; r++)                                                   \
                for (int p = 0; p < P; p++) a0[r][p] = a1[r][p] = _mm512_setzero_si512();  \
            const int8_t *w0 = L->w + ((size_t)(2 * c) * kg + gi * 16) * 64;               \
            const int8_t *w1 = w0 + (size_t)kg * 64;                                       \
            const uint8_t *xg = x + gi * NB_GROUP;                                         \
            for (int g = 0; g < 16; g += P)                                                \
                for (int p = 0; p < P; p++) {                                              \
                    _mm_prefetch((const char *)(w0 + (g + p + NB_PF) * 64), _MM_HINT_T0);  \
                    _mm_prefetch((const char *)(w1 + (g + p + NB_PF) * 64), _MM_HINT_T0);  \
                    __m512i v0 = _mm512_loadu_si512(w0 + (g + p) * 64);                    \
                    __m512i v1 = _mm512_loadu_si512(w1 + (g + p) * 64);                    \
                    for (int r = 0; r < MR; r++) {                                         \
                        int32_t a4;                                                        \
                        memcpy(&a4, xg + (size_t)r * L->k + 4 * (g + p), 4);               \
                        __m512i b = _mm512_set1_epi32(a4);                                 \
                        a0[r][p] = _mm512_dpbusd_epi32(a0[r][p], b, v0);                   \
                        a1[r][p] = _mm512_dpbusd_epi32(a1[r][p], b, v1);                   \
                    }                                                                      \
                }                                                                          \
            size_t e0 = ((size_t)(2 * c) * ng + gi) * 16, e1 = e0 + (size_t)ng * 16;       \
            __m512i c0 = _mm512_loadu_si512(L->comp + e0), c1 = _mm512_loadu_si512(L->comp + e1); \
            __m512 s0 = _mm512_loadu_ps(L->scale + e0), s1 = _mm512_loadu_ps(L->scale + e1); \
            for (int r = 0; r < MR; r++) {                                                 \
                for (int p = 1; p < P; p++) {                                              \
                    a0[r][0] = _mm512_add_epi32(a0[r][0], a0[r][p]);                       \
                    a1[r][0] = _mm512_add_epi32(a1[r][0], a1[r][p]);                       \
                }                                                                          \
                __m512 xs = _mm512_set1_ps(sx[(size_t)r * ng + gi]);                       \
                f[r][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(a0[r][0], c0)), \
                                          _mm512_mul_ps(s0, xs), f[r][0]);                 \
                f[r][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(a1[r][0], c1)), \
                                          _mm512_mul_ps(s1, xs), f[r][1]);                 \
            }                                                                              \
        }                                                                                  \
        for (int r = 0; r < MR; r++)                                                       \
            for (int j = 0; j < 2; j++) {                                                  \
                int n0 = c * 32 + j * 16;                                                  \
                __m512 v = f[r][j];                                                        \
                if (L->bias) v = _mm512_add_ps(v, _mm512_loadu_ps(L->bias + n0));          \
                _mm512_storeu_ps(y + (size_t)r * ldy + n0, v);                             \
            }                                                                              \
    }
NB_TILE(1, 4)
NB_TILE(2, 4)
NB_TILE(3, 2)
NB_TILE(4, 2)
NB_TILE(5, 1)
NB_TILE(6, 1)
NB_TILE(7, 1)
NB_TILE(8, 1)
#define NB_MR 8  /* rows per tile */

/* mr <= NB_MR rows of 32-channel chunk c. */
static void gemm_tile(const QLinear *L, const uint8_t *x, const float *sx, int mr, int c,
                      float *y, int ldy) {
    switch (mr) {
    case 1: tile1(L, x, sx, c, y, ldy); break;
    case 2: tile2(L, x, sx, c, y, ldy); break;
    case 3: tile3(L, x, sx, c, y, ldy); break;
    case 4: tile4(L, x, sx, c, y, ldy); break;
    case 5: tile5(L, x, sx, c, y, ldy); break;
    case 6: tile6(L, x, sx, c, y, ldy); break;
    case 7: tile7(L, x, sx, c, y, ldy); break;
    default: tile8(L, x, sx, c, y, ldy); break;
    }
}

/* ---- attention passes, 16 keys a step ------------------------------------------------- */
/* a[l] holds 16 partial sums of key l's score; returns lane l = the sum of a[l] (a fixed
 * tree of unpacks and 128-bit shuffles, the same for every key). */
static inline __m512 sum16x16(__m512 *a) {
    __m512 b[8], c[4];
    for (int k = 0; k < 8; k++)
        b[k] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * k], a[2 * k + 1]),
                             _mm512_unpackhi_ps(a[2 * k], a[2 * k + 1]));
    for (int k = 0; k < 4; k++) {
        __m512d x = _mm512_castps_pd(b[2 * k]), y = _mm512_castps_pd(b[2 * k + 1]);
        c[k] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    __m512 e = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88),
                             _mm512_shuffle_f32x4(c[0], c[1], 0xDD));
    __m512 f = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], 0x88),
                             _mm512_shuffle_f32x4(c[2], c[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(e, f, 0x88), _mm512_shuffle_f32x4(e, f, 0xDD));
}

static inline __mmask16 key_mask(const uint8_t *mk, int j0, int K) {
    __mmask16 in = K - j0 >= 16 ? 0xFFFF : (__mmask16)((1u << (K - j0)) - 1);
    __m128i m = _mm_maskz_loadu_epi8(in, mk + j0);
    return _mm_mask_cmpneq_epi8_mask(in, m, _mm_setzero_si128());
}

/* The value passes of nq queries (nq a constant after inlining, at most 4) over NV vectors a
 * key: o_t = sum_j exp(s_tj - mx_t) v_j / sum_j exp(s_tj - mx_t) over query t's visible keys,
 * in key order, each query's sums exactly as if it were alone; a value vector is loaded once
 * for the group. A key's weight comes from the register of its block (a scalar load of a
 * just-stored vector would stall on store forwarding). */
static inline __attribute__((always_inline)) void value_group(
        const int NV, const int nq, float *const *s, const float *mx, const float *vb,
        const uint8_t *const *mk, int K, float *const *o) {
    const int hd = 16 * NV;
    __m512 ov[4][8];
    float sum[4];
    for (int t = 0; t < nq; t++) {
        sum[t] = 0.0f;
        for (int i = 0; i < NV; i++) ov[t][i] = _mm512_setzero_ps();
    }
    for (int j0 = 0; j0 < K; j0 += 16) {
        __mmask16 m[4], any = 0;
        __m512 p[4];  /* the keys' weights, 0 where hidden (adding 0 changes no sum) */
        for (int t = 0; t < nq; t++) {
            m[t] = key_mask(mk[t], j0, K);
            any |= m[t];
            p[t] = _mm512_maskz_mov_ps(m[t], exp512(_mm512_sub_ps(_mm512_loadu_ps(s[t] + j0),
                                                                _mm512_set1_ps(mx[t]))));
        }
        if (!any) continue;
#pragma GCC unroll 16
        for (int l = 0; l < 16; l++) {
            if (!(any >> l & 1)) continue;
            const float *vp = vb + (size_t)(j0 + l) * hd;
            __m512 v[8];
            __m512i lane = _mm512_set1_epi32(l);
            for (int i = 0; i < NV; i++) v[i] = _mm512_loadu_ps(vp + 16 * i);
            for (int t = 0; t < nq; t++) {  /* a key hidden from query t leaves its sums */
                __mmask16 kt = (__mmask16)(0u - ((m[t] >> l) & 1u));
                __m512 pl = _mm512_permutexvar_ps(lane, p[t]);
                sum[t] += _mm512_cvtss_f32(pl);
                for (int i = 0; i < NV; i++)
                    ov[t][i] = _mm512_mask3_fmadd_ps(pl, v[i], ov[t][i], kt);
            }
        }
    }
    for (int t = 0; t < nq; t++) {
        __m512 inv = _mm512_set1_ps(1.0f / sum[t]);
        for (int i = 0; i < NV; i++) _mm512_storeu_ps(o[t] + 16 * i, _mm512_mul_ps(ov[t][i], inv));
    }
}

/* Key k's 16 partial products with the query (NV vectors), in a fixed order. */
static inline __m512 key_partials(const __m512 *qv, const float *k, const int NV) {
    __m512 a = _mm512_mul_ps(qv[0], _mm512_loadu_ps(k));
    for (int i = 1; i < NV; i++) a = _mm512_fmadd_ps(qv[i], _mm512_loadu_ps(k + 16 * i), a);
    return a;
}

/* The score passes of n queries, key block outer: a block of 16 keys is loaded once, then
 * read from L1 by every query; each query's scores are computed exactly as if alone.
 * s[t][j] = q_t . k_j * scale; mx[t]: query t's largest visible score (-inf: it sees none). */
static inline __attribute__((always_inline)) void score_pass(
        const int NV, int n, const float *const *q, const float *kb, const uint8_t *const *mk,
        int K, float scale, float *const *s, float *mx) {
    const int hd = 16 * NV;
    __m512 mxv[NB_QMAX], acc[16], qv[8];
    for (int t = 0; t < n; t++) mxv[t] = _mm512_set1_ps(-INFINITY);
    for (int j0 = 0; j0 < K; j0 += 16)
        for (int t = 0; t < n; t++) {
            __mmask16 m = key_mask(mk[t], j0, K);
            if (!m) continue;
            for (int i = 0; i < NV; i++) qv[i] = _mm512_loadu_ps(q[t] + 16 * i);
            if (j0 + 16 <= K) {  /* every key of the block: a hidden key's lane is never used */
#pragma GCC unroll 16
                for (int l = 0; l < 16; l++)
                    acc[l] = key_partials(qv, kb + (size_t)(j0 + l) * hd, NV);
            } else {  /* the last block: no key beyond K is read */
                for (int l = 0; l < 16; l++)
                    acc[l] = m >> l & 1 ? key_partials(qv, kb + (size_t)(j0 + l) * hd, NV)
                                        : _mm512_setzero_ps();
            }
            __m512 sc = _mm512_mul_ps(sum16x16(acc), _mm512_set1_ps(scale));
            _mm512_storeu_ps(s[t] + j0, sc);
            mxv[t] = _mm512_mask_max_ps(mxv[t], m, mxv[t], sc);
        }
    for (int t = 0; t < n; t++) mx[t] = _mm512_reduce_max_ps(mxv[t]);
}

/* The value passes of n queries that each see a key, QG at a time (value_group with a
 * constant group size, so the group's sums stay in registers). */
static inline __attribute__((always_inline)) void value_pass(
        const int NV, const int QG, int n, float *const *s, const float *mx, const float *vb,
        const uint8_t *const *mk, int K, float *const *o) {
    for (int q0 = 0; q0 < n; q0 += QG) {
        int nq = n - q0 < QG ? n - q0 : QG;
        if (nq == 4) value_group(NV, 4, s + q0, mx + q0, vb, mk + q0, K, o + q0);
        else if (nq == 3) value_group(NV, 3, s + q0, mx + q0, vb, mk + q0, K, o + q0);
        else if (nq == 2) value_group(NV, 2, s + q0, mx + q0, vb, mk + q0, K, o + q0);
        else value_group(NV, 1, s + q0, mx + q0, vb, mk + q0, K, o + q0);
    }
}

/* Head sizes 64 and 128 (NV = 4, 8 vectors a key; groups of 4 and 2 queries: 16 registers
 * of sums). */
static void scores64(int n, const float *const *q, const float *kb, const uint8_t *const *mk,
                     int K, float scale, float *const *s, float *mx) {
    score_pass(4, n, q, kb, mk, K, scale, s, mx);
}
static void scores128(int n, const float *const *q, const float *kb, const uint8_t *const *mk,
                      int K, float scale, float *const *s, float *mx) {
    score_pass(8, n, q, kb, mk, K, scale, s, mx);
}
static void values64(int n, float *const *s, const float *mx, const float *vb,
                     const uint8_t *const *mk, int K, float *const *o) {
    value_pass(4, 4, n, s, mx, vb, mk, K, o);
}
static void values128(int n, float *const *s, const float *mx, const float *vb,
                      const uint8_t *const *mk, int K, float *const *o) {
    value_pass(8, 2, n, s, mx, vb, mk, K, o);
}
