// kvtc._kvtc: the Python binding (nanobind) over the public C++ API (kvtc/kvtc.hpp).
//
// Arrays arrive through nanobind's ndarray (the buffer protocol and DLPack: NumPy, PyTorch, JAX...) and
// become TensorViews on their own memory: nothing is copied on the way in, whatever the strides. Every
// call that does real work releases the GIL. Errors become the Python exceptions that kvtc/__init__.py
// registers (kvtc.CorruptError, ...), carrying the library's message. The Python-facing API (layouts,
// frameworks, transformers) lives in kvtc/__init__.py and kvtc/hf.py; this file only maps types.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "binding.hpp"
#include "kvtc/kvtc.hpp"

namespace nb = nanobind;
using namespace nb::literals;

using kvtc_py::raise_if_error;
using kvtc_py::StatusError;
using kvtc_py::take;

namespace {

// StatusCode -> Python exception class, filled by kvtc/__init__.py through _set_error_classes.
std::map<int, nb::object>& error_classes() {
  static auto* m = new std::map<int, nb::object>();  // leaked on purpose: outlives interpreter teardown order
  return *m;
}

using InArray = nb::ndarray<nb::ro, nb::device::cpu>;
using OutArray = nb::ndarray<nb::device::cpu>;

kvtc::DType dtype_of(const nb::dlpack::dtype& t, const char* what) {
  if (t.lanes == 1 && t.bits == 16 && t.code == uint8_t(nb::dlpack::dtype_code::Bfloat)) return kvtc::DType::kBF16;
  if (t.lanes == 1 && t.bits == 16 && t.code == uint8_t(nb::dlpack::dtype_code::Float)) return kvtc::DType::kF16;
  if (t.lanes == 1 && t.bits == 32 && t.code == uint8_t(nb::dlpack::dtype_code::Float)) return kvtc::DType::kF32;
  throw StatusError{kvtc::invalid_argument(std::string(what) + ": dtype must be bfloat16, float16 or float32")};
}

// Checks a [kv_heads, tokens, head_dim] array against the shape and returns its (head, token) strides.
template <typename Array>
std::pair<int64_t, int64_t> layer_strides(const Array& a, const kvtc::ModelShape& shape, int64_t n_tokens,
                                          const std::string& name) {
  if (a.ndim() != 3 || int64_t(a.shape(0)) != shape.n_kv_heads || int64_t(a.shape(1)) != n_tokens ||
      int64_t(a.shape(2)) != shape.head_dim)
    throw StatusError{kvtc::mismatch(name + ": expected shape [" + std::to_string(shape.n_kv_heads) + ", " +
                                     std::to_string(n_tokens) + ", " + std::to_string(shape.head_dim) + "]")};
  if (shape.head_dim > 1 && a.stride(2) != 1)
    throw StatusError{kvtc::invalid_argument(name + ": the head_dim axis must be contiguous (stride 1)")};
  if (a.stride(0) < 0 || a.stride(1) < 0) throw StatusError{kvtc::invalid_argument(name + ": negative strides")};
  return {int64_t(a.stride(0)), int64_t(a.stride(1))};
}

kvtc::CacheView view_of_arrays(const kvtc::ModelShape& shape, const std::vector<InArray>& keys,
                               const std::vector<InArray>& values, int64_t position_offset) {
  if (keys.size() != size_t(shape.n_layers) || values.size() != size_t(shape.n_layers))
    throw StatusError{kvtc::mismatch("the model has " + std::to_string(shape.n_layers) + " layers; got " +
                                     std::to_string(keys.size()) + " key and " + std::to_string(values.size()) +
                                     " value arrays")};
  if (keys[0].ndim() != 3) throw StatusError{kvtc::mismatch("k.0: expected [kv_heads, tokens, head_dim]")};
  kvtc::CacheView v;
  v.shape = shape;
  v.n_tokens = int64_t(keys[0].shape(1));
  v.position_offset = position_offset;
  v.element_dtype = dtype_of(keys[0].dtype(), "k.0");
  v.dtype = v.element_dtype;
  for (int l = 0; l < shape.n_layers; ++l) {
    for (int s = 0; s < 2; ++s) {
      const InArray& a = s == 0 ? keys[size_t(l)] : values[size_t(l)];
      const std::string name = (s == 0 ? "k." : "v.") + std::to_string(l);
      if (dtype_of(a.dtype(), name.c_str()) != v.element_dtype)
        throw StatusError{kvtc::invalid_argument(name + ": every array must have the dtype of k.0")};
      const auto [hs, ts] = layer_strides(a, shape, v.n_tokens, name);
      (s == 0 ? v.k : v.v).push_back({a.data(), hs, ts});
    }
  }
  return v;
}

kvtc::CacheView make_view(const kvtc::Calibration& cal, const std::vector<InArray>& keys,
                          const std::vector<InArray>& values, int64_t position_offset,
                          const std::optional<std::map<std::string, std::string>>& metadata) {
  kvtc::CacheView v = view_of_arrays(cal.shape(), keys, values, position_offset);
  // The container keeps the cache's metadata: the caller's verbatim (a cache file's __metadata__), or
  // the typed fields as a cache file written by kvtc would carry them (KVCache::sync_metadata).
  if (metadata) {
    v.metadata = *metadata;
    auto it = metadata->find("model");
    v.model_name = it != metadata->end() ? it->second : cal.model_name();
  } else {
    v.model_name = cal.model_name();
    v.metadata = kvtc_py::cache_file_metadata(v.shape, v.dtype, v.n_tokens, position_offset, v.model_name);
  }
  return v;
}

}  // namespace

namespace {

nb::dict report_dict(const kvtc::EncodeReport& r) {
  nb::dict d;
  d["n_tokens"] = r.n_tokens;
  d["n_compressed_tokens"] = r.n_compressed_tokens;
  d["n_exact_tokens"] = r.n_exact_tokens;
  d["raw_bytes"] = r.raw_bytes;
  d["file_bytes"] = r.file_bytes;
  d["compressed_payload_bytes"] = r.compressed_payload_bytes;
  d["nominal_payload_bytes"] = r.nominal_payload_bytes;
  d["ratio_compressed_tokens"] = r.ratio_compressed_tokens;
  d["ratio_nominal"] = r.ratio_nominal;
  d["ratio_file"] = r.ratio_file;
  d["k_relative_mse"] = r.k_relative_mse;
  d["v_relative_mse"] = r.v_relative_mse;
  nb::list layers;
  for (const kvtc::LayerError& e : r.layers) {
    nb::dict l;
    l["k_relative_mse"] = e.k_relative_mse;
    l["v_relative_mse"] = e.v_relative_mse;
    l["k_cosine"] = e.k_cosine;
    l["v_cosine"] = e.v_cosine;
    layers.append(l);
  }
  d["layers"] = layers;
  d["seconds"] = r.seconds;
  d["codec"] = r.codec;
  if (r.codec == 3) {
    nb::dict levels;
    levels["K"] = r.ecsq_level[0];
    levels["V"] = r.ecsq_level[1];
    d["ecsq_level"] = levels;
  }
  if (r.n_high_rate_tokens > 0) {
    nb::dict high;
    high["K"] = r.ecsq_level_high[0];
    high["V"] = r.ecsq_level_high[1];
    d["ecsq_level_high"] = high;
    d["n_high_rate_tokens"] = r.n_high_rate_tokens;
  }
  return d;
}

nb::dict allocation_dict(const kvtc::AllocationSummary& a) {
  nb::dict d;
  d["target_ratio"] = a.target_ratio;
  d["budget_bits_per_token"] = a.budget_bits_per_token;
  d["bits_per_token"] = a.bits_per_token;
  d["kept_components"] = a.kept_components;
  d["predicted_relative_error"] = a.predicted_relative_error;
  return d;
}

kvtc::RopeStyle rope_style_of(const std::string& s) {
  if (s == "half") return kvtc::RopeStyle::kHalf;
  if (s == "interleaved") return kvtc::RopeStyle::kInterleaved;
  throw StatusError{kvtc::invalid_argument("rope_style must be 'half' or 'interleaved', not '" + s + "'")};
}

// A cache for calibration, copied to fp32 (calibration reads every token once; one cache at a time).
kvtc::KVCache owned_cache(const kvtc::ModelShape& shape, const std::vector<InArray>& keys,
                          const std::vector<InArray>& values, int64_t position_offset) {
  return take(kvtc::copy_cache(view_of_arrays(shape, keys, values, position_offset)));
}

}  // namespace

// A calibration in the making, with the shape its caches must have.
struct Builder {
  kvtc::CalibrationBuilder builder;
  kvtc::ModelShape shape;
};

using Bytes = nb::ndarray<nb::ro, uint8_t, nb::ndim<1>, nb::device::cpu>;  // bytes, bytearray, memoryview, ...

NB_MODULE(_kvtc, m) {
  m.doc() = "kvtc's compiled core: use the kvtc package, which wraps it.";

  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const StatusError& e) {
      auto& classes = error_classes();
      auto it = classes.find(int(e.status.code()));
      PyErr_SetString(it != classes.end() ? it->second.ptr() : PyExc_RuntimeError, e.status.message().c_str());
    }
  });
  m.def("_set_error_classes", [](const nb::dict& classes) {
    for (auto [code, cls] : classes) error_classes()[nb::cast<int>(code)] = nb::borrow(cls);
  });

  m.def("version", [] { return std::string(kvtc::version_string()); });
  m.def("container_format_version", &kvtc::container_format_version);
  m.def("_data_pointer", [](const InArray& a) { return reinterpret_cast<uintptr_t>(a.data()); },
        "The address the binding sees for an array (tests check that no copy was made).");

  nb::class_<kvtc::Calibration>(m, "Calibration")
      .def_static("load", [](const std::string& path) {
        nb::gil_scoped_release unlocked;
        return take(kvtc::Calibration::load(path));
      }, "path"_a)
      .def_static("parse", [](const Bytes& data) {
        nb::gil_scoped_release unlocked;
        return take(kvtc::Calibration::parse(data.data(), data.size()));
      }, "data"_a)
      .def("save", [](const kvtc::Calibration& c, const std::string& path) {
        nb::gil_scoped_release unlocked;
        raise_if_error(c.save(path));
      }, "path"_a)
      .def("serialize", [](const kvtc::Calibration& c) {
        std::vector<uint8_t> out;
        {
          nb::gil_scoped_release unlocked;
          out = take(c.serialize());
        }
        return nb::bytes(reinterpret_cast<const char*>(out.data()), out.size());
      })
      .def_prop_ro("n_layers", [](const kvtc::Calibration& c) { return c.shape().n_layers; })
      .def_prop_ro("n_kv_heads", [](const kvtc::Calibration& c) { return c.shape().n_kv_heads; })
      .def_prop_ro("head_dim", [](const kvtc::Calibration& c) { return c.shape().head_dim; })
      .def_prop_ro("rope_theta", [](const kvtc::Calibration& c) { return c.shape().rope.theta; })
      .def_prop_ro("rope_style", [](const kvtc::Calibration& c) {
        return std::string(c.shape().rope.style == kvtc::RopeStyle::kHalf ? "half" : "interleaved");
      })
      .def_prop_ro("shape_text", [](const kvtc::Calibration& c) { return c.shape().to_string(); })
      .def_prop_ro("model_name", &kvtc::Calibration::model_name)
      .def_prop_ro("fingerprint", &kvtc::Calibration::fingerprint)
      .def_prop_ro("ratios", &kvtc::Calibration::ratios)
      .def_prop_ro("n_calibration_tokens", &kvtc::Calibration::n_calibration_tokens)
      .def_prop_ro("n_sink_tokens", &kvtc::Calibration::n_sink_tokens)
      .def_prop_ro("n_window_tokens", &kvtc::Calibration::n_window_tokens)
      .def("rank", &kvtc::Calibration::rank, "keys"_a)
      .def("plan", [](const kvtc::Calibration& c, double ratio, bool keys) {
        return allocation_dict(take(c.plan(ratio, keys)));
      }, "ratio"_a, "keys"_a);

  m.def("_calibrate_files", [](const std::vector<std::string>& paths, const std::vector<double>& ratios,
                               int n_sink, int n_window, int n_threads) {
    kvtc::CalibrateOptions o;
    if (!ratios.empty()) o.ratios = ratios;
    o.n_sink_tokens = n_sink;
    o.n_window_tokens = n_window;
    o.n_threads = n_threads;
    nb::gil_scoped_release unlocked;
    return take(kvtc::calibrate(paths, o));
  });

  nb::class_<Builder>(m, "_CalibrationBuilder")
      .def_static("create", [](int n_layers, int n_kv_heads, int head_dim, double rope_theta,
                               const std::string& rope_style, double llama3_factor, double llama3_low,
                               double llama3_high, double llama3_original_max_position,
                               const std::string& model_name, const std::vector<double>& ratios, int n_sink,
                               int n_window, int n_threads) {
        kvtc::ModelShape s;
        s.n_layers = n_layers;
        s.n_kv_heads = n_kv_heads;
        s.head_dim = head_dim;
        s.rope.theta = rope_theta;
        s.rope.style = rope_style_of(rope_style);
        s.rope.llama3_factor = llama3_factor;
        s.rope.llama3_low_freq_factor = llama3_low;
        s.rope.llama3_high_freq_factor = llama3_high;
        s.rope.llama3_original_max_position = llama3_original_max_position;
        kvtc::CalibrateOptions o;
        if (!ratios.empty()) o.ratios = ratios;
        o.n_sink_tokens = n_sink;
        o.n_window_tokens = n_window;
        o.n_threads = n_threads;
        return Builder{take(kvtc::CalibrationBuilder::create(s, model_name, o)), s};
      })
      .def("add", [](Builder& b, const std::vector<InArray>& keys, const std::vector<InArray>& values) {
        kvtc::KVCache c = owned_cache(b.shape, keys, values, 0);
        nb::gil_scoped_release unlocked;
        raise_if_error(b.builder.add(c));
      })
      .def("finish", [](Builder& b) {
        nb::gil_scoped_release unlocked;
        return take(b.builder.finish());
      });

  m.def("_encode", [](const kvtc::Calibration& cal, const std::vector<InArray>& keys, const std::vector<InArray>& values,
                      double ratio, int64_t position_offset,
                      const std::optional<std::map<std::string, std::string>>& metadata, int exact_head_tokens,
                      int exact_tail_tokens, int deflate_level, int n_threads, bool measure_error, int codec,
                      int rans_lanes, const std::optional<std::vector<float>>& token_importance,
                      double high_rate_fraction, int high_rate_levels) {
    const kvtc::CacheView view = make_view(cal, keys, values, position_offset, metadata);
    kvtc::EncodeOptions o =
        kvtc_py::encode_options(ratio, exact_head_tokens, exact_tail_tokens, deflate_level, measure_error);
    o.n_threads = n_threads;
    o.codec = codec;  // codec and rans_lanes are checked by the encoder
    o.rans_lanes = rans_lanes;
    if (token_importance) o.token_importance = *token_importance;  // checked by the encoder
    o.high_rate_fraction = high_rate_fraction;
    o.high_rate_levels = high_rate_levels;
    kvtc::EncodedCache enc;
    {
      nb::gil_scoped_release unlocked;
      enc = take(kvtc::encode(cal, view, o));
    }
    return std::make_pair(nb::bytes(reinterpret_cast<const char*>(enc.bytes.data()), enc.bytes.size()),
                          report_dict(enc.report));
  }, "cal"_a, "keys"_a, "values"_a, "ratio"_a, "position_offset"_a, "metadata"_a.none(), "exact_head_tokens"_a,
     "exact_tail_tokens"_a, "deflate_level"_a, "n_threads"_a, "measure_error"_a, "codec"_a = 2,
     "rans_lanes"_a = 32, "token_importance"_a.none() = nb::none(), "high_rate_fraction"_a = 0.25,
     "high_rate_levels"_a = 32);

  nb::class_<kvtc::Decoder>(m, "Decoder")
      .def_static("open", [](const kvtc::Calibration& cal, const Bytes& data, int n_threads) {
        kvtc::DecodeOptions o;
        o.n_threads = n_threads;
        nb::gil_scoped_release unlocked;
        return take(kvtc::Decoder::open(cal, data.data(), data.size(), o));
      }, "cal"_a, "data"_a, "n_threads"_a = 0)
      .def_prop_ro("n_layers", [](const kvtc::Decoder& d) { return d.skeleton().shape.n_layers; })
      .def_prop_ro("n_kv_heads", [](const kvtc::Decoder& d) { return d.skeleton().shape.n_kv_heads; })
      .def_prop_ro("head_dim", [](const kvtc::Decoder& d) { return d.skeleton().shape.head_dim; })
      .def_prop_ro("n_tokens", &kvtc::Decoder::n_tokens)
      .def_prop_ro("position_offset", &kvtc::Decoder::position_offset)
      .def_prop_ro("dtype", [](const kvtc::Decoder& d) {
        switch (d.skeleton().dtype) {
          case kvtc::DType::kBF16: return std::string("bfloat16");
          case kvtc::DType::kF16: return std::string("float16");
          default: return std::string("float32");
        }
      })
      .def("restore_layer_into", [](const kvtc::Decoder& d, int layer, OutArray k, OutArray v) {
        const kvtc::KVCache& sk = d.skeleton();
        const kvtc::DType dt = dtype_of(k.dtype(), "keys");
        if (dtype_of(v.dtype(), "values") != dt) throw StatusError{kvtc::invalid_argument("keys and values differ in dtype")};
        const auto [khs, kts] = layer_strides(k, sk.shape, sk.n_tokens, "keys");
        const auto [vhs, vts] = layer_strides(v, sk.shape, sk.n_tokens, "values");
        nb::gil_scoped_release unlocked;
        raise_if_error(d.restore_layer_into(layer, {k.data(), khs, kts}, {v.data(), vhs, vts}, dt));
      }, "layer"_a, "keys"_a, "values"_a);

  kvtc_py::bind_store(m);
#ifdef KVTC_WITH_CUDA
  kvtc_py::bind_cuda(m);
#endif

  m.def("inspect_json", [](const Bytes& data) {
    nb::gil_scoped_release unlocked;
    return take(kvtc::inspect_json(data.data(), data.size()));
  }, "data"_a);
}
