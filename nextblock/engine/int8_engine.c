/* nextblock's int8 CPU engine: the decoder layers of a Llama-family model in one call.
 *
 * Built by nextblock/engine/build.py (gcc -O3 -fopenmp and the CPU's vector extensions),
 * driven through ctypes by nextblock/engine/int8.py. Why our own C and not torch ops: a
 * decode forward of a 135M model is ~900 small torch ops (39 ms of dispatch per forward
 * measured here), fbgemm quantises activations per tensor (a token's output would depend on
 * its neighbours), and no torch CPU kernel reads each int8 weight once for several rows.
 *
 * Row independence (what makes verified decoding exact): every row's numbers depend on that
 * row alone. Activations are quantised per row; products are summed in int32 (exact, in any
 * order); norms, RoPE, attention and the epilogue are computed one row at a time in a fixed
 * order. So a T-token pass gives bit for bit the rows of T one-token passes.
 *
 * Weights and activations are int8 with one scale per group of 64 inputs (per output channel
 * for weights, per row for activations; as llama.cpp's Q8_0: per-row scales alone cost 1.5%
 * of held-out loss here, groups 0.2%). Weights are packed in blocks of 16 output channels,
 * each [K/4][16][4] bytes: one 64-byte line holds 4 inputs of 16 channels.
 *
 * This file is the model: layers, attention, the head. The vector kernels (GEMM tiles, the
 * attention passes, exp, quantisation) come from one header per instruction set, chosen at
 * compile time: kernels_avx512.h (AVX-512 VNNI), kernels_avx2.h (AVX2 + FMA), else
 * kernels_portable.h (plain C). All three give the same int32 sums and the same GEMM bits.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>
#define NB_GROUP 64  /* inputs per quantisation group (weights and activations) */


typedef struct {
    int n, k;               /* n: padded to a multiple of 32; k: to a multiple of 64 */
    const int8_t *w;        /* packed, n/16 blocks of [k/4][16][4] */
    const float *scale;     /* [n/16][k/64][16] weight scale per output channel and group */
    const int32_t *comp;    /* [n/16][k/64][16] 128 * sum of the group's weights */
    const float *bias;      /* [n] or NULL */
} QLinear;

typedef struct {
    QLinear qkv, o, gate_up, down;
    const float *ln1, *ln2, *q_norm, *k_norm;   /* q_norm / k_norm: Qwen3, else NULL */
    int q_off, k_off, v_off, up_off;            /* column offsets inside the fused outputs */
} Layer;

typedef struct {
    int n_layers, d, n_heads, n_kv, hd, ffn;
    float eps, attn_scale;
    const Layer *layers;
    const float *norm;
    QLinear head;
} Model;

#if defined(__AVX512F__) && defined(__AVX512VNNI__)
#define NB_ISA 2
#elif defined(__AVX2__) && defined(__FMA__)
#define NB_ISA 1
#else
#define NB_ISA 0
#endif
#define NB_QCHUNK 4  /* queries of one row per attention work item */
#define NB_MAXG 16   /* query heads per key/value head the engine supports (GQA) */
#define NB_QMAX (NB_QCHUNK * NB_MAXG)  /* query vectors per attention work item */

/* Which kernels this build has: 2 AVX-512 VNNI, 1 AVX2 + FMA, 0 portable C. */
int nb_isa(void) { return NB_ISA; }

/* Phase timing, compiled in only with -DNB_PROFILE (bench/engine_phases.py): thread 0 adds
 * the wall time since the last mark to a phase's total. A mark follows a loop's implicit
 * barrier, so it measures the phase across both threads; a `nowait` loop's time lands in
 * the next marked phase. */
enum { PH_NORM_QUANT_QKV, PH_QKV, PH_ROPE, PH_ATTN, PH_QUANT_O, PH_O, PH_NORM_QUANT_UP,
       PH_GATE_UP, PH_SILU_QUANT_DOWN, PH_DOWN, PH_HEAD_NORM_QUANT, PH_HEAD, PH_COUNT };
#ifdef NB_PROFILE
static double nb_prof[PH_COUNT], nb_last;
#define MARK(ph)                                                                  \
    do {                                                                          \
        if (omp_get_thread_num() == 0) {                                          \
            double t_ = omp_get_wtime();                                          \
            nb_prof[ph] += t_ - nb_last;                                          \
            nb_last = t_;                                                         \
        }                                                                         \
    } while (0)
#define MARK_START() (nb_last = omp_get_wtime())
/* The totals in seconds so far (PH_COUNT of them), then zeroed; 0 if not compiled in. */
int nb_phases(double *out) {
    for (int i = 0; i < PH_COUNT; i++) out[i] = nb_prof[i], nb_prof[i] = 0.0;
    return PH_COUNT;
}
#else
#define MARK(ph) ((void)0)
#define MARK_START() ((void)0)
int nb_phases(double *out) { (void)out; return 0; }
#endif

/* ---- row-wise helpers (fixed reduction order) -------------------------------------- */

static float dot16(const float *a, const float *b, int n) {
    float acc[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++) acc[l] += a[i + l] * b[i + l];
    for (int l = 0; i < n; i++, l++) acc[l & 15] += a[i] * b[i];
    for (int s = 8; s > 0; s >>= 1)
        for (int l = 0; l < s; l++) acc[l] += acc[l + s];
    return acc[0];
}

static void rmsnorm(const float *x, const float *w, float *y, int d, float eps) {
    float r = 1.0f / sqrtf(dot16(x, x, d) / (float)d + eps);
    for (int i = 0; i < d; i++) y[i] = w[i] * (x[i] * r);
}

static void rope(float *x, const float *cos, const float *sin, int hd) {
    int h = hd / 2;
    for (int i = 0; i < h; i++) {
        float a = x[i], b = x[i + h];
        x[i] = a * cos[i] - b * sin[i];
        x[i + h] = b * cos[i + h] + a * sin[i + h];
    }
}

/* ---- attention: per (row, head, query), the keys 16 (AVX-512) or 8 (AVX2) at a time -----
 * Softmax over the keys a query may see, in three passes: scores (and their max), exp, then
 * the weighted sum of values and the sum of weights, both over the visible keys in order.
 * Row independence: a key's score and weight are computed the same way whatever column or
 * lane it sits in, the max does not depend on order, and both sums run over the visible keys
 * in order, so neither the pass length nor masked columns between keys (padding, the holes
 * verified decoding leaves in a batch) change a bit: a T-token pass gives the bits of T
 * one-token passes, and a row with holes those of the same keys without them. */

/* The score pass of one query: s[j] = q . k_j * scale for the visible keys; returns their
 * max (-inf when the query sees no key). */
static float scores_scalar(const float *q, const float *kb, const uint8_t *mk, int K, int hd,
                           float scale, float *s) {
    float mx = -INFINITY;
    for (int j = 0; j < K; j++)
        if (mk[j]) {
            s[j] = dot16(q, kb + (size_t)j * hd, hd) * scale;
            mx = fmaxf(mx, s[j]);
        }
    return mx;
}

/* The value pass of a query that sees a key (mx > -inf; attention() zeroes the others):
 * o = sum_j exp(s_j - mx) v_j / sum_j exp(s_j - mx), over the visible keys in order. */
static void values_scalar(float *s, float mx, const float *vb, const uint8_t *mk, int K,
                          int hd, float *o) {
    float sum = 0.0f;
    for (int i = 0; i < hd; i++) o[i] = 0.0f;
    for (int j = 0; j < K; j++)
        if (mk[j]) {
            float p = expf(s[j] - mx);
            sum += p;
            const float *v = vb + (size_t)j * hd;
            for (int i = 0; i < hd; i++) o[i] += p * v[i];
        }
    for (int i = 0; i < hd; i++) o[i] /= sum;
}

/* ---- the vector kernels: silu_mul, quant_row, gemm_tile (NB_MR rows) and, in the SIMD
 * sets, the attention passes for head sizes 64 and 128 (scores64 / values64, ...) ------- */
#if NB_ISA == 2
#include "kernels_avx512.h"
#elif NB_ISA == 1
#include "kernels_avx2.h"
#else
#include "kernels_portable.h"
#endif

/* The score passes of n queries (mx[t]: query t's largest visible score, -inf if none). */
static void scores_of(const Model *m, int n, const float *const *q, const float *kb,
                      const uint8_t *const *mk, int K, float *const *s, float *mx) {
#if NB_ISA > 0
    if (m->hd == 64) { scores64(n, q, kb, mk, K, m->attn_scale, s, mx); return; }
    if (m->hd == 128) { scores128(n, q, kb, mk, K, m->attn_scale, s, mx); return; }
#endif
    for (int t = 0; t < n; t++)
        mx[t] = scores_scalar(q[t], kb, mk[t], K, m->hd, m->attn_scale, s[t]);
}

/* The value passes of n queries that each see at least one key (mx > -inf). */
static void values_of(const Model *m, int n, float *const *s, const float *mx,
                      const float *vb, const uint8_t *const *mk, int K, float *const *o) {
#if NB_ISA > 0
    if (m->hd == 64) { values64(n, s, mx, vb, mk, K, o); return; }
    if (m->hd == 128) { values128(n, s, mx, vb, mk, K, o); return; }
#endif
    for (int t = 0; t < n; t++) values_scalar(s[t], mx[t], vb, mk[t], K, m->hd, o[t]);
}

/* ---- int8 GEMM, grouped: y[m, n] = sum_g (xq[m, g] . w[n, g]) * ws[n, g] * sx[m, g] +
 * bias[n], groups of 64 inputs, the int32 group sums exact, the groups summed in order. -- */

/* Each 32-channel chunk of weights is read from memory once for all M rows: its row tiles
 * run back to back while the chunk sits in L2. A worksharing loop: called by every thread
 * of the enclosing parallel region (one region per forward: barriers, not fork/join). */
static void qgemm(const QLinear *L, const uint8_t *x, const float *sx, int M, float *y,
                  int ldy) {
    int chunks = L->n / 32, ng = L->k / NB_GROUP;
#pragma omp for schedule(static)
    for (int c = 0; c < chunks; c++)
        for (int m0 = 0; m0 < M; m0 += NB_MR) {
            int mr = M - m0 < NB_MR ? M - m0 : NB_MR;
            const uint8_t *xr = x + (size_t)m0 * L->k;
            const float *sr = sx + (size_t)m0 * ng;
            float *yr = y + (size_t)m0 * ldy;
            gemm_tile(L, xr, sr, mr, c, yr, ldy);
        }
}

/* x [M, d] -> y [M, L->n] (x and y may alias: every row is quantised before the GEMM
 * writes); q [M, L->k] bytes and sx [M, L->k / 64] are scratch. Inside a parallel region. */
static void linear(const QLinear *L, const float *x, int M, int d, uint8_t *q, float *sx,
                   float *y, int ph) {
    int ng = L->k / NB_GROUP;
#pragma omp for schedule(static)
    for (int m = 0; m < M; m++)
        quant_row(x + (size_t)m * d, q + (size_t)m * L->k, sx + (size_t)m * ng, d, L->k);
    MARK(ph - 1);  /* ph - 1: the phase that ends with the quantisation */
    qgemm(L, q, sx, M, y, L->n);
    MARK(ph);
}

/* The same, called alone (the benchmark's GEMM rows): its own parallel region. */
void nb_linear(const QLinear *L, const float *x, int M, int d, uint8_t *q, float *sx,
               float *y) {
#pragma omp parallel
    linear(L, x, M, d, q, sx, y, PH_QKV);
}

/* One work item is (row, key/value head, up to NB_QCHUNK queries) with all the query heads
 * that share the key/value head (GQA): its keys and values are read from memory once for
 * all of them, then from L1. All their scores first, then the value passes of those that
 * see a key (several at once, sharing the loads of a value vector). So that the threads
 * share the work evenly, the queries per item are halved until there are twice as many
 * items as threads, and below one query each query head is an item of its own (one-token
 * passes). A query's numbers are the same however the items are cut. */
static void attention(const Model *m, const float *qkv, int B, int T, const uint8_t *mask,
                      int K, const float *kc, const float *vc, int maxlen, float *out,
                      float *scores) {
    int H = m->n_heads, G = H / m->n_kv, hd = m->hd, ld = m->layers[0].qkv.n;
    int Kp = (K + 15) / 16 * 16, want = 2 * omp_get_num_threads(), qc = NB_QCHUNK;
    while (qc > 1 && B * m->n_kv * ((T + qc - 1) / qc) < want) qc /= 2;  /* enough items */
    int chunks = (T + qc - 1) / qc;
    int parts = B * m->n_kv * chunks >= want ? 1 : G, hp = G / parts;
    float *s0 = scores + (size_t)omp_get_thread_num() * NB_QCHUNK * G * Kp;
#pragma omp for collapse(4) schedule(static)
    for (int b = 0; b < B; b++)
        for (int kh = 0; kh < m->n_kv; kh++)
            for (int c = 0; c < chunks; c++)
                for (int part = 0; part < parts; part++) {
                    const float *kb = kc + ((size_t)b * m->n_kv + kh) * maxlen * hd;
                    const float *vb = vc + ((size_t)b * m->n_kv + kh) * maxlen * hd;
                    int t0 = c * qc, t1 = t0 + qc < T ? t0 + qc : T, n = 0;
                    int h0 = kh * G + part * hp;
                    float mx[NB_QMAX], *s[NB_QMAX], *o[NB_QMAX];
                    const float *q[NB_QMAX];
                    const uint8_t *mk[NB_QMAX];
                    for (int t = t0; t < t1; t++)
                        for (int h = h0; h < h0 + hp; h++, n++) {
                            size_t r = (size_t)b * T + t;
                            q[n] = qkv + r * ld + m->layers[0].q_off + h * hd;
                            s[n] = s0 + (size_t)n * Kp;
                            o[n] = out + r * H * hd + h * hd;
                            mk[n] = mask + r * K;
                        }
                    scores_of(m, n, q, kb, mk, K, s, mx);
                    int nv = 0;  /* the queries that see a key; a row that sees none gets zeros */
                    for (int i = 0; i < n; i++)
                        if (mx[i] == -INFINITY)
                            memset(o[i], 0, hd * sizeof(float));
                        else
                            mx[nv] = mx[i], s[nv] = s[i], o[nv] = o[i], mk[nv] = mk[i], nv++;
                    values_of(m, nv, s, mx, vb, mk, K, o);
                }
}

/* nowait: what follows (the next RMSNorm) is a static loop over the same rows, which
 * OpenMP gives to the same threads, so each thread reads only rows it wrote. */
static void residual(float *h, const float *y, int M, int d, int ldy) {
#pragma omp for schedule(static) nowait
    for (int r = 0; r < M; r++)
        for (int i = 0; i < d; i++) h[(size_t)r * d + i] += y[(size_t)r * ldy + i];
}

/* ---- one decoder layer, then all of them ------------------------------------------------ */

typedef struct {
    float *x, *qkv, *att, *mlp;   /* [M, d], [M, qkv.n], [M, H*hd], [M, gate_up.n] */
    uint8_t *q;                   /* [M, max k] */
    float *sx, *scores;           /* [M], [threads, NB_QCHUNK, K] */
} Scratch;

/* Every thread of the forward's parallel region runs this; each phase is a worksharing
 * loop over rows (or channels), so the row-wise work is split too. Which thread computes a
 * row changes none of its bits. */
static void layer_forward(const Model *m, int li, float *h, int B, int T, const float *cos,
                          const float *sin, const uint8_t *mask, int K, float *kc, float *vc,
                          int cache_len, int maxlen, long layer_stride, Scratch *s) {
    const Layer *L = &m->layers[li];
    int M = B * T, d = m->d, hd = m->hd;
    size_t lay = (size_t)li * layer_stride;  /* the cache may hold spare rows per layer */
#pragma omp for schedule(static) nowait  /* the next loop takes the same rows */
    for (int r = 0; r < M; r++) rmsnorm(h + (size_t)r * d, L->ln1, s->x + (size_t)r * d, d, m->eps);
    linear(&L->qkv, s->x, M, d, s->q, s->sx, s->qkv, PH_QKV);
#pragma omp for schedule(static)
    for (int r = 0; r < M; r++) {
        float *row = s->qkv + (size_t)r * L->qkv.n;
        int b = r / T, t = r % T;
        for (int hh = 0; hh < m->n_heads; hh++) {
            float *q = row + L->q_off + hh * hd;
            if (L->q_norm) rmsnorm(q, L->q_norm, q, hd, m->eps);
            rope(q, cos + (size_t)r * hd, sin + (size_t)r * hd, hd);
        }
        for (int kh = 0; kh < m->n_kv; kh++) {
            float *k = row + L->k_off + kh * hd;
            if (L->k_norm) rmsnorm(k, L->k_norm, k, hd, m->eps);
            rope(k, cos + (size_t)r * hd, sin + (size_t)r * hd, hd);
            size_t slot = lay + (((size_t)b * m->n_kv + kh) * maxlen + cache_len + t) * hd;
            memcpy(kc + slot, k, hd * sizeof(float));
            memcpy(vc + slot, row + L->v_off + kh * hd, hd * sizeof(float));
        }
    }
    MARK(PH_ROPE);
    attention(m, s->qkv, B, T, mask, K, kc + lay, vc + lay, maxlen, s->att, s->scores);
    MARK(PH_ATTN);
    linear(&L->o, s->att, M, m->n_heads * hd, s->q, s->sx, s->x, PH_O);
    residual(h, s->x, M, d, L->o.n);
#pragma omp for schedule(static) nowait  /* the next loop takes the same rows */
    for (int r = 0; r < M; r++) rmsnorm(h + (size_t)r * d, L->ln2, s->x + (size_t)r * d, d, m->eps);
    linear(&L->gate_up, s->x, M, d, s->q, s->sx, s->mlp, PH_GATE_UP);
    int gn = L->gate_up.n;
#pragma omp for schedule(static) nowait  /* the down projection quantises the same rows */
    for (int r = 0; r < M; r++) {  /* silu(gate) * up into x, as [M, ffn] rows */
        float *g = s->mlp + (size_t)r * gn;
        silu_mul(g, g + L->up_off, s->x + (size_t)r * m->ffn, m->ffn);
    }
    linear(&L->down, s->x, M, m->ffn, s->q, s->sx, s->x, PH_DOWN);
    residual(h, s->x, M, d, L->down.n);
}

/* Floats of attention score scratch: per thread, a row of K (padded to 16) per query of a
 * work item (NB_QCHUNK queries of a GQA group). */
static size_t score_floats(const Model *m, int K, int threads) {
    return (size_t)threads * NB_QCHUNK * (m->n_heads / m->n_kv) * ((K + 15) / 16 * 16);
}

/* The widest layer input, padded to a group: the width of the row scratch buffers. */
static int max_k(const Model *m) {
    int k = m->ffn > m->d ? m->ffn : m->d;
    if (m->n_heads * m->hd > k) k = m->n_heads * m->hd;
    return (k + NB_GROUP - 1) / NB_GROUP * NB_GROUP;
}

/* h [B*T, d] in place through every layer; keys/values of the chunk written at
 * [cache_len, cache_len + T) of cache k/v [layers, B, n_kv, maxlen, hd] (layer_stride floats
 * from one layer to the next: B rows or more); mask [B, T, K]. */
void nb_layers(const Model *m, float *h, int B, int T, const float *cos, const float *sin,
               const uint8_t *mask, int K, float *kc, float *vc, int cache_len, int maxlen,
               long layer_stride,
               float *scratch, int threads) {
    int M = B * T, maxk = max_k(m);
    Scratch s;
    float *p = scratch;
    s.x = p; p += (size_t)M * maxk;
    s.qkv = p; p += (size_t)M * m->layers[0].qkv.n;
    s.att = p; p += (size_t)M * m->n_heads * m->hd;
    s.mlp = p; p += (size_t)M * m->layers[0].gate_up.n;
    s.sx = p; p += (size_t)M * (maxk / 64 + 1);
    s.scores = p; p += score_floats(m, K, threads);
    s.q = (uint8_t *)p;
    omp_set_num_threads(threads);
    MARK_START();
#pragma omp parallel
    for (int li = 0; li < m->n_layers; li++)
        layer_forward(m, li, h, B, T, cos, sin, mask, K, kc, vc, cache_len, maxlen,
                      layer_stride, &s);
}

/* Scratch floats nb_layers needs (the caller owns the buffer: no allocation per forward). */
long nb_scratch_floats(const Model *m, int M, int K, int threads) {
    int maxk = max_k(m);
    return (long)M * (maxk + m->layers[0].qkv.n + m->n_heads * m->hd + m->layers[0].gate_up.n
                      + maxk / 64 + 1 + maxk / 4 + 1) + (long)score_floats(m, K, threads) + 64;
}

/* Final norm of M rows into `normed`; then, unless logits is NULL, the LM head. */
void nb_head(const Model *m, const float *h, int M, float *normed, uint8_t *q, float *sx,
             float *logits, int threads) {
    omp_set_num_threads(threads);
    MARK_START();
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int r = 0; r < M; r++)
            rmsnorm(h + (size_t)r * m->d, m->norm, normed + (size_t)r * m->d, m->d, m->eps);
        if (logits) linear(&m->head, normed, M, m->d, q, sx, logits, PH_HEAD);
    }
}

/* Greedy decoding's choice for M rows of N logits: the index of the first largest value
   (torch.argmax's choice), column `exclude` (the mask token; -1: none) never chosen. A
   vectorised max, then a scan to its first occurrence: torch's CPU argmax over a 49K
   vocabulary row costs about 0.1 ms, several times a whole-row pass at memory speed. */
static float row_max(const float *row, int a, int b) {
    float best = -INFINITY;
#pragma omp simd reduction(max : best)
    for (int j = a; j < b; j++) best = row[j] > best ? row[j] : best;
    return best;
}

void nb_argmax(const float *x, int M, int N, long ld, int exclude, long *out) {
    int ex = exclude < 0 || exclude >= N ? N : exclude;
    for (int r = 0; r < M; r++) {  /* row r at x + r * ld (ld >= N: a slice of wider rows) */
        const float *row = x + (size_t)r * ld;
        float best = fmaxf(row_max(row, 0, ex), ex + 1 < N ? row_max(row, ex + 1, N) : -INFINITY);
        long idx = 0;
        for (int j0 = 0; j0 < N; j0 += 64) {  /* 64 columns at a time, then the first hit */
            int e = j0 + 64 < N ? j0 + 64 : N, hit = 0;
#pragma omp simd reduction(| : hit)
            for (int j = j0; j < e; j++) hit |= (row[j] == best) & (j != ex);
            if (!hit) continue;
            for (int j = j0; j < e; j++)
                if (row[j] == best && j != ex) { idx = j; break; }
            break;
        }
        out[r] = idx;
    }
}

/* Pack an int8 [n_real, k_real] row-major weight into the VNNI layout (zero padding). */
void nb_pack(const int8_t *w, int n_real, int k_real, int n, int k, int8_t *out) {
    int kg = k / 4;
    memset(out, 0, (size_t)n * k);
    for (int r = 0; r < n_real; r++)
        for (int c = 0; c < k_real; c++)
            out[((size_t)(r / 16) * kg + c / 4) * 64 + (r % 16) * 4 + c % 4] = w[(size_t)r * k_real + c];
}
