// CPU path: per tile, two 1-D passes through an 8-bit intermediate (as Pillow), then one sweep that scales,
// standardises and writes CHW planes.
#include <stdio.h>
#include <string.h>

#include <string>
#include <vector>

#include "../include/rsz_preprocess.h"
#include "resample.h"

namespace {

thread_local std::string g_error;

struct Table {
  std::vector<int> first, count;
  std::vector<int32_t> weights;  // out_size x ksize
  int ksize = 0;
};

Table make_table(int in_size, int out_size, int filter) {
  Table t;
  t.first.resize(out_size);
  t.count.resize(out_size);
  std::vector<rsz::Taps> taps(out_size);
  for (int i = 0; i < out_size; ++i) {
    taps[i] = rsz::taps_for(in_size, out_size, i, filter);
    if (taps[i].count > t.ksize) t.ksize = taps[i].count;
  }
  t.weights.assign((size_t)out_size * t.ksize, 0);
  for (int i = 0; i < out_size; ++i) {
    t.first[i] = taps[i].first;
    t.count[i] = taps[i].count;
    for (int k = 0; k < taps[i].count; ++k) t.weights[(size_t)i * t.ksize + k] = rsz::tap_weight(taps[i], k);
  }
  return t;
}

// One 1-D pass over 8-bit HWC data: `lines` lines of `in_len` pixels (pixel step `step`, line step
// `line_step`, in bytes) resampled to `out_len` pixels written with `out_step` / `out_line_step`.
void pass(const uint8_t *src, int lines, size_t line_step, size_t step, const Table &t, int out_len,
          uint8_t *dst, size_t out_line_step, size_t out_step) {
  for (int l = 0; l < lines; ++l) {
    const uint8_t *line = src + l * line_step;
    for (int o = 0; o < out_len; ++o) {
      const int32_t *wt = &t.weights[(size_t)o * t.ksize];
      int32_t acc[3] = {rsz::kRoundHalf, rsz::kRoundHalf, rsz::kRoundHalf};
      for (int k = 0; k < t.count[o]; ++k) {
        const uint8_t *p = line + (size_t)(t.first[o] + k) * step;
        acc[0] += p[0] * wt[k];
        acc[1] += p[1] * wt[k];
        acc[2] += p[2] * wt[k];
      }
      uint8_t *d = dst + l * out_line_step + o * out_step;
      for (int c = 0; c < 3; ++c) d[c] = (uint8_t)rsz::clip8(acc[c]);
    }
  }
}

template <typename Out>
void one_tile(const uint8_t *src, int h, int w, int size, const float *mean, const float *std, int filter,
              Out *out) {
  Table horiz = make_table(w, size, filter), vert = make_table(h, size, filter);
  std::vector<uint8_t> resized((size_t)size * size * 3);
  if (rsz::vertical_first(h, w, size)) {
    std::vector<uint8_t> mid((size_t)size * w * 3);  // size rows of w pixels
    pass(src, w, 3, (size_t)w * 3, vert, size, mid.data(), 3, (size_t)w * 3);  // columns
    pass(mid.data(), size, (size_t)w * 3, 3, horiz, size, resized.data(), (size_t)size * 3, 3);
  } else {
    std::vector<uint8_t> mid((size_t)h * size * 3);  // h rows of size pixels
    pass(src, h, (size_t)w * 3, 3, horiz, size, mid.data(), (size_t)size * 3, 3);  // rows
    pass(mid.data(), size, 3, (size_t)size * 3, vert, size, resized.data(), 3, (size_t)size * 3);
  }
  const float inv255 = (float)(1.0 / 255.0);  // the float32 constant numpy multiplies by
  const size_t plane = (size_t)size * size;
  for (size_t i = 0; i < plane; ++i)
    for (int c = 0; c < 3; ++c) {
      float v = (float)resized[i * 3 + c] * inv255;
      out[c * plane + i] = (Out)((v - mean[c]) / std[c]);
    }
}

}  // namespace

extern "C" {

// Here for both builds: librsz_preprocess_cuda.so links this file too.
int rsz_native_abi_version(void) { return RSZ_NATIVE_ABI_VERSION; }

const char *rsz_last_error(void) { return g_error.c_str(); }

void rsz_set_error(const char *message) { g_error = message; }

int rsz_check_args(const int32_t *heights, const int32_t *widths, int32_t batch, int32_t size) {
  if (batch < 0 || size < 1) {
    g_error = "batch must be >= 0 and size >= 1";
    return 1;
  }
  for (int i = 0; i < batch; ++i) {
    if (heights[i] < 1 || widths[i] < 1) {
      char msg[128];
      snprintf(msg, sizeof msg, "tile %d: empty (%d x %d)", i, heights[i], widths[i]);
      g_error = msg;
      return 1;
    }
  }
  return 0;
}

int rsz_preprocess_cpu(const uint8_t *pixels, const int64_t *offsets, const int32_t *heights,
                       const int32_t *widths, int32_t batch, int32_t size, const float *mean,
                       const float *std, int32_t out_fp16, int32_t filter, void *out) {
  if (rsz_check_args(heights, widths, batch, size)) return 1;
  if (filter != rsz::kBilinear && filter != rsz::kBicubic) {
    char msg[96];
    snprintf(msg, sizeof msg, "filter %d: expected 0 (bilinear) or 1 (bicubic)", filter);
    g_error = msg;
    return 1;
  }
  const size_t per_tile = (size_t)3 * size * size;
#pragma omp parallel for schedule(dynamic)
  for (int i = 0; i < batch; ++i) {
    const uint8_t *src = pixels + offsets[i];
    if (out_fp16)
      one_tile(src, heights[i], widths[i], size, mean, std, filter, (_Float16 *)out + i * per_tile);
    else
      one_tile(src, heights[i], widths[i], size, mean, std, filter, (float *)out + i * per_tile);
  }
  return 0;
}

#ifndef RSZ_WITH_CUDA
int rsz_cuda_available(void) { return 0; }

int rsz_preprocess_cuda(const uint8_t *, const int64_t *, const int32_t *, const int32_t *, int32_t, int32_t,
                        const float *, const float *, int32_t, int32_t, void *) {
  g_error = "this library was built without CUDA (make cuda builds librsz_preprocess_cuda.so)";
  return 1;
}
#endif

}  // extern "C"
