/* One Block of a shrunk fast_eval network (models/graphs/fast) in one call, for inference.
 *
 * The Block in pull order (models/graphs/fast/plan.py): source layer 0 is the Block's input
 * nodes, each later layer's kept nodes sum their in-edges from the earlier layers, and the
 * outputs sum their in-edges from every layer. A node's value is folded BatchNorm
 * (x * scale + shift), ReLU and its 3x3 depthwise convolution (zero padding 1; stride `stride`
 * for layer 0, 1 after it). Here each target node's plane is summed from its CSR row, normalised,
 * rectified and convolved while it sits in a thread's scratch, and written once: torch's sparse
 * backend runs the same Block as about a dozen ops per layer (product, transposes, norm, ReLU,
 * convolution), whose fixed cost per call is most of a single image's time.
 *
 * Same math as the sparse backend: every node's in-edges summed in the order of its CSR row (the
 * column order), the affine norm, ReLU, the nine taps summed in row-major order. MKL's CSR product
 * and oneDNN's convolution may sum in another order, so results agree to float rounding
 * (tests/models/test_fast_eval.py). Every output element is computed by one thread in a fixed
 * order: results do not depend on the number of threads.
 *
 * Layout: x is [N, C0, H, W] with any element strides; buf is [N, S, Ho * Wo] (S = every source
 * node), out is [N, n_out, Ho, Wo] contiguous. scale, shift are [S], kernel is [S, 9]; the CSR
 * arrays hold the rows of every target, layers 1.. in order then the outputs, with source
 * indices as columns.
 *
 * Built and loaded by models/graphs/native/__init__.py as node_ops.c is.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))
#include "stencil.h" /* correlate3x3_s */
#define MAXSIDE 64 /* largest plane side; the Python side uses torch ops above it */

int block_eval_max_side(void) { return MAXSIDE; }

/* zero the one-element border of a padded [(H + 2), (W + 2)] scratch plane */
static void zero_border(float *a, int64_t H, int64_t W) {
    const int64_t PW = W + 2;
    memset(a, 0, PW * sizeof(float));
    memset(a + (H + 1) * PW, 0, PW * sizeof(float));
    for (int64_t i = 1; i <= H; i++) a[i * PW] = a[i * PW + W + 1] = 0.f;
}

/* interior of the padded plane a <- relu(x * scale + shift), x read with element strides */
INLINE void load_strided(const float *restrict x, const int64_t sh, const int64_t sw,
                         float *restrict a, const int64_t H, const int64_t W, const float scale,
                         const float shift) {
    const int64_t PW = W + 2;
    for (int64_t i = 0; i < H; i++) {
        float *row = a + (i + 1) * PW + 1;
        for (int64_t j = 0; j < W; j++) {
            const float z = x[i * sh + j * sw] * scale + shift;
            row[j] = z > 0.f ? z : 0.f;
        }
    }
}


/* acc[0:P] = sum over the entries e0 .. e1 of val[e] * src[col[e]][0:P], in entry order */
INLINE void gather(const float *restrict src, const int64_t *restrict col,
                   const float *restrict val, const int64_t e0, const int64_t e1,
                   float *restrict acc, const int64_t P) {
    for (int64_t p = 0; p < P; p++) acc[p] = 0.f;
    for (int64_t e = e0; e < e1; e++) {
        const float v = val[e];
        const float *restrict s = src + col[e] * P;
        for (int64_t p = 0; p < P; p++) acc[p] += v * s[p];
    }
}

/* literal plane sizes, so that the compiler unrolls and vectorises the short loops */
static void gather_any(const float *src, const int64_t *col, const float *val, int64_t e0,
                       int64_t e1, float *acc, int64_t P) {
    switch (P) {
    case 1: gather(src, col, val, e0, e1, acc, 1); break;
    case 4: gather(src, col, val, e0, e1, acc, 4); break;
    case 16: gather(src, col, val, e0, e1, acc, 16); break;
    case 64: gather(src, col, val, e0, e1, acc, 64); break;
    case 256: gather(src, col, val, e0, e1, acc, 256); break;
    case 1024: gather(src, col, val, e0, e1, acc, 1024); break;
    default: gather(src, col, val, e0, e1, acc, P);
    }
}

/* a target node: its in-edges into acc, then norm, ReLU and the stride-1 depthwise conv */
static void node_any(const float *src, const int64_t *col, const float *val, int64_t e0,
                     int64_t e1, float *acc, float *a, const float *k, float scale, float shift,
                     float *y, int64_t H, int64_t W) {
    gather_any(src, col, val, e0, e1, acc, H * W);
#define NODE(h, w)                                                                            \
    do {                                                                                      \
        load_strided(acc, w, 1, a, h, w, scale, shift);                                       \
        correlate3x3_s(a, k, y, h, w, 1);                                                     \
    } while (0)
    if (H == 2 && W == 2) NODE(2, 2);
    else if (H == 4 && W == 4) NODE(4, 4);
    else if (H == 8 && W == 8) NODE(8, 8);
    else if (H == 16 && W == 16) NODE(16, 16);
    else if (H == 32 && W == 32) NODE(32, 32);
    else NODE(H, W);
#undef NODE
}

void block_eval(const float *x, int64_t sxn, int64_t sxc, int64_t sxh, int64_t sxw, int64_t N,
                int64_t H, int64_t W, int64_t stride, int64_t L, const int64_t *sizes,
                const float *scale, const float *shift, const float *kernel, const int64_t *crow,
                const int64_t *col, const float *val, int64_t n_out, float *buf, float *out,
                int num_threads) {
    const int64_t Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1, P = Ho * Wo;
    const int64_t C0 = sizes[0];
    int64_t S = 0;
    for (int64_t l = 0; l < L; l++) S += sizes[l];
#pragma omp parallel num_threads(num_threads)
    {
        float *a0 = (float *)malloc((H + 2) * (W + 2) * sizeof(float));
        float *a1 = (float *)malloc((Ho + 2) * (Wo + 2) * sizeof(float));
        float *acc = (float *)malloc(P * sizeof(float));
        zero_border(a0, H, W);
        zero_border(a1, Ho, Wo);
        /* layer 0: the Block's input nodes */
#pragma omp for schedule(static)
        for (int64_t nc = 0; nc < N * C0; nc++) {
            const int64_t n = nc / C0, c = nc % C0;
            load_strided(x + n * sxn + c * sxc, sxh, sxw, a0, H, W, scale[c], shift[c]);
            correlate3x3_s(a0, kernel + 9 * c, buf + (n * S + c) * P, H, W, stride);
        }
        /* each later layer reads the layers before it; the loop's barrier orders them */
        int64_t off = C0;
        for (int64_t l = 1; l <= L; l++) {
            const int64_t rows = l < L ? sizes[l] : n_out, t0 = off - C0;
#pragma omp for schedule(static)
            for (int64_t nr = 0; nr < N * rows; nr++) {
                const int64_t n = nr / rows, r = nr % rows, t = t0 + r;
                const float *src = buf + n * S * P;
                if (l < L) {
                    const int64_t s = off + r;
                    node_any(src, col, val, crow[t], crow[t + 1], acc, a1, kernel + 9 * s,
                             scale[s], shift[s], buf + (n * S + s) * P, Ho, Wo);
                } else {
                    gather_any(src, col, val, crow[t], crow[t + 1], out + (n * n_out + r) * P, P);
                }
            }
            if (l < L) off += sizes[l];
        }
        free(a0);
        free(a1);
        free(acc);
    }
}
