// The library half of MXNet's extension API, versions 10 (MXNet 1.8) and 11 (1.9), as much of it
// as an operator library needs, for MXNet packages that ship include/mxnet/lib_api.h without the
// src/lib_api.cc that implements it. The 1.8 wheels are such packages: their lib_api.h declares
// the classes and the extern "C" functions that MXNet's loader (MXLoadLib) looks up, and defines
// none of them. Where the package has src/lib_api.cc (1.9), the build compiles that instead.
//
// What MXNet calls for a stateless operator is implemented as lib_api.h documents it: the
// registry, attribute parsing, type and shape inference, mutable inputs, forward calls on dense
// tensors and error messages. namsg registers no stateful operator, partitioner or graph pass, so
// their entry points exist (the loader looks all of them up) and report that, and the registries
// of partitioners and passes are empty.

#include <algorithm>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "lib_api.h"

#if MX_LIBRARY_VERSION != 10 && MX_LIBRARY_VERSION != 11
#error "extension_api.cc implements MXNet's extension API versions 10 and 11"
#endif

namespace ext = mxnet::ext;

namespace {

using Attrs = std::unordered_map<std::string, std::string>;

Attrs MakeAttrs(const char* const* keys, const char* const* vals, int num) {
  Attrs attrs;
  for (int i = 0; i < num; ++i) attrs[keys[i]] = vals[i];
  return attrs;
}

// Arrays handed to MXNet are allocated with malloc: MXNet frees them through _opCallFree.
template <typename T> T* CopyOut(const std::vector<T>& values) {
  T* out = static_cast<T*>(std::malloc(values.size() * sizeof(T) + 1));
  for (size_t i = 0; i < values.size(); ++i) out[i] = values[i];
  return out;
}

// Dense tensors only: the operators of this library declare no storage-type inference, so
// MXNet hands them dense arrays (it converts sparse ones first).
bool MakeTensors(int count, const int64_t** shapes, const int* dims, void** data,
                 const int* types, const size_t* ids, const char** dev_types, const int* dev_ids,
                 const int* stypes, std::vector<ext::MXTensor>* tensors) {
  tensors->resize(count);
  for (int i = 0; i < count; ++i) {
    if (stypes[i] != 0) {
      MX_ERROR_MSG << "namsg's extension API takes dense tensors only (storage type "
                   << stypes[i] << ")";
      return false;
    }
    (*tensors)[i].setTensor(data[i], static_cast<ext::MXDType>(types[i]), shapes[i], dims[i],
                            ids[i], ext::MXContext(dev_types[i], dev_ids[i]),
                            ext::kDefaultStorage);
  }
  return true;
}

int Unsupported(const char* what) {
  MX_ERROR_MSG << "namsg's extension API does not implement " << what;
  return ext::MX_FAIL;
}

}  // namespace

// -- classes declared in lib_api.h ----------------------------------------------------------------

ext::MXerrorMsgs* ext::MXerrorMsgs::get() {
  static MXerrorMsgs messages;
  return &messages;
}

ext::MXerrorMsgs::~MXerrorMsgs() {
  for (std::stringstream* message : messages) delete message;
}

std::stringstream& ext::MXerrorMsgs::add(const char* file, int line) {
  messages.push_back(new std::stringstream());
  *messages.back() << file << "[" << line << "]: ";
  return *messages.back();
}

int ext::MXerrorMsgs::size() { return static_cast<int>(messages.size()); }

// The caller owns the string (_msgGet deletes it).
const std::string* ext::MXerrorMsgs::get(int idx) {
  return new std::string(messages.at(idx)->str());
}

ext::MXContext::MXContext() : dev_type("error"), dev_id(-1) {}
ext::MXContext::MXContext(std::string dev_type_, int dev_id_)
    : dev_type(std::move(dev_type_)), dev_id(dev_id_) {}
ext::MXContext::MXContext(const char* dev_type_, int dev_id_)
    : dev_type(dev_type_), dev_id(dev_id_) {}

ext::MXTensor::MXTensor()
    : data_ptr(nullptr), dtype(kUNSET), verID(0), stype(kDefaultStorage) {}

ext::MXTensor::MXTensor(const MXTensor& other)
    : data_ptr(other.data_ptr), shape(other.shape), dtype(other.dtype), verID(other.verID),
      ctx(other.ctx), stype(other.stype) {
  setDLTensor();
}

void ext::MXTensor::setTensor(void* dptr, MXDType type, const int64_t* dims, int ndims,
                              size_t vID, MXContext mx_ctx, MXStorageType storage_type) {
  data_ptr = dptr;
  dtype = type;
  verID = vID;
  ctx = std::move(mx_ctx);
  stype = storage_type;
  shape.assign(dims, dims + ndims);
  setDLTensor();
}

// The DLPack view of the tensor, for code that takes DLTensor (this library's does not).
void ext::MXTensor::setDLTensor() {
  dltensor.data = data_ptr;
  dltensor.ndim = static_cast<int>(shape.size());
  dltensor.shape = shape.data();
  dltensor.strides = nullptr;
  dltensor.byte_offset = 0;
  dltensor.ctx.device_id = ctx.dev_id;
  dltensor.ctx.device_type = ctx.dev_type == "gpu" ? kDLGPU : kDLCPU;
  switch (dtype) {
    case kFloat32: dltensor.dtype = {kDLFloat, 32, 1}; break;
    case kFloat64: dltensor.dtype = {kDLFloat, 64, 1}; break;
    case kFloat16: dltensor.dtype = {kDLFloat, 16, 1}; break;
    case kUint8: dltensor.dtype = {kDLUInt, 8, 1}; break;
    case kInt32: dltensor.dtype = {kDLInt, 32, 1}; break;
    case kInt8: dltensor.dtype = {kDLInt, 8, 1}; break;
    case kInt64: dltensor.dtype = {kDLInt, 64, 1}; break;
    default: dltensor.dtype = {0, 0, 1};
  }
}

int64_t ext::MXTensor::size() const {
  int64_t count = 1;
  for (int64_t extent : shape) count *= extent;
  return count;
}

ext::OpResource::OpResource(xpu_malloc_t cpu_malloc_fp, void* cpu_alloc_fp,
                            xpu_malloc_t gpu_malloc_fp, void* gpu_alloc_fp, void* stream,
                            sparse_malloc_t sparse_malloc_fp, void* sparse_alloc_fp,
                            void* rng_cpu_states, void* rng_gpu_states)
    : cpu_malloc(cpu_malloc_fp), gpu_malloc(gpu_malloc_fp), cpu_alloc(cpu_alloc_fp),
      gpu_alloc(gpu_alloc_fp), cuda_stream(stream), sparse_malloc(sparse_malloc_fp),
      sparse_alloc(sparse_alloc_fp), rand_cpu_states(rng_cpu_states),
      rand_gpu_states(rng_gpu_states) {}

void* ext::OpResource::alloc_cpu(int size) const { return cpu_malloc(cpu_alloc, size); }

ext::CustomOp::CustomOp(const char* op_name)
    : name(op_name), parse_attrs(nullptr), infer_type(nullptr), infer_storage_type(nullptr),
      infer_shape(nullptr), mutate_inputs(nullptr), isSGop(false) {}

// The registration methods lib_api.h declares: one function per context for the ones that
// take a context, else one function.
#define NAMSG_SET_FOR_CONTEXT(method, type, map)                             \
  ext::CustomOp& ext::CustomOp::method(type function, const char* context) { \
    if (map.count(context)) raiseDuplicateContextError();                    \
    map[context] = function;                                                 \
    return *this;                                                            \
  }
#define NAMSG_SET(method, type, member)                   \
  ext::CustomOp& ext::CustomOp::method(type function) {   \
    member = function;                                    \
    return *this;                                         \
  }
NAMSG_SET_FOR_CONTEXT(setForward, fcomp_t, forward_ctx_map)
NAMSG_SET_FOR_CONTEXT(setBackward, fcomp_t, backward_ctx_map)
NAMSG_SET_FOR_CONTEXT(setCreateOpState, createOpState_t, create_op_ctx_map)
NAMSG_SET(setParseAttrs, parseAttrs_t, parse_attrs)
NAMSG_SET(setInferType, inferType_t, infer_type)
NAMSG_SET(setInferSType, inferSType_t, infer_storage_type)
NAMSG_SET(setInferShape, inferShape_t, infer_shape)
NAMSG_SET(setMutateInputs, mutateInputs_t, mutate_inputs)
#undef NAMSG_SET_FOR_CONTEXT
#undef NAMSG_SET

ext::CustomOp& ext::CustomOp::setIsSubgraphOp() {
  isSGop = true;
  return *this;
}

namespace {
// A context map as the two arrays that _opRegGet hands to MXNet.
template <typename F>
void Flatten(const std::unordered_map<const char*, F>& map, std::vector<const char*>* contexts,
             std::vector<F>* functions) {
  contexts->clear();
  functions->clear();
  for (const auto& kv : map) {
    contexts->push_back(kv.first);
    functions->push_back(kv.second);
  }
}
}  // namespace

void ext::CustomOp::mapToVector() {
  Flatten(forward_ctx_map, &forward_ctx_cstr, &forward_fp);
  Flatten(backward_ctx_map, &backward_ctx_cstr, &backward_fp);
  Flatten(create_op_ctx_map, &create_op_ctx_cstr, &create_op_fp);
}

void ext::CustomOp::raiseDuplicateContextError() {
  throw std::runtime_error(std::string("operator '") + name +
                           "' registers two functions for one context");
}

// -- the entry points MXNet's loader looks up -----------------------------------------------------

MX_INT_RET _opVersion() { return MX_LIBRARY_VERSION; }

MX_INT_RET _opRegSize() { return ext::Registry<ext::CustomOp>::get()->size(); }

MX_VOID_RET _opRegGet(int idx, const char** name, int* isSGop, const char*** forward_ctx,
                      ext::fcomp_t** forward_fp, int* forward_count, const char*** backward_ctx,
                      ext::fcomp_t** backward_fp, int* backward_count,
                      const char*** create_op_ctx, ext::createOpState_t** create_op_fp,
                      int* create_op_count, ext::parseAttrs_t* parse, ext::inferType_t* type,
                      ext::inferSType_t* stype, ext::inferShape_t* shape,
                      ext::mutateInputs_t* mutate) {
  ext::CustomOp& op = ext::Registry<ext::CustomOp>::get()->get(idx);
  op.mapToVector();      // the vectors below stay alive with the registry
  *name = op.name;
  *isSGop = op.isSGop;
  *parse = op.parse_attrs;
  *type = op.infer_type;
  *stype = op.infer_storage_type;
  *shape = op.infer_shape;
  *mutate = op.mutate_inputs;
  *forward_ctx = op.forward_ctx_cstr.data();
  *forward_fp = op.forward_fp.data();
  *forward_count = static_cast<int>(op.forward_fp.size());
  *backward_ctx = op.backward_ctx_cstr.data();
  *backward_fp = op.backward_fp.data();
  *backward_count = static_cast<int>(op.backward_fp.size());
  *create_op_ctx = op.create_op_ctx_cstr.data();
  *create_op_fp = op.create_op_fp.data();
  *create_op_count = static_cast<int>(op.create_op_fp.size());
}

MX_VOID_RET _opCallFree(void* ptr) { std::free(ptr); }

MX_INT_RET _opCallParseAttrs(ext::parseAttrs_t parseAttrs, const char* const* keys,
                             const char* const* vals, int num, int* num_in, int* num_out) {
  return parseAttrs(MakeAttrs(keys, vals, num), num_in, num_out);
}

MX_INT_RET _opCallInferShape(ext::inferShape_t inferShape, const char* const* keys,
                             const char* const* vals, int num, unsigned int** inshapes,
                             int* indims, int num_in, unsigned int*** mod_inshapes,
                             int** mod_indims, unsigned int*** outshapes, int** outdims,
                             int num_out) {
  std::vector<std::vector<unsigned int>> in_shapes(num_in), out_shapes(num_out);
  for (int i = 0; i < num_in; ++i) in_shapes[i].assign(inshapes[i], inshapes[i] + indims[i]);
  int status = inferShape(MakeAttrs(keys, vals, num), &in_shapes, &out_shapes);
  if (!status) return status;
  // The (possibly completed) input shapes and the output shapes, in arrays MXNet frees.
  auto hand_over = [](const std::vector<std::vector<unsigned int>>& shapes,
                      unsigned int*** arrays, int** dims) {
    std::vector<unsigned int*> pointers;
    std::vector<int> sizes;
    for (const auto& s : shapes) {
      pointers.push_back(CopyOut(s));
      sizes.push_back(static_cast<int>(s.size()));
    }
    *arrays = CopyOut(pointers);
    *dims = CopyOut(sizes);
  };
  hand_over(in_shapes, mod_inshapes, mod_indims);
  hand_over(out_shapes, outshapes, outdims);
  return status;
}

// Type and storage-type inference have one signature: types in, types out, both written back.
template <typename Infer>
int CallInferTypes(Infer infer, const char* const* keys, const char* const* vals, int num,
                   int* in, int num_in, int* out, int num_out) {
  std::vector<int> in_types(in, in + num_in), out_types(num_out, -1);
  int status = infer(MakeAttrs(keys, vals, num), &in_types, &out_types);
  if (!status) return status;
  std::copy(in_types.begin(), in_types.end(), in);
  std::copy(out_types.begin(), out_types.end(), out);
  return status;
}

MX_INT_RET _opCallInferType(ext::inferType_t inferType, const char* const* keys,
                            const char* const* vals, int num, int* intypes, int num_in,
                            int* outtypes, int num_out) {
  return CallInferTypes(inferType, keys, vals, num, intypes, num_in, outtypes, num_out);
}

MX_INT_RET _opCallInferSType(ext::inferSType_t inferSType, const char* const* keys,
                             const char* const* vals, int num, int* instypes, int num_in,
                             int* outstypes, int num_out) {
  return CallInferTypes(inferSType, keys, vals, num, instypes, num_in, outstypes, num_out);
}

MX_INT_RET _opCallFCompute(ext::fcomp_t fcomp, const char* const* keys, const char* const* vals,
                           int num, const int64_t** inshapes, int* indims, void** indata,
                           int* intypes, size_t* inIDs, const char** indev_type, int* indev_id,
                           int num_in, const int64_t** outshapes, int* outdims, void** outdata,
                           int* outtypes, size_t* outIDs, const char** outdev_type,
                           int* outdev_id, int num_out, ext::xpu_malloc_t cpu_malloc,
                           void* cpu_alloc, ext::xpu_malloc_t gpu_malloc, void* gpu_alloc,
                           void* cuda_stream, ext::sparse_malloc_t sparse_malloc,
                           void* sparse_alloc, int* instypes, int* outstypes, void**, void**,
                           void**, void**, int64_t*, int64_t*, int64_t*, int64_t*,
                           void* rng_cpu_states, void* rng_gpu_states) {
  std::vector<ext::MXTensor> inputs, outputs;
  if (!MakeTensors(num_in, inshapes, indims, indata, intypes, inIDs, indev_type, indev_id,
                   instypes, &inputs) ||
      !MakeTensors(num_out, outshapes, outdims, outdata, outtypes, outIDs, outdev_type,
                   outdev_id, outstypes, &outputs))
    return ext::MX_FAIL;
  ext::OpResource resource(cpu_malloc, cpu_alloc, gpu_malloc, gpu_alloc, cuda_stream,
                           sparse_malloc, sparse_alloc, rng_cpu_states, rng_gpu_states);
  return fcomp(MakeAttrs(keys, vals, num), &inputs, &outputs, resource);
}

MX_INT_RET _opCallMutateInputs(ext::mutateInputs_t mutate, const char* const* keys,
                               const char* const* vals, int num, int** mutate_indices,
                               int* indices_size) {
  std::vector<int> indices;
  int status = mutate(MakeAttrs(keys, vals, num), &indices);
  if (!status) return status;
  *indices_size = static_cast<int>(indices.size());
  *mutate_indices = CopyOut(indices);
  return status;
}

MX_INT_RET _opCallCreateOpState(ext::createOpState_t, const char* const*, const char* const*,
                                int, const char*, int, unsigned int**, int*, int, const int*,
                                void**) {
  return Unsupported("stateful operators");
}

#if MX_LIBRARY_VERSION >= 11
MX_VOID_RET _opCallDestroyOpState(void*) {}    // no state is ever created
#endif

MX_INT_RET _opCallFStatefulCompute(int, void*, const int64_t**, int*, void**, int*, size_t*,
                                   const char**, int*, int, const int64_t**, int*, void**, int*,
                                   size_t*, const char**, int*, int, ext::xpu_malloc_t, void*,
                                   ext::xpu_malloc_t, void*, void*, ext::sparse_malloc_t, void*,
                                   int*, int*, void**, void**, void**, void**, int64_t*,
                                   int64_t*, int64_t*, int64_t*, void*, void*) {
  return Unsupported("stateful operators");
}

MX_INT_RET _partRegSize() { return 0; }

MX_INT_RET _partRegGetCount(int, const char**) { return 0; }

MX_VOID_RET _partRegGet(int, int, const char**, ext::supportedOps_t*, ext::createSelector_t*,
                        ext::reviewSubgraph_t*, const char**) {}

MX_INT_RET _partCallSupportedOps(ext::supportedOps_t, const char*, int, int*,
                                 const char* const*, const char* const*, int) {
  return Unsupported("partitioners");
}

MX_INT_RET _partCallCreateSelector(ext::createSelector_t, const char*, void**,
                                   const char* const*, const char* const*, int) {
  return Unsupported("partitioners");
}

MX_VOID_RET _partCallSelect(void*, int, int* selected) { *selected = 0; }

MX_VOID_RET _partCallSelectInput(void*, int, int, int* selected) { *selected = 0; }

MX_VOID_RET _partCallSelectOutput(void*, int, int, int* selected) { *selected = 0; }

MX_VOID_RET _partCallFilter(void*, int*, int, int** keep, int* num_keep) {
  *keep = nullptr;
  *num_keep = 0;
}

MX_VOID_RET _partCallReset(void*) {}

MX_INT_RET _partCallReviewSubgraph(ext::reviewSubgraph_t, const char*, int, int* accept,
                                   const char* const*, const char* const*, int, char***,
                                   char***, int*, const char* const*, int, void* const*,
                                   const int64_t* const*, const int*, const int*, const size_t*,
                                   const char* const*, const int*, const char* const*, int,
                                   void* const*, const int64_t* const*, const int*, const int*,
                                   const size_t*, const char* const*, const int*) {
  *accept = 0;
  return Unsupported("partitioners");
}

MX_INT_RET _passRegSize() { return 0; }

MX_VOID_RET _passRegGet(int, ext::graphPass_t*, const char**) {}

MX_INT_RET _passCallGraphPass(ext::graphPass_t, const char*, char**, const char* const*,
                              const char* const*, int, const char*, const char* const*, int,
                              void* const*, const int64_t* const*, const int*, const int*,
                              const size_t*, const char* const*, const int*, const char* const*,
                              int, void* const*, const int64_t* const*, const int*, const int*,
                              const size_t*, const char* const*, const int*, ext::nd_malloc_t,
                              const void*) {
  return Unsupported("graph passes");
}

MX_INT_RET _msgSize() { return ext::MXerrorMsgs::get()->size(); }

// MXNet copies the message at once; the buffer is per thread, as MXNet's engine threads may
// each read one.
MX_VOID_RET _msgGet(int idx, const char** msg) {
  thread_local std::string text;
  const std::string* message = ext::MXerrorMsgs::get()->get(idx);
  text = *message;
  delete message;
  *msg = text.c_str();
}
