/* AVX2 + FMA kernels of the int8 engine (included by int8_engine.c on CPUs with AVX2 but no
 * AVX-512 VNNI: AMD Zen 1-3, many Intel client cores): exp, SiLU, activation quantisation,
 * the GEMM tiles and the attention passes, 8 lanes at a time.
 *
 * Without VNNI, byte products go through vpmaddubsw (unsigned x signed bytes, pairs summed
 * into int16 with saturation) and vpmaddwd (pairs of int16 into int32). Saturation would
 * make the sums inexact, so activations stay signed here (q in [-127, 127], no +128 offset)
 * and the sign trick of llama.cpp's AVX2 kernels is used: |w| * (sign(w) * q) = w * q with
 * |w|, |q| <= 127, so a pair is at most 2 * 127 * 127 < 32767 and nothing saturates. The
 * int32 group sums are q . w exactly, the numbers the VNNI and portable kernels get by
 * subtracting comp, and the epilogue is theirs, so the GEMM gives their bits. */
#include <immintrin.h>

static inline __m256i lanes_below(int n) {  /* lane l set where l < n */
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

/* exp(x) as 2^n * p(f), the AVX-512 kernel's polynomial (2^n built from its exponent bits:
 * n stays in [-126, 127], so the product is the same as scalef's). */
static inline __m256 exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.44269504089f));
    __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_sub_ps(t, n);
    static const float c[8] = {1.0f, 0.693147180560f, 0.240226506959f, 0.0555041086648f,
                               0.00961812910763f, 0.00133335581464f, 0.000154035303933f,
                               0.0000152527338040f};
    __m256 p = _mm256_set1_ps(c[7]);
    for (int i = 6; i >= 0; i--) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c[i]));
    __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(e, 23)));
}

static void silu_mul(const float *g, const float *u, float *out, int n) {
    for (int i = 0; i < n; i += 8) {
        __m256i k = lanes_below(n - i);
        __m256 x = _mm256_maskload_ps(g + i, k), y = _mm256_maskload_ps(u + i, k);
        __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), x));
        __m256 r = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
        _mm256_maskstore_ps(out + i, k, _mm256_mul_ps(r, y));
    }
}

/* One row to signed bytes, q = round-half-even(x * 127 / absmax), one scale per group of 64
 * inputs, written to sx[k / 64] (the other kernels' q, without their +128). */
static void quant_row(const float *x, uint8_t *q, float *sx, int d, int kp) {
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int g0 = 0; g0 < kp; g0 += NB_GROUP) {
        __m256 v[8], mx = _mm256_setzero_ps();
        for (int j = 0; j < 8; j++) {
            v[j] = _mm256_maskload_ps(x + g0 + 8 * j, lanes_below(d - g0 - 8 * j));
            mx = _mm256_max_ps(mx, _mm256_and_ps(v[j], magnitude));
        }
        float m = hmax8(mx);
        __m256 inv = _mm256_set1_ps(m > 0.0f ? 127.0f / m : 0.0f);
        __m256i r[8];
        for (int j = 0; j < 8; j++) r[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], inv));
        for (int j = 0; j < 8; j += 4) {  /* 32 int32 -> 32 bytes in order */
            __m256i lo = _mm256_packs_epi32(r[j], r[j + 1]), hi = _mm256_packs_epi32(r[j + 2], r[j + 3]);
            __m256i b = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(lo, hi), order);
            _mm256_storeu_si256((__m256i *)(q + g0 + 8 * j), b);
        }
        sx[g0 / NB_GROUP] = m / 127.0f;
    }
}

/* ---- int8 GEMM tiles: MR rows x one block of 16 channels ---------------------------------
 * A packed 64-byte line holds 4 inputs of 16 channels: its two halves are channels 0-7 and
 * 8-15. |w| is taken once per line for all rows; each row's 4 bytes are broadcast, given
 * the weights' signs, multiplied and summed into int32 per channel. */
#ifndef NB_PF
#define NB_PF 160  /* weight lines prefetched ahead (hardware prefetch stops at pages) */
#endif
#define NB_TILE(MR)                                                                          \
    static void tile##MR(const QLinear *L, const uint8_t *x, const float *sx, int blk,       \
                         float *y, int ldy) {                                                \
        int kg = L->k / 4, ng = L->k / NB_GROUP;                                             \
        const __m256i ones = _mm256_set1_epi16(1);                                           \
        const int8_t *w = L->w + (size_t)blk * kg * 64;                                      \
        __m256 f[MR][2];                                                                     \
        for (int r = 0; r < MR; r++) f[r][0] = f[r][1] = _mm256_setzero_ps();                \
        for (int gi = 0; gi < ng; gi++) {                                                    \
            __m256i a[MR][2];                                                                \
            for (int r = 0; r < MR; r++) a[r][0] = a[r][1] = _mm256_setzero_si256();         \
            const int8_t *wg = w + (size_t)gi * 16 * 64;                                     \
            const uint8_t *xg = x + gi * NB_GROUP;                                           \
            for (int g = 0; g < 16; g++) {                                                   \
                _mm_prefetch((const char *)(wg + (g + NB_PF) * 64), _MM_HINT_T0);            \
                __m256i w0 = _mm256_loadu_si256((const __m256i *)(wg + g * 64));             \
                __m256i w1 = _mm256_loadu_si256((const __m256i *)(wg + g * 64 + 32));        \
                __m256i u0 = _mm256_sign_epi8(w0, w0), u1 = _mm256_sign_epi8(w1, w1);        \
                for (int r = 0; r < MR; r++) {                                               \
                    int32_t a4;                                                              \
                    memcpy(&a4, xg + (size_t)r * L->k + 4 * g, 4);                           \
                    __m256i b = _mm256_set1_epi32(a4);                                       \
                    a[r][0] = _mm256_add_epi32(a[r][0], _mm256_madd_epi16(                   \
                        _mm256_maddubs_epi16(u0, _mm256_sign_epi8(b, w0)), ones));           \
                    a[r][1] = _mm256_add_epi32(a[r][1], _mm256_madd_epi16(                   \
                        _mm256_maddubs_epi16(u1, _mm256_sign_epi8(b, w1)), ones));           \
                }                                                                            \
            }                                                                                \
            size_t e = ((size_t)blk * ng + gi) * 16;                                         \
            __m256 s0 = _mm256_loadu_ps(L->scale + e), s1 = _mm256_loadu_ps(L->scale + e + 8); \
            for (int r = 0; r < MR; r++) {                                                   \
                __m256 xs = _mm256_set1_ps(sx[(size_t)r * ng + gi]);                         \
                f[r][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a[r][0]), _mm256_mul_ps(s0, xs), \
                                          f[r][0]);                                          \
                f[r][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a[r][1]), _mm256_mul_ps(s1, xs), \
                                          f[r][1]);                                          \
            }                                                                                \
        }                                                                                    \
        for (int r = 0; r < MR; r++)                                                         \
            for (int j = 0; j < 2; j++) {                                                    \
                int n0 = blk * 16 + j * 8;                                                   \
                __m256 v = f[r][j];                                                          \
                if (L->bias) v = _mm256_add_ps(v, _mm256_loadu_ps(L->bias + n0));            \
                _mm256_storeu_ps(y + (size_t)r * ldy + n0, v);                               \
            }                                                                                \
    }
NB_TILE(1)
NB_TILE(2)
NB_TILE(3)
NB_TILE(4)
#define NB_MR 8  /* rows per gemm_tile call: two 4-row passes over a block in L1 */

/* mr <= NB_MR rows of 32-channel chunk c: per 16-channel block, its rows 4 at a time, so a
 * block's weights (at most 24 KB here) are read from memory once and from L1 after. */
static void gemm_tile(const QLinear *L, const uint8_t *x, const float *sx, int mr, int c,
                      float *y, int ldy) {
    int ng = L->k / NB_GROUP;
    for (int blk = 2 * c; blk < 2 * c + 2; blk++)
        for (int r0 = 0; r0 < mr; r0 += 4) {
            const uint8_t *xr = x + (size_t)r0 * L->k;
            const float *sr = sx + (size_t)r0 * ng;
            float *yr = y + (size_t)r0 * ldy;
            switch (mr - r0 < 4 ? mr - r0 : 4) {
            case 1: tile1(L, xr, sr, blk, yr, ldy); break;
            case 2: tile2(L, xr, sr, blk, yr, ldy); break;
            case 3: tile3(L, xr, sr, blk, yr, ldy); break;
            default: tile4(L, xr, sr, blk, yr, ldy); break;
            }
        }
}

/* ---- attention passes, 8 keys a step ---------------------------------------------------- */

/* a[l] holds 8 partial sums of key l's score; returns lane l = their sum, by the same tree
 * for every lane: ((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7)). */
static inline __m256 sum8x8(const __m256 *a) {
    __m256 c0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    __m256 c1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(c0, c1, 0x20), _mm256_permute2f128_ps(c0, c1, 0x31));
}

/* Keys j0 .. j0+7 that are visible (and below K): as a lane mask and as bits. */
static inline __m256 visible8(const uint8_t *mk, int j0, int K, int *bits) {
    uint64_t m8 = 0;
    memcpy(&m8, mk + j0, K - j0 >= 8 ? 8 : (size_t)(K - j0));
    __m256i v = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)m8));
    __m256 vis = _mm256_castsi256_ps(_mm256_cmpgt_epi32(v, _mm256_setzero_si256()));
    *bits = _mm256_movemask_ps(vis);
    return vis;
}

/* The two passes over 8 keys a step, NV = hd / 8 vectors per key. */
#define ATTEND(NV, HD)                                                                       \
    static float score1_##HD(const float *q, const float *kb, const uint8_t *mk, int K,       \
                            float scale, float *s) {                                         \
        const int hd = 8 * NV;                                                                \
        __m256 mxv = _mm256_set1_ps(-INFINITY);                                              \
        for (int j0 = 0; j0 < K; j0 += 8) {                                                   \
            int bits;                                                                         \
            __m256 vis = visible8(mk, j0, K, &bits), acc[8];                                  \
            if (!bits) continue;                                                              \
            for (int l = 0; l < 8; l++) {                                                     \
                acc[l] = _mm256_setzero_ps();                                                 \
                if (bits >> l & 1) {                                                          \
                    const float *k = kb + (size_t)(j0 + l) * hd;                              \
                    for (int i = 0; i < NV; i++)                                              \
                        acc[l] = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * i),                  \
                                                 _mm256_loadu_ps(k + 8 * i), acc[l]);         \
                }                                                                             \
            }                                                                                 \
            __m256 sc = _mm256_mul_ps(sum8x8(acc), _mm256_set1_ps(scale));                    \
            _mm256_storeu_ps(s + j0, sc);                                                     \
            mxv = _mm256_blendv_ps(mxv, _mm256_max_ps(mxv, sc), vis);                         \
        }                                                                                     \
        return hmax8(mxv);                                                                    \
    }                                                                                         \
    static void value1_##HD(float *s, float mx, const float *vb, const uint8_t *mk, int K,    \
                           float *o) {                                                        \
        const int hd = 8 * NV;                                                                \
        __m256 ov[NV];                                                                        \
        float sum = 0.0f;                                                                     \
        for (int i = 0; i < NV; i++) ov[i] = _mm256_setzero_ps();                            \
        for (int j0 = 0; j0 < K; j0 += 8) {                                                   \
            int bits;                                                                         \
            __m256 vis = visible8(mk, j0, K, &bits);                                          \
            if (!bits) continue;                                                              \
            __m256 p = _mm256_and_ps(                                                         \
                vis, exp256(_mm256_sub_ps(_mm256_loadu_ps(s + j0), _mm256_set1_ps(mx))));     \
            _mm256_storeu_ps(s + j0, p);                                                      \
            for (int l = 0; l < 8; l++)                                                       \
                if (bits >> l & 1) {                                                          \
                    sum += s[j0 + l];                                                         \
                    __m256 pl = _mm256_set1_ps(s[j0 + l]);                                    \
                    const float *v = vb + (size_t)(j0 + l) * hd;                              \
                    for (int i = 0; i < NV; i++)                                              \
                        ov[i] = _mm256_fmadd_ps(pl, _mm256_loadu_ps(v + 8 * i), ov[i]);       \
                }                                                                             \
        }                                                                                     \
        __m256 inv = _mm256_set1_ps(1.0f / sum);                                              \
        for (int i = 0; i < NV; i++) _mm256_storeu_ps(o + 8 * i, _mm256_mul_ps(ov[i], inv)); \
    }                                                                                         \
    /* n queries' passes, one after the other (16 registers hold one query's sums) */        \
    static void scores##HD(int n, const float *const *q, const float *kb,                     \
                           const uint8_t *const *mk, int K, float scale, float *const *s,     \
                           float *mx) {                                                       \
        for (int t = 0; t < n; t++) mx[t] = score1_##HD(q[t], kb, mk[t], K, scale, s[t]);    \
    }                                                                                         \
    static void values##HD(int n, float *const *s, const float *mx, const float *vb,          \
                           const uint8_t *const *mk, int K, float *const *o) {                \
        for (int t = 0; t < n; t++) value1_##HD(s[t], mx[t], vb, mk[t], K, o[t]);            \
    }
ATTEND(8, 64)
ATTEND(16, 128)
