/* The C API header as a C99 compiler sees it, linked against libkvtc.so: params defaults, NULL
 * handling, statuses and the decoder on junk. Returns non-zero on the first failed check. */
#include <stdio.h>
#include <string.h>

#include "kvtc/kvtc.h"

#define CHECK(cond)                                             \
  do {                                                          \
    if (!(cond)) {                                              \
      fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n", __FILE__, __LINE__, #cond, kvtc_last_error()); \
      return 1;                                                 \
    }                                                           \
  } while (0)

int main(void) {
  kvtc_compress_params params;
  kvtc_compress_report report;
  kvtc_cache_view view;
  kvtc_decoder* dec = NULL;
  uint8_t* out = NULL;
  size_t out_size = 0;
  const uint8_t junk[64] = {0};
  int32_t layers = -1;

  kvtc_compress_params_init(&params);
  CHECK(params.struct_size == sizeof params);
  CHECK(params.target_ratio == 20.0 && params.deflate_level == 6 && params.chunk_tokens == 256);
  CHECK(params.exact_head_tokens == -1 && params.exact_tail_tokens == -1 && params.measure_error == 0);
  CHECK(params.codec == 2 && params.rans_lanes == 32 && params.reserved0 == 0);
  CHECK(params.chunk_max_bytes == 16384 && params.n_threads == 0);

  memset(&view, 0, sizeof view);
  view.struct_size = sizeof view;
  memset(&report, 0, sizeof report);
  report.struct_size = sizeof report;
  CHECK(kvtc_compress_view(NULL, &view, &params, &out, &out_size, &report) == KVTC_INVALID_ARGUMENT);
  CHECK(strstr(kvtc_last_error(), "NULL") != NULL);
  CHECK(kvtc_compress_view_into(NULL, &view, NULL, NULL, 0, &out_size, NULL) == KVTC_INVALID_ARGUMENT);
  CHECK(kvtc_compress_bound(NULL, 10) == 0);
  CHECK(kvtc_decoder_open(NULL, junk, sizeof junk, 0, &dec) == KVTC_INVALID_ARGUMENT);
  CHECK(kvtc_decoder_restore_layer(NULL, 0, KVTC_BF16, NULL, NULL, 0, 0) == KVTC_INVALID_ARGUMENT);
  CHECK(kvtc_container_shape(junk, sizeof junk, NULL, NULL, NULL, NULL) == KVTC_CORRUPT);
  CHECK(strcmp(kvtc_status_name(KVTC_OUT_OF_SPACE), "OUT_OF_SPACE") == 0);
  kvtc_decoder_shape(NULL, &layers, NULL, NULL, NULL, NULL, NULL);
  kvtc_calibration_shape(NULL, &layers, NULL, NULL, NULL, NULL);
  CHECK(layers == -1);
  kvtc_decoder_free(NULL);
  kvtc_calibration_free(NULL);
  kvtc_cache_free(NULL);
  kvtc_buffer_free(NULL);
  CHECK((int)KVTC_BF16 == 0 && (int)KVTC_F16 == 1 && (int)KVTC_F32 == 2);
  printf("ok\n");
  return 0;
}
