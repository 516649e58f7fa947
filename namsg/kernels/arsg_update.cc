// Fused ARSG update for MXNet 1.x, loaded with mx.library.load (MXNet's extension API).
//
// One operator, _namsg_arsg_update, updates N weights in one call and one pass over each:
// weight decay, rescale, clip, m, v, vhat and the weight, in place. The math is that of
// namsg/arsg.py (see its docstring); this file only arranges it for speed.
//
// Inputs, for each weight j:  weight, grad, state[0..num_states), [float32 master if mp]
//   state = (m, v, vhat) for preconditioner 0 ('amsgrad'), (m, v) for 1 ('adam'), (m) for 2
//   ('none'). States (and the master copy) are float32 for float16 weights, else the weight's
//   dtype. States and masters are declared mutable inputs, so MXNet's engine orders this
//   operator after every reader and before every later writer of them.
// Outputs: the N weights (call with out=weights; MXNet's engine then treats them as written).
// Attributes: num_weights, num_states, multi_precision, preconditioner (0/1/2); lrs, wds,
//   denominator_scales (1/sqrt(1 - beta2^t) per weight, for 'adam') as comma-separated lists,
//   or one value for all weights;
//   beta1, beta2, epsilon, mu, rescale_grad, clip_gradient (< 0: none),
//   lower_bound / upper_bound (absent: unbounded).
//
// Built against the lib_api.h of the MXNet that loads it (the library API version
// MX_LIBRARY_VERSION must equal MXNet's own): 7 (MXNet 1.7, the whole API in the header), 10
// (1.8) and 11 (1.9). What differs between them for this operator is in the compatibility
// section below, and nowhere else; where the mxnet package lacks the implementation of API 10
// or 11 (src/lib_api.cc: the 1.8 wheels), namsg's extension_api.cc is compiled in its place.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <limits>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include <unistd.h>

#include "lib_api.h"

// -- compatibility between extension API versions ------------------------------------------------
#if !defined(MX_LIBRARY_VERSION) || (MX_LIBRARY_VERSION != 7 && MX_LIBRARY_VERSION != 10 && \
                                     MX_LIBRARY_VERSION != 11)
#error "namsg's fused ARSG operator knows MXNet's extension API versions 7, 10 and 11 only"
#endif
#if MX_LIBRARY_VERSION < 10
// API 7 declares its types in the global namespace; 10 moved them into mxnet::ext.
namespace mxnet {
namespace ext {
using ::MXReturnValue;
using ::MXTensor;
using ::OpResource;
using ::MX_FAIL;
using ::MX_SUCCESS;
using ::kFloat16;
using ::kFloat32;
using ::kFloat64;
}  // namespace ext
}  // namespace mxnet

// API 7 has no way to hand a library's error messages to MXNet (API 10 added _msgSize and
// _msgGet, which MXNet appends to its error): MXNet raises "Error calling <function> for custom
// operator '_namsg_arsg_update'" and the reason is written to stderr, one line per message.
// (The Python caller checks its arguments first, so these are internal errors.)
namespace {
class StderrMessage {
 public:
  ~StderrMessage() { std::cerr << "namsg kernel: " << text_.str() << std::endl; }
  template <typename T> StderrMessage& operator<<(const T& value) {
    text_ << value;
    return *this;
  }

 private:
  std::ostringstream text_;
};
}  // namespace
#define MX_ERROR_MSG StderrMessage()
#endif

#if MX_LIBRARY_VERSION < 11
// MXNet 1.7 and 1.8 close every extension library when the process exits (the destructor of
// their LibraryInitializer), erasing each one from the std::map they are iterating over; the
// loop then reads freed memory, and a process that loaded a library may die after its work is
// done, with SIGABRT ("Check failed: !libpath.empty()") or SIGSEGV, depending on the state of
// its heap: one process in two in some environments here (apache/mxnet#20411; 1.9 no longer
// closes them). That destructor is the last of MXNet's exit handlers, and closing this library
// (the only one, or the first by path) is its first step, which runs the library's destructor
// functions. When that happens during exit(), this library ends the process there, with the
// status given to exit(), after flushing C stdio: what it skips is the rest of that loop, the
// exit handlers registered before MXNet was loaded, and the libraries' finalizers.
namespace {
bool exiting = false;
int exit_status = 0;

void NoteExit(int status, void*) {
  exiting = true;
  exit_status = status;
}

__attribute__((destructor)) void EndExitBeforeMXNetsLoopGoesOn() {
  if (!exiting) return;
  std::fflush(nullptr);
  _exit(exit_status);
}
}  // namespace

// Called once, when MXNet loads the library: NoteExit then runs before MXNet's exit handlers.
#define NAMSG_ON_LOAD() on_exit(NoteExit, nullptr)
#else
#define NAMSG_ON_LOAD()
#endif
// ------------------------------------------------------------------------------------------------

using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;
using mxnet::ext::MX_FAIL;
using mxnet::ext::MX_SUCCESS;
using Attrs = std::unordered_map<std::string, std::string>;

namespace {

struct Params {
  int num_weights = 0, num_states = 0, precond = 0;
  bool mp = false, has_lower = false, has_upper = false;
  std::vector<double> lrs, wds, dscales;
  double beta1 = 0, beta2 = 0, epsilon = 0, mu = 0, rescale = 1, clip = -1;
  double lower = 0, upper = 0;
};

bool ParseDouble(const Attrs& attrs, const char* key, double* out, bool required = true) {
  auto it = attrs.find(key);
  if (it == attrs.end()) {
    if (required) MX_ERROR_MSG << "_namsg_arsg_update: attribute " << key << " is missing";
    return !required;
  }
  char* end = nullptr;
  *out = std::strtod(it->second.c_str(), &end);
  if (end == it->second.c_str()) {
    MX_ERROR_MSG << "_namsg_arsg_update: attribute " << key << "=" << it->second
                 << " is not a number";
    return false;
  }
  return true;
}

bool ParseList(const Attrs& attrs, const char* key, size_t count, std::vector<double>* out) {
  auto it = attrs.find(key);
  if (it == attrs.end()) {
    MX_ERROR_MSG << "_namsg_arsg_update: attribute " << key << " is missing";
    return false;
  }
  std::stringstream ss(it->second);
  std::string item;
  out->clear();
  while (std::getline(ss, item, ',')) out->push_back(std::strtod(item.c_str(), nullptr));
  if (out->size() == 1) out->resize(count, (*out)[0]);  // one value for every weight
  if (out->size() != count) {
    MX_ERROR_MSG << "_namsg_arsg_update: " << key << " has " << out->size()
                 << " values for " << count << " weights";
    return false;
  }
  return true;
}

bool Parse(const Attrs& attrs, Params* p) {
  double n = 0, s = 0, mp = 0, pre = 0;
  if (!ParseDouble(attrs, "num_weights", &n) || !ParseDouble(attrs, "num_states", &s) ||
      !ParseDouble(attrs, "multi_precision", &mp) ||
      !ParseDouble(attrs, "preconditioner", &pre))
    return false;
  p->num_weights = static_cast<int>(n);
  p->num_states = static_cast<int>(s);
  p->mp = mp != 0;
  p->precond = static_cast<int>(pre);
  if (p->num_weights < 1 || p->num_states != 3 - p->precond || p->precond < 0 ||
      p->precond > 2) {
    MX_ERROR_MSG << "_namsg_arsg_update: inconsistent num_weights / num_states / "
                    "preconditioner";
    return false;
  }
  p->has_lower = attrs.count("lower_bound") > 0;
  p->has_upper = attrs.count("upper_bound") > 0;
  return ParseList(attrs, "lrs", p->num_weights, &p->lrs) &&
         ParseList(attrs, "wds", p->num_weights, &p->wds) &&
         ParseList(attrs, "denominator_scales", p->num_weights, &p->dscales) &&
         ParseDouble(attrs, "beta1", &p->beta1) && ParseDouble(attrs, "beta2", &p->beta2) &&
         ParseDouble(attrs, "epsilon", &p->epsilon) && ParseDouble(attrs, "mu", &p->mu) &&
         ParseDouble(attrs, "rescale_grad", &p->rescale) &&
         ParseDouble(attrs, "clip_gradient", &p->clip) &&
         ParseDouble(attrs, "lower_bound", &p->lower, p->has_lower) &&
         ParseDouble(attrs, "upper_bound", &p->upper, p->has_upper);
}

int InputsPerWeight(const Params& p) { return 2 + p.num_states + (p.mp ? 1 : 0); }

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

// One contiguous range [begin, end) of weight j. The preconditioner and the presence of a
// master copy are template parameters and clipping is branch-free, so the loop has no branches
// and the compiler can vectorise it.
template <typename W, typename S, int PRECOND, bool MP>
void UpdateRange(std::vector<MXTensor>* in, std::vector<MXTensor>* out, const Params& p, int j,
                 int64_t begin, int64_t end) {
  const int base = j * InputsPerWeight(p);
  // The weight is read and written through one pointer: a separate input pointer that may
  // alias the output makes the compiler fall back to its scalar loop.
  const W* weight_in = (*in)[base].data<W>();
  W* __restrict__ weight = (*out)[j].data<W>();
  if (weight != weight_in)
    std::memcpy(weight + begin, weight_in + begin, (end - begin) * sizeof(W));
  const W* __restrict__ grad = (*in)[base + 1].data<W>();
  S* __restrict__ m = (*in)[base + 2].data<S>();
  S* __restrict__ v = PRECOND != 2 ? (*in)[base + 3].data<S>() : nullptr;
  S* __restrict__ vhat = PRECOND == 0 ? (*in)[base + 4].data<S>() : nullptr;
  S* __restrict__ master = MP ? (*in)[base + 2 + p.num_states].data<S>() : nullptr;

  // Every constant is computed in double from the attributes and rounded to S once, as the
  // NDArray path's scalars are: 1 - b1 from the rounded b1 would be off by up to 1.3e-5
  // relative for b1 = 0.999 in float32.
  const S inf = std::numeric_limits<S>::infinity();
  const S rescale = p.rescale, wd = p.wds[j], b1 = p.beta1, b2 = p.beta2;
  const S one_minus_b1 = 1.0 - p.beta1, one_minus_b2 = 1.0 - p.beta2;
  const S clip = p.clip >= 0 ? static_cast<S>(p.clip) : inf;
  const S step_g = p.lrs[j] * p.mu, step_m = p.lrs[j] * (1.0 - p.mu);
  const S dscale = p.dscales[j], eps = p.epsilon;
  const S lower = p.has_lower ? static_cast<S>(p.lower) : -inf;
  const S upper = p.has_upper ? static_cast<S>(p.upper) : inf;

  for (int64_t i = begin; i < end; ++i) {
    S w = MP ? master[i] : Convert<W, S>::Load(weight[i]);
    S g = Convert<W, S>::Load(grad[i]) * rescale + wd * w;
    g = std::min(std::max(g, -clip), clip);
    const S mi = b1 * m[i] + one_minus_b1 * g;
    m[i] = mi;
    S step = g * step_g + step_m * mi;
    if (PRECOND != 2) {
      // ((1 - b2) g) g: g * g alone overflows float32 for |g| > 1.8e19.
      const S vi = b2 * v[i] + (one_minus_b2 * g) * g;
      v[i] = vi;
      if (PRECOND == 0) {
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
void UpdateRangeFor(std::vector<MXTensor>* in, std::vector<MXTensor>* out, const Params& p,
                    int j, int64_t begin, int64_t end) {
  if (p.mp) {
    switch (p.precond) {
      case 0: UpdateRange<W, S, 0, true>(in, out, p, j, begin, end); break;
      case 1: UpdateRange<W, S, 1, true>(in, out, p, j, begin, end); break;
      default: UpdateRange<W, S, 2, true>(in, out, p, j, begin, end);
    }
  } else {
    switch (p.precond) {
      case 0: UpdateRange<W, S, 0, false>(in, out, p, j, begin, end); break;
      case 1: UpdateRange<W, S, 1, false>(in, out, p, j, begin, end); break;
      default: UpdateRange<W, S, 2, false>(in, out, p, j, begin, end);
    }
  }
}

// Work is cut into chunks across all weights, so that many small arrays (a ResNet's) are
// spread over the threads as well as one large one.
constexpr int64_t kChunk = 16384;

MXReturnValue Forward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                      const OpResource&) {
  Params p;
  if (!Parse(attrs, &p)) return MX_FAIL;
  const int dtype = (*in)[0].dtype;
  if (dtype != mxnet::ext::kFloat32 && dtype != mxnet::ext::kFloat64 &&
      dtype != mxnet::ext::kFloat16) {
    MX_ERROR_MSG << "_namsg_arsg_update: weights must be float16, float32 or float64";
    return MX_FAIL;
  }
  struct Chunk {
    int weight;
    int64_t begin, end;
  };
  std::vector<Chunk> chunks;
  for (int j = 0; j < p.num_weights; ++j) {
    if ((*in)[j * InputsPerWeight(p)].dtype != dtype) {
      MX_ERROR_MSG << "_namsg_arsg_update: all weights of one call must share a dtype";
      return MX_FAIL;
    }
    const int64_t n = (*in)[j * InputsPerWeight(p)].size();
    for (int64_t b = 0; b < n; b += kChunk) chunks.push_back({j, b, std::min(b + kChunk, n)});
  }
  const int64_t count = static_cast<int64_t>(chunks.size());
#pragma omp parallel for schedule(dynamic) if (count > 1)
  for (int64_t c = 0; c < count; ++c) {
    const int j = chunks[c].weight;
    const int64_t begin = chunks[c].begin, end = chunks[c].end;
    switch (dtype) {
      case mxnet::ext::kFloat32: UpdateRangeFor<float, float>(in, out, p, j, begin, end); break;
      case mxnet::ext::kFloat64:
        UpdateRangeFor<double, double>(in, out, p, j, begin, end);
        break;
      default: UpdateRangeFor<uint16_t, float>(in, out, p, j, begin, end);
    }
  }
  return MX_SUCCESS;
}

MXReturnValue ParseAttrs(const Attrs& attrs, int* num_in, int* num_out) {
  Params p;
  if (!Parse(attrs, &p)) return MX_FAIL;
  *num_in = p.num_weights * InputsPerWeight(p);
  *num_out = p.num_weights;
  return MX_SUCCESS;
}

MXReturnValue InferType(const Attrs& attrs, std::vector<int>* in_types,
                        std::vector<int>* out_types) {
  Params p;
  if (!Parse(attrs, &p)) return MX_FAIL;
  const int stride = InputsPerWeight(p);
  for (int j = 0; j < p.num_weights; ++j) {
    const int wtype = (*in_types)[j * stride];
    const int stype = wtype == mxnet::ext::kFloat16 ? mxnet::ext::kFloat32 : wtype;
    if ((*in_types)[j * stride + 1] != wtype) {
      MX_ERROR_MSG << "_namsg_arsg_update: gradient " << j << " has another dtype than its weight";
      return MX_FAIL;
    }
    for (int k = 2; k < stride; ++k) {
      if ((*in_types)[j * stride + k] != stype) {
        MX_ERROR_MSG << "_namsg_arsg_update: state of weight " << j << " must be "
                     << (stype == mxnet::ext::kFloat32 ? "float32" : "of the weight's dtype");
        return MX_FAIL;
      }
    }
    (*out_types)[j] = wtype;
  }
  return MX_SUCCESS;
}

MXReturnValue InferShape(const Attrs& attrs, std::vector<std::vector<unsigned int>>* in_shapes,
                         std::vector<std::vector<unsigned int>>* out_shapes) {
  Params p;
  if (!Parse(attrs, &p)) return MX_FAIL;
  const int stride = InputsPerWeight(p);
  for (int j = 0; j < p.num_weights; ++j) {
    for (int k = 1; k < stride; ++k) {
      if ((*in_shapes)[j * stride + k] != (*in_shapes)[j * stride]) {
        MX_ERROR_MSG << "_namsg_arsg_update: input " << k << " of weight " << j
                     << " has another shape than the weight";
        return MX_FAIL;
      }
    }
    (*out_shapes)[j] = (*in_shapes)[j * stride];
  }
  return MX_SUCCESS;
}

MXReturnValue MutateInputs(const Attrs& attrs, std::vector<int>* indices) {
  Params p;
  if (!Parse(attrs, &p)) return MX_FAIL;
  const int stride = InputsPerWeight(p);
  for (int j = 0; j < p.num_weights; ++j)
    for (int k = 2; k < stride; ++k) indices->push_back(j * stride + k);
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(_namsg_arsg_update)
    .setParseAttrs(ParseAttrs)
    .setInferType(InferType)
    .setInferShape(InferShape)
    .setMutateInputs(MutateInputs)
    .setForward(Forward, "cpu");

MXReturnValue initialize(int version) {
  if (version < 10700) {
    MX_ERROR_MSG << "namsg's fused ARSG kernels need MXNet >= 1.7, found " << version;
    return MX_FAIL;
  }
  NAMSG_ON_LOAD();
  return MX_SUCCESS;
}
