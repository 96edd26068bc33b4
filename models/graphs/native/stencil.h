/* One 3x3 stencil for both native libraries (node_ops.c, block_eval.c): a depthwise 3x3
 * convolution of one plane, read from its zero-padded copy. The nine taps are summed in row
 * order; both libraries' results (and their tests against torch) rely on that order. */
#ifndef DNW_STENCIL_H
#define DNW_STENCIL_H

#include <stdint.h>

/* y[i][j] = sum_{u,v} k[u][v] * a[S i + u][S j + v] over the padded [H + 2, W + 2] plane a */
static inline __attribute__((always_inline)) void
correlate3x3_s(const float *restrict a, const float *restrict k, float *restrict y,
               const int64_t H, const int64_t W, const int64_t S) {
    const int64_t PW = W + 2, Ho = (H - 1) / S + 1, Wo = (W - 1) / S + 1;
    for (int64_t i = 0; i < Ho; i++) {
        const float *r0 = a + S * i * PW, *r1 = r0 + PW, *r2 = r1 + PW;
        for (int64_t j = 0; j < Wo; j++) {
            const int64_t q = S * j;
            y[i * Wo + j] = k[0] * r0[q] + k[1] * r0[q + 1] + k[2] * r0[q + 2] + k[3] * r1[q] +
                            k[4] * r1[q + 1] + k[5] * r1[q + 2] + k[6] * r2[q] +
                            k[7] * r2[q + 1] + k[8] * r2[q + 2];
        }
    }
}

#endif
