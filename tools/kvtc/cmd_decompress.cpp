// kvtc decompress -c MODEL.kvtcal -o OUT.safetensors IN.kvtc [--layers A:B]
#include <cstdio>

#include "common.hpp"
#ifdef KVTC_WITH_CUDA
#include "kvtc/kvtc_cuda.hpp"
#endif

namespace kvtc::cli {

void register_decompress(CLI::App& app) {
  struct Args {
    std::string cal, out, input, layers, device = "cpu";
    int threads = 0;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("decompress", "Restore a cache file from a .kvtc container");
  cmd->add_option("input", args->input, "Container (.kvtc)")->required()->check(CLI::ExistingFile);
  cmd->add_option("-c,--calibration", args->cal, "Calibration file the container was made with")->required()->check(CLI::ExistingFile);
  cmd->add_option("-o,--output", args->out, "Cache file to write (safetensors)")->required();
  cmd->add_option("--layers", args->layers,
                  "Restore only layers [A, B) (written as layers 0..B-A-1 with metadata first_layer = A)");
  cmd->add_option("-j,--threads", args->threads, "Worker threads (0: all cores)")->capture_default_str();
  cmd->add_option("--device", args->device, "cpu, or cuda (restore on the GPU)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  cmd->callback([args] {
    Calibration cal = unwrap(Calibration::load(args->cal), args->cal);
    std::vector<uint8_t> bytes = unwrap(read_bytes(args->input), args->input);
    if (args->device == "cuda") {
#ifdef KVTC_WITH_CUDA
      int first = 0, last = cal.shape().n_layers;
      if (!args->layers.empty() && (std::sscanf(args->layers.c_str(), "%d:%d", &first, &last) != 2 || first < 0 ||
                                    last > cal.shape().n_layers || first >= last))
        fail(invalid_argument("--layers must be A:B with 0 <= A < B <= " + std::to_string(cal.shape().n_layers)));
      DecodeOptions o;
      o.n_threads = args->threads;
      KVCache out = unwrap(cuda::decode_on_gpu(cal, bytes.data(), bytes.size(), first, last, o), args->input);
      if (first != 0 || last != cal.shape().n_layers) {
        out.shape.n_layers = last - first;
        out.metadata["first_layer"] = std::to_string(first);
      }
      out.sync_metadata();
      check(write_cache(out, args->out), args->out);
      std::printf("restored %lld tokens on the GPU, layers %d..%d -> %s\n", static_cast<long long>(out.n_tokens),
                  first, last - 1, args->out.c_str());
      return;
#else
      fail(unsupported("this kvtc was built without the CUDA backend"), "decompress --device cuda");
#endif
    }
    DecodeOptions o;
    o.n_threads = args->threads;
    Decoder dec = unwrap(Decoder::open(cal, bytes.data(), bytes.size(), o), args->input);
    KVCache out = dec.skeleton();
    int first = 0, last = out.shape.n_layers;
    if (!args->layers.empty()) {
      if (std::sscanf(args->layers.c_str(), "%d:%d", &first, &last) != 2 || first < 0 || last > out.shape.n_layers ||
          first >= last)
        fail(invalid_argument("--layers must be A:B with 0 <= A < B <= " + std::to_string(out.shape.n_layers)));
    }
    ProgressFn bar = progress_bar();
    std::vector<std::vector<float>> k(size_t(last - first)), v(size_t(last - first));
    for (int l = first; l < last; ++l) {
      check(dec.restore_layer(l, &k[size_t(l - first)], &v[size_t(l - first)]), "layer " + std::to_string(l));
      if (bar) bar(double(l - first + 1) / (last - first), "restore");
    }
    progress_done();
    out.k = std::move(k);
    out.v = std::move(v);
    if (first != 0 || last != out.shape.n_layers) {
      out.shape.n_layers = last - first;
      out.metadata["first_layer"] = std::to_string(first);
    }
    out.sync_metadata();
    check(write_cache(out, args->out), args->out);
    std::printf("restored %lld tokens, layers %d..%d -> %s\n", static_cast<long long>(out.n_tokens), first, last - 1,
                args->out.c_str());
  });
}

}  // namespace kvtc::cli
