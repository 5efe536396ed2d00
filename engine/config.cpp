#include "engine/config.hpp"

#include <cmath>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "engine/gguf_model.hpp"
#include "util/file_io.hpp"
#include "util/status_macros.hpp"

namespace kvtc::engine {
namespace {

using nlohmann::json;

Result<int64_t> get_int(const json& j, const char* key, int64_t fallback, bool required) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) return invalid_argument(std::string("config.json: missing \"") + key + "\"");
    return fallback;
  }
  if (!it->is_number_integer()) return invalid_argument(std::string("config.json: \"") + key + "\" is not an integer");
  return it->get<int64_t>();
}

Result<double> get_number(const json& j, const char* key, double fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number()) return invalid_argument(std::string("config.json: \"") + key + "\" is not a number");
  return it->get<double>();
}

bool get_bool(const json& j, const char* key, bool fallback) {
  auto it = j.find(key);
  return (it == j.end() || !it->is_boolean()) ? fallback : it->get<bool>();
}

// RoPE: transformers 5 keeps theta and scaling in "rope_parameters"; earlier versions use "rope_theta"
// and "rope_scaling". Both are read; the nested dict wins where both give a value.
Status parse_rope(const json& j, ModelConfig* c) {
  json scaling = json::object();
  if (auto it = j.find("rope_scaling"); it != j.end() && it->is_object()) scaling = *it;
  if (auto it = j.find("rope_parameters"); it != j.end() && it->is_object()) {
    for (auto& [k, v] : it->items()) scaling[k] = v;
  }
  KVTC_ASSIGN_OR_RETURN(double theta, get_number(j, "rope_theta", 10000.0));
  KVTC_ASSIGN_OR_RETURN(theta, get_number(scaling, "rope_theta", theta));
  if (!(theta > 1.0)) return invalid_argument("config.json: rope_theta must be > 1");
  c->rope.theta = theta;
  c->rope.style = RopeStyle::kHalf;
  std::string type = "default";
  if (auto it = scaling.find("rope_type"); it != scaling.end() && it->is_string()) type = *it;
  else if (auto it2 = scaling.find("type"); it2 != scaling.end() && it2->is_string()) type = *it2;
  if (type == "default") return Status::ok();
  KVTC_ASSIGN_OR_RETURN(double factor, get_number(scaling, "factor", 1.0));
  if (!(factor > 0)) return invalid_argument("config.json: rope scaling factor must be > 0");
  if (type == "linear") {
    c->rope_linear_factor = factor;
    return Status::ok();
  }
  if (type == "llama3") {
    c->rope.llama3_factor = factor;
    KVTC_ASSIGN_OR_RETURN(c->rope.llama3_low_freq_factor, get_number(scaling, "low_freq_factor", 1.0));
    KVTC_ASSIGN_OR_RETURN(c->rope.llama3_high_freq_factor, get_number(scaling, "high_freq_factor", 4.0));
    KVTC_ASSIGN_OR_RETURN(c->rope.llama3_original_max_position,
                          get_number(scaling, "original_max_position_embeddings", 8192.0));
    if (!(c->rope.llama3_high_freq_factor > c->rope.llama3_low_freq_factor))
      return invalid_argument("config.json: llama3 rope needs high_freq_factor > low_freq_factor");
    return Status::ok();
  }
  return unsupported("config.json: rope_type \"" + type + "\" (supported: default, linear, llama3)");
}

}  // namespace

Result<ModelConfig> ModelConfig::load(const std::string& model_dir) {
  if (is_gguf_file(model_dir)) {
    KVTC_ASSIGN_OR_RETURN(GgufFile f, GgufFile::open(model_dir));
    auto r = config_from_gguf(f, std::filesystem::path(model_dir).stem().string());
    if (!r.is_ok()) return r.status().with_context(model_dir);
    return r;
  }
  const std::string path = model_dir + "/config.json";
  KVTC_ASSIGN_OR_RETURN(auto bytes, read_file(path));
  std::string name = std::filesystem::path(model_dir).lexically_normal().filename().string();
  if (name.empty()) name = std::filesystem::path(model_dir).lexically_normal().parent_path().filename().string();
  auto r = parse(std::string(bytes.begin(), bytes.end()), name);
  if (!r.is_ok()) return r.status().with_context(path);
  return r;
}

Result<ModelConfig> ModelConfig::parse(const std::string& json_text, const std::string& name) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return invalid_argument("config.json: not a JSON object");
  ModelConfig c;
  c.name = name;
  if (auto it = j.find("model_type"); it != j.end() && it->is_string()) c.model_type = *it;
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2")
    return unsupported("config.json: model_type \"" + c.model_type + "\" (supported: llama, mistral, qwen2)");
  if (auto it = j.find("hidden_act"); it != j.end() && it->is_string() && *it != "silu")
    return unsupported("config.json: hidden_act \"" + it->get<std::string>() + "\" (supported: silu)");
  if (get_bool(j, "mlp_bias", false)) return unsupported("config.json: mlp_bias is not supported");

  KVTC_ASSIGN_OR_RETURN(int64_t hidden, get_int(j, "hidden_size", 0, true));
  KVTC_ASSIGN_OR_RETURN(int64_t inter, get_int(j, "intermediate_size", 0, true));
  KVTC_ASSIGN_OR_RETURN(int64_t layers, get_int(j, "num_hidden_layers", 0, true));
  KVTC_ASSIGN_OR_RETURN(int64_t heads, get_int(j, "num_attention_heads", 0, true));
  KVTC_ASSIGN_OR_RETURN(int64_t kv_heads, get_int(j, "num_key_value_heads", heads, false));
  KVTC_ASSIGN_OR_RETURN(int64_t vocab, get_int(j, "vocab_size", 0, true));
  if (hidden <= 0 || inter <= 0 || layers <= 0 || heads <= 0 || kv_heads <= 0 || vocab <= 0)
    return invalid_argument("config.json: sizes must be positive");
  if (heads % kv_heads != 0)
    return invalid_argument("config.json: num_attention_heads (" + std::to_string(heads) +
                            ") is not a multiple of num_key_value_heads (" + std::to_string(kv_heads) + ")");
  KVTC_ASSIGN_OR_RETURN(int64_t head_dim, get_int(j, "head_dim", hidden / heads, false));
  if (head_dim <= 0 || head_dim % 2 != 0) return invalid_argument("config.json: head_dim must be positive and even");
  constexpr int64_t kMax = int64_t(1) << 30;
  if (hidden > kMax || inter > kMax || layers > 4096 || heads > 4096 || head_dim > 65536 || vocab > kMax)
    return invalid_argument("config.json: sizes out of range");
  c.hidden_size = int32_t(hidden);
  c.intermediate_size = int32_t(inter);
  c.n_layers = int32_t(layers);
  c.n_heads = int32_t(heads);
  c.n_kv_heads = int32_t(kv_heads);
  c.head_dim = int32_t(head_dim);
  c.vocab_size = int32_t(vocab);
  KVTC_ASSIGN_OR_RETURN(double eps, get_number(j, "rms_norm_eps", 1e-6));
  c.rms_norm_eps = float(eps);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", false);
  if (c.model_type == "qwen2") {
    c.qkv_bias = true;
  } else {
    c.qkv_bias = c.o_bias = get_bool(j, "attention_bias", false);
  }
  KVTC_ASSIGN_OR_RETURN(c.max_position_embeddings, get_int(j, "max_position_embeddings", 0, false));
  // Mistral applies its sliding window whenever it is set; Qwen2 only with use_sliding_window.
  bool use_window = c.model_type == "mistral" || (c.model_type == "qwen2" && get_bool(j, "use_sliding_window", false));
  if (use_window) {
    KVTC_ASSIGN_OR_RETURN(c.sliding_window, get_int(j, "sliding_window", 0, false));
    if (c.sliding_window < 0) return invalid_argument("config.json: sliding_window must be >= 0");
    if (c.model_type == "qwen2") {
      KVTC_ASSIGN_OR_RETURN(int64_t max_window_layers, get_int(j, "max_window_layers", layers, false));
      if (max_window_layers < layers)
        return unsupported("config.json: qwen2 sliding window on only some layers is not supported");
    }
  }
  KVTC_RETURN_IF_ERROR(parse_rope(j, &c));

  KVTC_ASSIGN_OR_RETURN(int64_t bos, get_int(j, "bos_token_id", -1, false));
  c.bos_token_id = int32_t(bos);
  if (auto it = j.find("eos_token_id"); it != j.end()) {
    if (it->is_number_integer()) c.eos_token_ids.push_back(it->get<int32_t>());
    if (it->is_array())
      for (auto& e : *it)
        if (e.is_number_integer()) c.eos_token_ids.push_back(e.get<int32_t>());
  }
  return c;
}

ModelShape ModelConfig::cache_shape() const {
  ModelShape s;
  s.n_layers = n_layers;
  s.n_kv_heads = n_kv_heads;
  s.head_dim = head_dim;
  s.rope = rope;
  return s;
}

std::vector<float> ModelConfig::rope_inv_freq() const {
  // transformers: inv_freq = 1 / (base ** (arange(0, dim, 2).float() / dim)), all in fp32.
  const int half = head_dim / 2;
  std::vector<float> inv(half);
  const float base = float(rope.theta);
  for (int i = 0; i < half; ++i) {
    const float e = float(2 * i) / float(head_dim);
    const float p = float(std::pow(double(base), double(e)));
    inv[i] = 1.0f / p;
  }
  if (rope_linear_factor != 1.0) {
    for (auto& f : inv) f = f / float(rope_linear_factor);
  }
  if (rope.llama3_factor > 0) {
    // transformers' _compute_llama3_parameters, elementwise in fp32 with Python-float scalars.
    const double factor = rope.llama3_factor, lo = rope.llama3_low_freq_factor, hi = rope.llama3_high_freq_factor;
    const double old_len = rope.llama3_original_max_position;
    const double low_freq_wavelen = old_len / lo, high_freq_wavelen = old_len / hi;
    const float kTwoPi = float(2 * M_PI);
    for (auto& f : inv) {
      const float wavelen = kTwoPi / f;
      float scaled = wavelen > float(low_freq_wavelen) ? f / float(factor) : f;
      const bool medium = !(wavelen < float(high_freq_wavelen)) && !(wavelen > float(low_freq_wavelen));
      if (medium) {
        const float smooth = (float(old_len) / wavelen - float(lo)) / float(hi - lo);
        scaled = (1.0f - smooth) * scaled / float(factor) + smooth * scaled;
      }
      f = scaled;
    }
  }
  return inv;
}

}  // namespace kvtc::engine
