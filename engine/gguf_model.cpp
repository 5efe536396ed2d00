#include "engine/gguf_model.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <vector>

#include "util/status_macros.hpp"

namespace kvtc::engine {

bool is_gguf_file(const std::string& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return false;
  char magic[4] = {};
  const bool ok = std::fread(magic, 1, 4, f) == 4 && std::memcmp(magic, "GGUF", 4) == 0;
  std::fclose(f);
  return ok;
}

namespace {

Result<int32_t> positive_size(const GgufFile& f, const std::string& key, int64_t max_value) {
  KVTC_ASSIGN_OR_RETURN(int64_t v, f.get_int(key));
  if (v <= 0 || v > max_value)
    return invalid_argument("gguf: " + key + " = " + std::to_string(v) + " is out of range");
  return int32_t(v);
}

Status parse_rope(const GgufFile& f, const std::string& a, ModelConfig* c) {
  KVTC_ASSIGN_OR_RETURN(double theta, f.get_float_or(a + ".rope.freq_base", 10000.0));
  if (!(theta > 1.0)) return invalid_argument("gguf: " + a + ".rope.freq_base must be > 1");
  // The file stores float32; transformers reads the same float32 into its config.
  c->rope.theta = double(float(theta));
  c->rope.style = RopeStyle::kHalf;  // llama q/k rows are un-permuted on load (gguf_model.hpp)
  KVTC_ASSIGN_OR_RETURN(int64_t rot, f.get_int_or(a + ".rope.dimension_count", c->head_dim));
  if (rot != c->head_dim)
    return unsupported("gguf: partial rotary embeddings (" + a + ".rope.dimension_count " + std::to_string(rot) +
                       " of head_dim " + std::to_string(c->head_dim) + ")");
  if (f.find_tensor("rope_freqs.weight") != nullptr)
    return unsupported("gguf: rope_freqs.weight (Llama 3 RoPE frequency factors) is not supported");
  std::string type = "none";
  if (f.find(a + ".rope.scaling.type") != nullptr) {
    KVTC_ASSIGN_OR_RETURN(type, f.get_string(a + ".rope.scaling.type"));
  }
  if (type == "none") return Status::ok();
  if (type == "linear") {
    KVTC_ASSIGN_OR_RETURN(double factor, f.get_float(a + ".rope.scaling.factor"));
    if (!(factor > 0)) return invalid_argument("gguf: " + a + ".rope.scaling.factor must be > 0");
    c->rope_linear_factor = double(float(factor));
    return Status::ok();
  }
  return unsupported("gguf: RoPE scaling \"" + type + "\" (supported: none, linear)");
}

}  // namespace

Result<ModelConfig> config_from_gguf(const GgufFile& f, const std::string& name) {
  KVTC_ASSIGN_OR_RETURN(const std::string a, f.get_string("general.architecture"));
  if (a != "llama" && a != "qwen2")
    return unsupported("gguf: architecture \"" + a + "\" (supported: llama, qwen2)");
  ModelConfig c;
  c.model_type = a;
  c.name = name;
  constexpr int64_t kMax = int64_t(1) << 30;
  KVTC_ASSIGN_OR_RETURN(c.n_layers, positive_size(f, a + ".block_count", 4096));
  KVTC_ASSIGN_OR_RETURN(c.hidden_size, positive_size(f, a + ".embedding_length", kMax));
  KVTC_ASSIGN_OR_RETURN(c.intermediate_size, positive_size(f, a + ".feed_forward_length", kMax));
  KVTC_ASSIGN_OR_RETURN(c.n_heads, positive_size(f, a + ".attention.head_count", 4096));
  KVTC_ASSIGN_OR_RETURN(int64_t kv, f.get_int_or(a + ".attention.head_count_kv", c.n_heads));
  if (kv <= 0 || kv > c.n_heads || c.n_heads % kv != 0)
    return invalid_argument("gguf: " + a + ".attention.head_count (" + std::to_string(c.n_heads) +
                            ") is not a multiple of head_count_kv (" + std::to_string(kv) + ")");
  c.n_kv_heads = int32_t(kv);
  KVTC_ASSIGN_OR_RETURN(int64_t hd, f.get_int_or(a + ".attention.key_length", c.hidden_size / c.n_heads));
  KVTC_ASSIGN_OR_RETURN(int64_t vd, f.get_int_or(a + ".attention.value_length", hd));
  if (hd <= 0 || hd > 65536 || hd % 2 != 0) return invalid_argument("gguf: head dimension must be positive and even");
  if (vd != hd) return unsupported("gguf: key_length != value_length is not supported");
  c.head_dim = int32_t(hd);
  KVTC_ASSIGN_OR_RETURN(double eps, f.get_float_or(a + ".attention.layer_norm_rms_epsilon", 1e-6));
  c.rms_norm_eps = float(eps);
  KVTC_ASSIGN_OR_RETURN(c.max_position_embeddings, f.get_int_or(a + ".context_length", 0));
  if (f.find(a + ".attention.sliding_window") != nullptr)
    return unsupported("gguf: " + a + ".attention.sliding_window is not supported");

  // The vocabulary is the embedding's row count; the tokenizer's list and <arch>.vocab_size must agree.
  const GgufTensorInfo* emb = f.find_tensor("token_embd.weight");
  if (emb == nullptr) return invalid_argument("gguf: no token_embd.weight tensor");
  if (emb->dims.size() != 2 || emb->dims[0] != c.hidden_size)
    return invalid_argument("gguf: token_embd.weight is not [vocab, " + std::to_string(c.hidden_size) + "]");
  if (emb->dims[1] > kMax) return invalid_argument("gguf: vocabulary out of range");
  c.vocab_size = int32_t(emb->dims[1]);
  KVTC_ASSIGN_OR_RETURN(int64_t vocab_meta, f.get_int_or(a + ".vocab_size", c.vocab_size));
  if (vocab_meta != c.vocab_size)
    return invalid_argument("gguf: " + a + ".vocab_size " + std::to_string(vocab_meta) + " != token_embd.weight rows " +
                            std::to_string(c.vocab_size));
  c.tie_word_embeddings = f.find_tensor("output.weight") == nullptr;
  c.qkv_bias = f.find_tensor("blk.0.attn_q.bias") != nullptr;
  c.o_bias = f.find_tensor("blk.0.attn_output.bias") != nullptr;
  if (a == "qwen2" && !c.qkv_bias) return invalid_argument("gguf: qwen2 without q/k/v biases");
  if (f.find_tensor("blk.0.ffn_up.bias") != nullptr || f.find_tensor("blk.0.ffn_down.bias") != nullptr)
    return unsupported("gguf: MLP biases are not supported");
  KVTC_RETURN_IF_ERROR(parse_rope(f, a, &c));

  KVTC_ASSIGN_OR_RETURN(int64_t bos, f.get_int_or("tokenizer.ggml.bos_token_id", -1));
  c.bos_token_id = int32_t(bos);
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"}) {
    KVTC_ASSIGN_OR_RETURN(int64_t id, f.get_int_or(key, -1));
    if (id >= 0 && std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), int32_t(id)) == c.eos_token_ids.end())
      c.eos_token_ids.push_back(int32_t(id));
  }
  return c;
}

std::string gguf_tensor_name(const std::string& hf) {
  static const std::pair<const char*, const char*> kTop[] = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"},
  };
  for (const auto& [from, to] : kTop)
    if (hf == from) return to;
  static const std::pair<const char*, const char*> kLayer[] = {
      {"input_layernorm.weight", "attn_norm.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"self_attn.q_proj.bias", "attn_q.bias"},
      {"self_attn.k_proj.bias", "attn_k.bias"},
      {"self_attn.v_proj.bias", "attn_v.bias"},
      {"self_attn.o_proj.bias", "attn_output.bias"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"},
  };
  static const std::string kPrefix = "model.layers.";
  if (hf.rfind(kPrefix, 0) != 0) return "";
  const size_t dot = hf.find('.', kPrefix.size());
  if (dot == std::string::npos || dot == kPrefix.size()) return "";
  const std::string layer = hf.substr(kPrefix.size(), dot - kPrefix.size());
  if (layer.find_first_not_of("0123456789") != std::string::npos) return "";
  const std::string rest = hf.substr(dot + 1);
  for (const auto& [from, to] : kLayer)
    if (rest == from) return "blk." + layer + "." + to;
  return "";
}

int gguf_permuted_heads(const std::string& arch, const std::string& hf_name, int n_heads, int n_kv_heads) {
  if (arch != "llama") return 0;
  auto ends_with = [&](const char* s) {
    const size_t n = std::strlen(s);
    return hf_name.size() >= n && hf_name.compare(hf_name.size() - n, n, s) == 0;
  };
  if (ends_with("self_attn.q_proj.weight") || ends_with("self_attn.q_proj.bias")) return n_heads;
  if (ends_with("self_attn.k_proj.weight") || ends_with("self_attn.k_proj.bias")) return n_kv_heads;
  return 0;
}

Status unpermute_gguf_rows(float* data, int64_t rows, int64_t cols, int n_heads) {
  if (n_heads <= 0 || rows % n_heads != 0 || (rows / n_heads) % 2 != 0)
    return invalid_argument("gguf: " + std::to_string(rows) + " rows do not split into " + std::to_string(n_heads) +
                            " heads of an even size");
  const int64_t head_rows = rows / n_heads, half = head_rows / 2;
  std::vector<float> head(size_t(head_rows * cols));
  for (int h = 0; h < n_heads; ++h) {
    float* base = data + h * head_rows * cols;
    std::memcpy(head.data(), base, head.size() * sizeof(float));
    for (int64_t j = 0; j < half; ++j)
      for (int64_t s = 0; s < 2; ++s)
        std::memcpy(base + (s * half + j) * cols, head.data() + (2 * j + s) * cols, size_t(cols) * sizeof(float));
  }
  return Status::ok();
}

}  // namespace kvtc::engine
