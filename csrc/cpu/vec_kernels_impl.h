// The vectorised float32 kernels of vec_kernels.h, written once over the Isa wrapper of
// vec_isa.h. Included only by vec_avx2.cpp and vec_avx512.cpp, inside their target region, after
// vec_isa.h, <cfloat>, philox.h and sharp_mask.h.
//
// The mask of docs/spec.md section 2 needs, per element, z = log a - log b + L with
// a = x - lo + eps, b = hi - x + eps and L = log u - log(1 - u), then sigmoid(z / tau). The
// scalar kernels take four logs; here z = log((a u) / (b (1 - u))), one log:
//  * accuracy: a u, b (1 - u) and their quotient are each rounded once (relative error <= 2^-24
//    each), so the quotient is within 3 * 2^-24 relative of the exact one and z within ~2e-7
//    absolute, plus the log's own error (vlog below, < 2 ulp of z). The four-log form rounds
//    each log to an ulp of its own magnitude (|log eps| ~ 14, ulp ~1e-6), so the one-log z is
//    at least as accurate as the reference's, and the masks agree within the tests' 2e-6.
//  * range: the identity needs a u, b (1 - u) and the quotient to be normal finite float32
//    numbers (no underflow to a subnormal or 0, no overflow). For the usual magnitudes
//    (eps = 1e-6, u and 1 - u >= 2^-25, hi - lo < 1e30) that holds with room to spare: a u >= 3e-14.
//    Every vector checks it and recomputes the lanes of a vector that fails (huge ranges, tiny
//    eps, NaN or Inf inputs) with the scalar four-log code of csrc/common, which the CUDA kernels
//    also run. The Philox words, hence the uniforms, are bit-identical to philox4x32_10.
//  * hard mode decides z > 0 as (a u) / (b (1 - u)) > 1.

namespace sharpattn::cpu::SA_VEC_NAMESPACE {
namespace {

using F = Isa::F;
using I = Isa::I;
using B = Isa::B;
constexpr int kW = Isa::kWidth;

// Natural log of positive normal finite floats (Cephes logf: mantissa in [sqrt(1/2), sqrt(2)),
// degree-8 polynomial, ln 2 split in two parts; measured < 0.83 ulp over the normal floats).
// Other inputs (0, subnormals, negatives, Inf, NaN) are the caller's concern.
SA_VI F vlog(F x) {
  const I bits = Isa::as_int(x);
  const I e = Isa::subi(Isa::srli<23>(bits), Isa::set1i(127));
  F m = Isa::as_float(Isa::ori(Isa::andi(bits, Isa::set1i(0x007FFFFFu)), Isa::set1i(0x3F800000u)));
  const B big = Isa::gt(m, Isa::set1(1.41421356237309505f));
  m = Isa::select(big, Isa::mul(m, Isa::set1(0.5f)), m);
  const F ef = Isa::add(Isa::cvt(e), Isa::select(big, Isa::set1(1.0f), Isa::set1(0.0f)));
  const F f = Isa::sub(m, Isa::set1(1.0f));  // exact, in [-0.29, 0.42)
  const F z = Isa::mul(f, f);
  F y = Isa::set1(7.0376836292e-2f);
  y = Isa::fmadd(y, f, Isa::set1(-1.1514610310e-1f));
  y = Isa::fmadd(y, f, Isa::set1(1.1676998740e-1f));
  y = Isa::fmadd(y, f, Isa::set1(-1.2420140846e-1f));
  y = Isa::fmadd(y, f, Isa::set1(1.4249322787e-1f));
  y = Isa::fmadd(y, f, Isa::set1(-1.6668057665e-1f));
  y = Isa::fmadd(y, f, Isa::set1(2.0000714765e-1f));
  y = Isa::fmadd(y, f, Isa::set1(-2.4999993993e-1f));
  y = Isa::fmadd(y, f, Isa::set1(3.3333331174e-1f));
  y = Isa::mul(Isa::mul(y, f), z);
  y = Isa::fmadd(ef, Isa::set1(-2.12194440e-4f), y);
  y = Isa::fnmadd(Isa::set1(0.5f), z, y);
  return Isa::fmadd(ef, Isa::set1(0.693359375f), Isa::add(f, y));
}

// exp for any float (Cephes expf: x = n ln 2 + r, |r| <= ln 2 / 2, degree-5 polynomial; measured
// < 1.25 ulp).
// 2^n is applied as 2^(n/2) 2^(n - n/2), both normal for the clamped x in [-104, 88.73], so
// results overflow to +Inf and underflow through the subnormals to 0 as exp does. A NaN stays
// NaN (min/max return their second operand then).
SA_VI F vexp(F x) {
  x = Isa::min(Isa::set1(88.7228391117f), Isa::max(Isa::set1(-104.0f), x));
  const I ni = Isa::round_int(Isa::mul(x, Isa::set1(1.44269504088896341f)));
  const F n = Isa::cvt(ni);
  F r = Isa::fnmadd(n, Isa::set1(0.693359375f), x);
  r = Isa::fnmadd(n, Isa::set1(-2.12194440e-4f), r);
  F y = Isa::set1(1.9875691500e-4f);
  y = Isa::fmadd(y, r, Isa::set1(1.3981999507e-3f));
  y = Isa::fmadd(y, r, Isa::set1(8.3334519073e-3f));
  y = Isa::fmadd(y, r, Isa::set1(4.1665795894e-2f));
  y = Isa::fmadd(y, r, Isa::set1(1.6666665459e-1f));
  y = Isa::fmadd(y, r, Isa::set1(5.0000001201e-1f));
  y = Isa::fmadd(Isa::mul(y, r), r, Isa::add(r, Isa::set1(1.0f)));
  const I n1 = Isa::srai<1>(ni), n2 = Isa::subi(ni, n1);
  const I bias = Isa::set1i(127);
  y = Isa::mul(y, Isa::as_float(Isa::slli<23>(Isa::addi(n1, bias))));
  return Isa::mul(y, Isa::as_float(Isa::slli<23>(Isa::addi(n2, bias))));
}

// 1 / (1 + exp(-v)), the form of sa_sigmoid.
SA_VI F vsigmoid(F v) {
  const F one = Isa::set1(1.0f);
  return Isa::div(one, Isa::add(one, vexp(Isa::sub(Isa::set1(0.0f), v))));
}

// One Philox4x32-10 block per lane; counters (c0 + lane, c1), key (k0, k1).
SA_VI void philox_lanes(uint32_t c0_first, uint32_t c1, uint32_t k0, uint32_t k1, I& w0, I& w1,
                        I& w2, I& w3) {
  const I mul0 = Isa::set1i(0xD2511F53u), mul1 = Isa::set1i(0xCD9E8D57u);
  I c0 = Isa::addi(Isa::set1i(c0_first), Isa::iota());
  I c1v = Isa::set1i(c1), c2 = Isa::set1i(0), c3 = Isa::set1i(0);
  for (int round = 0; round < 10; ++round) {
    I hi0, lo0, hi1, lo1;
    Isa::mulhilo(mul0, c0, hi0, lo0);
    Isa::mulhilo(mul1, c2, hi1, lo1);
    c0 = Isa::xori(Isa::xori(hi1, c1v), Isa::set1i(k0));
    c1v = lo1;
    c2 = Isa::xori(Isa::xori(hi0, c3), Isa::set1i(k1));
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  w0 = c0;
  w1 = c1v;
  w2 = c2;
  w3 = c3;
}

void philox_words(uint32_t* words, int64_t groups, uint64_t counter, uint64_t key) {
  const uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  int64_t g = 0;
  for (; g + kW <= groups; g += kW) {
    const uint64_t first = counter + static_cast<uint64_t>(g);
    const uint32_t lo = static_cast<uint32_t>(first);
    if (lo > 0xFFFFFFFFu - (kW - 1)) {  // the low word wraps inside this block: carry by lane
      for (int i = 0; i < kW; ++i) {
        const PhiloxWords r = philox4x32_10(first + static_cast<uint64_t>(i), key);
        for (int k = 0; k < 4; ++k) words[4 * (g + i) + k] = r.w[k];
      }
      continue;
    }
    I w0, w1, w2, w3;
    philox_lanes(lo, static_cast<uint32_t>(first >> 32), k0, k1, w0, w1, w2, w3);
    Isa::store_transposed(words + 4 * g, w0, w1, w2, w3);
  }
  for (; g < groups; ++g) {
    const PhiloxWords r = philox4x32_10(counter + static_cast<uint64_t>(g), key);
    for (int k = 0; k < 4; ++k) words[4 * g + k] = r.w[k];
  }
}

// NaN rule (docs/modules.md): a NaN anywhere makes both lo and hi NaN, as torch.amin/amax do.
// min_ps/max_ps drop a NaN operand, so an unordered-compare flag rides along (two cheap ops per
// vector) and decides once at the end.
void min_max(const float* x, int64_t n, float* lo_out, float* hi_out) {
  F lo = Isa::set1(x[0]), hi = lo;
  B nan = Isa::none();
  int64_t j = 0;
  for (; j + kW <= n; j += kW) {
    const F v = Isa::load(x + j);
    lo = Isa::min(v, lo);
    hi = Isa::max(v, hi);
    nan = Isa::lor(nan, Isa::is_nan(v));
  }
  if (j < n) {
    const B valid = Isa::first(n - j);
    const F v = Isa::select(valid, Isa::load(x + j), lo);  // lanes past n: padding, ignored
    lo = Isa::min(v, lo);
    hi = Isa::max(v, hi);
    nan = Isa::lor(nan, Isa::is_nan(v));
  }
  if (Isa::any(nan)) {
    *lo_out = *hi_out = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  *lo_out = Isa::hmin(lo);
  *hi_out = Isa::hmax(hi);
}

// u and 1 - u of docs/spec.md section 1 from the words, exactly as uniform_from_word /
// complement_from_word.
SA_VI void uniforms(I w, F& u, F& c) {
  const I k2 = Isa::slli<1>(Isa::srli<8>(w));  // 2k
  const F scale = Isa::set1(2.98023223876953125e-08f);  // 2^-25
  u = Isa::mul(Isa::cvt(Isa::addi(k2, Isa::set1i(1))), scale);
  c = Isa::mul(Isa::cvt(Isa::subi(Isa::set1i(33554431u), k2)), scale);
}

// Lanes whose a u, b (1 - u) and quotient are all normal and finite (see the top of the file).
SA_VI B one_log_ok(F num, F den, F ratio) {
  const F tiny = Isa::set1(FLT_MIN), huge = Isa::set1(FLT_MAX);
  return Isa::land(Isa::land(Isa::land(Isa::ge(num, tiny), Isa::le(num, huge)),
                             Isa::land(Isa::ge(den, tiny), Isa::le(den, huge))),
                   Isa::land(Isa::ge(ratio, tiny), Isa::le(ratio, huge)));
}

void mask_values(const float* x, const uint32_t* words, int64_t n_padded,
                 const PlaneRange<float>& r, const MaskParams<float>& prm, float* m, float* soft) {
  const F lo = Isa::set1(r.lo), hi = Isa::set1(r.hi), eps = Isa::set1(prm.eps);
  if (prm.mode == MaskMode::kMean) {
    const F denom = Isa::set1(r.denom);
    for (int64_t j = 0; j < n_padded; j += kW) {
      const F a = Isa::add(Isa::sub(Isa::load(x + j), lo), eps);
      const F v = Isa::div(a, denom);
      Isa::store(m + j, v);
      if (soft) Isa::store(soft + j, v);
    }
    return;
  }
  const F inv_tau = Isa::set1(prm.inv_tau), one = Isa::set1(1.0f), zero = Isa::set1(0.0f);
  const bool hard = prm.mode == MaskMode::kHard;
  for (int64_t j = 0; j < n_padded; j += kW) {
    const F xv = Isa::load(x + j);
    const F a = Isa::add(Isa::sub(xv, lo), eps);
    const F b = Isa::add(Isa::sub(hi, xv), eps);
    F u, c;
    uniforms(Isa::loadi(words + j), u, c);
    const F num = Isa::mul(a, u), den = Isa::mul(b, c);
    const F ratio = Isa::div(num, den);
    if (__builtin_expect(!Isa::all(one_log_ok(num, den, ratio)), 0)) {
      for (int i = 0; i < kW; ++i) {
        const float xs = x[j + i];
        const float av = (xs - r.lo) + prm.eps, bv = (r.hi - xs) + prm.eps;
        const float z = (sa_log(av) - sa_log(bv)) + logistic_from_word<float>(words[j + i]);
        const float s = sa_sigmoid(z * prm.inv_tau);
        m[j + i] = hard ? hard_step(z) : s;
        if (soft) soft[j + i] = s;
      }
      continue;
    }
    const F s = vsigmoid(Isa::mul(vlog(ratio), inv_tau));
    // A NaN never gets here (one_log_ok is false for it), so the step needs no NaN case.
    Isa::store(m + j, hard ? Isa::select(Isa::gt(ratio, one), one, zero) : s);
    if (soft) Isa::store(soft + j, s);
  }
}

void gate(const float* m, const float* t, int64_t n_padded, bool residual, float* f,
          float* attn) {
  const F one = Isa::set1(1.0f);
  for (int64_t j = 0; j < n_padded; j += kW) {
    const F mv = Isa::load(m + j), tv = Isa::load(t + j);
    Isa::store(f + j, Isa::mul(residual ? Isa::add(one, mv) : mv, tv));
    if (attn) Isa::store(attn + j, Isa::mul(mv, tv));
  }
}

// element_grad of csrc/common/sharp_mask.h over vectors, the mask values given.
void mask_grad(const float* x, const float* t, const float* g, const float* m, const float* soft,
               const float* tvg, float g_tv, int64_t n, const PlaneRange<float>& r,
               const MaskParams<float>& prm, float* dt, float* dx, TieSums* sums) {
  const F lo = Isa::set1(r.lo), hi = Isa::set1(r.hi), eps = Isa::set1(prm.eps);
  const F denom = Isa::set1(r.denom), inv_tau = Isa::set1(prm.inv_tau);
  const F one = Isa::set1(1.0f), zero = Isa::set1(0.0f), gtv = Isa::set1(g_tv);
  const bool mean = prm.mode == MaskMode::kMean, residual = prm.residual;
  Isa::Acc sum_lo, sum_hi;
  int64_t count_lo = 0, count_hi = 0;
  for (int64_t j = 0; j < n; j += kW) {
    const B valid = Isa::first(n - j);
    const F xv = Isa::load(x + j), tv = Isa::load(t + j), gv = Isa::load(g + j);
    const F mv = Isa::load(m + j);
    const F g_attn = tvg ? Isa::mul(gtv, Isa::load(tvg + j)) : zero;
    const F a = Isa::add(Isa::sub(xv, lo), eps);
    const F b = Isa::add(Isa::sub(hi, xv), eps);
    Isa::store(dt + j, Isa::add(Isa::mul(gv, residual ? Isa::add(one, mv) : mv),
                                Isa::mul(g_attn, mv)));
    const F g_mask = Isa::mul(Isa::add(gv, g_attn), tv);
    F dlo, dhi;
    if (mean) {
      const F q = Isa::div(g_mask, denom);
      Isa::store(dx + j, q);
      dlo = Isa::mul(q, Isa::div(b, denom));  // negated below
      dhi = Isa::mul(q, Isa::div(a, denom));
    } else {
      const F s = Isa::load(soft + j);
      const F g_z = Isa::mul(Isa::mul(Isa::mul(g_mask, s), Isa::sub(one, s)), inv_tau);
      dlo = Isa::div(g_z, a);
      dhi = Isa::div(g_z, b);
      Isa::store(dx + j, Isa::add(dlo, dhi));
    }
    sum_lo.add(Isa::zero_unless(valid, dlo));
    sum_hi.add(Isa::zero_unless(valid, dhi));
    count_lo += Isa::count(Isa::land(valid, Isa::eq(xv, lo)));
    count_hi += Isa::count(Isa::land(valid, Isa::eq(xv, hi)));
  }
  sums->sum_lo = -sum_lo.total();
  sums->sum_hi = -sum_hi.total();
  sums->count_lo = count_lo;
  sums->count_hi = count_hi;
}

void add_tie_shares(const float* x, int64_t n_padded, float lo_s, float hi_s, float share_lo,
                    float share_hi, float* dx, float* dt, bool add_to_dt) {
  const F lo = Isa::set1(lo_s), hi = Isa::set1(hi_s);
  const F slo = Isa::set1(share_lo), shi = Isa::set1(share_hi), zero = Isa::set1(0.0f);
  for (int64_t j = 0; j < n_padded; j += kW) {
    const F xv = Isa::load(x + j);
    const F add = Isa::add(Isa::select(Isa::eq(xv, lo), slo, zero),
                           Isa::select(Isa::eq(xv, hi), shi, zero));
    const F d = Isa::add(Isa::load(dx + j), add);
    Isa::store(dx + j, d);
    if (add_to_dt) Isa::store(dt + j, Isa::add(Isa::load(dt + j), d));
  }
}

double tv_plane(const float* a, int64_t H, int64_t W, const float* keep_right) {
  const int64_t n = H * W;
  const I below = Isa::set1i(static_cast<uint32_t>(n - W));  // rows with a row beneath
  const F zero = Isa::set1(0.0f);
  Isa::Acc acc;
  for (int64_t j = 0; j < n; j += kW) {
    const F v = Isa::load(a + j);
    const I jv = Isa::addi(Isa::set1i(static_cast<uint32_t>(j)), Isa::iota());
    const F dv = Isa::select(Isa::lti(jv, below), Isa::sub(Isa::load(a + j + W), v), zero);
    const F dh = Isa::select(Isa::land(Isa::first(n - j), Isa::ne(Isa::load(keep_right + j), zero)),
                             Isa::sub(Isa::load(a + j + 1), v), zero);
    acc.add(Isa::mul(dv, dv));
    acc.add(Isa::mul(dh, dh));
  }
  return acc.total();
}

void tv_grad(const float* a, int64_t H, int64_t W, float scale, const float* keep_left,
             const float* keep_right, float* out) {
  const int64_t n = H * W;
  const I first_below = Isa::set1i(static_cast<uint32_t>(W - 1));  // j > W - 1: a row above
  const I below = Isa::set1i(static_cast<uint32_t>(n - W));
  const F zero = Isa::set1(0.0f), two = Isa::set1(2.0f), sc = Isa::set1(scale);
  for (int64_t j = 0; j < n; j += kW) {
    const F v = Isa::load(a + j);
    const I jv = Isa::addi(Isa::set1i(static_cast<uint32_t>(j)), Isa::iota());
    // The order of tv_grad_at: above, below, left, right.
    F s = Isa::select(Isa::lti(first_below, jv), Isa::sub(v, Isa::load(a + j - W)), zero);
    s = Isa::add(s, Isa::select(Isa::lti(jv, below), Isa::sub(v, Isa::load(a + j + W)), zero));
    s = Isa::add(s, Isa::select(Isa::ne(Isa::load(keep_left + j), zero),
                                Isa::sub(v, Isa::load(a + j - 1)), zero));
    s = Isa::add(s, Isa::select(Isa::ne(Isa::load(keep_right + j), zero),
                                Isa::sub(v, Isa::load(a + j + 1)), zero));
    Isa::store(out + j, Isa::mul(sc, Isa::mul(two, s)));
  }
}

}  // namespace
}  // namespace sharpattn::cpu::SA_VEC_NAMESPACE
