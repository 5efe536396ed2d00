// Public encode / decode / Decoder over the CPU backend.
#include <chrono>
#include <cmath>

#include "core/backend.hpp"
#include "core/token_vectors.hpp"
#include "cpu/cpu_backend.hpp"
#include "kvtc/kvtc.hpp"
#include "util/file_io.hpp"
#include "util/status_macros.hpp"

namespace kvtc {


namespace {

Result<EncodedCache> encode_impl(const Calibration& cal, const CacheView& view, const KVCache* queries,
                                 const EncodeOptions& options) {
  CpuBackend backend;
  StageTimes times;
  KVTC_ASSIGN_OR_RETURN(EncodedCache out, backend.encode_view(cal.data(), view, options, &times));
  if (options.measure_error) {
    DecodeOptions dopt;
    dopt.n_threads = options.n_threads;
    KVTC_ASSIGN_OR_RETURN(KVCache restored, decode(cal, out.bytes.data(), out.bytes.size(), dopt));
    const int64_t t0 = exact_tokens(cal.data(), view.n_tokens, options).head;
    const int64_t t1 = t0 + out.report.n_compressed_tokens;
    out.report.layers = measure_layer_errors(view, queries, restored, t0, t1, &out.report.k_relative_mse,
                                             &out.report.v_relative_mse);
  }
  return out;
}

}  // namespace

Result<EncodedCache> encode(const Calibration& cal, const KVCache& cache, const EncodeOptions& options) {
  KVTC_RETURN_IF_ERROR(cache.validate());
  return encode_impl(cal, CacheView::of(cache), &cache, options);
}

Result<EncodedCache> encode(const Calibration& cal, const CacheView& cache, const EncodeOptions& options) {
  return encode_impl(cal, cache, nullptr, options);
}

int64_t compress_bound(const Calibration& cal, const KVCache& cache, const EncodeOptions& options) {
  // Worst case: every token exact at 4 bytes per element, every chunk stored (5 bytes per 64 KiB block
  // plus one block per chunk), a generous header.
  const int64_t p = cal.shape().n_features();
  const int64_t raw = cache.n_tokens * p * 2 * 4;
  const int64_t chunks = 2 * (cache.n_tokens / std::max(1, options.chunk_tokens) + 2) * (p + 1) + 4 * cal.shape().n_layers;
  return raw + raw / 65535 * 5 + chunks * (40 + 16) + (1 << 20);
}

Result<KVCache> decode(const Calibration& cal, const uint8_t* bytes, size_t size_bytes, const DecodeOptions& options) {
  KVTC_ASSIGN_OR_RETURN(Decoder dec, Decoder::open(cal, bytes, size_bytes, options));
  KVCache out = dec.skeleton();
  for (int l = 0; l < out.shape.n_layers; ++l) {
    KVTC_RETURN_IF_ERROR(dec.restore_layer(l, &out.k[size_t(l)], &out.v[size_t(l)]));
    if (options.progress) options.progress(double(l + 1) / out.shape.n_layers, "restore");
  }
  return out;
}

struct Decoder::Impl {
  Calibration cal;
  std::unique_ptr<Backend> backend;
  DecodedCoefficients coefficients;
  KVCache skeleton;
  int n_threads = 0;
};

Decoder::Decoder(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Decoder::~Decoder() = default;
Decoder::Decoder(Decoder&&) noexcept = default;
Decoder& Decoder::operator=(Decoder&&) noexcept = default;

Result<Decoder> Decoder::open(const Calibration& cal, const uint8_t* bytes, size_t size_bytes,
                              const DecodeOptions& options) {
  auto impl = std::make_unique<Impl>(Impl{cal, make_cpu_backend(), {}, {}, options.n_threads});
  KVTC_ASSIGN_OR_RETURN(impl->coefficients,
                        impl->backend->decode_coefficients(cal.data(), bytes, size_bytes, options, nullptr));
  impl->skeleton = cache_skeleton(impl->coefficients.container.header);
  return Decoder(std::move(impl));
}

Status Decoder::restore_layer(int layer, std::vector<float>* k, std::vector<float>* v) const {
  if (k == nullptr || v == nullptr) return invalid_argument("restore_layer needs k and v outputs");
  const ModelShape& s = impl_->skeleton.shape;
  const size_t n = size_t(s.n_kv_heads) * size_t(impl_->skeleton.n_tokens) * size_t(s.head_dim);
  k->resize(n);
  v->resize(n);
  return impl_->backend->restore_layer(impl_->cal.data(), impl_->coefficients, layer, k->data(), v->data(),
                                       impl_->n_threads, nullptr);
}

Status Decoder::restore_layer_into(int layer, const MutableTensorView& k, const MutableTensorView& v,
                                   DType element_dtype) const {
  const KVCache& sk = impl_->skeleton;
  const int H = sk.shape.n_kv_heads, D = sk.shape.head_dim;
  const int64_t T = sk.n_tokens;
  if (dtype_size_bytes(element_dtype) == 0) return invalid_argument("unknown element dtype");
  for (const MutableTensorView* t : {&k, &v}) {
    if (T > 0 && t->data == nullptr) return invalid_argument("restore_layer_into: no output data");
    // Rows must not overlap: one stride at least a row apart and the other beyond the first's extent.
    const bool heads_outer = t->token_stride >= D && (H == 1 || t->head_stride >= T * t->token_stride);
    const bool tokens_outer = t->head_stride >= D && (T <= 1 || t->token_stride >= H * t->head_stride);
    if (t->head_stride < 0 || t->token_stride < 0 || (T > 1 && H > 1 && !heads_outer && !tokens_outer) ||
        (T > 1 && t->token_stride < D) || (H > 1 && t->head_stride < D))
      return invalid_argument("restore_layer_into: output rows overlap (head stride " + std::to_string(t->head_stride) +
                              ", token stride " + std::to_string(t->token_stride) + ")");
  }
  std::vector<float> kf, vf;
  KVTC_RETURN_IF_ERROR(restore_layer(layer, &kf, &vf));
  for (int h = 0; h < H; ++h)
    for (int64_t t = 0; t < T; ++t) {
      write_row_f32(kf.data() + (int64_t(h) * T + t) * D, D, element_dtype, k, h, t);
      write_row_f32(vf.data() + (int64_t(h) * T + t) * D, D, element_dtype, v, h, t);
    }
  return Status::ok();
}

int64_t Decoder::n_tokens() const { return impl_->skeleton.n_tokens; }
int64_t Decoder::position_offset() const { return impl_->skeleton.position_offset; }

const KVCache& Decoder::skeleton() const { return impl_->skeleton; }

Result<std::vector<uint8_t>> read_bytes(const std::string& path) { return read_file(path); }
Status write_bytes_atomic(const std::string& path, const std::vector<uint8_t>& bytes) {
  return write_file_atomic(path, bytes);
}

const char* version_string() { return "0.1.0"; }
uint32_t container_format_version() { return kContainerVersion; }

}  // namespace kvtc
