// Error of a restored cache against the original: relative MSE and cosine per layer, and the error of
// attention outputs for the stored queries (grouped-query attention, causal, softmax(q.k / sqrt(d))).
#include <algorithm>
#include <cmath>

#include "core/token_vectors.hpp"
#include "cpu/cpu_backend.hpp"

namespace kvtc {

namespace {

// Attention output of query q at absolute position pos over tokens [0, pos] of one KV head.
void attend(const float* q, int64_t pos, const float* k, const float* v, int d, std::vector<double>& w, double* out) {
  w.resize(size_t(pos + 1));
  double mx = -INFINITY;
  const double scale = 1.0 / std::sqrt(double(d));
  for (int64_t t = 0; t <= pos; ++t) {
    double s = 0;
    for (int i = 0; i < d; ++i) s += double(q[i]) * k[t * d + i];
    w[t] = s * scale;
    mx = std::max(mx, w[t]);
  }
  double z = 0;
  for (int64_t t = 0; t <= pos; ++t) z += (w[t] = std::exp(w[t] - mx));
  std::fill(out, out + d, 0.0);
  for (int64_t t = 0; t <= pos; ++t)
    for (int i = 0; i < d; ++i) out[i] += w[t] / z * v[t * d + i];
}

}  // namespace

std::vector<LayerError> measure_layer_errors(const KVCache& a, const KVCache& b, int64_t t0, int64_t t1,
                                             double* k_rel, double* v_rel) {
  return measure_layer_errors(CacheView::of(a), &a, b, t0, t1, k_rel, v_rel);
}

std::vector<LayerError> measure_layer_errors(const CacheView& a, const KVCache* queries, const KVCache& b, int64_t t0,
                                             int64_t t1, double* k_rel, double* v_rel) {
  const ModelShape& s = a.shape;
  const int d = s.head_dim;
  std::vector<LayerError> out(static_cast<size_t>(s.n_layers));
  std::vector<float> xrow(static_cast<size_t>(d));
  double kn = 0, ke = 0, vn = 0, ve = 0;
  for (int l = 0; l < s.n_layers; ++l) {
    LayerError& e = out[size_t(l)];
    double num[2] = {0, 0}, den[2] = {0, 0}, cos_sum[2] = {0, 0};
    int64_t cos_n = 0;
    for (int h = 0; h < s.n_kv_heads; ++h)
      for (int64_t t = t0; t < t1; ++t) {
        for (int st = 0; st < 2; ++st) {
          read_row_f32(st == 0 ? a.k[size_t(l)] : a.v[size_t(l)], a.element_dtype, h, t, d, xrow.data());
          const float* x = xrow.data();
          const float* y = st == 0 ? b.k_row(l, h, t) : b.v_row(l, h, t);
          double xx = 0, yy = 0, xy = 0, dd = 0;
          for (int i = 0; i < d; ++i) {
            xx += double(x[i]) * x[i];
            yy += double(y[i]) * y[i];
            xy += double(x[i]) * y[i];
            dd += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
          }
          num[st] += dd;
          den[st] += xx;
          cos_sum[st] += (xx > 0 && yy > 0) ? xy / std::sqrt(xx * yy) : (xx == yy ? 1.0 : 0.0);
        }
        ++cos_n;
      }
    e.k_relative_mse = den[0] > 0 ? num[0] / den[0] : 0;
    e.v_relative_mse = den[1] > 0 ? num[1] / den[1] : 0;
    e.k_cosine = cos_n ? cos_sum[0] / double(cos_n) : 1;
    e.v_cosine = cos_n ? cos_sum[1] / double(cos_n) : 1;
    ke += num[0]; kn += den[0]; ve += num[1]; vn += den[1];
    e.attention_relative_error = -1;
    const KVCache* qc = queries;
    if (qc != nullptr && qc->n_query > 0 && qc->n_heads > 0 && qc->n_heads % s.n_kv_heads == 0 && !qc->q.empty() &&
        qc->n_tokens == a.n_tokens) {
      const int group = qc->n_heads / s.n_kv_heads;
      std::vector<double> w, oa(static_cast<size_t>(d)), ob(static_cast<size_t>(d));
      std::vector<float> ka_all(static_cast<size_t>(a.n_tokens * d)), va_all(ka_all.size());
      double an = 0, ae = 0;
      for (int qh = 0; qh < qc->n_heads; ++qh) {
        const int kvh = qh / group;
        if (qh % group == 0)
          for (int64_t t = 0; t < a.n_tokens; ++t) {
            read_row_f32(a.k[size_t(l)], a.element_dtype, kvh, t, d, ka_all.data() + t * d);
            read_row_f32(a.v[size_t(l)], a.element_dtype, kvh, t, d, va_all.data() + t * d);
          }
        const float* ka = ka_all.data();
        const float* va = va_all.data();
        const float* kb = b.k[l].data() + int64_t(kvh) * b.n_tokens * d;
        const float* vb = b.v[l].data() + int64_t(kvh) * b.n_tokens * d;
        for (int64_t i = 0; i < qc->n_query; ++i) {
          const float* q = qc->q[l].data() + (int64_t(qh) * qc->n_query + i) * d;
          const int64_t pos = a.n_tokens - qc->n_query + i;
          attend(q, pos, ka, va, d, w, oa.data());
          attend(q, pos, kb, vb, d, w, ob.data());
          for (int j = 0; j < d; ++j) {
            an += oa[j] * oa[j];
            ae += (oa[j] - ob[j]) * (oa[j] - ob[j]);
          }
        }
      }
      e.attention_relative_error = an > 0 ? ae / an : 0;
    }
  }
  if (k_rel) *k_rel = kn > 0 ? ke / kn : 0;
  if (v_rel) *v_rel = vn > 0 ? ve / vn : 0;
  return out;
}

}  // namespace kvtc
