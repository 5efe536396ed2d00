#include "engine/weights.hpp"

#include <filesystem>

#include <nlohmann/json.hpp>

#include "util/file_io.hpp"
#include "util/status_macros.hpp"

namespace kvtc::engine {

namespace fs = std::filesystem;

namespace {
std::string shape_string(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}
}  // namespace

Result<WeightReader> WeightReader::open(const std::string& model_dir) {
  WeightReader r;
  r.dir_ = model_dir;
  const std::string index = model_dir + "/model.safetensors.index.json";
  const std::string single = model_dir + "/model.safetensors";
  if (fs::exists(index)) {
    KVTC_ASSIGN_OR_RETURN(auto bytes, read_file(index));
    auto j = nlohmann::json::parse(bytes.begin(), bytes.end(), nullptr, false);
    if (j.is_discarded() || !j.contains("weight_map") || !j["weight_map"].is_object())
      return invalid_argument(index + ": no weight_map");
    for (auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string()) return invalid_argument(index + ": bad entry for " + name);
      const std::string f = file.get<std::string>();
      // Shard names are plain file names in the model folder; refuse paths that leave it.
      if (f.find('/') != std::string::npos || f == "..")
        return invalid_argument(index + ": shard name \"" + f + "\" is not a file name");
      r.file_of_[name] = f;
    }
  } else if (fs::exists(single)) {
    KVTC_ASSIGN_OR_RETURN(auto st, SafetensorsFile::open(single));
    auto shared = std::make_shared<SafetensorsFile>(std::move(st));
    for (const auto& e : shared->entries()) r.file_of_[e.name] = "model.safetensors";
    r.open_["model.safetensors"] = shared;
  } else {
    return invalid_argument(model_dir + ": neither model.safetensors nor model.safetensors.index.json");
  }
  return r;
}

Result<const SafetensorsFile*> WeightReader::file(const std::string& name) {
  auto it = file_of_.find(name);
  if (it == file_of_.end()) return invalid_argument("weights: tensor " + name + " not found");
  auto o = open_.find(it->second);
  if (o == open_.end()) {
    const std::string path = dir_ + "/" + it->second;
    KVTC_ASSIGN_OR_RETURN(auto st, SafetensorsFile::open(path));
    o = open_.emplace(it->second, std::make_shared<SafetensorsFile>(std::move(st))).first;
  }
  return o->second.get();
}

Result<std::vector<int64_t>> WeightReader::shape(const std::string& name) {
  KVTC_ASSIGN_OR_RETURN(const SafetensorsFile* f, file(name));
  const SafetensorsEntry* e = f->find(name);
  if (e == nullptr) return corrupt("weights: " + name + " is listed in the index but missing from its shard");
  return e->shape;
}

Status WeightReader::read_into(const std::string& name, const std::vector<int64_t>& shape, float* out) {
  KVTC_ASSIGN_OR_RETURN(const SafetensorsFile* f, file(name));
  const SafetensorsEntry* e = f->find(name);
  if (e == nullptr) return corrupt("weights: " + name + " is listed in the index but missing from its shard");
  if (e->shape != shape)
    return invalid_argument("weights: " + name + ": expected shape " + shape_string(shape) + ", got " +
                            shape_string(e->shape));
  return f->read_f32_into(*e, out).with_context("weights: " + name);
}

Result<std::vector<float>> WeightReader::read(const std::string& name, const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<float> out(size_t(n), 0.0f);
  KVTC_RETURN_IF_ERROR(read_into(name, shape, out.data()));
  return out;
}

}  // namespace kvtc::engine
