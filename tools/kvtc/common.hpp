// Shared pieces of the kvtc command-line tool: failing with a status, progress bars, number lists.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "kvtc/kvtc.hpp"

namespace kvtc::cli {

// Prints "kvtc: <context>: <status>" to stderr and ends the command with exit code 1.
[[noreturn]] void fail(const Status& status, const std::string& context = "");

template <typename T>
T unwrap(Result<T> r, const std::string& context = "") {
  if (!r.is_ok()) fail(r.status(), context);
  return std::move(r).value();
}
inline void check(const Status& s, const std::string& context = "") {
  if (!s.is_ok()) fail(s, context);
}

// A progress bar on stderr when it is a terminal; a no-op otherwise.
ProgressFn progress_bar();
void progress_done();

// "8,16,20" -> {8, 16, 20}
std::vector<double> parse_number_list(const std::string& text);

void register_calibrate(CLI::App& app);
void register_compress(CLI::App& app);
void register_decompress(CLI::App& app);
void register_inspect(CLI::App& app);
void register_store(CLI::App& app);  // cmd_store.cpp: kvtc store stats / put / get
void register_bench(CLI::App& app);  // cmd_bench.cpp: kvtc bench --device cuda|cpu

}  // namespace kvtc::cli
