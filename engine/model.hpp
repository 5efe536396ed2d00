// A Llama-family causal LM on the CPU in fp32: weights, the KV state of one sequence, and the forward
// pass (chunked prefill onto an existing state, single-token decode).
//
// Numerics follow Hugging Face transformers' LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM
// in fp32: RMSNorm in fp32, RoPE angles as transformers computes them (fp32 inv_freq times fp32
// position, rounded to fp32, then cos/sin), softmax in fp32 with a causal mask, SwiGLU with silu. The
// matrix products run through OpenBLAS sgemm (projections for a whole chunk of tokens at once,
// attention per KV head over blocks of queries), on as many threads as OpenBLAS is set to use.
// tests/test_engine_forward.cpp checks the logits against transformers' on stored vectors.
//
// Threading: a Model is immutable after load and may serve several KvStates from several threads;
// one KvState belongs to one thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/config.hpp"
#include "kvtc/status.hpp"

namespace kvtc::engine {

// The KV cache of one sequence, stored per layer as [n_kv_heads][capacity][head_dim] fp32 with RoPE
// applied to the keys (the layout of kvtc::KVCache, with room to grow). Each stored token remembers its
// RoPE position, so tokens may be dropped (eviction) while later tokens keep their true positions.
class KvState {
 public:
  explicit KvState(const ModelConfig& config);

  int64_t n_tokens() const { return n_tokens_; }
  // RoPE position that the next token fed to the model gets.
  int64_t next_position() const { return next_position_; }
  void set_next_position(int64_t p) { next_position_ = p; }
  const std::vector<int64_t>& positions() const { return positions_; }
  int64_t capacity() const { return capacity_; }

  // Empties the state (capacity kept); the next token gets position `first_position`.
  void clear(int64_t first_position = 0);
  // Grows storage so that n_tokens() + n more tokens fit without reallocation.
  void reserve(int64_t n);

  // Rows of one layer and KV head: capacity() rows of head_dim floats; the first n_tokens() are valid.
  float* k(int layer, int head) { return k_[layer].data() + size_t(head) * capacity_ * head_dim_; }
  const float* k(int layer, int head) const { return k_[layer].data() + size_t(head) * capacity_ * head_dim_; }
  float* v(int layer, int head) { return v_[layer].data() + size_t(head) * capacity_ * head_dim_; }
  const float* v(int layer, int head) const { return v_[layer].data() + size_t(head) * capacity_ * head_dim_; }

  // Replaces the contents with n tokens at `positions` (one per token); k and v per layer as
  // [n_kv_heads][n][head_dim]. next_position becomes last position + 1.
  Status assign(int64_t n, const std::vector<int64_t>& positions, const std::vector<std::vector<float>>& k,
                const std::vector<std::vector<float>>& v);
  // Keeps only the tokens at the given indices (strictly increasing), in that order; positions stay.
  Status retain(const std::vector<int64_t>& indices);

  // Queries: when n > 0, the forward pass keeps the RoPE'd queries of the last n positions it
  // processed, per layer as [count][n_heads * head_dim] (token-major), for cache export (q.<layer>).
  void set_query_capture(int64_t n);
  int64_t query_capture() const { return n_query_capture_; }
  int64_t n_captured_queries() const { return n_captured_; }
  const std::vector<float>& captured_queries(int layer) const { return q_captured_[layer]; }

  // Attention bookkeeping for eviction methods (H2O): when on, every forward adds the attention
  // probability each stored token receives (summed over queries and the query heads of its KV head)
  // into attention_mass(layer)[head * capacity() + token].
  void set_accumulate_attention(bool on);
  const std::vector<float>& attention_mass(int layer) const { return attn_mass_[layer]; }

  // Per-head eviction: a masked token stays stored, but no query of that layer and KV head attends to
  // it (H2O and SnapKV keep different tokens per head). Tokens added later start unmasked.
  void mask_token(int layer, int head, int64_t token);
  void clear_masks();
  // [capacity()] flags of one layer and head (1: masked), or nullptr when nothing is masked.
  const uint8_t* key_mask(int layer, int head) const {
    return masks_.empty() ? nullptr : masks_[layer].data() + size_t(head) * capacity_;
  }

  // Logits of the last position of the latest forward call (empty before the first).
  const std::vector<float>& last_logits() const { return last_logits_; }

 private:
  friend class Model;
  void append_slots(int64_t n);  // grows capacity if needed and advances n_tokens_ by n

  int n_layers_, n_kv_heads_, head_dim_, n_heads_;
  int64_t n_tokens_ = 0, capacity_ = 0, next_position_ = 0;
  std::vector<int64_t> positions_;
  std::vector<std::vector<float>> k_, v_;
  int64_t n_query_capture_ = 0, n_captured_ = 0;
  std::vector<std::vector<float>> q_captured_;
  bool accumulate_attention_ = false;
  std::vector<std::vector<float>> attn_mass_;
  std::vector<std::vector<uint8_t>> masks_;  // empty: no masks
  std::vector<float> last_logits_;
};

struct LoadOptions {
  // Use the interleaved RoPE pairing (2i, 2i+1) instead of Hugging Face's (i, i + head_dim/2), for
  // checkpoints whose q/k projections were not permuted into the Hugging Face layout.
  bool interleaved_rope = false;
};

struct ForwardOptions {
  // Logits wanted from this call: the last n_logits positions of the tokens passed (-1: all).
  int64_t n_logits = 1;
  // Tokens pushed through the layers at once (bounds activation memory); queries per attention block.
  int64_t chunk_tokens = 512;
  int64_t attention_block = 256;
  // Threads for attention over a long chunk (0: all cores; 1: the calling thread only, for callers
  // that run several forward passes in parallel). Matrix products use OpenBLAS's own thread count.
  int n_threads = 0;
};

class Model {
 public:
  // Reads config.json and the weights (model.safetensors, or the shards named by
  // model.safetensors.index.json) from `model_dir`, converting bf16/f16/f32 to fp32; or, when
  // `model_dir` is a .gguf file, the configuration and dequantised weights from it (gguf_model.hpp).
  static Result<Model> load(const std::string& model_dir, const LoadOptions& options = {});

  const ModelConfig& config() const;
  KvState new_state() const { return KvState(config()); }

  // Runs `n` tokens through the model after the tokens already in `state` (their positions follow
  // state->next_position()), appends their keys and values to the state, and writes the logits of the
  // last options.n_logits positions to `logits` as [n_logits][vocab_size] (nullptr: not wanted). The
  // logits of the very last position are also kept in state->last_logits().
  Status forward(KvState* state, const int32_t* tokens, int64_t n, const ForwardOptions& options,
                 std::vector<float>* logits) const;
  Status forward(KvState* state, const std::vector<int32_t>& tokens, std::vector<float>* logits = nullptr,
                 int64_t n_logits = 1) const {
    ForwardOptions o;
    o.n_logits = n_logits;
    return forward(state, tokens.data(), int64_t(tokens.size()), o, logits);
  }

  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;
  ~Model();

  struct Weights;

 private:
  explicit Model(std::unique_ptr<Weights> w);
  std::unique_ptr<Weights> w_;
};

}  // namespace kvtc::engine
