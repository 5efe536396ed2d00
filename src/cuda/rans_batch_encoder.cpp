#include "cuda/rans_batch_encoder.hpp"

#include <map>
#include <string>

#include "entropy/rans_table.hpp"
#include "util/status_macros.hpp"

namespace kvtc::cuda {

Status RansBatchEncoder::upload(const std::vector<RansChunkInput>& chunks, cudaStream_t stream) {
  jobs_.clear();
  out_offset_.clear();
  host_symbols_.clear();
  host_runs_.clear();
  host_entries_.clear();
  n_symbols_ = 0;
  std::map<const RansTable*, uint32_t> table_offset;
  std::vector<uint64_t> symbol_offset, run_offset;
  uint64_t out_bytes = 0;
  for (size_t c = 0; c < chunks.size(); ++c) {
    const RansChunkInput& in = chunks[c];
    const std::string which = "rANS batch encode, chunk " + std::to_string(c) + ": ";
    if (in.n_lanes < 1 || in.n_lanes > kRansMaxLanes) return invalid_argument(which + "lanes outside 1..64");
    if (in.n_symbols > kRansMaxChunkSymbols) return invalid_argument(which + "too many symbols");
    uint64_t covered = 0;
    run_offset.push_back(host_runs_.size());
    for (uint32_t r = 0; r < in.n_runs; ++r) {
      const RansTable* t = in.runs[r].table;
      if (t == nullptr) return invalid_argument(which + "a run has no table");
      auto it = table_offset.find(t);
      if (it == table_offset.end()) {
        KVTC_RETURN_IF_ERROR(validate_rans_table(*t));
        it = table_offset.emplace(t, uint32_t(host_entries_.size())).first;
        for (int s = 0; s < t->alphabet_size(); ++s) host_entries_.push_back(uint32_t(t->freq[size_t(s)]) << 16 | t->cum[size_t(s)]);
      }
      RansEncodeRun run;
      run.begin = uint32_t(covered);
      run.entry_offset = it->second;
      run.alphabet = uint16_t(t->alphabet_size());
      run.prob_bits = uint8_t(t->prob_bits);
      host_runs_.push_back(run);
      covered += in.runs[r].n_symbols;
    }
    if (covered != in.n_symbols) return invalid_argument(which + "the runs do not cover the symbols");
    symbol_offset.push_back(host_symbols_.size());
    host_symbols_.insert(host_symbols_.end(), in.symbols, in.symbols + in.n_symbols);
    n_symbols_ += in.n_symbols;
    RansEncodeJob job;
    job.n_symbols = in.n_symbols;
    job.n_runs = in.n_runs;
    job.n_lanes = uint32_t(in.n_lanes);
    job.capacity_bytes = rans_encode_capacity_bytes(in.n_symbols, uint32_t(in.n_lanes));
    out_offset_.push_back(out_bytes);
    out_bytes += (uint64_t(job.capacity_bytes) + 255) & ~uint64_t(255);
    jobs_.push_back(job);
  }
  KVTC_RETURN_IF_ERROR(upload_vector(symbols_, host_symbols_, stream));
  KVTC_RETURN_IF_ERROR(upload_vector(runs_, host_runs_, stream));
  KVTC_RETURN_IF_ERROR(upload_vector(entries_, host_entries_, stream));
  KVTC_RETURN_IF_ERROR(out_.reserve(out_bytes));
  KVTC_RETURN_IF_ERROR(results_.reserve(jobs_.size() * 2 * sizeof(uint32_t)));
  KVTC_RETURN_IF_ERROR(status_.reserve(jobs_.size() * sizeof(uint32_t)));
  for (size_t c = 0; c < jobs_.size(); ++c) {
    jobs_[c].symbols = symbols_.as<uint8_t>() + symbol_offset[c];
    jobs_[c].runs = runs_.as<RansEncodeRun>() + run_offset[c];
    jobs_[c].entries = entries_.as<uint32_t>();
    jobs_[c].out = out_.as<uint8_t>() + out_offset_[c];
    jobs_[c].result = results_.as<uint32_t>() + 2 * c;
  }
  return upload_vector(jobs_dev_, jobs_, stream);
}

Status RansBatchEncoder::encode(cudaStream_t stream) {
  KVTC_CUDA_RETURN(launch_rans_encode(jobs_dev_.as<RansEncodeJob>(), int(jobs_.size()), status_.as<uint32_t>(), stream));
  return Status::ok();
}

Status RansBatchEncoder::download(std::vector<std::vector<uint8_t>>* chunks, cudaStream_t stream) {
  const size_t n = jobs_.size();
  std::vector<uint32_t> results(2 * n), status(n);
  if (n > 0) {
    KVTC_CUDA_RETURN(cudaMemcpyAsync(results.data(), results_.get(), results.size() * 4, cudaMemcpyDeviceToHost, stream));
    KVTC_CUDA_RETURN(cudaMemcpyAsync(status.data(), status_.get(), status.size() * 4, cudaMemcpyDeviceToHost, stream));
  }
  KVTC_CUDA_RETURN(cudaStreamSynchronize(stream));
  chunks->assign(n, {});
  for (size_t c = 0; c < n; ++c) {
    if (status[c] != kRansEncodeOk)
      return invalid_argument("rANS batch encode, chunk " + std::to_string(c) + ": " + rans_encode_status_name(status[c]));
    if (uint64_t(results[2 * c]) + results[2 * c + 1] > jobs_[c].capacity_bytes)
      return internal_error("rANS batch encode, chunk " + std::to_string(c) + ": result outside its buffer");
    (*chunks)[c].resize(results[2 * c + 1]);
    KVTC_CUDA_RETURN(cudaMemcpy((*chunks)[c].data(), out_.as<uint8_t>() + out_offset_[c] + results[2 * c],
                                results[2 * c + 1], cudaMemcpyDeviceToHost));
  }
  return Status::ok();
}

}  // namespace kvtc::cuda
