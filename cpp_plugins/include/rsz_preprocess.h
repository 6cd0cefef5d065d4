/* rsz native preprocessing: a batch of uint8 HWC RGB tiles -> normalised NCHW float32/float16, with
 * Pillow's bilinear or bicubic resize (antialiased triangle or cubic filter, 8-bit fixed point) in the same
 * pass (bicubic: CPU path only).
 *
 * The result equals rsz_infer.preprocess.to_model_input (Pillow resize, then (x/255 - mean) / std) bit for
 * bit in fp32 on the Pillow versions tested (see README.md for the tolerance the tests allow).
 *
 * Tiles may differ in size. They lie one after another in `pixels`; tile i starts at byte offsets[i] and
 * holds heights[i] * widths[i] * 3 bytes (row-major, RGB interleaved).
 * `out` holds batch * 3 * size * size values: float32, or IEEE half (uint16 bits) when out_fp16 is 1.
 * The two rsz_preprocess_* functions return 0 on success, or non-zero with rsz_last_error() saying why.
 */
#ifndef RSZ_PREPROCESS_H
#define RSZ_PREPROCESS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version of this ABI: raise it whenever a function here changes its parameters, its return value or
 * its meaning (and set rsz_infer/native.py's ABI_VERSION to it). rsz loads a library only when
 * rsz_native_abi_version() returns its own ABI_VERSION, so a stale build (a user's own, one left in a venv)
 * whose functions take other arguments is refused with a line instead of being called (a crash, or
 * garbage model inputs). */
#define RSZ_NATIVE_ABI_VERSION 2

/* RSZ_NATIVE_ABI_VERSION of the sources this library was built from. */
int rsz_native_abi_version(void);

/* CPU path (OpenMP over tiles). filter: 0 Pillow's BILINEAR, 1 its BICUBIC (version 2 on). */
int rsz_preprocess_cpu(const uint8_t *pixels, const int64_t *offsets, const int32_t *heights,
                       const int32_t *widths, int32_t batch, int32_t size, const float *mean,
                       const float *std, int32_t out_fp16, int32_t filter, void *out);

/* CUDA path (librsz_preprocess_cuda.so only; bilinear only): copies the tiles to the GPU, one kernel, and writes `out`
 * on the host (out_on_device 0) or, for a zero-copy hand-off to an engine, at a device pointer (1).
 * Not thread-safe: the device buffers are shared and grow as needed. */
int rsz_preprocess_cuda(const uint8_t *pixels, const int64_t *offsets, const int32_t *heights,
                        const int32_t *widths, int32_t batch, int32_t size, const float *mean,
                        const float *std, int32_t out_fp16, int32_t out_on_device, void *out);

/* 1 when the library was built with the CUDA path and a GPU is visible, else 0. */
int rsz_cuda_available(void);

const char *rsz_last_error(void);

#ifdef __cplusplus
}
#endif

#endif
