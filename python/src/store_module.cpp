// kvtc._kvtc.Store: the block store (include/kvtc/store.hpp) as one Python class, a TieredStore of a
// host tier over an optional disk tier over an optional Redis tier. Keys and values are bytes; calls
// release the GIL.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "binding.hpp"
#include "kvtc/store.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace kvtc_py {
namespace {

using kvtc::store::Bytes;

std::string key_of(const nb::bytes& b) { return std::string(b.c_str(), b.size()); }

nb::object to_python(std::optional<Bytes>&& v) {
  if (!v) return nb::none();
  return nb::bytes(reinterpret_cast<const char*>(v->data()), v->size());
}

kvtc::store::EvictionPolicy policy_of(const std::string& s) {
  if (s == "s3fifo") return kvtc::store::EvictionPolicy::kS3Fifo;
  if (s == "lru") return kvtc::store::EvictionPolicy::kLru;
  throw StatusError{kvtc::invalid_argument("policy must be 's3fifo' or 'lru', not '" + s + "'")};
}

std::unique_ptr<kvtc::store::TieredStore> open_store(uint64_t host_capacity_bytes, const std::string& policy,
                                                     std::optional<std::string> disk_dir,
                                                     uint64_t disk_capacity_bytes, bool write_through,
                                                     int n_threads, std::optional<std::string> redis_socket,
                                                     std::optional<std::string> redis_host, int redis_port,
                                                     const std::string& redis_prefix, bool redis_write_through,
                                                     int redis_pool_size) {
  kvtc::store::HostTierOptions ho;
  ho.capacity_bytes = host_capacity_bytes;
  ho.policy = policy_of(policy);
  nb::gil_scoped_release unlocked;
  auto host = take(kvtc::store::HostTier::create(ho));
  std::unique_ptr<kvtc::store::DiskTier> disk;
  if (disk_dir) {
    kvtc::store::DiskTierOptions d;
    d.directory = *disk_dir;
    d.capacity_bytes = disk_capacity_bytes;
    disk = take(kvtc::store::DiskTier::open(d));
  }
  std::unique_ptr<kvtc::store::RedisTier> redis;
  if (redis_socket || redis_host) {
    kvtc::store::RedisTierOptions r;
    if (redis_socket) r.unix_socket = *redis_socket;
    if (redis_host) r.host = *redis_host;
    r.port = redis_port;
    r.key_prefix = redis_prefix;
    r.pool_size = redis_pool_size;
    redis = take(kvtc::store::RedisTier::create(r));
  }
  kvtc::store::TieredStoreOptions o;
  o.write_through = write_through;
  o.n_threads = n_threads;
  o.redis_write_through = redis_write_through;
  return take(kvtc::store::TieredStore::create(std::move(host), std::move(disk), std::move(redis), o));
}

}  // namespace

void bind_store(nb::module_& m) {
  using Store = kvtc::store::TieredStore;
  nb::class_<Store>(m, "Store")
      .def_static("open", &open_store, "host_capacity_bytes"_a, "policy"_a = "s3fifo", "disk_dir"_a.none() = nb::none(),
                  "disk_capacity_bytes"_a = uint64_t(16) << 30, "write_through"_a = false, "n_threads"_a = 2,
                  "redis_socket"_a.none() = nb::none(), "redis_host"_a.none() = nb::none(), "redis_port"_a = 6379,
                  "redis_prefix"_a = "kvtc:", "redis_write_through"_a = true, "redis_pool_size"_a = 4)
      .def("put", [](Store& s, const nb::bytes& key, const nb::bytes& value, uint64_t raw_bytes) {
        const std::string k = key_of(key);
        const auto* p = reinterpret_cast<const uint8_t*>(value.c_str());
        const std::span<const uint8_t> v(p, value.size());
        nb::gil_scoped_release unlocked;
        raise_if_error(s.put(k, v, raw_bytes));
      }, "key"_a, "value"_a, "raw_bytes"_a = 0)
      .def_prop_ro("redis_connected", [](Store& s) { return s.redis() != nullptr && s.redis()->connected(); })
      .def("get", [](Store& s, const nb::bytes& key) {
        const std::string k = key_of(key);
        std::optional<Bytes> v;
        {
          nb::gil_scoped_release unlocked;
          v = take(s.get(k));
        }
        return to_python(std::move(v));
      }, "key"_a)
      .def("contains", [](Store& s, const nb::bytes& key) {
        const std::string k = key_of(key);
        nb::gil_scoped_release unlocked;
        return s.contains(k);
      }, "key"_a)
      .def("erase", [](Store& s, const nb::bytes& key) {
        const std::string k = key_of(key);
        nb::gil_scoped_release unlocked;
        return take(s.erase(k));
      }, "key"_a)
      .def("put_many", [](Store& s, const std::vector<std::pair<nb::bytes, nb::bytes>>& items,
                          const std::vector<uint64_t>& raw_bytes) {
        if (!raw_bytes.empty() && raw_bytes.size() != items.size()) {
          raise_if_error(kvtc::Status(kvtc::StatusCode::kInvalidArgument,
                                      "put_many: raw_bytes must give one size per item"));
        }
        std::vector<kvtc::store::Entry> entries;
        entries.reserve(items.size());
        for (size_t i = 0; i < items.size(); ++i) {
          const auto& [k, v] = items[i];
          const auto* p = reinterpret_cast<const uint8_t*>(v.c_str());
          entries.push_back({key_of(k), Bytes(p, p + v.size()), raw_bytes.empty() ? 0 : raw_bytes[i]});
        }
        std::vector<kvtc::Status> st;
        {
          nb::gil_scoped_release unlocked;
          st = s.put_many(entries);
        }
        for (const kvtc::Status& x : st) raise_if_error(x);
      }, "items"_a, "raw_bytes"_a = std::vector<uint64_t>{})
      .def("get_many", [](Store& s, const std::vector<nb::bytes>& keys) {
        std::vector<std::string> ks;
        for (const nb::bytes& k : keys) ks.push_back(key_of(k));
        std::vector<kvtc::store::GetResult> rs;
        {
          nb::gil_scoped_release unlocked;
          rs = s.get_many(ks);
        }
        nb::list out;
        for (auto& r : rs) out.append(to_python(take(std::move(r))));
        return out;
      }, "keys"_a)
      .def("contains_many", [](Store& s, const std::vector<nb::bytes>& keys) {
        std::vector<std::string> ks;
        for (const nb::bytes& k : keys) ks.push_back(key_of(k));
        nb::gil_scoped_release unlocked;
        return s.contains_many(ks);
      }, "keys"_a)
      .def_prop_ro("bytes_used", &Store::bytes_used)
      .def_prop_ro("capacity_bytes", &Store::capacity_bytes)
      .def_prop_ro("entry_count", &Store::entry_count)
      // The Redis tier's gauges are a round trip to the server: the GIL is released meanwhile.
      .def("metrics_json", [](const Store& s) { return s.metrics_json(); },
           nb::call_guard<nb::gil_scoped_release>())
      .def("metrics_prometheus", [](const Store& s) { return s.metrics_prometheus(); },
           nb::call_guard<nb::gil_scoped_release>());
}

}  // namespace kvtc_py
