/* A tiny-model node's update in one pass per plane: InstanceNorm (affine, optional), ReLU, and
 * the node's 3x3 depthwise convolution (zero padding 1, stride 1), forward and backward.
 *
 * Torch runs these as three ops and about fifteen passes over the activations (forward and
 * backward); here each [H, W] plane of a sample's channel is read once and written once per
 * direction while it sits in cache. Same math as the torch ops: every plane's mean and biased
 * variance, y = conv(relu(gamma * (x - mean) * rstd + beta)); the sums run in another order, so
 * results agree to float rounding (tests/models/test_native.py).
 *
 * Layout: x and gy are [B, C, H, W] contiguous float32; k is [C, 3, 3]; gamma, beta are [C] or
 * NULL (no norm); mean and rstd are [B * C]. An output (y, gx) is written as the channels
 * c0 .. c0 + C of a [B, CT, H, W] buffer (Place.nchw) and, where Place.cm is not NULL, also as
 * the channels cm0 .. cm0 + C of a channel-major [CT', B, H, W] buffer, whose [C, B * H * W] rows
 * are what a weight gradient's matrix product wants. Every output element is computed by one
 * thread in a fixed order, so results do not depend on the number of threads.
 *
 * Built by models/graphs/native/__init__.py with the system C compiler and OpenMP; torch's own
 * libgomp is already loaded when this library is, so both share one thread pool.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define INLINE static inline __attribute__((always_inline))
#include "stencil.h" /* correlate3x3_s */
#define MAXW 64   /* largest plane side; the Python side falls back to torch above it */
#define CBLOCK 16 /* channels per block in the backward: one sample's block is contiguous */

int node_ops_max_side(void) { return MAXW; }

/* Where a kernel writes its [B, C, H, W] result (see the layout note above). */
typedef struct {
    float *nchw;
    int64_t c0, ct;
    float *cm;
    int64_t cm0;
} Place;

/* the plane (b, c) of a result in both layouts (cm: NULL where not asked for) */
INLINE float *place_nchw(const Place *o, int64_t b, int64_t c, int64_t P) {
    return o->nchw + (b * o->ct + o->c0 + c) * P;
}
INLINE void place_cm(const Place *o, int64_t b, int64_t c, int64_t B, int64_t P, const float *plane) {
    if (o->cm) memcpy(o->cm + ((o->cm0 + c) * B + b) * P, plane, P * sizeof(float));
}

/* zero the one-element border of a padded [(H + 2), (W + 2)] scratch plane */
static void zero_border(float *a, int64_t H, int64_t W) {
    const int64_t PW = W + 2;
    memset(a, 0, PW * sizeof(float));
    memset(a + (H + 1) * PW, 0, PW * sizeof(float));
    for (int64_t i = 1; i <= H; i++) a[i * PW] = a[i * PW + W + 1] = 0.f;
}

/* Sums run lane-wise (one partial sum per column j, then over the lanes) so that they
 * vectorise without reassociating float additions. */

/* mean and 1 / sqrt(biased variance + eps) of one plane (two passes) */
INLINE void plane_moments(const float *restrict x, const int64_t H, const int64_t W,
                          const float eps, float *mean, float *rstd) {
    float acc[MAXW];
    for (int64_t j = 0; j < W; j++) acc[j] = 0.f;
    for (int64_t i = 0; i < H; i++)
        for (int64_t j = 0; j < W; j++) acc[j] += x[i * W + j];
    float s = 0.f;
    for (int64_t j = 0; j < W; j++) s += acc[j];
    const float m = s / (float)(H * W);
    for (int64_t j = 0; j < W; j++) acc[j] = 0.f;
    for (int64_t i = 0; i < H; i++)
        for (int64_t j = 0; j < W; j++) {
            const float d = x[i * W + j] - m;
            acc[j] += d * d;
        }
    float v = 0.f;
    for (int64_t j = 0; j < W; j++) v += acc[j];
    *mean = m;
    *rstd = 1.f / sqrtf(v / (float)(H * W) + eps);
}

/* interior of the padded plane a <- relu(scale * x + shift) */
INLINE void load_activation(const float *restrict x, float *restrict a, const int64_t H,
                            const int64_t W, const float scale, const float shift) {
    const int64_t PW = W + 2;
    for (int64_t i = 0; i < H; i++) {
        float *row = a + (i + 1) * PW + 1;
        for (int64_t j = 0; j < W; j++) {
            const float z = scale * x[i * W + j] + shift;
            row[j] = z > 0.f ? z : 0.f;
        }
    }
}

/* y[i][j] = sum_{u,v} k[u][v] * a[i + u][j + v] over the padded plane a */
INLINE void correlate3x3(const float *restrict a, const float *restrict k, float *restrict y,
                         const int64_t H, const int64_t W) {
    const int64_t PW = W + 2;
    for (int64_t i = 0; i < H; i++) {
        const float *r0 = a + i * PW, *r1 = r0 + PW, *r2 = r1 + PW;
        for (int64_t j = 0; j < W; j++)
            y[i * W + j] = k[0] * r0[j] + k[1] * r0[j + 1] + k[2] * r0[j + 2] + k[3] * r1[j] +
                           k[4] * r1[j + 1] + k[5] * r1[j + 2] + k[6] * r2[j] + k[7] * r2[j + 1] +
                           k[8] * r2[j + 2];
    }
}

/* Planes 8 values wide (the tiny models' 8x8 nodes) kept in vector registers, one row each:
 * the 3x3 stencil's left and right neighbours are lane shifts with a zero filled in, so no
 * padded copy is written and read back (a load that straddles two just-written stores waits for
 * them to reach the cache: most of the padded form's time). Same products and sums, in the
 * same order, as the padded form. */
typedef float row8 __attribute__((vector_size(32)));
typedef int32_t row8i __attribute__((vector_size(32)));
#if defined(__clang__)
#define SHIFT_RIGHT(v) __builtin_shufflevector(v, (row8){0}, 8, 0, 1, 2, 3, 4, 5, 6)
#define SHIFT_LEFT(v) __builtin_shufflevector(v, (row8){0}, 1, 2, 3, 4, 5, 6, 7, 8)
#else
#define SHIFT_RIGHT(v) __builtin_shuffle(v, (row8){0}, (row8i){8, 0, 1, 2, 3, 4, 5, 6})
#define SHIFT_LEFT(v) __builtin_shuffle(v, (row8){0}, (row8i){1, 2, 3, 4, 5, 6, 7, 8})
#endif

INLINE row8 load8(const float *p) {
    row8 v;
    memcpy(&v, p, sizeof v);
    return v;
}

INLINE void store8(float *p, row8 v) { memcpy(p, &v, sizeof v); }

/* y[i] = the 3x3 correlation of the rows a[0 .. H) (zero outside) with k, as correlate3x3 */
INLINE void correlate_rows8(const row8 *a, const float *restrict k, float *restrict y,
                            const int64_t H) {
    const row8 zero = {0};
    for (int64_t i = 0; i < H; i++) {
        const row8 r0 = i > 0 ? a[i - 1] : zero, r1 = a[i], r2 = i + 1 < H ? a[i + 1] : zero;
        store8(y + i * 8, k[0] * SHIFT_RIGHT(r0) + k[1] * r0 + k[2] * SHIFT_LEFT(r0) +
                              k[3] * SHIFT_RIGHT(r1) + k[4] * r1 + k[5] * SHIFT_LEFT(r1) +
                              k[6] * SHIFT_RIGHT(r2) + k[7] * r2 + k[8] * SHIFT_LEFT(r2));
    }
}

/* rows of relu(scale * x + shift) */
INLINE void activation_rows8(const float *restrict x, row8 *a, const int64_t H,
                             const float scale, const float shift) {
    const row8 zero = {0};
    for (int64_t i = 0; i < H; i++) {
        const row8 z = scale * load8(x + i * 8) + shift;
        a[i] = (row8)((row8i)z & (z > zero)); /* z where z > 0, else 0 (NaN too) */
    }
}

INLINE void plane_forward(const float *restrict x, float *restrict y, const float *restrict k,
                          float *restrict a, const int64_t H, const int64_t W, const int norm,
                          const float gamma, const float beta, const float eps,
                          float *restrict mean, float *restrict rstd) {
    float scale = 1.f, shift = 0.f;
    if (norm) {
        plane_moments(x, H, W, eps, mean, rstd);
        scale = gamma * *rstd;
        shift = beta - *mean * scale;
    }
    if (W == 8 && H <= MAXW) {
        row8 rows[MAXW];
        activation_rows8(x, rows, H, scale, shift);
        correlate_rows8(rows, k, y, H);
        return;
    }
    load_activation(x, a, H, W, scale, shift);
    correlate3x3(a, k, y, H, W);
}

void node_forward(const float *x, float *y, int64_t y_c0, int64_t y_ct, float *y_cm, int64_t y_cm0,
                  const float *k, const float *gamma, const float *beta, float *mean, float *rstd,
                  int64_t B, int64_t C, int64_t H, int64_t W, float eps, int num_threads) {
    const Place out = {y, y_c0, y_ct, y_cm, y_cm0};
    const int64_t P = H * W;
    const int norm = gamma != NULL;
#pragma omp parallel num_threads(num_threads)
    {
        float *a = (float *)malloc((H + 2) * (W + 2) * sizeof(float));
        zero_border(a, H, W);
#pragma omp for schedule(static)
        for (int64_t bc = 0; bc < B * C; bc++) {
            const int64_t c = bc % C, n = bc / C;
            const float g = norm ? gamma[c] : 1.f, b = norm ? beta[c] : 0.f;
            float m = 0.f, r = 1.f;
            float *yp = place_nchw(&out, n, c, P);
            /* literal sides: the compiler specialises (unrolls, vectorises) these copies */
            if (H == 8 && W == 8)
                plane_forward(x + bc * P, yp, k + 9 * c, a, 8, 8, norm, g, b, eps, &m, &r);
            else if (H == 4 && W == 4)
                plane_forward(x + bc * P, yp, k + 9 * c, a, 4, 4, norm, g, b, eps, &m, &r);
            else
                plane_forward(x + bc * P, yp, k + 9 * c, a, H, W, norm, g, b, eps, &m, &r);
            place_cm(&out, n, c, B, P, yp);
            if (norm) {
                mean[bc] = m;
                rstd[bc] = r;
            }
        }
        free(a);
    }
}

/* plane_backward's stencil part for planes 8 wide, rows in registers (see correlate_rows8):
 * the kernel gradient's lane sums added to acck, and ga = the ReLU-masked gradient of the
 * activation; the same products and sums in the same order as the padded form */
INLINE void plane_backward_rows8(const float *restrict x, const float *restrict gy,
                                 const float *restrict kf, float *restrict ga,
                                 float (*acck)[MAXW], const int64_t H, const float scale,
                                 const float shift) {
    row8 a[MAXW], g[MAXW];
    const row8 zero = {0};
    activation_rows8(x, a, H, scale, shift); /* recomputed: cheaper than storing it */
    for (int64_t i = 0; i < H; i++) g[i] = load8(gy + i * 8);
    /* dL/dk[u][v] = sum_{i,j} gy[i][j] * act[i + u - 1][j + v - 1] (zero outside) */
    for (int u = 0; u < 3; u++) {
        row8 t0 = load8(acck[3 * u]), t1 = load8(acck[3 * u + 1]), t2 = load8(acck[3 * u + 2]);
        for (int64_t i = 0; i < H; i++) {
            const int64_t src = i + u - 1;
            const row8 ar = src >= 0 && src < H ? a[src] : zero;
            t0 += g[i] * SHIFT_RIGHT(ar);
            t1 += g[i] * ar;
            t2 += g[i] * SHIFT_LEFT(ar);
        }
        store8(acck[3 * u], t0);
        store8(acck[3 * u + 1], t1);
        store8(acck[3 * u + 2], t2);
    }
    correlate_rows8(g, kf, ga, H);
    for (int64_t i = 0; i < H; i++)
        store8(ga + i * 8, (row8)((row8i)load8(ga + i * 8) & (a[i] > zero)));
}

/* Scratch of one thread in the backward. */
typedef struct {
    float *a, *g, *ga;                              /* padded activation, padded gy, d(relu) */
    float (*acck)[9][MAXW], (*accg)[MAXW], (*accb)[MAXW]; /* per channel of a block, lane-wise */
} Scratch;

/* a thread's scratch for the backward of `channels` planes at a time */
static Scratch scratch_new(int64_t H, int64_t W, int64_t channels) {
    Scratch s;
    s.a = (float *)malloc((H + 2) * (W + 2) * sizeof(float));
    s.g = (float *)malloc((H + 2) * (W + 2) * sizeof(float));
    s.ga = (float *)malloc(H * W * sizeof(float));
    s.acck = malloc(channels * sizeof(float[9][MAXW]));
    s.accg = malloc(channels * sizeof(float[MAXW]));
    s.accb = malloc(channels * sizeof(float[MAXW]));
    zero_border(s.a, H, W);
    zero_border(s.g, H, W);
    return s;
}

static void scratch_free(Scratch *s) {
    free(s->a);
    free(s->g);
    free(s->ga);
    free(s->acck);
    free(s->accg);
    free(s->accb);
}

/* One plane's backward: gx, and the plane's share of the kernel / gamma / beta gradients added
 * to the lane-wise accumulators. */
INLINE void plane_backward(const float *restrict x, const float *restrict gy,
                           const float *restrict k, float *restrict gx, const Scratch *s,
                           const int l, const int64_t H, const int64_t W, const int norm,
                           const float gamma, const float beta, const float m, const float r) {
    const int64_t P = H * W, PW = W + 2;
    float *restrict a = s->a, *restrict g = s->g, *restrict ga = s->ga;
    const float scale = norm ? gamma * r : 1.f, shift = norm ? beta - m * gamma * r : 0.f;
    const float kf[9] = {k[8], k[7], k[6], k[5], k[4], k[3], k[2], k[1], k[0]};
    if (W == 8 && H <= MAXW)
        plane_backward_rows8(x, gy, kf, ga, s->acck[l], H, scale, shift);
    else {
        load_activation(x, a, H, W, scale, shift); /* recomputed: cheaper than storing it */
        for (int64_t i = 0; i < H; i++)
            memcpy(g + (i + 1) * PW + 1, gy + i * W, W * sizeof(float));
        /* dL/dk[u][v] = sum_{i,j} gy[i][j] * a[i + u][j + v] */
        for (int u = 0; u < 3; u++)
            for (int v = 0; v < 3; v++)
                for (int64_t i = 0; i < H; i++) {
                    const float *ar = a + (i + u) * PW + v;
                    for (int64_t j = 0; j < W; j++)
                        s->acck[l][u * 3 + v][j] += gy[i * W + j] * ar[j];
                }
        /* dL/da: gy correlated with the flipped kernel; then the ReLU's mask */
        correlate3x3(g, kf, ga, H, W);
        for (int64_t i = 0; i < H; i++) {
            const float *ar = a + (i + 1) * PW + 1;
            for (int64_t j = 0; j < W; j++) ga[i * W + j] = ar[j] > 0.f ? ga[i * W + j] : 0.f;
        }
    }
    if (!norm) {
        memcpy(gx, ga, P * sizeof(float));
        return;
    }
    /* InstanceNorm: with xh = (x - m) * r and dz = dL/dz,
     * dL/dx = r * (gamma * dz - mean(gamma * dz) - xh * mean(gamma * dz * xh)) */
    float sg[MAXW], sgx[MAXW];
    for (int64_t j = 0; j < W; j++) sg[j] = sgx[j] = 0.f;
    for (int64_t i = 0; i < H; i++)
        for (int64_t j = 0; j < W; j++) {
            const float dz = ga[i * W + j];
            sg[j] += dz;
            sgx[j] += dz * ((x[i * W + j] - m) * r);
        }
    float tg = 0.f, tgx = 0.f;
    for (int64_t j = 0; j < W; j++) {
        tg += sg[j];
        tgx += sgx[j];
        s->accg[l][j] += sgx[j];
        s->accb[l][j] += sg[j];
    }
    const float mg = gamma * tg / (float)P, mgx = gamma * tgx / (float)P;
    for (int64_t p = 0; p < P; p++) gx[p] = r * (gamma * ga[p] - mg - (x[p] - m) * r * mgx);
}

void node_backward(const float *x, const float *gy, const float *k, const float *gamma,
                   const float *beta, const float *mean, const float *rstd, float *gx,
                   int64_t gx_c0, int64_t gx_ct, float *gx_cm, int64_t gx_cm0, float *gk,
                   float *ggamma, float *gbeta, int64_t B, int64_t C, int64_t H, int64_t W,
                   int num_threads) {
    const Place out = {gx, gx_c0, gx_ct, gx_cm, gx_cm0};
    const int64_t P = H * W, nblocks = (C + CBLOCK - 1) / CBLOCK;
    const int norm = gamma != NULL;
#pragma omp parallel num_threads(num_threads)
    {
        Scratch s = scratch_new(H, W, CBLOCK);
        /* a thread owns whole channel blocks, so each channel's sums over the batch are its
         * alone (no atomics) and run in sample order */
#pragma omp for schedule(static)
        for (int64_t blk = 0; blk < nblocks; blk++) {
            const int64_t c0 = blk * CBLOCK, c1 = c0 + CBLOCK < C ? c0 + CBLOCK : C;
            memset(s.acck, 0, sizeof(float[CBLOCK][9][MAXW]));
            memset(s.accg, 0, sizeof(float[CBLOCK][MAXW]));
            memset(s.accb, 0, sizeof(float[CBLOCK][MAXW]));
            for (int64_t b = 0; b < B; b++)
                for (int64_t c = c0; c < c1; c++) {
                    const int64_t bc = b * C + c, o = bc * P;
                    const int l = (int)(c - c0);
                    const float g = norm ? gamma[c] : 1.f, be = norm ? beta[c] : 0.f;
                    const float m = norm ? mean[bc] : 0.f, r = norm ? rstd[bc] : 1.f;
                    float *gp = place_nchw(&out, b, c, P);
                    if (H == 8 && W == 8)
                        plane_backward(x + o, gy + o, k + 9 * c, gp, &s, l, 8, 8, norm, g, be, m, r);
                    else if (H == 4 && W == 4)
                        plane_backward(x + o, gy + o, k + 9 * c, gp, &s, l, 4, 4, norm, g, be, m, r);
                    else
                        plane_backward(x + o, gy + o, k + 9 * c, gp, &s, l, H, W, norm, g, be, m, r);
                    place_cm(&out, b, c, B, P, gp);
                }
            for (int64_t c = c0; c < c1; c++) {
                const int l = (int)(c - c0);
                for (int t = 0; t < 9; t++) {
                    float sum = 0.f;
                    for (int64_t j = 0; j < W; j++) sum += s.acck[l][t][j];
                    gk[9 * c + t] = sum;
                }
                if (norm) {
                    float sg = 0.f, sb = 0.f;
                    for (int64_t j = 0; j < W; j++) {
                        sg += s.accg[l][j];
                        sb += s.accb[l][j];
                    }
                    ggamma[c] = sg;
                    gbeta[c] = sb;
                }
            }
        }
        scratch_free(&s);
    }
}

/* ---- A MobileNet Block's node in training: BatchNorm with the batch's statistics, ReLU and
 * the 3x3 depthwise convolution with stride S (zero padding 1), forward and backward.
 *
 * Same math as torch's batch_norm (training), relu and conv2d: each channel's mean and biased
 * variance over the batch and the plane (two passes), y = conv(relu(gamma * (x - mean) * rstd +
 * beta)); the unbiased variance is returned for the running statistics. A thread owns whole
 * channels, and each channel's sums run in sample order: results do not depend on the number
 * of threads. x's plane (b, c) starts at x + b * sxb + c * H * W (a channel slice of a wider
 * tensor); y, gy and gx are contiguous [B, C, Ho, Wo] and [B, C, H, W]. */


/* one channel's mean and biased variance over B planes (two passes, lane-wise sums) */
INLINE void channel_moments(const float *x, const int64_t sxb, const int64_t B, const int64_t H,
                            const int64_t W, double *mean, double *var) {
    float acc[MAXW];
    double s = 0.0;
    for (int64_t b = 0; b < B; b++) {
        const float *p = x + b * sxb;
        for (int64_t j = 0; j < W; j++) acc[j] = 0.f;
        for (int64_t i = 0; i < H; i++)
            for (int64_t j = 0; j < W; j++) acc[j] += p[i * W + j];
        float t = 0.f;
        for (int64_t j = 0; j < W; j++) t += acc[j];
        s += t;
    }
    const double n = (double)(B * H * W), m = s / n;
    const float mf = (float)m;
    double v = 0.0;
    for (int64_t b = 0; b < B; b++) {
        const float *p = x + b * sxb;
        for (int64_t j = 0; j < W; j++) acc[j] = 0.f;
        for (int64_t i = 0; i < H; i++)
            for (int64_t j = 0; j < W; j++) {
                const float d = p[i * W + j] - mf;
                acc[j] += d * d;
            }
        float t = 0.f;
        for (int64_t j = 0; j < W; j++) t += acc[j];
        v += t;
    }
    *mean = m;
    *var = v / n;
}

/* channel c of bn_node_forward (a: the thread's zero-bordered padded plane) */
INLINE void bn_channel_forward(const float *x, const int64_t sxb, float *y, const float *k,
                               const float *gamma, const float *beta, float *mean, float *rstd,
                               float *var_unbiased, const int64_t B, const int64_t C,
                               const int64_t c, const int64_t H, const int64_t W, const int64_t S,
                               const float eps, float *a) {
    const int64_t P = H * W, Po = ((H - 1) / S + 1) * ((W - 1) / S + 1);
    double m, v;
    channel_moments(x + c * P, sxb, B, H, W, &m, &v);
    const float r = (float)(1.0 / sqrt(v + (double)eps));
    const float scale = gamma[c] * r, shift = beta[c] - (float)m * scale;
    mean[c] = (float)m;
    rstd[c] = r;
    const int64_t n = B * P;
    var_unbiased[c] = n > 1 ? (float)(v * (double)n / (double)(n - 1)) : (float)v;
    for (int64_t b = 0; b < B; b++) {
        load_activation(x + b * sxb + c * P, a, H, W, scale, shift);
        correlate3x3_s(a, k + 9 * c, y + (b * C + c) * Po, H, W, S);
    }
}

/* literal plane sides and strides of the MobileNet Blocks, so that the compiler unrolls and
 * vectorises each; anything else takes the general code */
#define BN_DISPATCH(CALL)                                                                     \
    do {                                                                                      \
        if (H == 32 && W == 32 && S == 1) CALL(32, 32, 1);                                     \
        else if (H == 32 && W == 32 && S == 2) CALL(32, 32, 2);                                \
        else if (H == 16 && W == 16 && S == 1) CALL(16, 16, 1);                                \
        else if (H == 16 && W == 16 && S == 2) CALL(16, 16, 2);                                \
        else if (H == 8 && W == 8 && S == 1) CALL(8, 8, 1);                                    \
        else if (H == 8 && W == 8 && S == 2) CALL(8, 8, 2);                                    \
        else if (H == 4 && W == 4 && S == 1) CALL(4, 4, 1);                                    \
        else if (H == 4 && W == 4 && S == 2) CALL(4, 4, 2);                                    \
        else if (H == 2 && W == 2 && S == 1) CALL(2, 2, 1);                                    \
        else CALL(H, W, S);                                                                   \
    } while (0)

void bn_node_forward(const float *x, int64_t sxb, float *y, const float *k, const float *gamma,
                     const float *beta, float *mean, float *rstd, float *var_unbiased, int64_t B,
                     int64_t C, int64_t H, int64_t W, int64_t S, float eps, int num_threads) {
#pragma omp parallel num_threads(num_threads)
    {
        float *a = (float *)malloc((H + 2) * (W + 2) * sizeof(float));
        zero_border(a, H, W);
#pragma omp for schedule(static)
        for (int64_t c = 0; c < C; c++) {
#define FWD(h, w, s)                                                                          \
    bn_channel_forward(x, sxb, y, k, gamma, beta, mean, rstd, var_unbiased, B, C, c, h, w, s, \
                       eps, a)
            BN_DISPATCH(FWD);
#undef FWD
        }
        free(a);
    }
}

/* The plane's share of dL/dk (lane-wise over output columns) and dL/da scattered into the
 * padded plane g (zeroed here): g[S i + u][S j + v] += gy[i][j] * k[u][v]. */
INLINE void plane_back_s(const float *restrict a, const float *restrict gy,
                         const float *restrict k, float *restrict g, float (*acck)[MAXW],
                         const int64_t H, const int64_t W, const int64_t S) {
    const int64_t PW = W + 2, Ho = (H - 1) / S + 1, Wo = (W - 1) / S + 1;
    for (int u = 0; u < 3; u++)
        for (int v = 0; v < 3; v++)
            for (int64_t i = 0; i < Ho; i++) {
                const float *ar = a + (S * i + u) * PW + v;
                for (int64_t j = 0; j < Wo; j++) acck[u * 3 + v][j] += gy[i * Wo + j] * ar[S * j];
            }
    memset(g, 0, (H + 2) * PW * sizeof(float));
    for (int64_t i = 0; i < Ho; i++)
        for (int u = 0; u < 3; u++) {
            float *gr = g + (S * i + u) * PW;
            for (int v = 0; v < 3; v++) {
                const float kv = k[u * 3 + v];
                for (int64_t j = 0; j < Wo; j++) gr[S * j + v] += gy[i * Wo + j] * kv;
            }
        }
}

/* channel c of bn_node_backward (a, g: the thread's padded planes, acck its accumulators) */
INLINE void bn_channel_backward(const float *x, const int64_t sxb, const float *gy,
                                const float *k, const float *gamma, const float *beta,
                                const float *mean, const float *rstd, float *gx, float *gk,
                                float *ggamma, float *gbeta, const int64_t B, const int64_t C,
                                const int64_t c, const int64_t H, const int64_t W,
                                const int64_t S, float *a, float *g, float (*acck)[MAXW]) {
    const int64_t P = H * W, PW = W + 2, Wo = (W - 1) / S + 1, Po = ((H - 1) / S + 1) * Wo;
    const float m = mean[c], r = rstd[c], ga = gamma[c];
    const float scale = ga * r, shift = beta[c] - m * scale;
    memset(acck, 0, sizeof(float[9][MAXW]));
    double sg = 0.0, sgx = 0.0;
    float lg[MAXW], lgx[MAXW];
    /* pass 1: gz = dL/dz (ReLU's mask applied) into gx; its sums for the norm */
    for (int64_t b = 0; b < B; b++) {
        const float *xp = x + b * sxb + c * P;
        float *gp = gx + (b * C + c) * P;
        load_activation(xp, a, H, W, scale, shift);
        plane_back_s(a, gy + (b * C + c) * Po, k + 9 * c, g, acck, H, W, S);
        for (int64_t j = 0; j < W; j++) lg[j] = lgx[j] = 0.f;
        for (int64_t i = 0; i < H; i++) {
            const float *ar = a + (i + 1) * PW + 1, *gr = g + (i + 1) * PW + 1;
            for (int64_t j = 0; j < W; j++) {
                const float dz = ar[j] > 0.f ? gr[j] : 0.f;
                gp[i * W + j] = dz;
                lg[j] += dz;
                lgx[j] += dz * ((xp[i * W + j] - m) * r);
            }
        }
        float tg = 0.f, tgx = 0.f;
        for (int64_t j = 0; j < W; j++) {
            tg += lg[j];
            tgx += lgx[j];
        }
        sg += tg;
        sgx += tgx;
    }
    /* pass 2: dL/dx = r * (gamma * dz - mean(gamma * dz) - xh * mean(gamma * dz * xh)) */
    const double n = (double)(B * P);
    const float mg = (float)(ga * sg / n), mgx = (float)(ga * sgx / n);
    for (int64_t b = 0; b < B; b++) {
        const float *xp = x + b * sxb + c * P;
        float *gp = gx + (b * C + c) * P;
        for (int64_t p = 0; p < P; p++) gp[p] = r * (ga * gp[p] - mg - (xp[p] - m) * r * mgx);
    }
    for (int t = 0; t < 9; t++) {
        float sum = 0.f;
        for (int64_t j = 0; j < Wo; j++) sum += acck[t][j];
        gk[9 * c + t] = sum;
    }
    ggamma[c] = (float)sgx;
    gbeta[c] = (float)sg;
}

void bn_node_backward(const float *x, int64_t sxb, const float *gy, const float *k,
                      const float *gamma, const float *beta, const float *mean, const float *rstd,
                      float *gx, float *gk, float *ggamma, float *gbeta, int64_t B, int64_t C,
                      int64_t H, int64_t W, int64_t S, int num_threads) {
#pragma omp parallel num_threads(num_threads)
    {
        float *a = (float *)malloc((H + 2) * (W + 2) * sizeof(float));
        float *g = (float *)malloc((H + 2) * (W + 2) * sizeof(float));
        float(*acck)[MAXW] = malloc(sizeof(float[9][MAXW]));
        zero_border(a, H, W);
#pragma omp for schedule(static)
        for (int64_t c = 0; c < C; c++) {
#define BWD(h, w, s)                                                                          \
    bn_channel_backward(x, sxb, gy, k, gamma, beta, mean, rstd, gx, gk, ggamma, gbeta, B, C, c, \
                        h, w, s, a, g, acck)
            BN_DISPATCH(BWD);
#undef BWD
        }
        free(a);
        free(g);
        free(acck);
    }
}

/* ---- Graph products over the kept edges: CSR forms and W x per sample ----------------------
 *
 * A DNW graph weight keeps a few percent of its entries. Its CSR form (int32 row offsets and
 * column indices, float values) is built from the dense effective weight in two passes over
 * its rows (count, then fill), and its transpose from it by a counting sort, which keeps each
 * new row's entries in increasing column order as CSR wants: the same arrays as torch's
 * nonzero-based form, in one read of the weight instead of several.
 *
 * The product out[b, r] = sum over the row's entries e of val[e] * x[b, col[e]] (+ beta *
 * out[b, r]) runs per sample and output row, each a plane of P values held in vector registers
 * while the row's entries are summed in CSR order: every output element is summed by one
 * thread in a fixed order, so results do not depend on the number of threads. A library CSR
 * product (MKL) keeps its partial sums in memory and is tuned for few, wide right-hand sides;
 * here a plane is 4 to 1024 values, and one sample's input planes stay in cache for all rows.
 */

/* vector registers of 16 floats (two AVX, four SSE registers where AVX-512 is missing);
 * aligned(4): loads and stores need no alignment beyond a float's */
typedef float vec16 __attribute__((vector_size(64), aligned(4)));

/* row_cols (may be NULL): row r's entries are its first row_cols[r] columns only */
int64_t csr_count(const float *w, int64_t rows, int64_t cols, int64_t ld, const int64_t *row_cols,
                  int32_t *crow, int num_threads) {
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *row = w + r * ld;
        const int64_t end = row_cols ? row_cols[r] : cols;
        int32_t n = 0;
        for (int64_t c = 0; c < end; c++) n += row[c] != 0.f;
        crow[r + 1] = n;
    }
    crow[0] = 0;
    for (int64_t r = 0; r < rows; r++) crow[r + 1] += crow[r];
    return crow[rows];
}

void csr_fill(const float *w, int64_t rows, int64_t cols, int64_t ld, const int64_t *row_cols,
              const int32_t *crow, int32_t *col, float *val, int num_threads) {
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *row = w + r * ld;
        const int64_t end = row_cols ? row_cols[r] : cols;
        int64_t e = crow[r];
        for (int64_t c = 0; c < end; c++)
            if (row[c] != 0.f) {
                col[e] = (int32_t)c;
                val[e++] = row[c];
            }
    }
}

void csr_transpose(const int32_t *crow, const int32_t *col, const float *val, int64_t rows,
                   int64_t cols, int32_t *crow_t, int32_t *col_t, float *val_t) {
    const int64_t nnz = crow[rows];
    memset(crow_t, 0, (cols + 1) * sizeof(int32_t));
    for (int64_t e = 0; e < nnz; e++) crow_t[col[e] + 1]++;
    for (int64_t c = 0; c < cols; c++) crow_t[c + 1] += crow_t[c];
    int32_t *next = (int32_t *)malloc((cols > 0 ? cols : 1) * sizeof(int32_t));
    memcpy(next, crow_t, cols * sizeof(int32_t));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t e = crow[r]; e < crow[r + 1]; e++) {
            const int32_t k = next[col[e]]++;
            col_t[k] = (int32_t)r;
            val_t[k] = val[e];
        }
    free(next);
}

/* o[0:V*16] = sum_e val[e] * x[col[e]][0:V*16] (+ beta * o), V vectors in registers */
#define CSR_ROW_VEC(V)                                                                           \
    INLINE void csr_row_v##V(const float *restrict x, const int64_t P, const int32_t *col,     \
                             const float *val, const int64_t e0, const int64_t e1,             \
                             float *restrict o, const float beta) {                            \
        vec16 acc[V];                                                                          \
        for (int v = 0; v < V; v++) acc[v] = (vec16){0};                                       \
        for (int64_t e = e0; e < e1; e++) {                                                    \
            const vec16 *s = (const vec16 *)(x + (int64_t)col[e] * P);                         \
            const float a = val[e];                                                            \
            for (int v = 0; v < V; v++) acc[v] += a * s[v];                                    \
        }                                                                                      \
        vec16 *d = (vec16 *)o;                                                                 \
        if (beta != 0.f)                                                                       \
            for (int v = 0; v < V; v++) acc[v] += beta * d[v];                                 \
        for (int v = 0; v < V; v++) d[v] = acc[v];                                             \
    }
CSR_ROW_VEC(1)
CSR_ROW_VEC(2)
CSR_ROW_VEC(4)

/* the same for n < 16 values */
INLINE void csr_row_short(const float *restrict x, const int64_t P, const int32_t *col,
                          const float *val, const int64_t e0, const int64_t e1,
                          float *restrict o, const int64_t n, const float beta) {
    float acc[16] = {0};
    for (int64_t e = e0; e < e1; e++) {
        const float *s = x + (int64_t)col[e] * P;
        const float a = val[e];
        for (int64_t p = 0; p < n; p++) acc[p] += a * s[p];
    }
    for (int64_t p = 0; p < n; p++) o[p] = beta != 0.f ? acc[p] + beta * o[p] : acc[p];
}

/* one output row of one sample: its plane in chunks of 64, then 32, 16 and the rest */
static void csr_row(const float *x, const int64_t P, const int32_t *col, const float *val,
                    const int64_t e0, const int64_t e1, float *o, const float beta) {
    int64_t p = 0;
    for (; p + 64 <= P; p += 64) csr_row_v4(x + p, P, col, val, e0, e1, o + p, beta);
    if (p + 32 <= P) {
        csr_row_v2(x + p, P, col, val, e0, e1, o + p, beta);
        p += 32;
    }
    if (p + 16 <= P) {
        csr_row_v1(x + p, P, col, val, e0, e1, o + p, beta);
        p += 16;
    }
    if (p < P) csr_row_short(x + p, P, col, val, e0, e1, o + p, P - p, beta);
}

/* out[b, r, :] = sum_e val[e] * x[b, col[e], :] + beta * out[b, r, :] for b < B, r < rows;
 * x and out hold each sample's planes of P values consecutively, samples sx and so apart
 * (x already offset to the block's first column); out is not read where beta is 0 */
void csr_product(const int32_t *crow, const int32_t *col, const float *val, int64_t rows,
                 const float *x, int64_t sx, float *out, int64_t so, int64_t B, int64_t P,
                 float beta, int num_threads) {
#pragma omp parallel for num_threads(num_threads) schedule(static) collapse(2)
    for (int64_t b = 0; b < B; b++)
        for (int64_t r = 0; r < rows; r++)
            csr_row(x + b * sx, P, col, val, crow[r], crow[r + 1], out + b * so + r * P, beta);
}

/* ---- Top-k threshold: the k-th smallest of n floats by radix selection ----------------------
 *
 * Each float maps to an unsigned key in the same order (sign bit flipped for positives, every
 * bit flipped for negatives); three passes over the values histogram the key's top 11 bits,
 * then the next 11 and the last 10 bits among the values whose earlier bits match, each time
 * narrowing to the bin that holds rank k. Exact: the returned value is the k-th smallest, as
 * torch.kthvalue and NumPy's partition give it, in three reads of the values and no copy. */

INLINE uint32_t order_key(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

INLINE float key_value(uint32_t key) {
    const uint32_t u = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float kth_smallest(const float *x, int64_t n, int64_t k, int num_threads) {
    static const int shift[3] = {21, 10, 0}, bits[3] = {11, 11, 10};
    uint32_t prefix = 0, prefix_mask = 0;
    int64_t rank = k; /* 1-based rank among the values that match the prefix */
    for (int pass = 0; pass < 3; pass++) {
        const int nb = 1 << bits[pass], sh = shift[pass];
        int64_t *total = (int64_t *)calloc(nb, sizeof(int64_t));
#pragma omp parallel num_threads(num_threads)
        {
            /* four histograms, so that runs of equal bins (values of one magnitude share their
             * top bits) do not wait on each other's counts */
            uint32_t *h = (uint32_t *)calloc(4 * (size_t)nb, sizeof(uint32_t));
            int nt = 1, t = 0;
#ifdef _OPENMP
            nt = omp_get_num_threads();
            t = omp_get_thread_num();
#endif
            const int64_t chunk = (n / nt) & ~(int64_t)3, lo = t * chunk;
            const int64_t hi = t == nt - 1 ? n : lo + chunk;
            int64_t i = lo;
            for (; i + 4 <= hi; i += 4)
                for (int u = 0; u < 4; u++) {
                    const uint32_t key = order_key(x[i + u]);
                    h[u * nb + ((key >> sh) & (nb - 1))] += (key & prefix_mask) == prefix;
                }
            for (; i < hi; i++) {
                const uint32_t key = order_key(x[i]);
                h[(key >> sh) & (nb - 1)] += (key & prefix_mask) == prefix;
            }
#pragma omp critical
            for (int b = 0; b < nb; b++) total[b] += (int64_t)h[b] + h[nb + b] + h[2 * nb + b] + h[3 * nb + b];
            free(h);
        }
        int b = 0;
        while (b < nb - 1 && rank > total[b]) rank -= total[b++];
        free(total);
        prefix |= (uint32_t)b << sh;
        prefix_mask |= (uint32_t)(nb - 1) << sh;
    }
    return key_value(prefix);
}

/* ---- The static tiny model's whole DAG, one sample at a time (static_fused.py) --------------
 *
 * Node groups g = 0 .. L-1 hold channels rng[g] .. rng[g + 1] of D. Forward, for every sample:
 * group 0's states are the stem's; a later group's states are its pulls, CSR rows (pcrow, pcol,
 * pval; one row per channel rng[1] .., columns: earlier channels) over the sample's node
 * outputs; each state goes through the node update (norm, ReLU, depthwise conv) to the node
 * output. The read-out adds the last group's out-edges (ocrow ..; columns: channels rng[L-1] ..)
 * to the states of the last f nodes. Backward, groups in reverse: a node's output gradient is
 * its out-edges' transposed rows (tcrow ..; rows: channels 0 .., columns: channels rng[1] ..)
 * over the later states' gradients, or for the last group the read-out's (otcrow ..; columns:
 * the f outputs); then the node update's backward, and for the read-out nodes the read-out's
 * gradient added directly.
 *
 * A sample's nodes (D planes) stay in a core's cache from the first group to the read-out, where
 * a product per group over the batch reads every earlier plane back from memory. Each sample is
 * one thread's; with fewer samples than threads the groups run one after another, each group's
 * planes shared out among the threads. Same sums as the per-group kernels (CSR order, the node
 * kernels' plane order); the kernel, gamma and beta gradients are summed per plane, then over
 * the samples in order: results do not depend on the number of threads. */


/* Copy n floats to dst, bypassing the cache where dst is 64-byte aligned and n a multiple of
 * 16: the channel-major copies are read only by the weight gradient's matrix product, long
 * after, so reading their lines into the cache before writing them (as plain stores do) is
 * wasted traffic. The caller ends its writes with stream_fence() before others read them. */
#if defined(__AVX__)
#include <immintrin.h>
INLINE void stream_copy(float *dst, const float *src, int64_t n) {
    if (((uintptr_t)dst & 63) || (n & 15)) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    for (int64_t i = 0; i < n; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
}
INLINE void stream_fence(void) { _mm_sfence(); }
#else
INLINE void stream_copy(float *dst, const float *src, int64_t n) {
    memcpy(dst, src, n * sizeof(float));
}
INLINE void stream_fence(void) {}
#endif

typedef struct {
    int64_t L, D, f, B, H, W;
    const int64_t *rng;
} Dag;

/* forward of the plane (b, c) */
static void dag_forward_plane(const Dag *g, int64_t b, int64_t c, const float *stem,
                              const int32_t *pcrow, const int32_t *pcol, const float *pval,
                              const float *k, const float *gamma, const float *beta, float eps,
                              float *states, float *mean, float *rstd, float *nodes_b,
                              float *nodes_cm, float *a) {
    const int64_t D = g->D, P = g->H * g->W, c0 = g->rng[1];
    float *s = a + (g->H + 2) * (g->W + 2), *y = nodes_b + c * P; /* the state: in scratch */
    if (c < c0)
        memcpy(s, stem + (b * c0 + c) * P, P * sizeof(float));
    else
        csr_row(nodes_b, P, pcol, pval, pcrow[c - c0], pcrow[c - c0 + 1], s, 0.f);
    stream_copy(states + (b * D + c) * P, s, P); /* read again only in the backward */
    float m, r;
    if (g->H == 8 && g->W == 8)
        plane_forward(s, y, k + 9 * c, a, 8, 8, 1, gamma[c], beta[c], eps, &m, &r);
    else
        plane_forward(s, y, k + 9 * c, a, g->H, g->W, 1, gamma[c], beta[c], eps, &m, &r);
    mean[b * D + c] = m;
    rstd[b * D + c] = r;
    if (nodes_cm) stream_copy(nodes_cm + (c * g->B + b) * P, y, P);
}

static void dag_readout(const Dag *g, int64_t b, const int32_t *ocrow, const int32_t *ocol,
                        const float *oval, const float *states, const float *nodes_b, float *out) {
    const int64_t D = g->D, P = g->H * g->W, f = g->f, last = g->rng[g->L - 1];
    for (int64_t r = 0; r < f; r++) {
        float *o = out + (b * f + r) * P;
        memcpy(o, states + (b * D + D - f + r) * P, P * sizeof(float));
        csr_row(nodes_b + last * P, P, ocol, oval, ocrow[r], ocrow[r + 1], o, 1.f);
    }
}

void static_forward(int64_t L, const int64_t *rng, int64_t f, const float *stem,
                    const int32_t *pcrow, const int32_t *pcol, const float *pval,
                    const int32_t *ocrow, const int32_t *ocol, const float *oval,
                    const float *k, const float *gamma, const float *beta, float eps,
                    float *states, float *mean, float *rstd, float *nodes, float *nodes_cm,
                    float *out, int64_t B, int64_t H, int64_t W, int num_threads) {
    const Dag g = {L, rng[L], f, B, H, W, rng};
    const int64_t D = rng[L];
    const int by_sample = B >= num_threads;
#pragma omp parallel num_threads(num_threads)
    {
        /* the padded plane of the node kernels, then a state plane */
        float *a = (float *)malloc(((H + 2) * (W + 2) + H * W) * sizeof(float));
        zero_border(a, H, W);
        if (by_sample) {
            /* one sample's node outputs: a thread's own, in its cache */
            float *nodes_b = (float *)malloc(D * H * W * sizeof(float));
#pragma omp for schedule(static)
            for (int64_t b = 0; b < B; b++) {
                for (int64_t c = 0; c < D; c++)
                    dag_forward_plane(&g, b, c, stem, pcrow, pcol, pval, k, gamma, beta, eps,
                                      states, mean, rstd, nodes_b, nodes_cm, a);
                dag_readout(&g, b, ocrow, ocol, oval, states, nodes_b, out);
            }
            free(nodes_b);
        } else {
            for (int64_t j = 0; j < L; j++) {
                const int64_t lo = rng[j], n = rng[j + 1] - lo;
#pragma omp for schedule(static) nowait
                for (int64_t bc = 0; bc < B * n; bc++)
                    dag_forward_plane(&g, bc / n, lo + bc % n, stem, pcrow, pcol, pval, k, gamma,
                                      beta, eps, states, mean, rstd, nodes + bc / n * D * H * W,
                                      nodes_cm, a);
                stream_fence(); /* the states streamed out are read by other threads next */
#pragma omp barrier
            }
#pragma omp for schedule(static)
            for (int64_t b = 0; b < B; b++)
                dag_readout(&g, b, ocrow, ocol, oval, states, nodes + b * D * H * W, out);
        }
        stream_fence();
        free(a);
    }
}

/* backward of the plane (b, c): its state gradient into gs (and its channel-major copy), and
 * the plane's kernel, gamma and beta gradient sums into pk [B, D, 9], pg, pb [B, D] */
static void dag_backward_plane(const Dag *g, int64_t b, int64_t c, const float *g_out,
                               const int32_t *tcrow, const int32_t *tcol, const float *tval,
                               const int32_t *otcrow, const int32_t *otcol, const float *otval,
                               const float *states, const float *mean, const float *rstd,
                               const float *k, const float *gamma, const float *beta,
                               float *gs_b, float *g_stem, float *gs_cm, float *pk, float *pg,
                               float *pb, Scratch *s, float *gy) {
    const int64_t D = g->D, P = g->H * g->W, f = g->f, c1 = g->rng[1], last = g->rng[g->L - 1];
    if (c >= 2) /* the planes come in descending order, which the hardware does not foresee */
        for (int64_t q = 0; q < P; q += 16) __builtin_prefetch(states + (b * D + c - 2) * P + q);
    if (c >= last)
        csr_row(g_out + b * f * P, P, otcol, otval, otcrow[c - last], otcrow[c - last + 1], gy,
                0.f);
    else
        csr_row(gs_b + c1 * P, P, tcol, tval, tcrow[c], tcrow[c + 1], gy, 0.f);
    for (int t = 0; t < 9; t++) memset(s->acck[0][t], 0, g->W * sizeof(float));
    memset(s->accg[0], 0, g->W * sizeof(float));
    memset(s->accb[0], 0, g->W * sizeof(float));
    const int64_t bc = b * D + c;
    float *gx = gs_b + c * P;
    if (g->H == 8 && g->W == 8)
        plane_backward(states + bc * P, gy, k + 9 * c, gx, s, 0, 8, 8, 1, gamma[c], beta[c],
                       mean[bc], rstd[bc]);
    else
        plane_backward(states + bc * P, gy, k + 9 * c, gx, s, 0, g->H, g->W, 1, gamma[c],
                       beta[c], mean[bc], rstd[bc]);
    if (c >= D - f) { /* the read-out takes these nodes' states directly too */
        const float *go = g_out + (b * f + c - (D - f)) * P;
        for (int64_t p = 0; p < P; p++) gx[p] += go[p];
    }
    stream_copy(gs_cm + (c * g->B + b) * P, gx, P);
    if (c < c1) memcpy(g_stem + (b * c1 + c) * P, gx, P * sizeof(float));
    for (int t = 0; t < 9; t++) {
        float sum = 0.f;
        for (int64_t j = 0; j < g->W; j++) sum += s->acck[0][t][j];
        pk[bc * 9 + t] = sum;
    }
    float sg = 0.f, sb = 0.f;
    for (int64_t j = 0; j < g->W; j++) {
        sg += s->accg[0][j];
        sb += s->accb[0][j];
    }
    pg[bc] = sg;
    pb[bc] = sb;
}

void static_backward(int64_t L, const int64_t *rng, int64_t f, const float *g_out,
                     const int32_t *tcrow, const int32_t *tcol, const float *tval,
                     const int32_t *otcrow, const int32_t *otcol, const float *otval,
                     const float *states, const float *mean, const float *rstd, const float *k,
                     const float *gamma, const float *beta, float *gs, float *g_stem,
                     float *gs_cm, float *pk,
                     float *pg, float *pb, float *gk, float *ggamma, float *gbeta, int64_t B,
                     int64_t H, int64_t W, int num_threads) {
    const Dag g = {L, rng[L], f, B, H, W, rng};
    const int64_t D = rng[L], P = H * W;
    const int by_sample = B >= num_threads;
#pragma omp parallel num_threads(num_threads)
    {
        Scratch s = scratch_new(H, W, 1);
        float *gy = (float *)malloc(P * sizeof(float));
        if (by_sample) {
            /* one sample's state gradients: a thread's own, in its cache */
            float *gs_b = (float *)malloc(D * P * sizeof(float));
#pragma omp for schedule(static)
            for (int64_t b = 0; b < B; b++)
                for (int64_t c = D - 1; c >= 0; c--)
                    dag_backward_plane(&g, b, c, g_out, tcrow, tcol, tval, otcrow, otcol, otval,
                                       states, mean, rstd, k, gamma, beta, gs_b, g_stem, gs_cm,
                                       pk, pg, pb, &s, gy);
            free(gs_b);
        } else {
            for (int64_t j = L - 1; j >= 0; j--) {
                const int64_t lo = rng[j], n = rng[j + 1] - lo;
#pragma omp for schedule(static)
                for (int64_t bc = 0; bc < B * n; bc++)
                    dag_backward_plane(&g, bc / n, lo + bc % n, g_out, tcrow, tcol, tval, otcrow,
                                       otcol, otval, states, mean, rstd, k, gamma, beta,
                                       gs + bc / n * D * P, g_stem, gs_cm, pk, pg, pb, &s, gy);
            }
        }
        stream_fence();
        /* each channel's sums over the samples, in sample order */
#pragma omp for schedule(static)
        for (int64_t c = 0; c < D; c++) {
            float sk[9] = {0}, sg = 0.f, sb = 0.f;
            for (int64_t b = 0; b < B; b++) {
                for (int t = 0; t < 9; t++) sk[t] += pk[(b * D + c) * 9 + t];
                sg += pg[b * D + c];
                sb += pb[b * D + c];
            }
            for (int t = 0; t < 9; t++) gk[9 * c + t] = sk[t];
            ggamma[c] = sg;
            gbeta[c] = sb;
        }
        scratch_free(&s);
        free(gy);
    }
}
