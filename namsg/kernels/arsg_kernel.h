// The fused ARSG update loop: the one copy of the per-element math, included by both fused
// forms, the extension operator (arsg_update.cc, MXNet 1.7 to 1.9) and the direct call
// (arsg_direct.cc, any MXNet). Neither adds arithmetic of its own: they only find the arrays.
//
// One pass over each array: weight decay, rescale, clip, m, v, vhat and the weight, in place.
// The math is that of namsg/arsg.py (see its docstring); this file only arranges it for speed.
// Needs no MXNet header: the dtype codes are MXNet's type flags, written out below.

#ifndef NAMSG_KERNELS_ARSG_KERNEL_H_
#define NAMSG_KERNELS_ARSG_KERNEL_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace namsg {
namespace kernel {

// MXNet's dtype flags (mshadow's kFloat32, kFloat64, kFloat16), as its extension API and its C
// API (MXNDArrayGetDType) give them.
constexpr int kFloat32 = 0, kFloat64 = 1, kFloat16 = 2;

// The preconditioners, as namsg.arsg.PRECONDITIONERS orders them, and their states.
constexpr int kAmsgrad = 0;   // (m, v, vhat)
constexpr int kAdam = 1;      // (m, v)
constexpr int kNone = 2;      // (m)

inline int NumStates(int preconditioner) { return 3 - preconditioner; }

// What one call shares across its weights.
struct Hyper {
  int preconditioner = kAmsgrad;
  bool multi_precision = false;    // every weight of the call has a float32 master copy
  bool has_lower = false, has_upper = false;
  double beta1 = 0, beta2 = 0, epsilon = 0, mu = 0, rescale = 1;
  double clip = -1;                // < 0: no clipping
  double lower = 0, upper = 0;
};

// One weight: its arrays and its own scalars. float16 data is raw IEEE half (uint16); the states
// and the master copy are float32 for float16 weights, else of the weight's dtype.
struct Slot {
  const void* weight_in = nullptr;   // the weight as read: == weight when updated in place
  void* weight = nullptr;            // where the new weight is written
  const void* grad = nullptr;
  void* m = nullptr;
  void* v = nullptr;                 // null for 'none'
  void* vhat = nullptr;              // null but for 'amsgrad'
  void* master = nullptr;            // null without multi_precision
  int64_t size = 0;
  double lr = 0, wd = 0;
  double denominator_scale = 1;      // 1/sqrt(1 - beta2^t), read by 'adam' only
};

// IEEE half <-> float, round to nearest even (float16 weights are stored as raw uint16).
inline float HalfToFloat(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ffu, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while (!(mant & 0x400u)) { mant <<= 1; --exp; }
      bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline uint16_t FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  uint32_t sign = (x >> 16) & 0x8000u, absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u)  // inf or nan
    return static_cast<uint16_t>(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u));
  if (absx >= 0x477ff000u)  // rounds to a value beyond the largest half: inf
    return static_cast<uint16_t>(sign | 0x7c00u);
  if (absx < 0x38800000u) {  // below the smallest normal half: subnormal or zero
    if (absx < 0x33000000u) return static_cast<uint16_t>(sign);
    uint32_t mant = (absx & 0x7fffffu) | 0x800000u;
    int shift = 126 - static_cast<int>(absx >> 23);  // 14 .. 24
    uint32_t half = mant >> shift, rest = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rest > mid || (rest == mid && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = ((absx >> 13) - ((127 - 15) << 10)), rest = absx & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;
  return static_cast<uint16_t>(sign | half);
}

template <typename W, typename S> struct Convert {
  static S Load(W w) { return static_cast<S>(w); }
  static W Store(S s) { return static_cast<W>(s); }
};
template <> struct Convert<uint16_t, float> {
  static float Load(uint16_t w) { return HalfToFloat(w); }
  static uint16_t Store(float s) { return FloatToHalf(s); }
};

// One contiguous range [begin, end) of one weight. The preconditioner and the presence of a
// master copy are template parameters and clipping is branch-free, so the loop has no branches
// and the compiler can vectorise it.
template <typename W, typename S, int PRECOND, bool MP>
void UpdateRange(const Hyper& p, const Slot& slot, int64_t begin, int64_t end) {
  // The weight is read and written through one pointer: a separate input pointer that may
  // alias the output makes the compiler fall back to its scalar loop.
  const W* weight_in = static_cast<const W*>(slot.weight_in);
  W* __restrict__ weight = static_cast<W*>(slot.weight);
  if (weight != weight_in)
    std::memcpy(weight + begin, weight_in + begin, (end - begin) * sizeof(W));
  const W* __restrict__ grad = static_cast<const W*>(slot.grad);
  S* __restrict__ m = static_cast<S*>(slot.m);
  S* __restrict__ v = PRECOND != kNone ? static_cast<S*>(slot.v) : nullptr;
  S* __restrict__ vhat = PRECOND == kAmsgrad ? static_cast<S*>(slot.vhat) : nullptr;
  S* __restrict__ master = MP ? static_cast<S*>(slot.master) : nullptr;

  // Every constant is computed in double from the call's values and rounded to S once, as the
  // NDArray path's scalars are: 1 - b1 from the rounded b1 would be off by up to 1.3e-5
  // relative for b1 = 0.999 in float32.
  const S inf = std::numeric_limits<S>::infinity();
  const S rescale = p.rescale, wd = slot.wd, b1 = p.beta1, b2 = p.beta2;
  const S one_minus_b1 = 1.0 - p.beta1, one_minus_b2 = 1.0 - p.beta2;
  const S clip = p.clip >= 0 ? static_cast<S>(p.clip) : inf;
  const S step_g = slot.lr * p.mu, step_m = slot.lr * (1.0 - p.mu);
  const S dscale = slot.denominator_scale, eps = p.epsilon;
  const S lower = p.has_lower ? static_cast<S>(p.lower) : -inf;
  const S upper = p.has_upper ? static_cast<S>(p.upper) : inf;

  for (int64_t i = begin; i < end; ++i) {
    S w = MP ? master[i] : Convert<W, S>::Load(weight[i]);
    S g = Convert<W, S>::Load(grad[i]) * rescale + wd * w;
    g = std::min(std::max(g, -clip), clip);
    const S mi = b1 * m[i] + one_minus_b1 * g;
    m[i] = mi;
    S step = g * step_g + step_m * mi;
    if (PRECOND != kNone) {
      // ((1 - b2) g) g: g * g alone overflows float32 for |g| > 1.8e19.
      const S vi = b2 * v[i] + (one_minus_b2 * g) * g;
      v[i] = vi;
      if (PRECOND == kAmsgrad) {
        // NaN-propagating, as MXNet's maximum operator and NumPy's: a NaN v (from a NaN
        // gradient) makes vhat NaN, as on the NDArray path (std::max kept vhat).
        const S vh = (vi > vhat[i] || vi != vi) ? vi : vhat[i];
        vhat[i] = vh;
        step /= std::sqrt(vh);
      } else {
        step /= std::sqrt(vi) * dscale + eps;
      }
    }
    w = std::min(std::max(w - step, lower), upper);
    if (MP) master[i] = w;
    weight[i] = Convert<W, S>::Store(w);
  }
}

template <typename W, typename S>
void UpdateRangeFor(const Hyper& p, const Slot& slot, int64_t begin, int64_t end) {
  if (p.multi_precision) {
    switch (p.preconditioner) {
      case kAmsgrad: UpdateRange<W, S, kAmsgrad, true>(p, slot, begin, end); break;
      case kAdam: UpdateRange<W, S, kAdam, true>(p, slot, begin, end); break;
      default: UpdateRange<W, S, kNone, true>(p, slot, begin, end);
    }
  } else {
    switch (p.preconditioner) {
      case kAmsgrad: UpdateRange<W, S, kAmsgrad, false>(p, slot, begin, end); break;
      case kAdam: UpdateRange<W, S, kAdam, false>(p, slot, begin, end); break;
      default: UpdateRange<W, S, kNone, false>(p, slot, begin, end);
    }
  }
}

// Work is cut into chunks across all weights, so that many small arrays (a ResNet's) are
// spread over the threads as well as one large one.
constexpr int64_t kChunk = 16384;

// Update every weight of ``slots`` (all of ``dtype``: kFloat32, kFloat64 or kFloat16, which the
// caller has checked, as it has the slots' arrays and sizes), with OpenMP's threads.
inline void UpdateAll(const Hyper& p, int dtype, const std::vector<Slot>& slots) {
  struct Chunk {
    int slot;
    int64_t begin, end;
  };
  std::vector<Chunk> chunks;
  for (int j = 0; j < static_cast<int>(slots.size()); ++j) {
    const int64_t n = slots[j].size;
    for (int64_t b = 0; b < n; b += kChunk) chunks.push_back({j, b, std::min(b + kChunk, n)});
  }
  const int64_t count = static_cast<int64_t>(chunks.size());
#pragma omp parallel for schedule(dynamic) if (count > 1)
  for (int64_t c = 0; c < count; ++c) {
    const Slot& slot = slots[chunks[c].slot];
    const int64_t begin = chunks[c].begin, end = chunks[c].end;
    switch (dtype) {
      case kFloat32: UpdateRangeFor<float, float>(p, slot, begin, end); break;
      case kFloat64: UpdateRangeFor<double, double>(p, slot, begin, end); break;
      default: UpdateRangeFor<uint16_t, float>(p, slot, begin, end);
    }
  }
}

}  // namespace kernel
}  // namespace namsg

#endif  // NAMSG_KERNELS_ARSG_KERNEL_H_
