// Pillow's bilinear resampling (libImaging/Resample.c), shared by the CPU and CUDA paths so both compute
// the same integers: double weights of a triangle filter widened by the downscale factor (antialiasing),
// normalised per output pixel, quantised to 22-bit fixed point, and an 8-bit rounded intermediate image
// between the two passes (horizontal first, except as vertical_first says).
#pragma once

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define RSZ_HD __host__ __device__ inline
#else
#define RSZ_HD inline
#endif

namespace rsz {

constexpr int kPrecisionBits = 32 - 8 - 2;

// Taps of one output coordinate: input indices [first, first + count).
struct Taps {
  int first;
  int count;
  double center;
  double inv_filterscale;
  double total;  // sum of the unnormalised weights
};

RSZ_HD double triangle(double x) {
  x = x < 0.0 ? -x : x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

RSZ_HD Taps taps_for(int in_size, int out_size, int out_index) {
  double scale = (double)in_size / out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  double support = filterscale;  // the bilinear filter's support is 1
  Taps t;
  t.center = (out_index + 0.5) * scale;
  t.inv_filterscale = 1.0 / filterscale;
  int xmin = (int)(t.center - support + 0.5);
  if (xmin < 0) xmin = 0;
  int xmax = (int)(t.center + support + 0.5);
  if (xmax > in_size) xmax = in_size;
  t.first = xmin;
  t.count = xmax - xmin;
  t.total = 0.0;
  for (int k = 0; k < t.count; ++k) t.total += triangle((k + xmin - t.center + 0.5) * t.inv_filterscale);
  return t;
}

// Fixed-point weight of tap k (Pillow's normalize_coeffs_8bpc).
RSZ_HD int32_t tap_weight(const Taps &t, int k) {
  double w = triangle((k + t.first - t.center + 0.5) * t.inv_filterscale);
  if (t.total != 0.0) w /= t.total;
  double scaled = w * (double)(1 << kPrecisionBits);
  return (int32_t)(scaled < 0 ? scaled - 0.5 : scaled + 0.5);
}

// Round a fixed-point accumulator back to 8 bits (Pillow's clip8 with its 0.5 start value).
RSZ_HD int32_t clip8(int32_t acc) {
  int32_t v = acc >> kPrecisionBits;
  return v < 0 ? 0 : (v > 255 ? 255 : v);
}

constexpr int32_t kRoundHalf = 1 << (kPrecisionBits - 1);

// Which pass Pillow 13 runs first, to a size x size output; the order matters because the intermediate is
// rounded to 8 bits. Vertical first when the height shrinks and the width exceeds the size by less than half
// of what the height does (then the smaller intermediate comes from the vertical pass). Found by comparing
// Pillow 13's output for every tile shape up to 140/200/330 px at sizes 32/64/224 (tests/bench/test_native.py
// checks shapes on both sides of the boundary); the simpler "height shrinks while the width grows" missed
// tiles taller than wide whose width shrinks too (250 x 130 to 64).
RSZ_HD bool vertical_first(int in_h, int in_w, int size) {
  return in_h > size && 2 * (in_w - size) < in_h - size;
}

}  // namespace rsz
