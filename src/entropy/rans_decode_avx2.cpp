// AVX2 rounds for the fast rANS decoder. Per group of 8 lanes: gather the slots' symbols (4-byte
// gathers from the byte table, hence its padding) and their (freq, cum), update the 8 states, and
// give the lanes that need a word the next words in lane order: the 8 words at pos widened to 32 bits
// and permuted by a table indexed by the need mask (entry k of mask m = the number of needing lanes
// below k), which is the prefix count the spec's parallel decoding describes. Compiled for AVX2 by
// function attribute and used only where the CPU has it, so the rest of the build needs no flags.
#include "entropy/rans_decode_avx2.hpp"

#include <array>
#include <atomic>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define KVTC_RANS_AVX2 1
#endif

namespace kvtc {

namespace {
std::atomic<bool> g_avx2_enabled{true};
}  // namespace

void rans_enable_avx2(bool enabled) { g_avx2_enabled.store(enabled, std::memory_order_relaxed); }

#if KVTC_RANS_AVX2

namespace {

struct alignas(32) PermuteTable {
  std::array<std::array<uint32_t, 8>, 256> index{};
  PermuteTable() {
    for (int m = 0; m < 256; ++m) {
      int below = 0;
      for (int k = 0; k < 8; ++k) {
        index[size_t(m)][size_t(k)] = uint32_t(below);
        below += (m >> k) & 1;
      }
    }
  }
};
const PermuteTable kPermute;

}  // namespace

bool rans_have_avx2() {
  static const bool have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
  return have && g_avx2_enabled.load(std::memory_order_relaxed);
}

__attribute__((target("avx2,popcnt"))) size_t rans_rounds_avx2(const RansDecodeTable& t, uint32_t* state,
                                                                size_t n_lanes, const uint8_t* words,
                                                                size_t n_words, size_t& pos_io, uint8_t* out,
                                                                size_t count) {
  const int pb = t.prob_bits();
  const __m256i mask = _mm256_set1_epi32(int((1u << pb) - 1u));
  const __m256i low16 = _mm256_set1_epi32(0xffff);
  const __m256i low8 = _mm256_set1_epi32(0xff);
  const __m256i zero = _mm256_setzero_si256();
  const __m128i shift = _mm_cvtsi32_si128(pb);
  // Byte 0 of each 32-bit lane to the low 4 bytes of each 128-bit half, then both halves together.
  const __m256i pick_bytes = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8,
                                              12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i join_halves = _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1);
  const int* sym_table = reinterpret_cast<const int*>(t.symbols());
  const int* entries = reinterpret_cast<const int*>(t.entries());
  size_t pos = pos_io, i = 0;
  while (count - i >= n_lanes && pos + n_lanes <= n_words) {
    for (size_t j = 0; j < n_lanes; j += 8) {
      __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(state + j));
      const __m256i slot = _mm256_and_si256(x, mask);
      const __m256i sym = _mm256_and_si256(_mm256_i32gather_epi32(sym_table, slot, 1), low8);
      const __m256i e = _mm256_i32gather_epi32(entries, sym, 4);
      const __m256i freq = _mm256_srli_epi32(e, 16);
      const __m256i cum = _mm256_and_si256(e, low16);
      x = _mm256_sub_epi32(_mm256_add_epi32(_mm256_mullo_epi32(freq, _mm256_srl_epi32(x, shift)), slot), cum);
      const __m256i need = _mm256_cmpeq_epi32(_mm256_srli_epi32(x, 16), zero);
      const unsigned need_mask = unsigned(_mm256_movemask_ps(_mm256_castsi256_ps(need)));
      const __m256i next = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(words + 2 * pos)));
      const __m256i index = _mm256_load_si256(reinterpret_cast<const __m256i*>(kPermute.index[need_mask].data()));
      const __m256i fed = _mm256_or_si256(_mm256_slli_epi32(x, 16), _mm256_permutevar8x32_epi32(next, index));
      x = _mm256_blendv_epi8(x, fed, need);
      pos += size_t(_mm_popcnt_u32(need_mask));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(state + j), x);
      const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(sym, pick_bytes), join_halves);
      _mm_storel_epi64(reinterpret_cast<__m128i*>(out + i + j), _mm256_castsi256_si128(bytes));
    }
    i += n_lanes;
  }
  pos_io = pos;
  return i;
}

#else

bool rans_have_avx2() { return false; }
size_t rans_rounds_avx2(const RansDecodeTable&, uint32_t*, size_t, const uint8_t*, size_t, size_t&, uint8_t*, size_t) {
  return 0;
}

#endif

}  // namespace kvtc
