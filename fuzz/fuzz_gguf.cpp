// libFuzzer target: GGUF bytes -> the reader (header, metadata, tensor table), the typed getters, and
// dequantisation of every small tensor of a supported type. The reader checks every bound when it
// parses, so dequantising a tensor it accepted must succeed and stay inside the input.
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "engine/gguf.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvtc::engine;
  auto f = GgufFile::parse_view(data, size);
  if (!f.is_ok()) return 0;
  for (const auto& [key, value] : f->metadata()) {
    (void)f->get_int_or(key, 0);
    (void)f->get_float_or(key, 0.0);
    (void)f->get_bool_or(key, false);
    (void)f->get_string(key);
    (void)value.array_size();
  }
  std::vector<float> out;
  for (const GgufTensorInfo& t : f->tensors()) {
    if (f->find_tensor(t.name) != &t) std::abort();
    const uint8_t* begin = f->tensor_data(t);
    if (begin < data || begin > data + size || t.size_bytes > size_t(data + size - begin)) std::abort();
    int64_t n = 1;
    for (int64_t d : t.shape()) n *= d;
    if (n != t.n_elements()) std::abort();
    // Larger tensors add time, not coverage: the loops are the same per block.
    if (!gguf_can_dequantize(t.type) || t.n_elements() > (int64_t(1) << 16)) continue;
    out.assign(size_t(t.n_elements()), 0.0f);
    if (!f->read_f32_into(t, out.data()).is_ok()) std::abort();
  }
  return 0;
}
