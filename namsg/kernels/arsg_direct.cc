// The fused ARSG update as a plain library, called with ctypes on the arrays of any MXNet 1.x:
// the direct form of namsg's fused path, which every MXNet from 1.5.1 takes (its call costs
// less than the extension operator's, arsg_update.cc, which stands in for it on 1.7 to 1.9
// where it cannot be had). The loop is arsg_kernel.h's, which the operator shares.
//
// It needs no MXNet header and links against no MXNet: the caller (namsg/kernels/direct.py)
// hands over the addresses of the few MXNet C API functions it calls, from the libmxnet.so that
// the process has loaded. Their signatures have been the same from MXNet 1.5.1 to 1.9.
//
// Ordering: the update is pushed to MXNet's engine (MXEnginePushSyncND) with the gradients as
// the arrays it reads and the weights, states and master copies as those it writes, as MXNet
// pushes its own operators. So it runs after every operation already pushed that writes one of
// them or reads one it writes (a forward pass still reading a weight, a backward pass or a
// kvstore reduction or Horovod allreduce still writing a gradient), before every one pushed
// after it, and concurrently with unrelated work; from any thread that pushes to the engine.
// Nothing waits. (1.5.0's MXEnginePushSyncND read its array of handles wrongly; 1.5.1 has the
// fix, apache/mxnet#15774.)
//
// In two steps: (1) now, in the caller's thread: every array's storage, device, dtype and size
// is checked (none of these waits for the engine), and a refusal is said before anything is
// pushed; (2) when the engine runs it: MXNDArrayGetData gives each array's data (allocating an
// array not yet written), then the update runs. MXNet built with MKLDNN is the exception: its
// MXNDArrayGetData waits for the engine to reorder an array that an MKLDNN layer left in a
// blocked layout, which inside the engine's own run of this call would wait for itself. There
// the caller waits for the engine first and asks for ``take_data``: step (1) then also takes
// every array's data with MXNDArrayGetData in the caller's thread, which reorders an array back
// to the default layout (as namsg does for the extension operator), and step (2) reads no
// array through MXNet. (One C loop: the same calls made from Python cost the step more than
// the update of ResNet-20's weights itself.) A failure in (2) cannot be thrown into MXNet's
// engine: it is written to the caller's NamsgCallStatus, nothing is updated, and the caller
// raises it (namsg raises it at the next update, or logs it at exit). The caller keeps the
// arrays alive until ``released``.

#include <cstdint>
#include <cstdio>
#include <vector>

#include "arsg_kernel.h"

namespace kernel = namsg::kernel;

extern "C" {

// The version of this interface: the caller refuses a library of another one.
#define NAMSG_ARSG_DIRECT_ABI 4

typedef void (*NamsgEngineSyncFunc)(void* run_context, void* param);
typedef void (*NamsgEngineDeleter)(void* param);

// MXNet C API functions (c_api.h), which return 0 on success and -1 on failure, with the reason
// in MXGetLastError() of the calling thread.
struct NamsgMXNetApi {
  int (*get_storage_type)(void* handle, int* out);               // MXNDArrayGetStorageType
  int (*get_context)(void* handle, int* dev_type, int* dev_id);  // MXNDArrayGetContext
  int (*get_dtype)(void* handle, int* out);                      // MXNDArrayGetDType
  int (*get_shape)(void* handle, int* ndim, const int** dims);   // MXNDArrayGetShapeEx
  // MXNDArrayGetShapeEx64, where MXNet was built with large-tensor support (then Python calls
  // it too); else null.
  int (*get_shape64)(void* handle, int* ndim, const int64_t** dims);
  int (*get_data)(void* handle, void** out);                     // MXNDArrayGetData
  const char* (*last_error)();                                   // MXGetLastError
  int (*push_sync_nd)(NamsgEngineSyncFunc func, void* param,     // MXEnginePushSyncND
                      NamsgEngineDeleter deleter, const void* context,
                      void* const* const_handles, int num_const,
                      void* const* mutable_handles, int num_mutable,
                      const void* property, int priority, const char* name);
};

// The values one call shares; per-weight values come as arrays.
struct NamsgArsgHyper {
  int preconditioner;   // 0 'amsgrad', 1 'adam', 2 'none'
  int multi_precision;  // every weight has a float32 master copy after its states
  int has_lower, has_upper;
  double beta1, beta2, epsilon, mu, rescale_grad, clip_gradient, lower_bound, upper_bound;
};

// Owned by the caller, which keeps it (and the arrays) until ``released`` is 1.
struct NamsgCallStatus {
  int ran;        // 0 not run (yet, or skipped by the engine after an earlier failure),
                  // 1 updated, 2 failed before writing anything (the reason in ``message``;
                  // the caller sets 3 once it has raised it)
  int released;   // 1: the engine is done with the call and its arrays
  char message[512];
};

int namsg_arsg_direct_abi() { return NAMSG_ARSG_DIRECT_ABI; }

}  // extern "C"

namespace {

constexpr int kDefaultStorage = 0;
// MXNet's device types that hold host memory: cpu, cpu_pinned, cpu_shared.
bool IsHostMemory(int dev_type) { return dev_type == 1 || dev_type == 3 || dev_type == 5; }
// mxnet::Context as MXEnginePushSyncND reads it: {dev_type, dev_id}; the update runs on the CPU.
const int32_t kCpuContext[2] = {1, 0};

const char* DTypeName(int dtype) {
  switch (dtype) {
    case kernel::kFloat32: return "float32";
    case kernel::kFloat64: return "float64";
    case kernel::kFloat16: return "float16";
    default: return "not a floating-point type";
  }
}

enum Status { kOk = 0, kBadInput = 1, kMXNetFailed = -1 };

// kMXNetFailed, with MXNet's reason (MXGetLastError of this thread) copied into ``message``.
Status MXNetFailed(const NamsgMXNetApi& api, char* message, int message_size) {
  const char* reason = api.last_error();
  std::snprintf(message, message_size, "%s", reason != nullptr ? reason : "unknown error");
  return kMXNetFailed;
}

// An array's dtype and size, after checking its storage and device (kMXNetFailed: the reason
// is MXNet's last error).
Status Describe(const NamsgMXNetApi& api, void* handle, int* dtype, int64_t* size,
                const char* role, int j, char* message, int message_size) {
  int stype = 0, dev_type = 0, dev_id = 0, ndim = 0;
  if (api.get_storage_type(handle, &stype) != 0 || api.get_context(handle, &dev_type, &dev_id)
      != 0 || api.get_dtype(handle, dtype) != 0)
    return kMXNetFailed;
  if (stype != kDefaultStorage || !IsHostMemory(dev_type)) {
    std::snprintf(message, message_size, "the %s of weight %d is %s: the direct call takes "
                  "dense arrays in host memory only", role, j,
                  stype != kDefaultStorage ? "sparse" : "on a GPU");
    return kBadInput;
  }
  *size = 1;
  if (api.get_shape64 != nullptr) {
    const int64_t* dims = nullptr;
    if (api.get_shape64(handle, &ndim, &dims) != 0) return kMXNetFailed;
    for (int d = 0; d < ndim; ++d) *size *= dims[d];
  } else {
    const int* dims = nullptr;
    if (api.get_shape(handle, &ndim, &dims) != 0) return kMXNetFailed;
    for (int d = 0; d < ndim; ++d) *size *= dims[d];
  }
  if (ndim < 0) *size = 0;         // unknown shape (NumPy semantics): nothing allocated
  return kOk;
}

// One pushed update: what the engine's function needs, copied out of the caller's arguments.
struct Call {
  const NamsgMXNetApi* api;
  kernel::Hyper hyper;
  int dtype = -1, stride = 0;
  std::vector<void*> handles;      // weight j's arrays at [j * stride, (j + 1) * stride)
  std::vector<void*> data;         // their data, where taken at the push (MKLDNN builds)
  std::vector<kernel::Slot> slots;
  NamsgCallStatus* status;
};

void Fail(Call* call, const char* what) {
  std::snprintf(call->status->message, sizeof call->status->message, "%s", what);
  __atomic_store_n(&call->status->ran, 2, __ATOMIC_RELEASE);
}

// Every array's data, now (``take_data``): MXNDArrayGetData reorders an array left in an MKLDNN
// layout back to the default one, and allocates one not yet written.
Status TakeData(const NamsgMXNetApi& api, Call* call, char* message, int message_size) {
  call->data.assign(call->handles.size(), nullptr);
  for (size_t index = 0; index < call->handles.size(); ++index) {
    if (call->slots[index / call->stride].size == 0) continue;
    if (api.get_data(call->handles[index], &call->data[index]) != 0) return kMXNetFailed;
    if (call->data[index] == nullptr) {
      std::snprintf(message, message_size, "MXNDArrayGetData gave no data for array %zu of "
                    "weight %zu", index % call->stride, index / call->stride);
      return kBadInput;
    }
  }
  return kOk;
}

// Run by MXNet's engine once every array is free for it.
void Run(void*, void* param) {
  Call* call = static_cast<Call*>(param);
  const int num_states = kernel::NumStates(call->hyper.preconditioner);
  void* data[6];
  for (size_t j = 0; j < call->slots.size(); ++j) {
    kernel::Slot& slot = call->slots[j];
    if (slot.size == 0) continue;
    for (int k = 0; k < call->stride; ++k) {
      const size_t index = j * call->stride + k;
      data[k] = nullptr;
      if (!call->data.empty())
        data[k] = call->data[index];
      else if (call->api->get_data(call->handles[index], &data[k]) != 0)
        return Fail(call, call->api->last_error());
      if (data[k] == nullptr) return Fail(call, "MXNDArrayGetData gave no data");
    }
    slot.weight_in = slot.weight = data[0];
    slot.grad = data[1];
    slot.m = data[2];
    if (num_states > 1) slot.v = data[3];
    if (num_states > 2) slot.vhat = data[4];
    if (call->hyper.multi_precision) slot.master = data[2 + num_states];
  }
  kernel::UpdateAll(call->hyper, call->dtype, call->slots);
  __atomic_store_n(&call->status->ran, 1, __ATOMIC_RELEASE);
}

// Run when the engine drops the call (after Run, or instead of it when it skips the call).
void Release(void* param) {
  Call* call = static_cast<Call*>(param);
  NamsgCallStatus* status = call->status;
  delete call;
  __atomic_store_n(&status->released, 1, __ATOMIC_RELEASE);
}

}  // namespace

extern "C" {

// Push the update of ``num_weights`` weights, in place, to MXNet's engine. ``handles`` holds,
// for each weight j, the NDArray handles of its weight, gradient, states (m, v, vhat as the
// preconditioner has them) and, with multi_precision, its float32 master copy; lrs, wds and
// denominator_scales hold one value per weight; ``take_data``, 1 to take the arrays' data now,
// which the caller asks for after waiting for the engine (see the top of this file), 0 to take
// it when the engine runs the call. Returns 0 when pushed (``status`` follows the
// call; nothing pushed for no weights, ``released`` is then 1 at once); 1 for inconsistent
// arrays, said in ``message``; -1 when an MXNet call failed, its reason (MXGetLastError()) in
// ``message``.
// Nothing is pushed unless it returns 0.
int namsg_arsg_direct_update(const NamsgMXNetApi* api, int num_weights, void* const* handles,
                             const double* lrs, const double* wds,
                             const double* denominator_scales, int take_data,
                             const NamsgArsgHyper* hyper, NamsgCallStatus* status,
                             char* message, int message_size) {
  status->ran = 0;
  status->released = 0;
  status->message[0] = '\0';
  kernel::Hyper p;
  p.preconditioner = hyper->preconditioner;
  p.multi_precision = hyper->multi_precision != 0;
  p.has_lower = hyper->has_lower != 0;
  p.has_upper = hyper->has_upper != 0;
  p.beta1 = hyper->beta1;
  p.beta2 = hyper->beta2;
  p.epsilon = hyper->epsilon;
  p.mu = hyper->mu;
  p.rescale = hyper->rescale_grad;
  p.clip = hyper->clip_gradient;
  p.lower = hyper->lower_bound;
  p.upper = hyper->upper_bound;
  if (num_weights < 0 || p.preconditioner < kernel::kAmsgrad ||
      p.preconditioner > kernel::kNone) {
    std::snprintf(message, message_size, "num_weights %d or preconditioner %d out of range",
                  num_weights, p.preconditioner);
    status->released = 1;
    return kBadInput;
  }
  if (num_weights == 0) {
    status->released = 1;
    return kOk;
  }

  const int num_states = kernel::NumStates(p.preconditioner);
  const int stride = 2 + num_states + (p.multi_precision ? 1 : 0);
  static const char* const kRoles[] = {"weight", "gradient", "state m", "state v", "state vhat"};
  Call* call = new Call;
  // Refused before the push: the engine never holds the call, which is released at once.
  auto refuse = [&](Status why) {
    delete call;
    status->released = 1;
    return why == kMXNetFailed ? MXNetFailed(*api, message, message_size) : why;
  };
  call->api = api;
  call->hyper = p;
  call->stride = stride;
  call->status = status;
  call->handles.assign(handles, handles + num_weights * stride);
  call->slots.resize(num_weights);
  // The engine's arrays: the gradients read, the rest written.
  std::vector<void*> reads, writes;
  for (int j = 0; j < num_weights; ++j) {
    int64_t sizes[6];
    int dtypes[6];
    for (int k = 0; k < stride; ++k) {
      const char* role = k < 2 + num_states ? kRoles[k] : "master copy";
      void* handle = handles[j * stride + k];
      Status checked = Describe(*api, handle, &dtypes[k], &sizes[k], role, j, message,
                                message_size);
      if (checked != kOk) return refuse(checked);
      if (k == 0) {
        if (j == 0) call->dtype = dtypes[0];
        const char* refusal = nullptr;
        if (dtypes[0] != kernel::kFloat32 && dtypes[0] != kernel::kFloat64 &&
            dtypes[0] != kernel::kFloat16) {
          std::snprintf(message, message_size, "weight %d is %s: the fused update takes "
                        "float16, float32 or float64 weights", j, DTypeName(dtypes[0]));
          refusal = message;
        } else if (dtypes[0] != call->dtype) {
          std::snprintf(message, message_size, "weight %d is %s, weight 0 %s: all weights of "
                        "one call must share a dtype", j, DTypeName(dtypes[0]),
                        DTypeName(call->dtype));
          refusal = message;
        }
        if (refusal != nullptr) return refuse(kBadInput);
      }
      // The gradient has the weight's dtype; states and master copies are float32 for float16
      // weights, else of the weight's dtype.
      const int dtype = call->dtype;
      const int expected = k <= 1 || dtype != kernel::kFloat16 ? dtype : kernel::kFloat32;
      const char* refusal = nullptr;
      if (dtypes[k] != expected) {
        std::snprintf(message, message_size, "the %s of weight %d is %s, not %s", role, j,
                      DTypeName(dtypes[k]), DTypeName(expected));
        refusal = message;
      } else if (sizes[k] != sizes[0]) {
        std::snprintf(message, message_size, "the %s of weight %d has %lld values, the weight "
                      "%lld", role, j, static_cast<long long>(sizes[k]),
                      static_cast<long long>(sizes[0]));
        refusal = message;
      }
      if (refusal != nullptr) return refuse(kBadInput);
      (k == 1 ? reads : writes).push_back(handle);
    }
    kernel::Slot& slot = call->slots[j];
    slot.size = sizes[0];
    slot.lr = lrs[j];
    slot.wd = wds[j];
    slot.denominator_scale = denominator_scales[j];
  }
  if (take_data) {
    Status taken = TakeData(*api, call, message, message_size);
    if (taken != kOk) return refuse(taken);
  }
  // From here on the engine owns ``call``: Release frees it, also when the push fails.
  if (api->push_sync_nd(Run, call, Release, kCpuContext, reads.data(),
                        static_cast<int>(reads.size()), writes.data(),
                        static_cast<int>(writes.size()), nullptr, 0, "namsg_arsg_direct") != 0)
    return MXNetFailed(*api, message, message_size);
  return kOk;
}

}  // extern "C"
