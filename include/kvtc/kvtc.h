/* kvtc.h: KV cache transform coding, the plain C API.
 *
 * A thin layer over the C++ API (kvtc/kvtc.hpp) for callers in C, Python (ctypes/cffi), Rust or Go.
 * Objects are opaque handles created by kvtc_*_load / kvtc_*_create and released by the matching
 * kvtc_*_free (which accept NULL). Every fallible function returns a kvtc_status; on failure
 * kvtc_last_error() gives a message for the calling thread, valid until that thread's next kvtc call.
 * No function aborts the process or lets an exception escape. Handles may be shared between threads
 * for reading; a call that modifies a handle (none do, except free) must not run concurrently.
 */
#ifndef KVTC_H_
#define KVTC_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Stable values, the same as kvtc::StatusCode. */
typedef enum kvtc_status {
  KVTC_OK = 0,
  KVTC_INVALID_ARGUMENT = 1,
  KVTC_UNSUPPORTED = 2,
  KVTC_CORRUPT = 3,
  KVTC_CHECKSUM_MISMATCH = 4,
  KVTC_OUT_OF_SPACE = 5,
  KVTC_OUT_OF_MEMORY = 6,
  KVTC_IO = 7,
  KVTC_CUDA = 8,
  KVTC_INTERNAL = 9,
  KVTC_MISMATCH = 10
} kvtc_status;

typedef struct kvtc_calibration kvtc_calibration; /* a model's calibration (.kvtcal) */
typedef struct kvtc_cache kvtc_cache;             /* a KV cache in memory (fp32) */

/* The message of the calling thread's last failure ("" after success). */
const char* kvtc_last_error(void);
/* "OK", "CORRUPT", ... */
const char* kvtc_status_name(kvtc_status status);

/* Calibration files. */
kvtc_status kvtc_calibration_load(const char* path, kvtc_calibration** out);
/* Calibrates from n_paths cache files for the given target ratios (NULL, 0: 8, 16, 20, 32, 64). */
kvtc_status kvtc_calibration_create(const char* const* paths, size_t n_paths, const double* ratios,
                                    size_t n_ratios, kvtc_calibration** out);
kvtc_status kvtc_calibration_save(const kvtc_calibration* cal, const char* path);
void kvtc_calibration_free(kvtc_calibration* cal);

/* Cache files (safetensors, docs/CACHE_LAYOUT.md). */
kvtc_status kvtc_cache_load(const char* path, kvtc_cache** out);
kvtc_status kvtc_cache_save(const kvtc_cache* cache, const char* path);
void kvtc_cache_free(kvtc_cache* cache);
/* Shape of a cache: any out pointer may be NULL. */
void kvtc_cache_shape(const kvtc_cache* cache, int32_t* n_layers, int32_t* n_kv_heads, int32_t* head_dim,
                      int64_t* n_tokens);
/* Pointers to layer `layer`'s keys and values, [n_kv_heads][n_tokens][head_dim] fp32, owned by the
 * cache; NULL when the layer is out of range. */
const float* kvtc_cache_keys(const kvtc_cache* cache, int32_t layer);
const float* kvtc_cache_values(const kvtc_cache* cache, int32_t layer);

/* Compresses a cache at target_ratio (>= 1) into a new buffer *out of *out_size bytes, released with
 * kvtc_buffer_free. n_threads 0: all cores. */
kvtc_status kvtc_compress(const kvtc_calibration* cal, const kvtc_cache* cache, double target_ratio,
                          int32_t n_threads, uint8_t** out, size_t* out_size);
/* Restores a whole cache from a container. */
kvtc_status kvtc_decompress(const kvtc_calibration* cal, const uint8_t* data, size_t size, int32_t n_threads,
                            kvtc_cache** out);
/* Restores one layer into caller buffers of n_kv_heads * n_tokens * head_dim floats each; the shape
 * comes from kvtc_container_shape. Decodes all coefficients on every call: for many layers use the
 * C++ kvtc::Decoder. */
kvtc_status kvtc_decompress_layer(const kvtc_calibration* cal, const uint8_t* data, size_t size, int32_t layer,
                                  float* keys, float* values, size_t capacity_floats);
/* Shape of the cache a container holds (structure and checksums checked, no calibration needed). */
kvtc_status kvtc_container_shape(const uint8_t* data, size_t size, int32_t* n_layers, int32_t* n_kv_heads,
                                 int32_t* head_dim, int64_t* n_tokens);
void kvtc_buffer_free(uint8_t* buffer);

#ifdef __cplusplus
}
#endif

#endif /* KVTC_H_ */
