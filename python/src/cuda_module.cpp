// kvtc._kvtc._CudaRestorer: restore containers straight into CUDA tensors with the CUDA backend
// (include/kvtc/kvtc_cuda.hpp). Built only when the package is built with KVTC_CUDA (CMake found nvcc
// and cuBLAS); kvtc.decompress(..., device="cuda") uses it. Streams arrive as integers (torch's
// current_stream().cuda_stream) and work is queued on them; nothing waits for the device here except
// decode, which checks every chunk's status.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

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

kvtc::cuda::ElementType element_type(const CudaArray& a, const kvtc::ModelShape& s, int64_t n_tokens,
                                     const char* what) {
  if (a.ndim() != 3 || int64_t(a.shape(0)) != s.n_kv_heads || int64_t(a.shape(1)) != n_tokens ||
      int64_t(a.shape(2)) != s.head_dim)
    throw StatusError{kvtc::mismatch(std::string(what) + ": expected a contiguous [" + std::to_string(s.n_kv_heads) +
                                     ", " + std::to_string(n_tokens) + ", " + std::to_string(s.head_dim) + "] tensor")};
  const auto t = a.dtype();
  if (t.lanes == 1 && t.bits == 16 && t.code == uint8_t(nb::dlpack::dtype_code::Bfloat))
    return kvtc::cuda::ElementType::kBF16;
  if (t.lanes == 1 && t.bits == 32 && t.code == uint8_t(nb::dlpack::dtype_code::Float))
    return kvtc::cuda::ElementType::kF32;
  throw StatusError{kvtc::unsupported(std::string(what) + ": the CUDA restore writes bfloat16 or float32")};
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
}

}  // namespace kvtc_py
