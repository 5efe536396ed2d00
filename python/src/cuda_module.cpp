// kvtc._kvtc._CudaRestorer and _CudaCompressor: restore containers straight into CUDA tensors, and
// compress caches that live in CUDA tensors, with the CUDA backend (include/kvtc/kvtc_cuda.hpp). Built
// only when the package is built with KVTC_CUDA (CMake found nvcc and cuBLAS); kvtc.decompress(...,
// device="cuda") and kvtc.compress(..., device="cuda") use them. Streams arrive as integers (torch's
// current_stream().cuda_stream) and work is queued on them; nothing waits for the device here except
// decode, which checks every chunk's status, and encode, which waits for its container's size.
// Device memory (the encoder's workspace, the container) is allocated by the caller, as torch tensors.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "binding.hpp"
#include "kvtc/kvtc_cuda.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace kvtc_py {
namespace {

using CudaArray = nb::ndarray<nb::device::cuda, nb::c_contig>;
using Bytes = nb::ndarray<nb::ro, uint8_t, nb::ndim<1>, nb::device::cpu>;

void* stream_of(uintptr_t s) { return reinterpret_cast<void*>(s); }

// A calibration on the device and a decoder of batches of its containers.
struct CudaRestorer {
  kvtc::cuda::DeviceCalibration dcal;
  kvtc::cuda::BatchDecoder dec;
};

// One layer's keys or values: [kv_heads, n_tokens, head_dim] (contiguous: CudaArray is c_contig).
void check_layer_shape(const CudaArray& a, const kvtc::ModelShape& s, int64_t n_tokens, const std::string& what) {
  if (a.ndim() != 3 || int64_t(a.shape(0)) != s.n_kv_heads || int64_t(a.shape(1)) != n_tokens ||
      int64_t(a.shape(2)) != s.head_dim)
    throw StatusError{kvtc::mismatch(what + ": expected a contiguous [" + std::to_string(s.n_kv_heads) + ", " +
                                     std::to_string(n_tokens) + ", " + std::to_string(s.head_dim) + "] tensor")};
}

kvtc::cuda::ElementType element_type(const CudaArray& a, const kvtc::ModelShape& s, int64_t n_tokens,
                                     const char* what) {
  check_layer_shape(a, s, n_tokens, what);
  const auto t = a.dtype();
  if (t.lanes == 1 && t.bits == 16 && t.code == uint8_t(nb::dlpack::dtype_code::Bfloat))
    return kvtc::cuda::ElementType::kBF16;
  if (t.lanes == 1 && t.bits == 32 && t.code == uint8_t(nb::dlpack::dtype_code::Float))
    return kvtc::cuda::ElementType::kF32;
  throw StatusError{kvtc::unsupported(std::string(what) + ": the CUDA restore writes bfloat16 or float32")};
}

// A calibration on the device (fp32 and bf16 bases, what the projections read) and a batch encoder, used one
// sequence at a time; workspace_dev is the caller's (a torch tensor), set again only when it moves.
struct CudaCompressor {
  kvtc::cuda::DeviceCalibration dcal;
  kvtc::cuda::BatchEncoder enc;
  const void* workspace_dev = nullptr;
  size_t workspace_bytes = 0;
};

kvtc::DType cache_dtype(const CudaArray& a) {
  const auto t = a.dtype();
  if (t.lanes == 1 && t.bits == 16 && t.code == uint8_t(nb::dlpack::dtype_code::Bfloat)) return kvtc::DType::kBF16;
  if (t.lanes == 1 && t.bits == 16 && t.code == uint8_t(nb::dlpack::dtype_code::Float)) return kvtc::DType::kF16;
  if (t.lanes == 1 && t.bits == 32 && t.code == uint8_t(nb::dlpack::dtype_code::Float)) return kvtc::DType::kF32;
  throw StatusError{kvtc::invalid_argument("the CUDA encoder reads bfloat16, float16 or float32 caches")};
}

// One sequence's contiguous device cache as the encoder reads it: every layer [kv_heads, tokens,
// head_dim] of one dtype. The metadata is the caller's, or what a kvtc cache file of this cache would
// carry (as the host path writes).
kvtc::cuda::DeviceCacheView device_view(const kvtc::Calibration& cal, const std::vector<CudaArray>& keys,
                                        const std::vector<CudaArray>& values, int64_t position_offset,
                                        const std::optional<std::map<std::string, std::string>>& metadata) {
  const kvtc::ModelShape& s = cal.shape();
  if (int64_t(keys.size()) != s.n_layers || int64_t(values.size()) != s.n_layers)
    throw StatusError{kvtc::mismatch("expected " + std::to_string(s.n_layers) + " layers of keys and values, got " +
                                     std::to_string(keys.size()) + " and " + std::to_string(values.size()))};
  kvtc::cuda::DeviceCacheView v;
  v.shape = s;
  v.dtype = cache_dtype(keys[0]);
  v.n_tokens = keys[0].ndim() == 3 ? int64_t(keys[0].shape(1)) : 0;
  v.position_offset = position_offset;
  for (size_t l = 0; l < keys.size(); ++l) {
    check_layer_shape(keys[l], s, v.n_tokens, "keys of layer " + std::to_string(l));
    check_layer_shape(values[l], s, v.n_tokens, "values of layer " + std::to_string(l));
    if (cache_dtype(keys[l]) != v.dtype || cache_dtype(values[l]) != v.dtype)
      throw StatusError{kvtc::invalid_argument("keys and values differ in dtype")};
    v.k_layers.push_back(keys[l].data());
    v.v_layers.push_back(values[l].data());
  }
  v.metadata = metadata ? *metadata : cache_file_metadata(s, v.dtype, v.n_tokens, position_offset, cal.model_name());
  return v;
}

}  // namespace

void bind_cuda(nb::module_& m) {
  m.def("_cuda_available", [] {
    std::string why;
    const bool ok = kvtc::cuda::device_available(&why);
    return std::make_pair(ok, why);
  });
  nb::class_<CudaRestorer>(m, "_CudaRestorer")
      // fp8: the calibration's E4M3 basis as well (DeviceCalibration::Options::fp8).
      .def_static("create", [](const kvtc::Calibration& cal, uintptr_t stream, bool fp8) {
        kvtc::cuda::DeviceCalibration::Options o;
        o.fp8 = fp8;
        nb::gil_scoped_release unlocked;
        return new CudaRestorer{take(kvtc::cuda::DeviceCalibration::upload(cal, o, stream_of(stream))), {}};
      }, "cal"_a, "stream"_a, "fp8"_a = false, nb::rv_policy::take_ownership)
      // fp8: bf16 restores of this batch reconstruct in FP8 (BatchDecodeOptions::fp8_reconstruction).
      .def("decode", [](CudaRestorer& r, const std::vector<Bytes>& containers, uintptr_t stream, bool fp8) {
        std::vector<kvtc::cuda::ContainerView> views;
        for (const Bytes& b : containers) views.emplace_back(b.data(), b.size());
        kvtc::cuda::BatchDecodeOptions o;
        o.fp8_reconstruction = fp8;
        nb::gil_scoped_release unlocked;
        raise_if_error(r.dec.decode(r.dcal, views, o, stream_of(stream)));
      }, "containers"_a, "stream"_a, "fp8"_a = false)
      .def("n_tokens", [](const CudaRestorer& r, int seq) { return r.dec.n_tokens(seq); })
      .def("n_layers", [](const CudaRestorer& r, int seq) { return r.dec.shape(seq).n_layers; })
      .def("restore_layer", [](CudaRestorer& r, int seq, int layer, CudaArray k, CudaArray v, uintptr_t stream) {
        if (seq < 0 || seq >= r.dec.n_sequences())
          throw StatusError{kvtc::invalid_argument("sequence " + std::to_string(seq) + " out of range")};
        const kvtc::ModelShape s = r.dec.shape(seq);
        const auto type = element_type(k, s, r.dec.n_tokens(seq), "keys");
        if (element_type(v, s, r.dec.n_tokens(seq), "values") != type)
          throw StatusError{kvtc::invalid_argument("keys and values differ in dtype")};
        nb::gil_scoped_release unlocked;
        raise_if_error(r.dec.restore_layer(r.dcal, seq, layer, k.data(), v.data(), type, stream_of(stream)));
      });

  // Compression of device caches (kvtc::cuda::BatchEncoder, one sequence per call). plan() is host work:
  // the workspace and the container bound in bytes; encode() queues the whole encode on `stream`, waits
  // for it (raising the encoder's status), and leaves the container in out_dev (room for `bound` bytes)
  // and its size, a uint64, at size_dev.
  nb::class_<CudaCompressor>(m, "_CudaCompressor")
      // The fp32 bases (the fp32 and TF32 projections) and the bf16 ones (the bf16 projection).
      .def_static("create", [](const kvtc::Calibration& cal, uintptr_t stream) {
        nb::gil_scoped_release unlocked;
        return new CudaCompressor{take(kvtc::cuda::DeviceCalibration::upload(cal, {}, stream_of(stream))), {}};
      }, "cal"_a, "stream"_a, nb::rv_policy::take_ownership)
      .def("plan", [](const CudaCompressor& c, const std::vector<CudaArray>& keys, const std::vector<CudaArray>& values,
                      double ratio, int64_t position_offset,
                      const std::optional<std::map<std::string, std::string>>& metadata, int exact_head_tokens,
                      int exact_tail_tokens, int deflate_level) {
        const auto view = device_view(c.dcal.calibration(), keys, values, position_offset, metadata);
        // codec 2, the only codec the GPU encoder writes; no error report on the device
        const auto o = encode_options(ratio, exact_head_tokens, exact_tail_tokens, deflate_level, false);
        const size_t ws = take(kvtc::cuda::BatchEncoder::workspace_bytes(c.dcal, {view}, o));
        const uint64_t bound = take(kvtc::cuda::BatchEncoder::container_bound_bytes(c.dcal, {view}, o)).at(0);
        return std::make_pair(ws, bound);
      }, "keys"_a, "values"_a, "ratio"_a, "position_offset"_a, "metadata"_a.none(), "exact_head_tokens"_a,
         "exact_tail_tokens"_a, "deflate_level"_a)
      .def("encode", [](CudaCompressor& c, const std::vector<CudaArray>& keys, const std::vector<CudaArray>& values,
                        double ratio, int64_t position_offset,
                        const std::optional<std::map<std::string, std::string>>& metadata, int exact_head_tokens,
                        int exact_tail_tokens, int deflate_level, const std::string& projection,
                        uintptr_t workspace_dev, size_t workspace_bytes, uintptr_t out_dev, uintptr_t size_dev,
                        uintptr_t stream) {
        const auto view = device_view(c.dcal.calibration(), keys, values, position_offset, metadata);
        // codec 2, the only codec the GPU encoder writes; no error report on the device
        const auto o = encode_options(ratio, exact_head_tokens, exact_tail_tokens, deflate_level, false);
        if (projection != "fp32" && projection != "tf32" && projection != "bf16")
          throw StatusError{kvtc::invalid_argument("projection must be \"fp32\", \"tf32\" or \"bf16\", not \"" +
                                                   projection + "\"")};
        c.enc.set_projection(projection == "fp32"   ? kvtc::cuda::EncodeProjection::kFp32
                             : projection == "tf32" ? kvtc::cuda::EncodeProjection::kTf32
                                                    : kvtc::cuda::EncodeProjection::kBf16);
        nb::gil_scoped_release unlocked;
        void* ws = reinterpret_cast<void*>(workspace_dev);
        if (ws != c.workspace_dev || workspace_bytes != c.workspace_bytes) {
          raise_if_error(c.enc.set_workspace(ws, workspace_bytes));
          c.workspace_dev = ws;
          c.workspace_bytes = workspace_bytes;
        }
        raise_if_error(c.enc.encode(c.dcal, {view}, o, reinterpret_cast<uint8_t*>(out_dev), {0},
                                    reinterpret_cast<uint64_t*>(size_dev), stream_of(stream)));
        raise_if_error(c.enc.status());
      }, "keys"_a, "values"_a, "ratio"_a, "position_offset"_a, "metadata"_a.none(), "exact_head_tokens"_a,
         "exact_tail_tokens"_a, "deflate_level"_a, "projection"_a, "workspace_dev"_a, "workspace_bytes"_a,
         "out_dev"_a, "size_dev"_a, "stream"_a);
}

}  // namespace kvtc_py
