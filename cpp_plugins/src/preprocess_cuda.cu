// CUDA path: one thread per output pixel does the whole resize (both passes, with Pillow's 8-bit rounded
// intermediate recomputed on the fly, in Pillow's pass order), the scaling, the standardisation and the HWC->CHW store.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdio.h>

#include <string>

#include "../include/rsz_preprocess.h"
#include "resample.h"

extern "C" int rsz_check_args(const int32_t *heights, const int32_t *widths, int32_t batch, int32_t size);
extern "C" void rsz_set_error(const char *message);

namespace {

constexpr int kMaxCachedTaps = 64;  // horizontal weights kept in registers; longer filters recompute them

struct Norm {
  float mean[3];
  float std[3];
};

template <typename Out>
__device__ void store(Out *dst, float v);
template <>
__device__ void store<float>(float *dst, float v) { *dst = v; }
template <>
__device__ void store<__half>(__half *dst, float v) { *dst = __float2half_rn(v); }

template <typename Out>
__global__ void preprocess_kernel(const uint8_t *pixels, const int64_t *offsets, const int32_t *heights,
                                  const int32_t *widths, int size, Norm norm, Out *out) {
  const int tile = blockIdx.y;
  const int index = blockIdx.x * blockDim.x + threadIdx.x;
  if (index >= size * size) return;
  const int y = index / size, x = index % size;
  const int h = heights[tile], w = widths[tile];
  const uint8_t *src = pixels + offsets[tile];

  const rsz::Taps th = rsz::taps_for(w, size, x);
  const rsz::Taps tv = rsz::taps_for(h, size, y);
  // The inner pass (rounded to 8 bits, as Pillow's intermediate image) runs along the first axis Pillow
  // resamples; the outer pass combines those rounded values along the other axis.
  const bool vfirst = rsz::vertical_first(h, w, size);
  const rsz::Taps &inner = vfirst ? tv : th;
  const rsz::Taps &outer = vfirst ? th : tv;
  const size_t inner_step = vfirst ? (size_t)w * 3 : 3;  // bytes between taps of the inner pass
  const size_t outer_step = vfirst ? 3 : (size_t)w * 3;
  int32_t cached_w[kMaxCachedTaps];
  const bool cached = inner.count <= kMaxCachedTaps;
  if (cached)
    for (int k = 0; k < inner.count; ++k) cached_w[k] = rsz::tap_weight(inner, k);

  const uint8_t *origin = src + (size_t)inner.first * inner_step + (size_t)outer.first * outer_step;
  int32_t acc[3] = {rsz::kRoundHalf, rsz::kRoundHalf, rsz::kRoundHalf};
  for (int ko = 0; ko < outer.count; ++ko) {
    const uint8_t *line = origin + (size_t)ko * outer_step;
    int32_t mid[3] = {rsz::kRoundHalf, rsz::kRoundHalf, rsz::kRoundHalf};
    for (int ki = 0; ki < inner.count; ++ki) {
      const int32_t wt = cached ? cached_w[ki] : rsz::tap_weight(inner, ki);
      const uint8_t *p = line + (size_t)ki * inner_step;
      mid[0] += p[0] * wt;
      mid[1] += p[1] * wt;
      mid[2] += p[2] * wt;
    }
    const int32_t wo = rsz::tap_weight(outer, ko);
    for (int c = 0; c < 3; ++c) acc[c] += rsz::clip8(mid[c]) * wo;
  }
  const float inv255 = (float)(1.0 / 255.0);
  const size_t plane = (size_t)size * size;
  Out *dst = out + (size_t)tile * 3 * plane + index;
  for (int c = 0; c < 3; ++c) {
    // explicit round-to-nearest ops: no FMA contraction, so the result equals numpy's float32 arithmetic
    float v = __fmul_rn((float)rsz::clip8(acc[c]), inv255);
    store(dst + c * plane, __fdiv_rn(__fsub_rn(v, norm.mean[c]), norm.std[c]));
  }
}

struct DeviceBuffer {
  void *ptr = nullptr;
  size_t bytes = 0;
  cudaError_t reserve(size_t need) {
    if (need <= bytes) return cudaSuccess;
    if (ptr) cudaFree(ptr);
    ptr = nullptr;
    bytes = 0;
    cudaError_t err = cudaMalloc(&ptr, need);
    if (err == cudaSuccess) bytes = need;
    return err;
  }
};

DeviceBuffer g_pixels, g_meta, g_out;

bool failed(cudaError_t err, const char *what) {
  if (err == cudaSuccess) return false;
  char msg[256];
  snprintf(msg, sizeof msg, "CUDA %s: %s", what, cudaGetErrorString(err));
  rsz_set_error(msg);
  return true;
}

}  // namespace

extern "C" int rsz_cuda_available(void) {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0 ? 1 : 0;
}

extern "C" int rsz_preprocess_cuda(const uint8_t *pixels, const int64_t *offsets, const int32_t *heights,
                                   const int32_t *widths, int32_t batch, int32_t size, const float *mean,
                                   const float *std, int32_t out_fp16, int32_t out_on_device, void *out) {
  if (rsz_check_args(heights, widths, batch, size)) return 1;
  if (batch == 0) return 0;
  size_t pixel_bytes = 0;
  for (int i = 0; i < batch; ++i) {
    size_t end = (size_t)offsets[i] + (size_t)heights[i] * widths[i] * 3;
    if (end > pixel_bytes) pixel_bytes = end;
  }
  const size_t meta_bytes = (size_t)batch * (sizeof(int64_t) + 2 * sizeof(int32_t));
  const size_t out_bytes = (size_t)batch * 3 * size * size * (out_fp16 ? 2 : 4);
  if (failed(g_pixels.reserve(pixel_bytes), "malloc") || failed(g_meta.reserve(meta_bytes), "malloc"))
    return 1;
  if (!out_on_device && failed(g_out.reserve(out_bytes), "malloc")) return 1;
  char *meta = (char *)g_meta.ptr;
  int64_t *d_offsets = (int64_t *)meta;
  int32_t *d_heights = (int32_t *)(meta + batch * sizeof(int64_t));
  int32_t *d_widths = d_heights + batch;
  if (failed(cudaMemcpy(g_pixels.ptr, pixels, pixel_bytes, cudaMemcpyHostToDevice), "copy") ||
      failed(cudaMemcpy(d_offsets, offsets, batch * sizeof(int64_t), cudaMemcpyHostToDevice), "copy") ||
      failed(cudaMemcpy(d_heights, heights, batch * sizeof(int32_t), cudaMemcpyHostToDevice), "copy") ||
      failed(cudaMemcpy(d_widths, widths, batch * sizeof(int32_t), cudaMemcpyHostToDevice), "copy"))
    return 1;
  Norm norm;
  for (int c = 0; c < 3; ++c) {
    norm.mean[c] = mean[c];
    norm.std[c] = std[c];
  }
  void *dst = out_on_device ? out : g_out.ptr;
  const int threads = 256;
  dim3 grid((size * size + threads - 1) / threads, batch);
  const uint8_t *d_pixels = (const uint8_t *)g_pixels.ptr;
  if (out_fp16)
    preprocess_kernel<__half><<<grid, threads>>>(d_pixels, d_offsets, d_heights, d_widths, size, norm, (__half *)dst);
  else
    preprocess_kernel<float><<<grid, threads>>>(d_pixels, d_offsets, d_heights, d_widths, size, norm, (float *)dst);
  if (failed(cudaGetLastError(), "kernel launch")) return 1;
  if (out_on_device) return failed(cudaDeviceSynchronize(), "kernel") ? 1 : 0;
  return failed(cudaMemcpy(out, g_out.ptr, out_bytes, cudaMemcpyDeviceToHost), "copy back") ? 1 : 0;
}
