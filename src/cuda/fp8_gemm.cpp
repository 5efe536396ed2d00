#include "cuda/fp8_gemm.hpp"

#include <string>

#include "cuda/cublas_common.hpp"
#include "util/status_macros.hpp"

namespace kvtc::cuda {

namespace {

// cuBLASLt's own advice for Hopper is 32 MiB of workspace; more buys nothing for these shapes.
constexpr size_t kWorkspaceBytes = size_t(32) << 20;
constexpr int kCandidates = 8;  // heuristic results asked for

// The largest power of two up to 256 that divides the address.
int alignment(const void* ptr) {
  const uintptr_t x = reinterpret_cast<uintptr_t>(ptr);
  int a = 1;
  while (a < 256 && x % uintptr_t(2 * a) == 0) a *= 2;
  return a;
}

std::string describe(const std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int, bool, bool>& s) {
  const auto [m, n, k, lda, ldb, ldd, aa, ab, ad, fast, d_bf16] = s;
  return "m " + std::to_string(m) + " n " + std::to_string(n) + " k " + std::to_string(k) + " (lda " +
         std::to_string(lda) + " ldb " + std::to_string(ldb) + " ldd " + std::to_string(ldd) + "; pointers aligned " +
         std::to_string(aa) + "/" + std::to_string(ab) + "/" + std::to_string(ad) + " bytes" +
         (fast ? ", fast accumulation" : "") + (d_bf16 ? ", bf16 output" : "") + ") on this device (FP8 needs compute capability 8.9 or later)";
}

Status set_scales(cublasLtMatmulDesc_t op, const float* a_scale_dev, const float* b_scale_dev) {
  KVTC_RETURN_IF_ERROR(cublas_status(
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scale_dev, sizeof(a_scale_dev)),
      "A_SCALE_POINTER"));
  return cublas_status(
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b_scale_dev, sizeof(b_scale_dev)),
      "B_SCALE_POINTER");
}

}  // namespace

void Fp8Gemm::destroy(Plan& p) {
  if (p.a) cublasLtMatrixLayoutDestroy(p.a);
  if (p.b) cublasLtMatrixLayoutDestroy(p.b);
  if (p.d) cublasLtMatrixLayoutDestroy(p.d);
  if (p.op) cublasLtMatmulDescDestroy(p.op);
  p = Plan{};
}

Fp8Gemm::~Fp8Gemm() {
  for (auto& [shape, p] : plans_) destroy(p);
  if (handle_) cublasLtDestroy(handle_);
}

// The scale pointers are set before the heuristic (as NVIDIA's FP8 sample does: it may pick kernels by
// the attributes set) and again on every run.
Result<Fp8Gemm::Plan*> Fp8Gemm::plan(const Shape& shape, const float* a_scale_dev, const float* b_scale_dev) {
  auto it = plans_.find(shape);
  if (it != plans_.end()) return &it->second;
  const auto [m, n, k, lda, ldb, ldd, align_a, align_b, align_d, fast_accum, d_bf16] = shape;
  Plan p;
  // Destroys what was made so far if a step fails.
  auto fail = [&p](Status st) -> Status {
    destroy(p);
    return st;
  };
  Status st = cublas_status(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  if (st.is_ok())
    st = cublas_status(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "TRANSA");
  if (st.is_ok())
    st = cublas_status(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "TRANSB");
  const int8_t fast = fast_accum ? 1 : 0;
  if (st.is_ok())
    st = cublas_status(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(fast)),
                       "FAST_ACCUM");
  if (st.is_ok())
    st = cublas_status(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_8F_E4M3, uint64_t(k), uint64_t(m), lda), "layout A");
  if (st.is_ok())
    st = cublas_status(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_8F_E4M3, uint64_t(k), uint64_t(n), ldb), "layout B");
  if (st.is_ok())
    st = cublas_status(cublasLtMatrixLayoutCreate(&p.d, d_bf16 ? CUDA_R_16BF : CUDA_R_32F, uint64_t(m), uint64_t(n), ldd),
                       "layout D");
  if (st.is_ok()) st = set_scales(p.op, a_scale_dev, b_scale_dev);
  if (!st.is_ok()) return fail(st);
  cublasLtMatmulPreference_t pref = nullptr;
  st = cublas_status(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
  const uint64_t ws = kWorkspaceBytes;
  if (st.is_ok())
    st = cublas_status(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)),
                       "MAX_WORKSPACE_BYTES");
  const uint32_t aligns[4] = {uint32_t(align_a), uint32_t(align_b), uint32_t(align_d), uint32_t(align_d)};
  const cublasLtMatmulPreferenceAttributes_t align_attr[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  for (int i = 0; i < 4 && st.is_ok(); ++i)
    st = cublas_status(cublasLtMatmulPreferenceSetAttribute(pref, align_attr[i], &aligns[i], sizeof(aligns[i])),
                       "MIN_ALIGNMENT");
  cublasLtMatmulHeuristicResult_t results[kCandidates] = {};
  int found = 0;
  if (st.is_ok())
    st = cublas_status(cublasLtMatmulAlgoGetHeuristic(handle_, p.op, p.a, p.b, p.d, p.d, pref, kCandidates, results, &found),
                       "cublasLtMatmulAlgoGetHeuristic");
  if (pref) cublasLtMatmulPreferenceDestroy(pref);
  if (!st.is_ok()) return fail(st);
  for (int i = 0; i < found; ++i)
    if (results[i].state == CUBLAS_STATUS_SUCCESS) p.candidates.push_back(results[i].algo);
  if (p.candidates.empty()) return fail(unsupported("no FP8 GEMM kernel for " + describe(shape)));
  return &plans_.emplace(shape, p).first->second;
}

Status Fp8Gemm::run(int64_t m, int64_t n, int64_t k, const uint8_t* a, int64_t lda, const float* a_scale_dev,
                    const uint8_t* b, int64_t ldb, const float* b_scale_dev, float* d, int64_t ldd,
                    bool fast_accum, cudaStream_t stream) {
  return run_any(m, n, k, a, lda, a_scale_dev, b, ldb, b_scale_dev, d, false, ldd, fast_accum, stream);
}

Status Fp8Gemm::run_bf16(int64_t m, int64_t n, int64_t k, const uint8_t* a, int64_t lda, const float* a_scale_dev,
                         const uint8_t* b, int64_t ldb, const float* b_scale_dev, uint16_t* d, int64_t ldd,
                         bool fast_accum, cudaStream_t stream) {
  return run_any(m, n, k, a, lda, a_scale_dev, b, ldb, b_scale_dev, d, true, ldd, fast_accum, stream);
}

Status Fp8Gemm::run_any(int64_t m, int64_t n, int64_t k, const uint8_t* a, int64_t lda, const float* a_scale_dev,
                        const uint8_t* b, int64_t ldb, const float* b_scale_dev, void* d, bool d_bf16, int64_t ldd,
                        bool fast_accum, cudaStream_t stream) {
  if (m <= 0 || n <= 0 || k <= 0) return invalid_argument("FP8 GEMM dimensions must be positive");
  if (k % 16 || lda % 16 || ldb % 16 || lda < k || ldb < k || ldd < m)
    return invalid_argument("FP8 GEMM: k, lda and ldb must be multiples of 16, lda and ldb >= k, ldd >= m");
  if (alignment(a_scale_dev) < 16 || alignment(b_scale_dev) < 16)
    return invalid_argument("FP8 GEMM: the scale pointers must be 16-byte aligned");
  if (!handle_) {
    KVTC_RETURN_IF_ERROR(cublas_status(cublasLtCreate(&handle_), "cublasLtCreate"));
    KVTC_RETURN_IF_ERROR(workspace_.reserve(kWorkspaceBytes));
  }
  const Shape shape{m, n, k, lda, ldb, ldd, alignment(a), alignment(b), alignment(d), fast_accum, d_bf16};
  KVTC_ASSIGN_OR_RETURN(Plan* p, plan(shape, a_scale_dev, b_scale_dev));
  KVTC_RETURN_IF_ERROR(set_scales(p->op, a_scale_dev, b_scale_dev));
  const float one = 1.0f, zero = 0.0f;
  auto matmul = [&](const cublasLtMatmulAlgo_t& algo) {
    return cublasLtMatmul(handle_, p->op, &one, a, p->a, b, p->b, &zero, d, p->d, d, p->d, &algo, workspace_.get(),
                          kWorkspaceBytes, stream);
  };
  if (p->chosen >= 0) return cublas_status(matmul(p->candidates[size_t(p->chosen)]), "cublasLtMatmul (FP8)");
  // First run of this plan: the first candidate that runs is kept (a refusal enqueues nothing).
  cublasStatus_t last = CUBLAS_STATUS_NOT_SUPPORTED;
  for (size_t i = 0; i < p->candidates.size(); ++i) {
    last = matmul(p->candidates[i]);
    if (last == CUBLAS_STATUS_SUCCESS) {
      p->chosen = int(i);
      return Status::ok();
    }
    if (last != CUBLAS_STATUS_NOT_SUPPORTED) break;
  }
  return cublas_status(last, ("cublasLtMatmul (FP8), " + std::to_string(p->candidates.size()) +
                              " candidate kernels, for " + describe(shape)).c_str());
}

}  // namespace kvtc::cuda
