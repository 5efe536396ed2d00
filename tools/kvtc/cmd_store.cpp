// kvtc store stats DIR [--json] [--quick] [--repair]; kvtc store put DIR KEY FILE; kvtc store get DIR KEY -o FILE
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>

#include "common.hpp"
#include "kvtc/store.hpp"

namespace kvtc::cli {

namespace {

// A key given on the command line: text, or bytes in hex with --hex.
std::string parse_key(const std::string& text, bool hex) {
  if (!hex) return text;
  if (text.size() % 2 != 0) fail(invalid_argument("--hex key needs an even number of digits"), text);
  std::string out;
  for (size_t i = 0; i < text.size(); i += 2) {
    const std::string pair = text.substr(i, 2);
    char* end = nullptr;
    const long v = std::strtol(pair.c_str(), &end, 16);
    if (end != pair.c_str() + 2) fail(invalid_argument("not a hex digit pair: " + pair), text);
    out.push_back(char(v));
  }
  return out;
}

std::unique_ptr<store::DiskTier> open_store(const std::string& dir, bool read_only, bool verify) {
  store::DiskTierOptions o;
  o.directory = dir;
  o.capacity_bytes = std::numeric_limits<uint64_t>::max();
  o.read_only = read_only;
  o.verify_checksums_on_open = verify;
  return unwrap(store::DiskTier::open(o), dir);
}

}  // namespace

void register_store(CLI::App& app) {
  auto* store_cmd = app.add_subcommand("store", "Inspect and use a disk tier of the block store (docs/STORE.md)");
  store_cmd->require_subcommand(1);

  struct StatsArgs {
    std::string dir;
    bool json = false;
    bool quick = false;
    bool repair = false;
  };
  auto sa = std::make_shared<StatsArgs>();
  auto* stats = store_cmd->add_subcommand(
      "stats", "Scan a disk tier directory: entries, bytes, leftover temporaries and corrupt files");
  stats->add_option("dir", sa->dir, "The disk tier's directory")->required()->check(CLI::ExistingDirectory);
  stats->add_flag("--json", sa->json, "Print JSON");
  stats->add_flag("--quick", sa->quick, "Check headers and sizes only, not every file's CRC");
  stats->add_flag("--repair", sa->repair,
                  "Delete temporaries and bad files (takes the directory's lock: not while a server has it open)");
  stats->callback([sa] {
    auto tier = open_store(sa->dir, !sa->repair, !sa->quick);
    const store::DiskRecovery& r = tier->recovery();
    if (sa->json) {
      nlohmann::json j = {{"directory", sa->dir},
                          {"entries", r.entries},
                          {"bytes", r.bytes},
                          {"checksums_verified", !sa->quick},
                          {"repaired", sa->repair},
                          {"temp_files", r.temp_files_removed},
                          {"bad_files", r.bad_files},
                          {"ignored_files", r.ignored_files}};
      std::printf("%s\n", j.dump(2).c_str());
      return;
    }
    std::printf("%s: %llu entries, %llu bytes (%s)\n", sa->dir.c_str(), static_cast<unsigned long long>(r.entries),
                static_cast<unsigned long long>(r.bytes),
                sa->quick ? "headers and sizes checked" : "every checksum verified");
    const char* verb = sa->repair ? "removed" : "found";
    std::printf("  leftover temporary files %s: %llu\n", verb, static_cast<unsigned long long>(r.temp_files_removed));
    std::printf("  bad files %s: %llu\n", verb, static_cast<unsigned long long>(r.bad_files.size()));
    for (const std::string& b : r.bad_files) std::printf("    %s\n", b.c_str());
    if (!r.ignored_files.empty()) {
      std::printf("  other files (left alone): %llu\n", static_cast<unsigned long long>(r.ignored_files.size()));
    }
  });

  struct PutGetArgs {
    std::string dir, key, file;
    bool hex = false;
    uint64_t capacity_bytes = uint64_t(16) << 30;
  };
  auto pa = std::make_shared<PutGetArgs>();
  auto* put = store_cmd->add_subcommand("put", "Store FILE's bytes under KEY in a disk tier");
  put->add_option("dir", pa->dir, "The disk tier's directory (created if missing)")->required();
  put->add_option("key", pa->key, "The key (text, or hex bytes with --hex)")->required();
  put->add_option("file", pa->file, "The value")->required()->check(CLI::ExistingFile);
  put->add_flag("--hex", pa->hex, "KEY is hex");
  put->add_option("--capacity-bytes", pa->capacity_bytes, "The tier's capacity (older entries are evicted)");
  put->callback([pa] {
    store::DiskTierOptions o;
    o.directory = pa->dir;
    o.capacity_bytes = pa->capacity_bytes;
    auto tier = unwrap(store::DiskTier::open(o), pa->dir);
    const std::vector<uint8_t> bytes = unwrap(read_bytes(pa->file), pa->file);
    check(tier->put(parse_key(pa->key, pa->hex), bytes), pa->dir);
  });

  auto ga = std::make_shared<PutGetArgs>();
  auto* get = store_cmd->add_subcommand("get", "Write the value stored under KEY to a file (exit 2 if absent)");
  get->add_option("dir", ga->dir, "The disk tier's directory")->required()->check(CLI::ExistingDirectory);
  get->add_option("key", ga->key, "The key (text, or hex bytes with --hex)")->required();
  get->add_option("-o,--output", ga->file, "Where to write the value")->required();
  get->add_flag("--hex", ga->hex, "KEY is hex");
  get->callback([ga] {
    auto tier = open_store(ga->dir, /*read_only=*/true, /*verify=*/false);
    auto value = unwrap(tier->get(parse_key(ga->key, ga->hex)), ga->dir);
    if (!value) {
      std::fprintf(stderr, "kvtc: %s: no entry for that key\n", ga->dir.c_str());
      std::exit(2);
    }
    check(write_bytes_atomic(ga->file, *value), ga->file);
  });
}

}  // namespace kvtc::cli
