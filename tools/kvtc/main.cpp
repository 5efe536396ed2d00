// kvtc: compress and restore LLM KV caches by transform coding. `kvtc --help` lists the commands.
#include <CLI/CLI.hpp>

#include "common.hpp"

#ifdef KVTC_WITH_ENGINE
namespace kvtc::cli {
void register_engine_commands(CLI::App& app);
}
#endif

int main(int argc, char** argv) {
  CLI::App app{"kvtc: KV cache transform coding (calibrate once per model, then compress ~20x and restore)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string(kvtc::version_string()) + " (container format " +
                                        std::to_string(kvtc::container_format_version()) + ")");
  kvtc::cli::register_calibrate(app);
  kvtc::cli::register_compress(app);
  kvtc::cli::register_decompress(app);
  kvtc::cli::register_inspect(app);
  kvtc::cli::register_store(app);
  kvtc::cli::register_bench(app);
#ifdef KVTC_WITH_ENGINE
  kvtc::cli::register_engine_commands(app);
#endif
  CLI11_PARSE(app, argc, argv);
  return 0;
}
