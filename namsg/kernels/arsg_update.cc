// Fused ARSG update for MXNet 1.x, loaded with mx.library.load (MXNet's extension API).
//
// One operator, _namsg_arsg_update, updates N weights in one call and one pass over each:
// weight decay, rescale, clip, m, v, vhat and the weight, in place. The loop is
// arsg_kernel.h's, which the direct-call library (arsg_direct.cc) shares; this file hands it
// the arrays that MXNet's engine gives the operator.
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

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include <unistd.h>

#include "lib_api.h"

#include "arsg_kernel.h"

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
namespace kernel = namsg::kernel;

namespace {

struct Params {
  int num_weights = 0, num_states = 0;
  kernel::Hyper hyper;
  std::vector<double> lrs, wds, dscales;
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
  kernel::Hyper& h = p->hyper;
  p->num_weights = static_cast<int>(n);
  p->num_states = static_cast<int>(s);
  h.multi_precision = mp != 0;
  h.preconditioner = static_cast<int>(pre);
  if (p->num_weights < 1 || h.preconditioner < kernel::kAmsgrad ||
      h.preconditioner > kernel::kNone || p->num_states != kernel::NumStates(h.preconditioner)) {
    MX_ERROR_MSG << "_namsg_arsg_update: inconsistent num_weights / num_states / "
                    "preconditioner";
    return false;
  }
  h.has_lower = attrs.count("lower_bound") > 0;
  h.has_upper = attrs.count("upper_bound") > 0;
  return ParseList(attrs, "lrs", p->num_weights, &p->lrs) &&
         ParseList(attrs, "wds", p->num_weights, &p->wds) &&
         ParseList(attrs, "denominator_scales", p->num_weights, &p->dscales) &&
         ParseDouble(attrs, "beta1", &h.beta1) && ParseDouble(attrs, "beta2", &h.beta2) &&
         ParseDouble(attrs, "epsilon", &h.epsilon) && ParseDouble(attrs, "mu", &h.mu) &&
         ParseDouble(attrs, "rescale_grad", &h.rescale) &&
         ParseDouble(attrs, "clip_gradient", &h.clip) &&
         ParseDouble(attrs, "lower_bound", &h.lower, h.has_lower) &&
         ParseDouble(attrs, "upper_bound", &h.upper, h.has_upper);
}

int InputsPerWeight(const Params& p) {
  return 2 + p.num_states + (p.hyper.multi_precision ? 1 : 0);
}

MXReturnValue Forward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                      const OpResource&) {
  Params p;
  if (!Parse(attrs, &p)) return MX_FAIL;
  const int dtype = (*in)[0].dtype;
  if (dtype != kernel::kFloat32 && dtype != kernel::kFloat64 && dtype != kernel::kFloat16) {
    MX_ERROR_MSG << "_namsg_arsg_update: weights must be float16, float32 or float64";
    return MX_FAIL;
  }
  const int stride = InputsPerWeight(p);
  std::vector<kernel::Slot> slots(p.num_weights);
  for (int j = 0; j < p.num_weights; ++j) {
    std::vector<MXTensor>::iterator inputs = in->begin() + j * stride;
    if (inputs[0].dtype != dtype) {
      MX_ERROR_MSG << "_namsg_arsg_update: all weights of one call must share a dtype";
      return MX_FAIL;
    }
    kernel::Slot& slot = slots[j];
    slot.weight_in = inputs[0].data_ptr;
    slot.weight = (*out)[j].data_ptr;
    slot.grad = inputs[1].data_ptr;
    slot.m = inputs[2].data_ptr;
    if (p.hyper.preconditioner != kernel::kNone) slot.v = inputs[3].data_ptr;
    if (p.hyper.preconditioner == kernel::kAmsgrad) slot.vhat = inputs[4].data_ptr;
    if (p.hyper.multi_precision) slot.master = inputs[2 + p.num_states].data_ptr;
    slot.size = inputs[0].size();
    slot.lr = p.lrs[j];
    slot.wd = p.wds[j];
    slot.denominator_scale = p.dscales[j];
  }
  kernel::UpdateAll(p.hyper, dtype, slots);
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
    const int stype = wtype == kernel::kFloat16 ? kernel::kFloat32 : wtype;
    if ((*in_types)[j * stride + 1] != wtype) {
      MX_ERROR_MSG << "_namsg_arsg_update: gradient " << j << " has another dtype than its weight";
      return MX_FAIL;
    }
    for (int k = 2; k < stride; ++k) {
      if ((*in_types)[j * stride + k] != stype) {
        MX_ERROR_MSG << "_namsg_arsg_update: state of weight " << j << " must be "
                     << (stype == kernel::kFloat32 ? "float32" : "of the weight's dtype");
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
