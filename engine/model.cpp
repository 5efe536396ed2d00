#include "engine/model.hpp"

#include <algorithm>
#include <cmath>
#include <atomic>
#include <cstring>
#include <thread>

#include <cblas.h>

#include "engine/blas_threads.hpp"
#include "engine/kernels.hpp"
#include "engine/weights.hpp"
#include "util/status_macros.hpp"

namespace kvtc::engine {

// ---------------------------------------------------------------------------------------------------
// KvState
// ---------------------------------------------------------------------------------------------------

KvState::KvState(const ModelConfig& c)
    : n_layers_(c.n_layers), n_kv_heads_(c.n_kv_heads), head_dim_(c.head_dim), n_heads_(c.n_heads) {
  k_.resize(n_layers_);
  v_.resize(n_layers_);
  q_captured_.resize(n_layers_);
  attn_mass_.resize(n_layers_);
}

void KvState::clear(int64_t first_position) {
  n_tokens_ = 0;
  next_position_ = first_position;
  positions_.clear();
  n_captured_ = 0;
  for (auto& q : q_captured_) q.clear();
  for (auto& a : attn_mass_) std::fill(a.begin(), a.end(), 0.0f);
  masks_.clear();
  last_logits_.clear();
}

void KvState::mask_token(int layer, int head, int64_t token) {
  if (masks_.empty()) {
    masks_.resize(n_layers_);
    for (auto& m : masks_) m.assign(size_t(n_kv_heads_) * capacity_, 0);
  }
  masks_[layer][size_t(head) * capacity_ + token] = 1;
}

void KvState::clear_masks() { masks_.clear(); }

void KvState::reserve(int64_t n) {
  const int64_t need = n_tokens_ + n;
  if (need <= capacity_) return;
  // Geometric growth keeps token-by-token decoding amortised O(1) per token.
  const int64_t cap = std::max<int64_t>({need, capacity_ + capacity_ / 2, 256});
  auto regrow = [&](std::vector<float>& buf, int width) {
    std::vector<float> nb(size_t(n_kv_heads_) * cap * width, 0.0f);
    for (int h = 0; h < n_kv_heads_; ++h)
      if (n_tokens_ > 0 && !buf.empty())
        std::memcpy(nb.data() + size_t(h) * cap * width, buf.data() + size_t(h) * capacity_ * width,
                    sizeof(float) * size_t(n_tokens_) * width);
    buf.swap(nb);
  };
  for (int l = 0; l < n_layers_; ++l) {
    regrow(k_[l], head_dim_);
    regrow(v_[l], head_dim_);
    if (accumulate_attention_) regrow(attn_mass_[l], 1);
    if (!masks_.empty()) {
      std::vector<uint8_t> nm(size_t(n_kv_heads_) * cap, 0);
      for (int h = 0; h < n_kv_heads_; ++h)
        std::memcpy(nm.data() + size_t(h) * cap, masks_[l].data() + size_t(h) * capacity_, size_t(n_tokens_));
      masks_[l].swap(nm);
    }
  }
  capacity_ = cap;
}

void KvState::append_slots(int64_t n) {
  reserve(n);
  n_tokens_ += n;
}

void KvState::set_query_capture(int64_t n) {
  n_query_capture_ = std::max<int64_t>(0, n);
  n_captured_ = 0;
  for (auto& q : q_captured_) q.clear();
}

void KvState::set_accumulate_attention(bool on) {
  accumulate_attention_ = on;
  for (auto& a : attn_mass_) a.assign(on ? size_t(n_kv_heads_) * capacity_ : 0, 0.0f);
}

Status KvState::assign(int64_t n, const std::vector<int64_t>& positions, const std::vector<std::vector<float>>& k,
                       const std::vector<std::vector<float>>& v) {
  if (n < 0 || int64_t(positions.size()) != n) return invalid_argument("KvState::assign: positions do not match n");
  if (int(k.size()) != n_layers_ || int(v.size()) != n_layers_)
    return invalid_argument("KvState::assign: expected " + std::to_string(n_layers_) + " layers");
  const size_t per_layer = size_t(n_kv_heads_) * n * head_dim_;
  for (int l = 0; l < n_layers_; ++l)
    if (k[l].size() != per_layer || v[l].size() != per_layer)
      return invalid_argument("KvState::assign: layer " + std::to_string(l) + " has the wrong size");
  clear(n > 0 ? positions.back() + 1 : 0);
  reserve(n);
  for (int l = 0; l < n_layers_; ++l)
    for (int h = 0; h < n_kv_heads_; ++h) {
      std::memcpy(this->k(l, h), k[l].data() + size_t(h) * n * head_dim_, sizeof(float) * n * head_dim_);
      std::memcpy(this->v(l, h), v[l].data() + size_t(h) * n * head_dim_, sizeof(float) * n * head_dim_);
    }
  positions_ = positions;
  n_tokens_ = n;
  return Status::ok();
}

Status KvState::retain(const std::vector<int64_t>& indices) {
  for (size_t i = 0; i < indices.size(); ++i) {
    if (indices[i] < 0 || indices[i] >= n_tokens_ || (i > 0 && indices[i] <= indices[i - 1]))
      return invalid_argument("KvState::retain: indices must be increasing and < n_tokens");
  }
  const int64_t n = int64_t(indices.size());
  auto compact = [&](float* base, int width) {
    for (int64_t i = 0; i < n; ++i)
      if (indices[i] != i) std::memmove(base + i * width, base + indices[i] * width, sizeof(float) * width);
  };
  for (int l = 0; l < n_layers_; ++l)
    for (int h = 0; h < n_kv_heads_; ++h) {
      compact(k(l, h), head_dim_);
      compact(v(l, h), head_dim_);
      if (accumulate_attention_) compact(attn_mass_[l].data() + size_t(h) * capacity_, 1);
      if (!masks_.empty()) {
        uint8_t* m = masks_[l].data() + size_t(h) * capacity_;
        for (int64_t i = 0; i < n; ++i) m[i] = m[indices[i]];
        std::fill(m + n, m + capacity_, uint8_t(0));
      }
    }
  std::vector<int64_t> pos(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) pos[i] = positions_[indices[i]];
  positions_.swap(pos);
  n_tokens_ = n;
  return Status::ok();
}

// ---------------------------------------------------------------------------------------------------
// Weights
// ---------------------------------------------------------------------------------------------------

struct Model::Weights {
  ModelConfig cfg;
  std::vector<float> inv_freq;  // [head_dim / 2]
  std::vector<float> embed;     // [vocab][hidden]
  std::vector<float> lm_head;   // [vocab][hidden]; empty when tied to embed
  std::vector<float> final_norm;
  struct Layer {
    std::vector<float> attn_norm, mlp_norm;
    std::vector<float> wqkv;  // [(H + 2 KV) * head_dim][hidden]: q rows, then k, then v
    std::vector<float> bqkv;  // empty without biases
    std::vector<float> wo;    // [hidden][H * head_dim]
    std::vector<float> bo;
    std::vector<float> wgu;   // [2 * intermediate][hidden]: gate rows, then up
    std::vector<float> wdown; // [hidden][intermediate]
  };
  std::vector<Layer> layers;
  const float* head() const { return lm_head.empty() ? embed.data() : lm_head.data(); }
};

Model::Model(std::unique_ptr<Weights> w) : w_(std::move(w)) {}
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;
const ModelConfig& Model::config() const { return w_->cfg; }

Result<Model> Model::load(const std::string& model_dir, const LoadOptions& options) {
  auto w = std::make_unique<Weights>();
  KVTC_ASSIGN_OR_RETURN(w->cfg, ModelConfig::load(model_dir));
  ModelConfig& c = w->cfg;
  if (options.interleaved_rope) c.rope.style = RopeStyle::kInterleaved;
  w->inv_freq = c.rope_inv_freq();
  KVTC_ASSIGN_OR_RETURN(WeightReader r, WeightReader::open(model_dir));
  const int64_t D = c.hidden_size, V = c.vocab_size, I = c.intermediate_size, hd = c.head_dim;
  const int64_t nq = int64_t(c.n_heads) * hd, nkv = int64_t(c.n_kv_heads) * hd;
  KVTC_ASSIGN_OR_RETURN(w->embed, r.read("model.embed_tokens.weight", {V, D}));
  KVTC_ASSIGN_OR_RETURN(w->final_norm, r.read("model.norm.weight", {D}));
  // transformers ties lm_head to the embedding when tie_word_embeddings is set; a checkpoint without
  // lm_head.weight can only be meant that way too.
  if (!c.tie_word_embeddings && r.has("lm_head.weight")) {
    KVTC_ASSIGN_OR_RETURN(w->lm_head, r.read("lm_head.weight", {V, D}));
  }
  w->layers.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    auto& L = w->layers[l];
    KVTC_ASSIGN_OR_RETURN(L.attn_norm, r.read(p + "input_layernorm.weight", {D}));
    KVTC_ASSIGN_OR_RETURN(L.mlp_norm, r.read(p + "post_attention_layernorm.weight", {D}));
    L.wqkv.resize(size_t(nq + 2 * nkv) * D);
    KVTC_RETURN_IF_ERROR(r.read_into(p + "self_attn.q_proj.weight", {nq, D}, L.wqkv.data()));
    KVTC_RETURN_IF_ERROR(r.read_into(p + "self_attn.k_proj.weight", {nkv, D}, L.wqkv.data() + nq * D));
    KVTC_RETURN_IF_ERROR(r.read_into(p + "self_attn.v_proj.weight", {nkv, D}, L.wqkv.data() + (nq + nkv) * D));
    if (c.qkv_bias) {
      L.bqkv.resize(size_t(nq + 2 * nkv));
      KVTC_RETURN_IF_ERROR(r.read_into(p + "self_attn.q_proj.bias", {nq}, L.bqkv.data()));
      KVTC_RETURN_IF_ERROR(r.read_into(p + "self_attn.k_proj.bias", {nkv}, L.bqkv.data() + nq));
      KVTC_RETURN_IF_ERROR(r.read_into(p + "self_attn.v_proj.bias", {nkv}, L.bqkv.data() + nq + nkv));
    }
    KVTC_ASSIGN_OR_RETURN(L.wo, r.read(p + "self_attn.o_proj.weight", {D, nq}));
    if (c.o_bias) {
      KVTC_ASSIGN_OR_RETURN(L.bo, r.read(p + "self_attn.o_proj.bias", {D}));
    }
    L.wgu.resize(size_t(2 * I) * D);
    KVTC_RETURN_IF_ERROR(r.read_into(p + "mlp.gate_proj.weight", {I, D}, L.wgu.data()));
    KVTC_RETURN_IF_ERROR(r.read_into(p + "mlp.up_proj.weight", {I, D}, L.wgu.data() + I * D));
    KVTC_ASSIGN_OR_RETURN(L.wdown, r.read(p + "mlp.down_proj.weight", {D, I}));
  }
  return Model(std::move(w));
}

// ---------------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------------

namespace {

// Below this many rows a matrix product goes row by row through sgemv: sgemm would repack the whole
// weight matrix for a handful of rows, which made single-token decoding ~20x slower.
constexpr int64_t kGemvMaxRows = 4;

// y[T][n_out] (+)= x[T][n_in] * W[n_out][n_in]^T
void matmul_wt(const float* x, int64_t T, int64_t n_in, const float* W, int64_t n_out, float* y, bool accumulate) {
  if (T <= kGemvMaxRows) {
    for (int64_t t = 0; t < T; ++t)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, int(n_out), int(n_in), 1.0f, W, int(n_in), x + t * n_in, 1,
                  accumulate ? 1.0f : 0.0f, y + t * n_out, 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(T), int(n_out), int(n_in), 1.0f, x, int(n_in), W,
              int(n_in), accumulate ? 1.0f : 0.0f, y, int(n_out));
}

// Below this many query-key products per layer and chunk, attention stays on one thread.
constexpr int64_t kParallelAttentionMin = 64 * 1024;

struct AttnScratch {
  std::vector<float> qbuf, scores, obuf;
};

// Scratch buffers of one forward call, reused across layers and chunks.
struct Scratch {
  std::vector<float> x, h, qkv, o, gu, act, cos, sin;
  std::vector<AttnScratch> attn = std::vector<AttnScratch>(1);
};

struct AttnArgs {
  KvState* st;
  int layer;
  const float* qkv;  // [T][nqkv], RoPE applied
  float* o;          // [T][nq]
  int64_t n_past, T;
  int n_rep;
  int64_t hd, nq, nqkv, qblock;
  float scale;
  int64_t sliding_window;
};

// Queries t0 .. t0 + B - 1 of the chunk against KV head g. The n_rep query heads that share the KV head
// are stacked into one matrix, so each block is two matrix products: scores = Q K^T over the keys
// visible to the block's last query (causal: later keys are never computed), then out = P V. Writes
// the heads' rows of a.o, and adds each key's received probability to mass[j] when mass is given.
void attend_block(const AttnArgs& a, int g, int64_t t0, AttnScratch* s, float* mass) {
  KvState* st = a.st;
  const int64_t hd = a.hd;
  const int64_t B = std::min(a.qblock, a.T - t0);
  const int64_t M = int64_t(a.n_rep) * B;
  const int64_t nk = a.n_past + t0 + B;
  const float* Kg = st->k(a.layer, g);
  const float* Vg = st->v(a.layer, g);
  s->qbuf.resize(size_t(M) * hd);
  s->scores.resize(size_t(M) * nk);
  s->obuf.resize(size_t(M) * hd);
  for (int r = 0; r < a.n_rep; ++r)
    for (int64_t b = 0; b < B; ++b)
      std::memcpy(s->qbuf.data() + (r * B + b) * hd, a.qkv + (t0 + b) * a.nqkv + (int64_t(g) * a.n_rep + r) * hd,
                  sizeof(float) * hd);
  if (M <= kGemvMaxRows) {
    for (int64_t m = 0; m < M; ++m)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, int(nk), int(hd), a.scale, Kg, int(hd), s->qbuf.data() + m * hd, 1, 0.0f,
                  s->scores.data() + m * nk, 1);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(nk), int(hd), a.scale, s->qbuf.data(), int(hd), Kg,
                int(hd), 0.0f, s->scores.data(), int(nk));
  }
  const std::vector<int64_t>& pos = st->positions();
  const uint8_t* masked = st->key_mask(a.layer, g);
  for (int r = 0; r < a.n_rep; ++r)
    for (int64_t b = 0; b < B; ++b) {
      float* row = s->scores.data() + (r * B + b) * nk;
      // Evicted keys: exp(-1e30 - max) underflows to the clamp of fast_exp, e^-87, nothing next to
      // the row's maximum term e^0.
      if (masked != nullptr)
        for (int64_t j = 0; j < a.n_past; ++j)
          if (masked[j]) row[j] = -1e30f;
      const int64_t visible = a.n_past + t0 + b + 1;
      int64_t first = 0;
      if (a.sliding_window > 0) {
        const int64_t qpos = pos[a.n_past + t0 + b];
        while (first < visible && qpos - pos[first] >= a.sliding_window) ++first;
      }
      softmax_row(row + first, visible - first, nk - first);
      for (int64_t j = 0; j < first; ++j) row[j] = 0.0f;
    }
  if (mass != nullptr) {
    for (int64_t m = 0; m < M; ++m) {
      const float* row = s->scores.data() + m * nk;
      for (int64_t j = 0; j < nk; ++j) mass[j] += row[j];
    }
  }
  if (M <= kGemvMaxRows) {
    for (int64_t m = 0; m < M; ++m)
      cblas_sgemv(CblasRowMajor, CblasTrans, int(nk), int(hd), 1.0f, Vg, int(hd), s->scores.data() + m * nk, 1, 0.0f,
                  s->obuf.data() + m * hd, 1);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(M), int(hd), int(nk), 1.0f, s->scores.data(), int(nk),
                Vg, int(hd), 0.0f, s->obuf.data(), int(hd));
  }
  for (int r = 0; r < a.n_rep; ++r)
    for (int64_t b = 0; b < B; ++b)
      std::memcpy(a.o + (t0 + b) * a.nq + (int64_t(g) * a.n_rep + r) * hd, s->obuf.data() + (r * B + b) * hd,
                  sizeof(float) * hd);
}

}  // namespace

Status Model::forward(KvState* st, const int32_t* tokens, int64_t n, const ForwardOptions& opt,
                      std::vector<float>* logits) const {
  const ModelConfig& c = w_->cfg;
  if (st == nullptr) return invalid_argument("forward: no state");
  if (st->n_layers_ != c.n_layers || st->n_kv_heads_ != c.n_kv_heads || st->head_dim_ != c.head_dim ||
      st->n_heads_ != c.n_heads)
    return invalid_argument("forward: the state was made for another model shape");
  if (n < 0 || (n > 0 && tokens == nullptr)) return invalid_argument("forward: bad token count");
  for (int64_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size)
      return invalid_argument("forward: token id " + std::to_string(tokens[i]) + " out of range [0, " +
                              std::to_string(c.vocab_size) + ")");
  const int64_t n_logits = opt.n_logits < 0 ? n : std::min(opt.n_logits, n);
  if (logits) logits->assign(size_t(n_logits) * c.vocab_size, 0.0f);
  if (n == 0) return Status::ok();

  const int64_t D = c.hidden_size, I = c.intermediate_size, hd = c.head_dim, V = c.vocab_size;
  const int H = c.n_heads, KV = c.n_kv_heads, n_rep = c.n_rep(), half = c.head_dim / 2;
  const int64_t nq = int64_t(H) * hd, nkv = int64_t(KV) * hd, nqkv = nq + 2 * nkv;
  const int64_t chunk = std::max<int64_t>(1, opt.chunk_tokens);
  const int64_t qblock = std::max<int64_t>(1, opt.attention_block);
  const float scale = 1.0f / std::sqrt(float(hd));
  const bool interleaved = c.rope.style == RopeStyle::kInterleaved;
  Scratch s;
  st->reserve(n);
  // Adds per-block attention mass [KV][stride] into the state's accumulators.
  auto add_mass = [st](int layer, const std::vector<float>& mass, int64_t stride) {
    if (mass.empty()) return;
    std::vector<float>& dst = st->attn_mass_[layer];
    for (size_t g = 0; g < mass.size() / size_t(stride); ++g)
      for (int64_t j = 0; j < stride; ++j) dst[g * st->capacity_ + j] += mass[g * stride + j];
  };

  for (int64_t c0 = 0; c0 < n; c0 += chunk) {
    const int64_t T = std::min(chunk, n - c0);
    const int64_t n_past = st->n_tokens_;
    const int64_t pos0 = st->next_position_;
    st->append_slots(T);
    st->positions_.resize(size_t(st->n_tokens_));
    for (int64_t t = 0; t < T; ++t) st->positions_[n_past + t] = pos0 + t;
    st->next_position_ = pos0 + T;

    // RoPE tables for this chunk, computed as transformers does.
    s.cos.resize(size_t(T) * half);
    s.sin.resize(size_t(T) * half);
    rope_angles(&st->positions_[size_t(n_past)], T, w_->inv_freq.data(), half, s.cos.data(), s.sin.data());

    s.x.resize(size_t(T) * D);
    for (int64_t t = 0; t < T; ++t)
      std::memcpy(s.x.data() + t * D, w_->embed.data() + size_t(tokens[c0 + t]) * D, sizeof(float) * D);
    s.h.resize(size_t(T) * D);
    s.qkv.resize(size_t(T) * nqkv);
    s.o.resize(size_t(T) * nq);
    s.gu.resize(size_t(T) * 2 * I);
    s.act.resize(size_t(T) * I);

    for (int l = 0; l < c.n_layers; ++l) {
      const auto& L = w_->layers[l];
      for (int64_t t = 0; t < T; ++t)
        rms_norm_row(s.x.data() + t * D, L.attn_norm.data(), int(D), c.rms_norm_eps, s.h.data() + t * D);
      matmul_wt(s.h.data(), T, D, L.wqkv.data(), nqkv, s.qkv.data(), false);
      if (!L.bqkv.empty())
        for (int64_t t = 0; t < T; ++t)
          for (int64_t j = 0; j < nqkv; ++j) s.qkv[t * nqkv + j] += L.bqkv[j];
      for (int64_t t = 0; t < T; ++t) {
        float* row = s.qkv.data() + t * nqkv;
        const float* cs = s.cos.data() + t * half;
        const float* sn = s.sin.data() + t * half;
        for (int h = 0; h < H + KV; ++h) rope_rotate(row + int64_t(h) * hd, cs, sn, half, interleaved);
        for (int g = 0; g < KV; ++g) {
          std::memcpy(st->k(l, g) + (n_past + t) * hd, row + nq + int64_t(g) * hd, sizeof(float) * hd);
          std::memcpy(st->v(l, g) + (n_past + t) * hd, row + nq + nkv + int64_t(g) * hd, sizeof(float) * hd);
        }
      }
      if (st->n_query_capture_ > 0) {
        auto& qc = st->q_captured_[l];
        const int64_t take = std::min(T, st->n_query_capture_);
        for (int64_t t = T - take; t < T; ++t)
          qc.insert(qc.end(), s.qkv.begin() + t * nqkv, s.qkv.begin() + t * nqkv + nq);
        const int64_t rows = int64_t(qc.size()) / nq;
        if (rows > st->n_query_capture_) qc.erase(qc.begin(), qc.begin() + (rows - st->n_query_capture_) * nq);
      }

      // Attention, per KV head over blocks of queries (see attend_block). The blocks are independent,
      // so a long chunk spreads them over the cores, each block's sgemm calls then single-threaded;
      // a short one (decoding) keeps OpenBLAS's own threading instead.
      AttnArgs a;
      a.st = st;
      a.layer = l;
      a.qkv = s.qkv.data();
      a.o = s.o.data();
      a.n_past = n_past;
      a.T = T;
      a.n_rep = n_rep;
      a.hd = hd;
      a.nq = nq;
      a.nqkv = nqkv;
      a.qblock = qblock;
      a.scale = scale;
      a.sliding_window = c.sliding_window;
      const int64_t n_blocks = (T + qblock - 1) / qblock;
      const int64_t n_items = int64_t(KV) * n_blocks;
      const int64_t max_threads =
          opt.n_threads > 0 ? opt.n_threads : std::max(1u, std::thread::hardware_concurrency());
      const int n_threads =
          int(std::min<int64_t>(n_items, T * (n_past + T) >= kParallelAttentionMin ? max_threads : 1));
      const int64_t mass_stride = n_past + T;
      if (n_threads <= 1) {
        std::vector<float> mass(st->accumulate_attention_ ? size_t(KV) * mass_stride : 0, 0.0f);
        for (int64_t item = 0; item < n_items; ++item)
          attend_block(a, int(item / n_blocks), (item % n_blocks) * qblock, &s.attn[0],
                       mass.empty() ? nullptr : mass.data() + (item / n_blocks) * mass_stride);
        add_mass(l, mass, mass_stride);
      } else {
        s.attn.resize(size_t(n_threads));
        std::vector<std::vector<float>> mass(static_cast<size_t>(n_threads));
        std::atomic<int64_t> next{0};
        auto worker = [&](int w) {
          if (st->accumulate_attention_) mass[w].assign(size_t(KV) * mass_stride, 0.0f);
          for (int64_t item; (item = next.fetch_add(1)) < n_items;)
            attend_block(a, int(item / n_blocks), (item % n_blocks) * qblock, &s.attn[w],
                         mass[w].empty() ? nullptr : mass[w].data() + (item / n_blocks) * mass_stride);
        };
        {
          BlasThreads single(1);  // each block's sgemm calls on its own worker
          std::vector<std::thread> pool;
          for (int w = 1; w < n_threads; ++w) pool.emplace_back(worker, w);
          worker(0);
          for (auto& t : pool) t.join();
        }
        for (const auto& m : mass) add_mass(l, m, mass_stride);
      }
      matmul_wt(s.o.data(), T, nq, L.wo.data(), D, s.x.data(), true);
      if (!L.bo.empty())
        for (int64_t t = 0; t < T; ++t)
          for (int64_t j = 0; j < D; ++j) s.x[t * D + j] += L.bo[j];

      for (int64_t t = 0; t < T; ++t)
        rms_norm_row(s.x.data() + t * D, L.mlp_norm.data(), int(D), c.rms_norm_eps, s.h.data() + t * D);
      matmul_wt(s.h.data(), T, D, L.wgu.data(), 2 * I, s.gu.data(), false);
      for (int64_t t = 0; t < T; ++t)
        silu_mul(s.gu.data() + t * 2 * I, s.gu.data() + t * 2 * I + I, I, s.act.data() + t * I);
      matmul_wt(s.act.data(), T, I, L.wdown.data(), D, s.x.data(), true);
    }
    if (st->n_query_capture_ > 0)
      st->n_captured_ = int64_t(st->q_captured_[0].size()) / nq;

    // Logits: rows of this chunk that fall in the last n_logits of the call, and the very last row.
    const int64_t first_wanted = n - n_logits;  // index within the call
    const int64_t r0 = std::max<int64_t>(c0, first_wanted) - c0;
    const bool has_last = c0 + T == n;
    int64_t lr0 = (logits && r0 < T) ? r0 : T;
    if (has_last) lr0 = std::min(lr0, T - 1);
    if (lr0 < T) {
      const int64_t R = T - lr0;
      for (int64_t t = lr0; t < T; ++t)
        rms_norm_row(s.x.data() + t * D, w_->final_norm.data(), int(D), c.rms_norm_eps, s.h.data() + t * D);
      std::vector<float> out(size_t(R) * V);
      matmul_wt(s.h.data() + lr0 * D, R, D, w_->head(), V, out.data(), false);
      if (logits && r0 < T) {
        const int64_t dst_row = c0 + r0 - first_wanted;
        std::memcpy(logits->data() + dst_row * V, out.data() + (r0 - lr0) * V, sizeof(float) * (T - r0) * V);
      }
      if (has_last) st->last_logits_.assign(out.end() - V, out.end());
    }
  }
  return Status::ok();
}

}  // namespace kvtc::engine
