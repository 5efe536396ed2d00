// Commands that run the reference engine (built with KVTC_BUILD_ENGINE):
//   kvtc dump --model DIR|FILE.gguf --text FILE -o CACHE.safetensors [--tokens N] [--n-query 64] [--dtype bf16]
//             [--logits N --logits-out LOGITS.safetensors]
//   kvtc generate --model DIR --prompt TEXT [-n 64] [--temperature T --top-k K --top-p P --seed S]
//   kvtc eval ... (cmd_eval.cpp)
#include <algorithm>
#include <chrono>
#include <cstdio>

#include "common.hpp"
#include "format/safetensors.hpp"
#include "util/file_io.hpp"
#include "engine/cache_io.hpp"
#include "engine/generate.hpp"
#include "engine/model.hpp"
#include "engine/text_io.hpp"
#include "engine/token_stream.hpp"
#include "engine/tokenizer.hpp"

namespace kvtc::cli {

void register_eval(CLI::App& app);        // cmd_eval.cpp
void register_eval_merge(CLI::App& app);  // cmd_eval.cpp

namespace {

using engine::Model;
using engine::Tokenizer;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

DType parse_dtype(const std::string& s) {
  if (s == "bf16") return DType::kBF16;
  if (s == "f16") return DType::kF16;
  if (s == "f32") return DType::kF32;
  fail(invalid_argument("--dtype must be bf16, f16 or f32, not '" + s + "'"));
}

void register_dump(CLI::App& app) {
  struct Args {
    std::string model, text, out, dtype = "bf16", logits_out;
    int64_t tokens = 1024, n_query = 64, skip_docs = 0, chunk = 512, n_logits = 0;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("dump", "Run the model over text and write its KV cache (kvtc cache layout)");
  cmd->add_option("--model", args->model, "Model: Hugging Face folder (config.json, safetensors, tokenizer.json) or .gguf file")
      ->required()
      ->check(CLI::ExistingPath);
  cmd->add_option("--text", args->text, "Text file (.txt or .txt.xz; documents split by a line holding byte 0x1E)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("-o,--output", args->out, "Cache file to write (.safetensors)")->required();
  cmd->add_option("--tokens", args->tokens, "Tokens of the <bos> doc <eos> stream to run")->capture_default_str();
  cmd->add_option("--n-query", args->n_query, "Queries of the last positions to store as q.<layer>")
      ->capture_default_str();
  cmd->add_option("--skip-docs", args->skip_docs, "Documents to skip at the start of the text")->capture_default_str();
  cmd->add_option("--dtype", args->dtype, "Element type of the file: bf16, f16 or f32")->capture_default_str();
  cmd->add_option("--chunk", args->chunk, "Prefill chunk (tokens per forward call)")->capture_default_str();
  auto* nl = cmd->add_option("--logits", args->n_logits, "Logits of the last N positions to write to --logits-out");
  auto* lo = cmd->add_option("--logits-out", args->logits_out,
                             "File (.safetensors) for the token ids fed (\"tokens\", F32 [T]) and the logits "
                             "(\"logits\", F32 [N, vocab])");
  nl->needs(lo);
  lo->needs(nl);
  cmd->callback([args] {
    if (args->tokens <= 0) fail(invalid_argument("--tokens must be positive"));
    if (args->n_logits < 0) fail(invalid_argument("--logits must be >= 0"));
    const DType dtype = parse_dtype(args->dtype);
    auto t0 = std::chrono::steady_clock::now();
    Model model = unwrap(Model::load(args->model), args->model);
    Tokenizer tok = unwrap(Tokenizer::load_for_model(args->model), args->model);
    const auto& cfg = model.config();
    engine::TokenStream stream(tok, {args->text}, cfg.eos_token_ids.empty() ? -1 : cfg.eos_token_ids[0],
                               args->skip_docs);
    std::vector<int32_t> tokens = unwrap(stream.next(args->tokens), args->text);
    if (tokens.empty()) fail(invalid_argument("no text to run"), args->text);
    if (int64_t(tokens.size()) < args->tokens)
      std::fprintf(stderr, "kvtc: %s gives only %zu tokens\n", args->text.c_str(), tokens.size());
    const double load_s = seconds_since(t0);

    auto t1 = std::chrono::steady_clock::now();
    engine::KvState state = model.new_state();
    state.set_query_capture(args->n_query);
    ProgressFn bar = progress_bar();
    const int64_t n = int64_t(tokens.size()), chunk = std::max<int64_t>(1, args->chunk);
    const int64_t n_logits = std::min(args->n_logits, n), V = cfg.vocab_size;
    std::vector<float> logits, chunk_logits;  // logits: the last n_logits positions, [n_logits][V]
    logits.reserve(size_t(n_logits * V));
    for (int64_t c0 = 0; c0 < n; c0 += chunk) {
      const int64_t len = std::min(chunk, n - c0);
      engine::ForwardOptions fo;
      // Positions of this chunk that lie among the last n_logits of the whole run.
      fo.n_logits = std::clamp<int64_t>(c0 + len - (n - n_logits), 0, len);
      check(model.forward(&state, tokens.data() + c0, len, fo, fo.n_logits > 0 ? &chunk_logits : nullptr),
            "forward");
      if (fo.n_logits > 0) logits.insert(logits.end(), chunk_logits.begin(), chunk_logits.begin() + fo.n_logits * V);
      if (bar) bar(double(c0 + len) / double(n), "prefill");
    }
    progress_done();
    const double prefill_s = seconds_since(t1);

    engine::ExportOptions eo;
    eo.dtype = dtype;
    eo.n_query = std::min<int64_t>(args->n_query, n);
    eo.source = args->text;
    KVCache cache = unwrap(engine::export_cache(cfg, state, eo), "export");
    check(write_cache(cache, args->out), args->out);
    if (n_logits > 0) {
      // Token ids as F32 (exact below 2^24, and every vocabulary is smaller) keep the file readable by
      // any safetensors reader alongside the logits.
      if (V >= (1 << 24)) fail(unsupported("--logits-out: vocabulary too large for F32 token ids"));
      std::vector<float> ids(tokens.begin(), tokens.end());
      std::vector<SafetensorsTensorF32> t = {{"tokens", DType::kF32, {n}, ids.data()},
                                             {"logits", DType::kF32, {n_logits, V}, logits.data()}};
      std::vector<uint8_t> bytes = unwrap(serialize_safetensors(t, {{"model", cfg.name}}), args->logits_out);
      check(write_file_atomic(args->logits_out, bytes), args->logits_out);
    }
    std::printf("wrote %s: %lld tokens, %s, %s, q for the last %lld positions\n", args->out.c_str(),
                static_cast<long long>(n), cache.shape.to_string().c_str(), dtype_name(dtype),
                static_cast<long long>(eo.n_query));
    std::printf("load %.2f s, prefill %.2f s (%.0f tokens/s)\n", load_s, prefill_s, double(n) / prefill_s);
  });
}

void register_generate(CLI::App& app) {
  struct Args {
    std::string model, prompt, prompt_file;
    int64_t n = 64;
    double temperature = 0.0, top_p = 1.0;
    int top_k = 0;
    uint64_t seed = 0;
    bool no_special = false;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("generate", "Continue a prompt with the model (greedy unless --temperature > 0)");
  cmd->add_option("--model", args->model, "Model: Hugging Face folder or .gguf file")->required()->check(CLI::ExistingPath);
  auto* p = cmd->add_option("--prompt", args->prompt, "Prompt text");
  auto* pf = cmd->add_option("--prompt-file", args->prompt_file, "Prompt text from a file (.txt or .txt.xz)")
                 ->check(CLI::ExistingFile);
  p->excludes(pf);
  cmd->add_option("-n,--max-new-tokens", args->n, "Tokens to generate")->capture_default_str();
  cmd->add_option("--temperature", args->temperature, "Sampling temperature (0: greedy)")->capture_default_str();
  cmd->add_option("--top-k", args->top_k, "Sample among the k most likely tokens (0: all)")->capture_default_str();
  cmd->add_option("--top-p", args->top_p, "Nucleus sampling mass")->capture_default_str();
  cmd->add_option("--seed", args->seed, "Random seed")->capture_default_str();
  cmd->add_flag("--no-special", args->no_special, "Do not add the tokenizer's special tokens (bos) to the prompt");
  cmd->callback([args] {
    Model model = unwrap(Model::load(args->model), args->model);
    Tokenizer tok = unwrap(Tokenizer::load_for_model(args->model), args->model);
    std::string prompt = args->prompt;
    if (!args->prompt_file.empty()) prompt = unwrap(engine::read_text_file(args->prompt_file), args->prompt_file);
    std::vector<int32_t> ids = unwrap(tok.encode(prompt, !args->no_special), "tokenize");
    engine::KvState state = model.new_state();
    engine::GenerateOptions go;
    go.max_new_tokens = args->n;
    go.sampling.temperature = args->temperature;
    go.sampling.top_k = args->top_k;
    go.sampling.top_p = args->top_p;
    go.sampling.seed = args->seed;
    go.stop_tokens = model.config().eos_token_ids;
    auto t0 = std::chrono::steady_clock::now();
    std::vector<int32_t> out = unwrap(engine::generate(model, &state, ids, go), "generate");
    const double s = seconds_since(t0);
    std::printf("%s%s\n", prompt.c_str(), tok.decode(out, /*skip_special_tokens=*/true).c_str());
    std::fprintf(stderr, "[%zu prompt tokens, %zu generated in %.2f s]\n", ids.size(), out.size(), s);
  });
}

}  // namespace

void register_engine_commands(CLI::App& app) {
  register_dump(app);
  register_generate(app);
  register_eval(app);
  register_eval_merge(app);
}

}  // namespace kvtc::cli
