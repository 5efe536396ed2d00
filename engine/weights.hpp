// Reads named tensors of a model as fp32, by their Hugging Face names: from a checkpoint folder (one
// model.safetensors, or the shards that model.safetensors.index.json lists, each memory-mapped once, on
// first use), or from a GGUF file (names mapped to GGUF's, tensors dequantised, llama's q/k rows put
// back in Hugging Face order: gguf_model.hpp).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/gguf.hpp"
#include "format/safetensors.hpp"
#include "kvtc/status.hpp"

namespace kvtc::engine {

class WeightReader {
 public:
  // `model_path`: a Hugging Face folder or a .gguf file.
  static Result<WeightReader> open(const std::string& model_path);

  bool has(const std::string& name) const;
  // Shape of a tensor; kInvalidArgument when absent.
  Result<std::vector<int64_t>> shape(const std::string& name);
  // Converts tensor `name` (BF16, F16 or F32) into out[0 .. n), checking that its shape is `shape`.
  Status read_into(const std::string& name, const std::vector<int64_t>& shape, float* out);
  Result<std::vector<float>> read(const std::string& name, const std::vector<int64_t>& shape);

 private:
  Result<const SafetensorsFile*> file(const std::string& name);
  Result<const GgufTensorInfo*> gguf_tensor(const std::string& name) const;
  std::shared_ptr<GgufFile> gguf_;  // set for a GGUF model; the maps below are then empty
  std::string gguf_arch_;
  int gguf_heads_ = 0, gguf_kv_heads_ = 0;
  std::string dir_;
  std::map<std::string, std::string> file_of_;                  // tensor -> shard file name
  std::map<std::string, std::shared_ptr<SafetensorsFile>> open_;  // shard file name -> parsed file
};

}  // namespace kvtc::engine
