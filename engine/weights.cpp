#include "engine/weights.hpp"

#include <filesystem>

#include <nlohmann/json.hpp>

#include "engine/gguf_model.hpp"
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

Result<WeightReader> WeightReader::open(const std::string& model_path) {
  WeightReader r;
  if (is_gguf_file(model_path)) {
    KVTC_ASSIGN_OR_RETURN(GgufFile g, GgufFile::open(model_path));
    r.gguf_ = std::make_shared<GgufFile>(std::move(g));
    KVTC_ASSIGN_OR_RETURN(r.gguf_arch_, r.gguf_->get_string("general.architecture"));
    const std::string& a = r.gguf_arch_;
    KVTC_ASSIGN_OR_RETURN(int64_t heads, r.gguf_->get_int(a + ".attention.head_count"));
    KVTC_ASSIGN_OR_RETURN(int64_t kv_heads, r.gguf_->get_int_or(a + ".attention.head_count_kv", heads));
    if (heads <= 0 || heads > 4096 || kv_heads <= 0 || kv_heads > heads)
      return invalid_argument(model_path + ": head counts out of range");
    r.gguf_heads_ = int(heads);
    r.gguf_kv_heads_ = int(kv_heads);
    r.dir_ = model_path;
    return r;
  }
  r.dir_ = model_path;
  const std::string index = model_path + "/model.safetensors.index.json";
  const std::string single = model_path + "/model.safetensors";
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
    return invalid_argument(model_path + ": neither model.safetensors nor model.safetensors.index.json");
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

bool WeightReader::has(const std::string& name) const {
  if (gguf_) return gguf_tensor(name).is_ok();
  return file_of_.count(name) != 0;
}

Result<const GgufTensorInfo*> WeightReader::gguf_tensor(const std::string& name) const {
  const std::string g = gguf_tensor_name(name);
  const GgufTensorInfo* t = g.empty() ? nullptr : gguf_->find_tensor(g);
  if (t == nullptr)
    return invalid_argument("weights: tensor " + name + (g.empty() ? "" : " (" + g + ")") + " not found in " + dir_);
  return t;
}

Result<std::vector<int64_t>> WeightReader::shape(const std::string& name) {
  if (gguf_) {
    KVTC_ASSIGN_OR_RETURN(const GgufTensorInfo* t, gguf_tensor(name));
    return t->shape();
  }
  KVTC_ASSIGN_OR_RETURN(const SafetensorsFile* f, file(name));
  const SafetensorsEntry* e = f->find(name);
  if (e == nullptr) return corrupt("weights: " + name + " is listed in the index but missing from its shard");
  return e->shape;
}

Status WeightReader::read_into(const std::string& name, const std::vector<int64_t>& shape, float* out) {
  if (gguf_) {
    KVTC_ASSIGN_OR_RETURN(const GgufTensorInfo* t, gguf_tensor(name));
    if (t->shape() != shape)
      return invalid_argument("weights: " + name + " (" + t->name + "): expected shape " + shape_string(shape) +
                              ", got " + shape_string(t->shape()));
    KVTC_RETURN_IF_ERROR(gguf_->read_f32_into(*t, out).with_context("weights: " + t->name));
    const int heads = gguf_permuted_heads(gguf_arch_, name, gguf_heads_, gguf_kv_heads_);
    if (heads == 0) return Status::ok();
    const int64_t rows = shape[0], cols = shape.size() > 1 ? shape[1] : 1;
    return unpermute_gguf_rows(out, rows, cols, heads).with_context("weights: " + t->name);
  }
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
