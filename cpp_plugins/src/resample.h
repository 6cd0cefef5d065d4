// Pillow's bilinear and bicubic resampling (libImaging/Resample.c), shared by the CPU and CUDA paths so both
// compute the same integers: double weights of a triangle (bilinear) or cubic (bicubic, a = -0.5) filter
// widened by the downscale factor (antialiasing),
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

// The filters, numbered as rsz_preprocess_cpu's `filter` argument (include/rsz_preprocess.h).
enum Filter : int { kBilinear = 0, kBicubic = 1 };

// Taps of one output coordinate: input indices [first, first + count).
struct Taps {
  int first;
  int count;
  double center;
  double inv_filterscale;
  double total;  // sum of the unnormalised weights
  int filter;    // Filter
};

RSZ_HD double triangle(double x) {
  x = x < 0.0 ? -x : x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

// Pillow's bicubic_filter (a = -0.5, support 2).
RSZ_HD double cubic(double x) {
  const double a = -0.5;
  x = x < 0.0 ? -x : x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

RSZ_HD double filter_at(int filter, double x) { return filter == kBicubic ? cubic(x) : triangle(x); }

RSZ_HD Taps taps_for(int in_size, int out_size, int out_index, int filter = kBilinear) {
  double scale = (double)in_size / out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  double support = (filter == kBicubic ? 2.0 : 1.0) * filterscale;  // the filter's support, widened
  Taps t;
  t.filter = filter;
  t.center = (out_index + 0.5) * scale;
  t.inv_filterscale = 1.0 / filterscale;
  int xmin = (int)(t.center - support + 0.5);
  if (xmin < 0) xmin = 0;
  int xmax = (int)(t.center + support + 0.5);
  if (xmax > in_size) xmax = in_size;
  t.first = xmin;
  t.count = xmax - xmin;
  t.total = 0.0;
  for (int k = 0; k < t.count; ++k)
    t.total += filter_at(filter, (k + xmin - t.center + 0.5) * t.inv_filterscale);
  return t;
}

// Fixed-point weight of tap k (Pillow's normalize_coeffs_8bpc).
RSZ_HD int32_t tap_weight(const Taps &t, int k) {
  double w = filter_at(t.filter, (k + t.first - t.center + 0.5) * t.inv_filterscale);
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
