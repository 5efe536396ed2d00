// What the engine reads from a GGUF model file besides raw tensors: the model configuration from the
// `<arch>.*` metadata, Hugging Face tensor names mapped to GGUF's, and the q/k row order.
//
// Architectures: "llama" (Llama, Mistral, SmolLM2 and other Llama-shaped models) and "qwen2" (q/k/v
// biases). llama.cpp's converter permutes the rows of each head of q_proj and k_proj (and their
// biases) for llama so that its RoPE can rotate adjacent pairs (2i, 2i+1); the engine, like
// transformers' GGUF loader, undoes that permutation on load so that weights, RoPE pairing (i,
// i + head_dim/2) and the exported KV cache are those of the Hugging Face checkpoint. qwen2 files are
// stored unpermuted (NeoX-style RoPE) and are read as they are.
//
// Refused with kUnsupported, naming what: other architectures, partial rotary embeddings
// (rope.dimension_count != head_dim), a `rope_freqs.weight` tensor (Llama 3 frequency factors), RoPE
// scaling other than none/linear, MLP biases, sliding windows.
#pragma once

#include <string>

#include "engine/config.hpp"
#include "engine/gguf.hpp"
#include "kvtc/status.hpp"

namespace kvtc::engine {

// True when `path` is a regular file that starts with the GGUF magic.
bool is_gguf_file(const std::string& path);

// The configuration of the model in `f`; `name` goes into cache metadata.
Result<ModelConfig> config_from_gguf(const GgufFile& f, const std::string& name);

// The GGUF tensor name of a Hugging Face tensor name ("model.layers.3.self_attn.k_proj.weight" ->
// "blk.3.attn_k.weight"), or "" when the name has no GGUF counterpart.
std::string gguf_tensor_name(const std::string& hf_name);

// Number of heads whose rows llama.cpp permuted in HF tensor `hf_name` of a file of architecture
// `arch` (q_proj: n_heads, k_proj: n_kv_heads), or 0 when the tensor is stored in HF order.
int gguf_permuted_heads(const std::string& arch, const std::string& hf_name, int n_heads, int n_kv_heads);

// Undoes llama.cpp's permutation in place: `rows` rows of `cols` values, `n_heads` heads of
// rows / n_heads rows each; within a head, stored row 2j + s holds HF row s * head_rows / 2 + j.
Status unpermute_gguf_rows(float* data, int64_t rows, int64_t cols, int n_heads);

}  // namespace kvtc::engine
