// Reads named tensors of a Hugging Face checkpoint as fp32: one model.safetensors, or the shards that
// model.safetensors.index.json lists (each shard memory-mapped once, on first use).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/safetensors.hpp"
#include "kvtc/status.hpp"

namespace kvtc::engine {

class WeightReader {
 public:
  static Result<WeightReader> open(const std::string& model_dir);

  bool has(const std::string& name) const { return file_of_.count(name) != 0; }
  // Shape of a tensor; kInvalidArgument when absent.
  Result<std::vector<int64_t>> shape(const std::string& name);
  // Converts tensor `name` (BF16, F16 or F32) into out[0 .. n), checking that its shape is `shape`.
  Status read_into(const std::string& name, const std::vector<int64_t>& shape, float* out);
  Result<std::vector<float>> read(const std::string& name, const std::vector<int64_t>& shape);

 private:
  Result<const SafetensorsFile*> file(const std::string& name);
  std::string dir_;
  std::map<std::string, std::string> file_of_;                  // tensor -> shard file name
  std::map<std::string, std::shared_ptr<SafetensorsFile>> open_;  // shard file name -> parsed file
};

}  // namespace kvtc::engine
