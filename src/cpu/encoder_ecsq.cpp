// Codec 3's stream encoder: project, choose the ECSQ level by rate control, code the chunks.
//
// Rate control. The budget is the target ratio's share of the stream's raw 16-bit size,
// B = floor(2 p m / ratio) bytes of codes chunks. The calibration predicts each level's bits per token;
// the data may differ, so the level is found on the data: the code lengths of its symbols under the
// level's tables (EcsqRateModel, each (component, cell) costed once) plus each chunk's fixed overhead
// estimate a level's size; a search from the predicted level (galloping, then bisection) finds the
// finest whose estimate fits, and the level is coded. If the coded size still exceeds B (the coder is
// within ~1% of the code lengths, so rarely), the next coarser level is coded, until one fits; the
// last level drops everything (0 bytes), so the target always holds. Projection is to the components
// of the finest level the search may take: 16 levels (half an octave) finer than the prediction.
//
// Token classes (format 4): the tokens the caller marked take the level high_rate_levels finer than the
// base level; the search runs over base levels as above, each estimate the sum of both classes' code
// lengths, and the class map's bytes (reserved_bytes) come off the budget.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <mutex>

#include "core/ecsq_chunk.hpp"
#include "cpu/cpu_backend.hpp"
#include "util/parallel.hpp"
#include "util/status_macros.hpp"

namespace kvtc {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

constexpr uint32_t kSearchLevelsFiner = 16;

struct ChunkJob {
  int64_t b0, n;
  uint32_t c0, c1;
  uint64_t n_high;  // the block's class-1 tokens (0 without classes)
};

// The chunks of a level (and, with token classes, the high class's level `high` for the tokens that
// `classes` marks).
std::vector<ChunkJob> chunk_jobs(const EcsqLevel& level, const EcsqLevel* high, const uint8_t* classes, int64_t m,
                                 int64_t block) {
  std::vector<ChunkJob> jobs;
  for (int64_t b0 = 0; b0 < m; b0 += block) {
    const int64_t n = std::min(block, m - b0);
    uint64_t n_high = 0;
    if (classes != nullptr)
      for (int64_t t = b0; t < b0 + n; ++t) n_high += classes[t];
    for (const auto& [c0, c1] : ecsq_split_components(level, high, uint64_t(n) - n_high, n_high, kRansMaxChunkSymbols))
      jobs.push_back({b0, n, c0, c1, n_high});
  }
  return jobs;
}

}  // namespace

Status encode_stream_ecsq(const CalibrationData& cal, const CacheView& cache, Stream stream, int64_t t0, int64_t m,
                          const RopeTable& rope, const EncodeOptions& opt, const uint8_t* classes,
                          double reserved_bytes, StreamAllocation& a, std::vector<PendingChunk>& chunks,
                          StageTimes& times) {
  const StreamCalibration& sc = stream == Stream::kKey ? cal.key : cal.value;
  const EcsqModel& model = sc.ecsq;
  const char* name = stream == Stream::kKey ? "keys" : "values";
  if (model.empty())
    return invalid_argument(std::string("codec 3 needs the calibration's ECSQ tables, and this calibration has none for ") +
                            name + " (calibration format 1, or calibrated with ECSQ learning off): recalibrate with this "
                            "version (`kvtc calibrate`), or encode with codec 2");
  const int64_t p = cal.shape.n_features();
  a.basis_rank = uint32_t(sc.pca.rank);
  if (m == 0) classes = nullptr;
  a.quantiser = classes != nullptr ? Quantiser::kEcsqClasses : Quantiser::kEcsq;
  a.ecsq_fingerprint = model.fingerprint;
  const uint32_t last = uint32_t(model.levels.size() - 1);
  const uint32_t predicted = ecsq_predicted_level(model, p, opt.target_ratio);
  // The high class's level: high_rate_levels finer than the base level (levels are 2^(1/32) apart in
  // predicted rate, so 32 is about twice the bits per token).
  auto high_of = [&](uint32_t level) -> uint32_t {
    if (classes == nullptr) return level;
    const uint32_t d = uint32_t(opt.high_rate_levels);
    return level > d ? level - d : 0;
  };
  auto high_level = [&](uint32_t level) { return classes != nullptr ? &model.levels[high_of(level)] : nullptr; };
  auto set_level = [&](uint32_t level) {
    a.ecsq_level = level;
    a.ecsq_level_high = high_of(level);
    a.ecsq_n_kept = std::max(model.levels[level].n_kept(), model.levels[high_of(level)].n_kept());
  };
  if (m == 0) {
    set_level(predicted);
    return Status::ok();
  }
  const double budget_bytes = std::floor(2.0 * double(p) * double(m) / opt.target_ratio - reserved_bytes);
  const uint32_t finest = predicted > kSearchLevelsFiner ? predicted - kSearchLevelsFiner : 0;
  uint32_t k = 0;
  for (uint32_t l = high_of(finest); l <= last; ++l) k = std::max(k, model.levels[l].n_kept());
  const std::vector<float> coef = project_stream(cal, cache, stream, t0, m, k, rope, times);
  const int64_t block = opt.chunk_tokens;

  auto q0 = Clock::now();
  // With classes, each class's rows apart: the rate of a level pair is the sum of its two parts.
  std::vector<float> class_rows[2];
  if (classes != nullptr)
    for (int64_t t = 0; t < m; ++t)
      class_rows[classes[t]].insert(class_rows[classes[t]].end(), coef.begin() + t * k, coef.begin() + (t + 1) * k);
  const bool split = classes != nullptr;
  const int64_t row_floats = std::max<int64_t>(k, 1);  // k = 0: no rows, and no bits either way
  EcsqRateModel rate(model, split ? class_rows[0].data() : coef.data(), k,
                     split ? int64_t(class_rows[0].size()) / row_floats : m);
  EcsqRateModel rate_high(model, class_rows[1].data(), k, int64_t(class_rows[1].size()) / row_floats);
  auto estimate_bytes = [&](uint32_t level) -> Result<double> {
    const double chunks_overhead = double(chunk_jobs(model.levels[level], high_level(level), classes, m, block).size() *
                                          ecsq_chunk_overhead_bytes(opt.rans_lanes));
    KVTC_ASSIGN_OR_RETURN(double bits, rate.bits(level, opt.n_threads));
    if (split) {
      KVTC_ASSIGN_OR_RETURN(const double high_bits, rate_high.bits(high_of(level), opt.n_threads));
      bits += high_bits;
    }
    return bits / 8.0 + chunks_overhead;
  };
  // Finest level in [finest, last] whose estimate fits; `last` drops everything and always fits.
  // Galloping from the calibration's prediction brackets the answer among levels that share most
  // cells with it (cheap for the rate model), then a bisection inside the bracket finds it.
  auto fits = [&](uint32_t level) -> Result<bool> {
    KVTC_ASSIGN_OR_RETURN(const double estimate, estimate_bytes(level));
    return estimate <= budget_bytes;
  };
  uint32_t lo = finest, hi = last;  // invariant: hi fits; every level below lo does not
  const uint32_t start = std::clamp(predicted, finest, last);
  KVTC_ASSIGN_OR_RETURN(const bool start_fits, fits(start));
  if (start_fits) {
    hi = start;
    for (uint32_t step = 1; hi > finest; step *= 2) {
      const uint32_t probe = hi - std::min(step, hi - finest);
      KVTC_ASSIGN_OR_RETURN(const bool ok, fits(probe));
      if (!ok) {
        lo = probe + 1;
        break;
      }
      hi = probe;
    }
  } else {
    lo = start + 1;
    for (uint32_t step = 1; lo <= last; step *= 2) {
      const uint32_t probe = std::min(lo + step - 1, last);
      KVTC_ASSIGN_OR_RETURN(const bool ok, fits(probe));
      if (ok) {
        hi = probe;
        break;
      }
      lo = probe + 1;
    }
  }
  lo = std::min(lo, hi);
  while (lo < hi) {
    const uint32_t mid = lo + (hi - lo) / 2;
    KVTC_ASSIGN_OR_RETURN(const bool ok, fits(mid));
    if (ok) hi = mid;
    else lo = mid + 1;
  }
  times.quantize_s += seconds_since(q0);

  for (uint32_t level = lo;; ++level) {
    const std::vector<ChunkJob> jobs = chunk_jobs(model.levels[level], high_level(level), classes, m, block);
    std::vector<PendingChunk> coded(jobs.size());
    std::mutex time_mu;
    KVTC_RETURN_IF_ERROR(parallel_for(int64_t(jobs.size()), opt.n_threads, [&](int64_t i) -> Status {
      const ChunkJob& j = jobs[size_t(i)];
      auto c0 = Clock::now();
      PendingChunk& pc = coded[size_t(i)];
      const uint8_t* block_classes = classes != nullptr ? classes + j.b0 : nullptr;
      KVTC_RETURN_IF_ERROR(encode_ecsq_chunk(model, level, coef.data() + j.b0 * k, k, j.n, j.c0, j.c1, opt.rans_lanes,
                                             pc.stored, block_classes, high_of(level)));
      ChunkEntry& e = pc.entry;
      e.kind = ChunkKind::kCodes;
      e.coder = ChunkCoder::kEcsqRans;
      e.stream = uint8_t(stream);
      e.token_begin = uint32_t(t0 + j.b0);
      e.n_tokens = uint32_t(j.n);
      e.item_begin = j.c0;
      e.n_items = j.c1 - j.c0;
      e.raw_bytes = uint32_t(
          ecsq_chunk_symbols(model.levels[level], high_level(level), uint64_t(j.n) - j.n_high, j.n_high, j.c0, j.c1));
      e.stored_bytes = uint32_t(pc.stored.size());
      e.crc32 = crc32_of(pc.stored.data(), pc.stored.size());
      std::lock_guard<std::mutex> lock(time_mu);
      times.deflate_s += seconds_since(c0);
      return Status::ok();
    }));
    double stored = 0;
    for (const PendingChunk& pc : coded) stored += double(pc.stored.size());
    if (stored <= budget_bytes || level == last) {
      set_level(level);
      for (PendingChunk& pc : coded) chunks.push_back(std::move(pc));
      return Status::ok();
    }
  }
}

}  // namespace kvtc
