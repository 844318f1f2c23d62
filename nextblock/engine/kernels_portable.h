/* Portable kernels of the int8 engine (plain C, any CPU; included by int8_engine.c when
 * neither AVX-512 VNNI nor AVX2 is available, or with NEXTBLOCK_ENGINE_PORTABLE=1): the same
 * packed layout, the same int32 group sums and the same float order of groups as the SIMD
 * kernels, so the GEMM gives their bits. */

static void silu_mul(const float *g, const float *u, float *out, int n) {
    for (int i = 0; i < n; i++) out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

/* One row to unsigned bytes (q + 128), q = round-half-even(x * 127 / absmax) with one
 * scale per group of 64 inputs, written to sx[k / 64]. */
static void quant_row(const float *x, uint8_t *q, float *sx, int d, int kp) {
    for (int g0 = 0; g0 < kp; g0 += NB_GROUP) {
        float m = 0.0f;
        for (int i = g0; i < g0 + NB_GROUP && i < d; i++) m = fmaxf(m, fabsf(x[i]));
        float inv = m > 0.0f ? 127.0f / m : 0.0f;
        for (int i = g0; i < g0 + NB_GROUP; i++)
            q[i] = i < d ? (uint8_t)((int)nearbyintf(x[i] * inv) + 128) : 128;
        sx[g0 / NB_GROUP] = m / 127.0f;
    }
}

/* Portable path: the same packed layout, int32 group sums and float order of groups. */
static void tile_scalar(const QLinear *L, const uint8_t *x, const float *sx, int MR, int c,
                        float *y, int ldy) {
    int kg = L->k / 4, ng = L->k / NB_GROUP;
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < 2; j++) {
            int blk = 2 * c + j;
            const int8_t *w = L->w + (size_t)blk * kg * 64;
            float f[16] = {0};
            for (int gi = 0; gi < ng; gi++) {
                int32_t acc[16] = {0};
                for (int g = gi * 16; g < gi * 16 + 16; g++)
                    for (int l = 0; l < 16; l++)
                        for (int b = 0; b < 4; b++)
                            acc[l] += (int32_t)x[(size_t)r * L->k + 4 * g + b] *
                                      (int32_t)w[(size_t)g * 64 + l * 4 + b];
                size_t e = ((size_t)blk * ng + gi) * 16;
                for (int l = 0; l < 16; l++)
                    f[l] = fmaf((float)(acc[l] - L->comp[e + l]),
                                L->scale[e + l] * sx[(size_t)r * ng + gi], f[l]);
            }
            for (int l = 0; l < 16; l++) {
                int n = blk * 16 + l;
                y[(size_t)r * ldy + n] = L->bias ? f[l] + L->bias[n] : f[l];
            }
        }
}
#define NB_MR 4

static void gemm_tile(const QLinear *L, const uint8_t *x, const float *sx, int mr, int c,
                      float *y, int ldy) {
    tile_scalar(L, x, sx, mr, c, y, ldy);
}
