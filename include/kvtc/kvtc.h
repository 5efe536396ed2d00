/* kvtc.h: KV cache transform coding, the plain C API.
 *
 * A thin layer over the C++ API (kvtc/kvtc.hpp) for callers in C, Python (ctypes/cffi), Rust or Go.
 * Link libkvtc.so (CMake target kvtc_shared), which exports exactly the functions declared here, or the
 * static library kvtc.
 *
 * Conventions:
 * - Objects are opaque handles created by kvtc_*_load / kvtc_*_create / kvtc_*_open and released by
 *   the matching kvtc_*_free (which accept NULL).
 * - Every fallible function returns a kvtc_status; on failure kvtc_last_error() gives a message for the
 *   calling thread, valid until that thread's next kvtc call. Out parameters are written only on
 *   success unless a function says otherwise. NULL where a pointer is required gives
 *   KVTC_INVALID_ARGUMENT.
 * - No function aborts the process or lets an exception escape.
 * - Threads: handles may be shared between threads for reading (every function here except *_free only
 *   reads its handles); *_free must not run concurrently with another call on the same handle.
 * - Buffers returned through uint8_t** are allocated by the library and released with
 *   kvtc_buffer_free, never with the caller's free().
 * - Sizes are in bytes, counts in elements, strides in elements (not bytes) unless named otherwise.
 * - Extensible structs (kvtc_compress_params, kvtc_compress_report, kvtc_cache_view) start with
 *   `size_t struct_size`, which the caller sets to sizeof(the struct as the caller compiled it), so that
 *   a newer library keeps working with older callers (fields past struct_size take their defaults) and
 *   an older library with newer callers (see each struct for the exact rule).
 */
#ifndef KVTC_H_
#define KVTC_H_

#include <stddef.h>
#include <stdint.h>

/* Marks the public functions: the shared library is built with hidden visibility and exports only
 * these. May be predefined by the includer. */
#ifndef KVTC_API
#if defined(__GNUC__) || defined(__clang__)
#define KVTC_API __attribute__((visibility("default")))
#else
#define KVTC_API
#endif
#endif

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

/* Element types, the same values as kvtc::DType. bf16 and fp16 are 2 bytes (little-endian bit
 * patterns), fp32 is 4. Conversions to 16 bits round to nearest even. */
typedef enum kvtc_dtype { KVTC_BF16 = 0, KVTC_F16 = 1, KVTC_F32 = 2 } kvtc_dtype;

typedef struct kvtc_calibration kvtc_calibration; /* a model's calibration (.kvtcal) */
typedef struct kvtc_cache kvtc_cache;             /* a KV cache in memory (fp32) */
typedef struct kvtc_decoder kvtc_decoder;         /* an opened container, restored layer by layer */

/* The message of the calling thread's last failure ("" after success). Owned by the library. */
KVTC_API const char* kvtc_last_error(void);
/* "OK", "CORRUPT", ... (static strings). */
KVTC_API const char* kvtc_status_name(kvtc_status status);

/* ------------------------------------------------------------------------------------------------ */
/* Calibration                                                                                      */
/* ------------------------------------------------------------------------------------------------ */

KVTC_API kvtc_status kvtc_calibration_load(const char* path, kvtc_calibration** out);
/* Calibrates from n_paths cache files for the given target ratios (NULL, 0: 8, 16, 20, 32, 64). */
KVTC_API kvtc_status kvtc_calibration_create(const char* const* paths, size_t n_paths, const double* ratios,
                                             size_t n_ratios, kvtc_calibration** out);
KVTC_API kvtc_status kvtc_calibration_save(const kvtc_calibration* cal, const char* path);
KVTC_API void kvtc_calibration_free(kvtc_calibration* cal);
/* The model shape a calibration is for, and the tokens it keeps exact by default at the start
 * (attention sinks) and at the end (recent window) of every cache. Any out pointer may be NULL;
 * nothing is written when cal is NULL. */
KVTC_API void kvtc_calibration_shape(const kvtc_calibration* cal, int32_t* n_layers, int32_t* n_kv_heads,
                                     int32_t* head_dim, int32_t* n_sink_tokens, int32_t* n_window_tokens);

/* ------------------------------------------------------------------------------------------------ */
/* Cache files (safetensors, docs/CACHE_LAYOUT.md)                                                  */
/* ------------------------------------------------------------------------------------------------ */

KVTC_API kvtc_status kvtc_cache_load(const char* path, kvtc_cache** out);
KVTC_API kvtc_status kvtc_cache_save(const kvtc_cache* cache, const char* path);
KVTC_API void kvtc_cache_free(kvtc_cache* cache);
/* Shape of a cache: any out pointer may be NULL. */
KVTC_API void kvtc_cache_shape(const kvtc_cache* cache, int32_t* n_layers, int32_t* n_kv_heads, int32_t* head_dim,
                               int64_t* n_tokens);
/* Pointers to layer `layer`'s keys and values, [n_kv_heads][n_tokens][head_dim] fp32, owned by the
 * cache; NULL when the layer is out of range. */
KVTC_API const float* kvtc_cache_keys(const kvtc_cache* cache, int32_t layer);
KVTC_API const float* kvtc_cache_values(const kvtc_cache* cache, int32_t layer);

/* ------------------------------------------------------------------------------------------------ */
/* Compression                                                                                      */
/* ------------------------------------------------------------------------------------------------ */

/* Compresses a cache at target_ratio (>= 1) into a new buffer *out of *out_size bytes, released with
 * kvtc_buffer_free. n_threads 0: all cores. */
KVTC_API kvtc_status kvtc_compress(const kvtc_calibration* cal, const kvtc_cache* cache, double target_ratio,
                                   int32_t n_threads, uint8_t** out, size_t* out_size);

/* Options of kvtc_compress_view / kvtc_compress_view_into (kvtc::EncodeOptions).
 * Fill with kvtc_compress_params_init, then change fields.
 * Reading rule: struct_size must be set (sizeof(kvtc_compress_params) of the caller's header).
 *   - A field that does not lie wholly within the caller's struct_size takes its default, so a caller
 *     built against an older, smaller struct keeps its behaviour.
 *   - struct_size larger than this library's struct is accepted only when the extra bytes (fields this
 *     library does not know) are all zero, i.e. left at their defaults; otherwise, and for struct_size
 *     below sizeof(size_t) or above 4096, the call fails with KVTC_INVALID_ARGUMENT.
 * Values are checked by the encoder (KVTC_INVALID_ARGUMENT when out of range). */
typedef struct kvtc_compress_params {
  size_t struct_size;        /* sizeof(kvtc_compress_params) */
  double target_ratio;       /* >= 1; bits per token before DEFLATE <= 16 * p / target_ratio. Default 20 */
  int32_t deflate_level;     /* libdeflate level 1..12. Default 6 */
  int32_t n_threads;         /* worker threads, 0: all cores. Default 0 */
  int32_t exact_head_tokens; /* tokens kept exact at the start; -1: the calibration's n_sink_tokens. Default -1 */
  int32_t exact_tail_tokens; /* tokens kept exact at the end; -1: the calibration's n_window_tokens. Default -1.
                                Block mode (caching prefixes in fixed blocks): a view of tokens [a, b) of a
                                sequence with position_offset a, encoded with exact_tail_tokens 0 and
                                exact_head_tokens 0 (-1 for the block holding position 0). */
  int32_t chunk_tokens;      /* tokens per block of coefficient chunks, 1..65536. Default 256 */
  int64_t chunk_max_bytes;   /* raw bytes per chunk before DEFLATE, 256 .. 64 MiB. Default 16384 */
  int32_t measure_error;     /* nonzero: fill the report's k/v_relative_mse (costs one decode). Default 0 */
  /* Added with codec 3. reserved0 fills what was the tail padding of the struct before them (its sizeof
   * was 56 on LP64, 48 on ILP32), so that codec starts past that sizeof; the library never reads
   * reserved0, since an older caller's struct_size covers those bytes uninitialised. */
  int32_t reserved0;         /* unused; kvtc_compress_params_init sets it to 0 */
  int32_t codec;             /* 2: fixed-width groups + DEFLATE (container format 2); 3: ECSQ + rANS with the
                                calibration's models (format 3, CPU only; a calibration without them fails with
                                KVTC_INVALID_ARGUMENT). Default 2 */
  int32_t rans_lanes;        /* codec 3: interleaved rANS states per chunk, 1..64. Default 32 */
  /* Added with container format 4 (token classes, docs/FORMAT.md section 10), past the sizeof before. */
  const float* token_importance; /* codec 3: NULL, or one value per token of the view (higher: attention
                                    needs it more); the high_rate_fraction most important compressed tokens
                                    are coded high_rate_levels ECSQ levels finer than the rest, at the same
                                    target (format 4). Read during the call only. Default NULL */
  double high_rate_fraction;     /* (0, 1). Default 0.25 */
  int32_t high_rate_levels;      /* 1..256 (32: about twice the bits). Default 32 */
  int32_t reserved1;             /* unused; kvtc_compress_params_init sets it to 0 */
  /* Later versions append fields past sizeof of this one (never into its tail padding). */
} kvtc_compress_params;

/* Sets struct_size and every field to its default (those of kvtc::EncodeOptions, measure_error 0).
 * Does nothing when params is NULL. */
KVTC_API void kvtc_compress_params_init(kvtc_compress_params* params);

/* What a compression achieved. "Raw" means the cache at 16 bits per element (K and V).
 * The caller sets struct_size (sizeof(kvtc_compress_report), at least sizeof(size_t), at most 4096);
 * the library writes the fields that lie wholly within it and zeroes any bytes past its own struct. */
typedef struct kvtc_compress_report {
  size_t struct_size;
  int64_t n_tokens;                /* tokens in the cache */
  int64_t n_compressed_tokens;     /* tokens transform-coded (the others are kept exact) */
  int64_t raw_bytes;               /* all tokens at 16 bits */
  int64_t file_bytes;              /* the whole container */
  double ratio_compressed_tokens;  /* raw bytes of the compressed tokens / their payload bytes */
  double ratio_file;               /* raw_bytes / file_bytes */
  double k_relative_mse;           /* sum |x - x'|^2 / sum |x|^2 over compressed tokens; 0 unless measure_error */
  double v_relative_mse;
} kvtc_compress_report;

/* A cache in caller memory, borrowed for the duration of one call (nothing is copied up front, nothing
 * is kept after the call returns). Keys carry RoPE, as in a cache file.
 *   Element (head, token, dim) of layer l lies at
 *     (const char*)keys[l] + (head * head_stride + token * token_stride + dim) * element size
 *   and likewise for values[l]: the head_dim elements of a row are contiguous; strides are in elements
 *   and the same for every layer and both streams. Contiguous [n_kv_heads][n_tokens][head_dim] has
 *   head_stride = n_tokens * head_dim, token_stride = head_dim; token-major [n_tokens][n_kv_heads]
 *   [head_dim] has head_stride = head_dim, token_stride = n_kv_heads * head_dim.
 * struct_size must be at least sizeof(kvtc_cache_view) of this version (every field here is
 * required) and follows the params rule above for larger values. */
typedef struct kvtc_cache_view {
  size_t struct_size;             /* sizeof(kvtc_cache_view) */
  int32_t n_layers, n_kv_heads, head_dim;  /* must be the calibration's (else KVTC_MISMATCH) */
  int64_t n_tokens;               /* >= 0 */
  int64_t position_offset;        /* RoPE position of token 0 (a block's first position in block mode) */
  kvtc_dtype element_dtype;       /* type of the elements in memory */
  kvtc_dtype dtype;               /* type the container records (its exact tokens are stored in it) */
  const void* const* keys;        /* n_layers pointers */
  const void* const* values;      /* n_layers pointers */
  int64_t head_stride, token_stride;  /* in elements, >= 0 */
} kvtc_cache_view;

/* Compresses a view into a new buffer *out of *out_size bytes, released with kvtc_buffer_free.
 * The RoPE parameters are the calibration's. params NULL: defaults. report: optional.
 * The container records the metadata a cache file would have (num_layers, num_kv_heads, head_dim,
 * rope_theta, rope_style, position_offset, tokens; no model name), so kvtc_compress_view of a cache's
 * values in its own dtype gives the same bytes as kvtc_compress of a cache file with exactly that
 * metadata, and kvtc_decompress + kvtc_cache_save give a loadable cache file.
 * Errors: KVTC_INVALID_ARGUMENT (NULL pointers, bad struct_size, unknown dtype, NULL layer pointer,
 * negative strides or counts, options out of range), KVTC_MISMATCH (shape not the calibration's).
 * Thread-safe: any number of calls may run at once, sharing the calibration. */
KVTC_API kvtc_status kvtc_compress_view(const kvtc_calibration* cal, const kvtc_cache_view* view,
                                        const kvtc_compress_params* params, uint8_t** out, size_t* out_size,
                                        kvtc_compress_report* report);
/* The same into a caller buffer of `capacity` bytes. On success *out_size is the container's size.
 * When the buffer is too small: KVTC_OUT_OF_SPACE, and *out_size is set to the size needed (the buffer
 * is left untouched). buffer may be NULL when capacity is 0 (to learn the size, at the cost of a
 * whole compression; kvtc_compress_bound is the cheap way). */
KVTC_API kvtc_status kvtc_compress_view_into(const kvtc_calibration* cal, const kvtc_cache_view* view,
                                             const kvtc_compress_params* params, uint8_t* buffer, size_t capacity,
                                             size_t* out_size, kvtc_compress_report* report);
/* An upper bound of the container size in bytes for n_tokens tokens of the calibration's shape, at
 * any ratio, dtype and exact-token counts, with chunk_tokens at its default (256) or more (smaller
 * chunk_tokens may exceed it: kvtc_compress_view_into then says so with KVTC_OUT_OF_SPACE).
 * 0 when cal is NULL or n_tokens < 0. */
KVTC_API size_t kvtc_compress_bound(const kvtc_calibration* cal, int64_t n_tokens);

/* ------------------------------------------------------------------------------------------------ */
/* Decompression                                                                                    */
/* ------------------------------------------------------------------------------------------------ */

/* Restores a whole cache from a container. */
KVTC_API kvtc_status kvtc_decompress(const kvtc_calibration* cal, const uint8_t* data, size_t size,
                                     int32_t n_threads, kvtc_cache** out);
/* Restores one layer into caller buffers of n_kv_heads * n_tokens * head_dim floats each; the shape
 * comes from kvtc_container_shape. Decodes all coefficients on every call: for many layers use
 * kvtc_decoder_open. */
KVTC_API kvtc_status kvtc_decompress_layer(const kvtc_calibration* cal, const uint8_t* data, size_t size,
                                           int32_t layer, float* keys, float* values, size_t capacity_floats);
/* Shape of the cache a container holds (structure and checksums checked, no calibration needed). */
KVTC_API kvtc_status kvtc_container_shape(const uint8_t* data, size_t size, int32_t* n_layers,
                                          int32_t* n_kv_heads, int32_t* head_dim, int64_t* n_tokens);
KVTC_API void kvtc_buffer_free(uint8_t* buffer);

/* Opens a container for layer-by-layer restore (kvtc::Decoder): checks it against the calibration
 * (KVTC_MISMATCH when made with another one) and its checksums (KVTC_CHECKSUM_MISMATCH), inflates every
 * chunk and dequantises the coefficients once (n_threads workers, 0: all cores). The handle keeps what
 * it needs: `data` need not outlive the call. Holds 4 bytes per kept coefficient of every compressed
 * token and the exact tokens in fp32. Release with kvtc_decoder_free. */
KVTC_API kvtc_status kvtc_decoder_open(const kvtc_calibration* cal, const uint8_t* data, size_t size,
                                       int32_t n_threads, kvtc_decoder** out);
/* Shape of the cache the decoder restores: dtype is the element type the container records (that of
 * the original cache). Any out pointer may be NULL; nothing is written when dec is NULL. */
KVTC_API void kvtc_decoder_shape(const kvtc_decoder* dec, int32_t* n_layers, int32_t* n_kv_heads,
                                 int32_t* head_dim, int64_t* n_tokens, int64_t* position_offset,
                                 kvtc_dtype* dtype);
/* Reconstructs layer `layer` (0 <= layer < n_layers) into caller memory: element (head, token, dim) is
 * written at keys/values + (head * head_stride + token * token_stride + dim) * element size, converted
 * to element_dtype (round to nearest even), with RoPE applied to keys and the exact tokens bit for bit
 * (when element_dtype can hold them). Strides are in elements, >= 0, and rows must not overlap
 * (KVTC_INVALID_ARGUMENT otherwise); keys and values may be NULL only when n_tokens is 0.
 * Thread-safe: several layers may be restored at once from one decoder into distinct buffers. */
KVTC_API kvtc_status kvtc_decoder_restore_layer(const kvtc_decoder* dec, int32_t layer, kvtc_dtype element_dtype,
                                                void* keys, void* values, int64_t head_stride,
                                                int64_t token_stride);
KVTC_API void kvtc_decoder_free(kvtc_decoder* dec);

#ifdef __cplusplus
}
#endif

#endif /* KVTC_H_ */
