// Thin wrappers over the AVX2 and AVX-512 intrinsics, so that vec_kernels_impl.h is written once.
// Included only by vec_kernels_tu.h, inside its target pragma (push_options / GCC target, or
// clang attribute push, with the SA_VEC_TARGET string of vec_avx2.cpp or vec_avx512.cpp):
// every function here, and every kernel after it, then carries the target attribute of that
// translation unit, and nothing compiled for AVX leaks into code that runs unconditionally.
// Everything is in an unnamed namespace inside SA_VEC_NAMESPACE (internal linkage): the two
// translation units define different Isa structs under the same names.
#pragma once

#include <immintrin.h>

#include <cstdint>

#define SA_VI inline __attribute__((always_inline))

namespace sharpattn::cpu::SA_VEC_NAMESPACE {
namespace {

#if defined(SA_VEC_AVX512)

// AVX-512F/DQ/BW/VL: 16 floats, masks in k registers.
struct Isa {
  static constexpr int kWidth = 16;
  using F = __m512;
  using I = __m512i;
  using B = __mmask16;
  using D = __m512d;

  static SA_VI F load(const float* p) { return _mm512_loadu_ps(p); }
  static SA_VI void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static SA_VI I loadi(const uint32_t* p) { return _mm512_loadu_si512(p); }
  static SA_VI void storei(uint32_t* p, I v) { _mm512_storeu_si512(p, v); }
  static SA_VI F set1(float v) { return _mm512_set1_ps(v); }
  static SA_VI I set1i(uint32_t v) { return _mm512_set1_epi32(static_cast<int>(v)); }
  static SA_VI I iota() {
    return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  }

  static SA_VI F add(F a, F b) { return _mm512_add_ps(a, b); }
  static SA_VI F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static SA_VI F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static SA_VI F div(F a, F b) { return _mm512_div_ps(a, b); }
  static SA_VI F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }    // a b + c
  static SA_VI F fnmadd(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a b
  static SA_VI F min(F a, F b) { return _mm512_min_ps(a, b); }
  static SA_VI F max(F a, F b) { return _mm512_max_ps(a, b); }

  static SA_VI B lt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static SA_VI B le(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
  static SA_VI B gt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static SA_VI B ge(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
  static SA_VI B eq(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  static SA_VI B ne(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_NEQ_UQ); }
  static SA_VI B is_nan(F a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
  static SA_VI B none() { return static_cast<B>(0); }
  static SA_VI B lor(B a, B b) { return static_cast<B>(a | b); }
  static SA_VI bool any(B m) { return m != static_cast<B>(0); }
  static SA_VI B lti(I a, I b) { return _mm512_cmplt_epi32_mask(a, b); }
  static SA_VI B land(B a, B b) { return static_cast<B>(a & b); }
  static SA_VI bool all(B m) { return m == static_cast<B>(0xFFFF); }
  static SA_VI int count(B m) { return __builtin_popcount(static_cast<unsigned>(m)); }
  static SA_VI B first(int64_t n) {  // lanes [0, n) set, n >= 0
    return n >= kWidth ? static_cast<B>(0xFFFF) : static_cast<B>((1u << n) - 1u);
  }
  static SA_VI F select(B m, F a, F b) { return _mm512_mask_blend_ps(m, b, a); }  // m ? a : b
  static SA_VI F zero_unless(B m, F a) { return _mm512_maskz_mov_ps(m, a); }

  static SA_VI I addi(I a, I b) { return _mm512_add_epi32(a, b); }
  static SA_VI I subi(I a, I b) { return _mm512_sub_epi32(a, b); }
  static SA_VI I andi(I a, I b) { return _mm512_and_si512(a, b); }
  static SA_VI I ori(I a, I b) { return _mm512_or_si512(a, b); }
  static SA_VI I xori(I a, I b) { return _mm512_xor_si512(a, b); }
  template <int s> static SA_VI I srli(I a) { return _mm512_srli_epi32(a, s); }
  template <int s> static SA_VI I slli(I a) { return _mm512_slli_epi32(a, s); }
  template <int s> static SA_VI I srai(I a) { return _mm512_srai_epi32(a, s); }
  static SA_VI F cvt(I a) { return _mm512_cvtepi32_ps(a); }  // round to nearest even
  static SA_VI I round_int(F a) { return _mm512_cvtps_epi32(a); }  // round to nearest even
  static SA_VI I as_int(F a) { return _mm512_castps_si512(a); }
  static SA_VI F as_float(I a) { return _mm512_castsi512_ps(a); }

  // High and low 32 bits of the 32 x 32 -> 64-bit products m * a, lane by lane.
  static SA_VI void mulhilo(I m, I a, I& hi, I& lo) {
    const I even = _mm512_mul_epu32(a, m);
    const I odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
    hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
    lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  }

  // Lane g of w0..w3 holds the words of counter g; store them as 4 g + k (4 x 16 transpose).
  static SA_VI void store_transposed(uint32_t* dst, I w0, I w1, I w2, I w3) {
    const I ab_lo = _mm512_unpacklo_epi32(w0, w1), ab_hi = _mm512_unpackhi_epi32(w0, w1);
    const I cd_lo = _mm512_unpacklo_epi32(w2, w3), cd_hi = _mm512_unpackhi_epi32(w2, w3);
    // 128-bit lane l of gk holds counter 4 l + k.
    const I g0 = _mm512_unpacklo_epi64(ab_lo, cd_lo), g1 = _mm512_unpackhi_epi64(ab_lo, cd_lo);
    const I g2 = _mm512_unpacklo_epi64(ab_hi, cd_hi), g3 = _mm512_unpackhi_epi64(ab_hi, cd_hi);
    const I t0 = _mm512_shuffle_i32x4(g0, g1, 0x44), t1 = _mm512_shuffle_i32x4(g0, g1, 0xEE);
    const I t2 = _mm512_shuffle_i32x4(g2, g3, 0x44), t3 = _mm512_shuffle_i32x4(g2, g3, 0xEE);
    storei(dst, _mm512_shuffle_i32x4(t0, t2, 0x88));
    storei(dst + 16, _mm512_shuffle_i32x4(t0, t2, 0xDD));
    storei(dst + 32, _mm512_shuffle_i32x4(t1, t3, 0x88));
    storei(dst + 48, _mm512_shuffle_i32x4(t1, t3, 0xDD));
  }

  // Double accumulation of float lanes (two halves of 8).
  struct Acc {
    D lo, hi;
    // Explicit (not defaulted member initialisers): an implicit constructor would not get the
    // target attribute of this region.
    SA_VI Acc() : lo(_mm512_setzero_pd()), hi(_mm512_setzero_pd()) {}
    SA_VI void add(F v) {
      lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
      hi = _mm512_add_pd(hi, _mm512_cvtps_pd(
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
    }
    SA_VI double total() const { return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi)); }
  };
  static SA_VI float hmin(F v) { return _mm512_reduce_min_ps(v); }
  static SA_VI float hmax(F v) { return _mm512_reduce_max_ps(v); }
};

#elif defined(SA_VEC_AVX2)

// AVX2 + FMA: 8 floats, masks as all-ones / all-zeros lanes.
struct Isa {
  static constexpr int kWidth = 8;
  using F = __m256;
  using I = __m256i;
  using B = __m256;
  using D = __m256d;

  static SA_VI F load(const float* p) { return _mm256_loadu_ps(p); }
  static SA_VI void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static SA_VI I loadi(const uint32_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static SA_VI void storei(uint32_t* p, I v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
  }
  static SA_VI F set1(float v) { return _mm256_set1_ps(v); }
  static SA_VI I set1i(uint32_t v) { return _mm256_set1_epi32(static_cast<int>(v)); }
  static SA_VI I iota() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }

  static SA_VI F add(F a, F b) { return _mm256_add_ps(a, b); }
  static SA_VI F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static SA_VI F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static SA_VI F div(F a, F b) { return _mm256_div_ps(a, b); }
  static SA_VI F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static SA_VI F fnmadd(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }
  static SA_VI F min(F a, F b) { return _mm256_min_ps(a, b); }
  static SA_VI F max(F a, F b) { return _mm256_max_ps(a, b); }

  static SA_VI B lt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static SA_VI B le(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
  static SA_VI B gt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static SA_VI B ge(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
  static SA_VI B eq(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  static SA_VI B ne(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_NEQ_UQ); }
  static SA_VI B is_nan(F a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
  static SA_VI B none() { return _mm256_setzero_ps(); }
  static SA_VI B lor(B a, B b) { return _mm256_or_ps(a, b); }
  static SA_VI bool any(B m) { return _mm256_movemask_ps(m) != 0; }
  static SA_VI B lti(I a, I b) { return _mm256_castsi256_ps(_mm256_cmpgt_epi32(b, a)); }
  static SA_VI B land(B a, B b) { return _mm256_and_ps(a, b); }
  static SA_VI bool all(B m) { return _mm256_movemask_ps(m) == 0xFF; }
  static SA_VI int count(B m) { return __builtin_popcount(static_cast<unsigned>(_mm256_movemask_ps(m))); }
  static SA_VI B first(int64_t n) {
    const int k = n >= kWidth ? kWidth : static_cast<int>(n);
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(k), iota()));
  }
  static SA_VI F select(B m, F a, F b) { return _mm256_blendv_ps(b, a, m); }
  static SA_VI F zero_unless(B m, F a) { return _mm256_and_ps(m, a); }

  static SA_VI I addi(I a, I b) { return _mm256_add_epi32(a, b); }
  static SA_VI I subi(I a, I b) { return _mm256_sub_epi32(a, b); }
  static SA_VI I andi(I a, I b) { return _mm256_and_si256(a, b); }
  static SA_VI I ori(I a, I b) { return _mm256_or_si256(a, b); }
  static SA_VI I xori(I a, I b) { return _mm256_xor_si256(a, b); }
  template <int s> static SA_VI I srli(I a) { return _mm256_srli_epi32(a, s); }
  template <int s> static SA_VI I slli(I a) { return _mm256_slli_epi32(a, s); }
  template <int s> static SA_VI I srai(I a) { return _mm256_srai_epi32(a, s); }
  static SA_VI F cvt(I a) { return _mm256_cvtepi32_ps(a); }
  static SA_VI I round_int(F a) { return _mm256_cvtps_epi32(a); }
  static SA_VI I as_int(F a) { return _mm256_castps_si256(a); }
  static SA_VI F as_float(I a) { return _mm256_castsi256_ps(a); }

  static SA_VI void mulhilo(I m, I a, I& hi, I& lo) {
    const I even = _mm256_mul_epu32(a, m);
    const I odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
    lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  }

  // 4 x 8 transpose: lane g of w0..w3 holds the words of counter g.
  static SA_VI void store_transposed(uint32_t* dst, I w0, I w1, I w2, I w3) {
    const I ab_lo = _mm256_unpacklo_epi32(w0, w1), ab_hi = _mm256_unpackhi_epi32(w0, w1);
    const I cd_lo = _mm256_unpacklo_epi32(w2, w3), cd_hi = _mm256_unpackhi_epi32(w2, w3);
    // 128-bit lane l of gk holds counter 4 l + k.
    const I g0 = _mm256_unpacklo_epi64(ab_lo, cd_lo), g1 = _mm256_unpackhi_epi64(ab_lo, cd_lo);
    const I g2 = _mm256_unpacklo_epi64(ab_hi, cd_hi), g3 = _mm256_unpackhi_epi64(ab_hi, cd_hi);
    storei(dst, _mm256_permute2x128_si256(g0, g1, 0x20));
    storei(dst + 8, _mm256_permute2x128_si256(g2, g3, 0x20));
    storei(dst + 16, _mm256_permute2x128_si256(g0, g1, 0x31));
    storei(dst + 24, _mm256_permute2x128_si256(g2, g3, 0x31));
  }

  struct Acc {
    D lo, hi;
    SA_VI Acc() : lo(_mm256_setzero_pd()), hi(_mm256_setzero_pd()) {}
    SA_VI void add(F v) {
      lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
      hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    }
    SA_VI double total() const {
      alignas(32) double parts[4];
      _mm256_store_pd(parts, _mm256_add_pd(lo, hi));
      return (parts[0] + parts[1]) + (parts[2] + parts[3]);
    }
  };
  static SA_VI float hmin(F v) {
    alignas(32) float parts[8];
    _mm256_store_ps(parts, v);
    float r = parts[0];
    for (int i = 1; i < 8; ++i) r = parts[i] < r ? parts[i] : r;
    return r;
  }
  static SA_VI float hmax(F v) {
    alignas(32) float parts[8];
    _mm256_store_ps(parts, v);
    float r = parts[0];
    for (int i = 1; i < 8; ++i) r = parts[i] > r ? parts[i] : r;
    return r;
  }
};

#else
#error "vec_isa.h: define SA_VEC_AVX2 or SA_VEC_AVX512"
#endif

}  // namespace
}  // namespace sharpattn::cpu::SA_VEC_NAMESPACE
