// Model configuration of a Hugging Face Llama-family checkpoint (config.json), as the engine needs it.
// GGUF files give the same struct from their metadata (gguf_model.hpp).
//
// Supported model_type values: "llama", "mistral", "qwen2". Every field the forward pass depends on is
// read here and checked once, so that the forward code can trust it:
//   hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads
//   (default: num_attention_heads), head_dim (default: hidden_size / num_attention_heads), rms_norm_eps,
//   vocab_size, tie_word_embeddings, attention_bias (llama; qwen2 always has q/k/v biases), hidden_act
//   ("silu" only), sliding_window (mistral; qwen2 only with use_sliding_window), bos/eos token ids.
// RoPE: rope_theta at the top level or inside "rope_parameters" (transformers >= 5); the scaling dict
// "rope_scaling" or "rope_parameters" with rope_type "default", "linear" or "llama3". Hugging Face
// Llama pairs feature i with i + head_dim/2 ("half"); the interleaved style can be forced by the caller
// for checkpoints converted from Meta/GGUF layouts.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvtc/cache.hpp"
#include "kvtc/status.hpp"

namespace kvtc::engine {

struct ModelConfig {
  std::string model_type;  // "llama", "mistral", "qwen2"
  std::string name;        // the model folder's base name, for cache metadata
  int32_t hidden_size = 0;
  int32_t intermediate_size = 0;
  int32_t n_layers = 0;
  int32_t n_heads = 0;
  int32_t n_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t vocab_size = 0;
  float rms_norm_eps = 1e-6f;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // q_proj, k_proj, v_proj carry a bias (qwen2, llama attention_bias)
  bool o_bias = false;    // o_proj carries a bias (llama attention_bias)
  int64_t sliding_window = 0;  // 0: full causal attention
  int64_t max_position_embeddings = 0;
  RopeParams rope;
  double rope_linear_factor = 1.0;  // rope_type "linear": positions divided by this
  int32_t bos_token_id = -1;        // -1: none
  std::vector<int32_t> eos_token_ids;

  // Reads <dir>/config.json, or the metadata of a .gguf file (gguf_model.hpp).
  static Result<ModelConfig> load(const std::string& model_dir);
  // Parses the text of a config.json; `name` goes into cache metadata.
  static Result<ModelConfig> parse(const std::string& json_text, const std::string& name);

  int32_t n_rep() const { return n_heads / n_kv_heads; }  // query heads per KV head
  ModelShape cache_shape() const;
  // The head_dim/2 RoPE frequencies as Hugging Face computes them (fp32 arithmetic, scaling applied).
  std::vector<float> rope_inv_freq() const;
};

}  // namespace kvtc::engine
