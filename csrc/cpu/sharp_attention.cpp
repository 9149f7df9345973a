// CPU kernels of the sharp attention operator (docs/spec.md section 2): planes in parallel,
// each plane gathered into a dense buffer. Float32 accumulation (float32, float16, bfloat16
// inputs) runs the vectorised kernels of vec_kernels.h where the CPU has AVX2 or AVX-512;
// float64, and every other CPU, runs the scalar mask math of csrc/common, shared with the CUDA
// kernels.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <vector>

#include "../common/host.h"
#include "../common/op_args.h"
#include "../common/philox.h"
#include "../common/sharp_mask.h"
#include "../common/tv_stencil.h"
#include "plane_io.h"
#include "vec_kernels.h"

namespace sharpattn::cpu {
namespace {

// Logistic noise of one plane's HW positions, one Philox block per four positions.
template <typename acc_t>
void fill_noise(acc_t* noise, int64_t HW, uint64_t key, uint64_t first_counter) {
  const int64_t groups = (HW + 3) / 4;
  for (int64_t g = 0; g < groups; ++g) {
    const PhiloxWords r = philox4x32_10(first_counter + static_cast<uint64_t>(g), key);
    const int64_t j0 = 4 * g;
    for (int64_t k = 0; k < 4 && j0 + k < HW; ++k) noise[j0 + k] = logistic_from_word<acc_t>(r.w[k]);
  }
}

// lo and hi of a plane of n >= 1 values, both NaN if any value is NaN (the NaN rule of
// docs/modules.md, as torch.amin/amax). std::min/max would skip a NaN after the first element;
// a separate flag keeps the min/max loop as cheap as before.
template <typename acc_t>
void plane_min_max(const acc_t* xs, int64_t n, acc_t* lo_out, acc_t* hi_out) {
  acc_t lo = xs[0], hi = xs[0];
  bool nan = false;
  for (int64_t j = 0; j < n; ++j) {
    lo = std::min(lo, xs[j]);
    hi = std::max(hi, xs[j]);
    nan |= xs[j] != xs[j];
  }
  if (nan) lo = hi = std::numeric_limits<acc_t>::quiet_NaN();
  *lo_out = lo;
  *hi_out = hi;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(
    const at::Tensor& t, const c10::optional<at::Tensor>& x_opt, double tau, int64_t seed,
    int64_t offset, c10::string_view mode, bool residual, double eps, bool return_mask,
    bool return_tv) {
  check_forward_args(t, x_opt, tau);
  const at::Tensor& x = x_opt.has_value() ? *x_opt : t;
  const bool separate_x = x_opt.has_value();
  const int64_t N = t.size(0), C = t.size(1), H = t.size(2), W = t.size(3), HW = H * W;
  const auto acc_dtype = accumulation_dtype(t);
  at::Tensor out = at::empty_like(t);
  at::Tensor mask = return_mask ? at::empty_like(t) : at::empty({0}, t.options());
  at::Tensor stats = at::empty({N, C, 2}, t.options().dtype(acc_dtype));
  at::Tensor tv = return_tv ? at::empty({N, C}, t.options().dtype(acc_dtype))
                            : at::empty({0}, t.options().dtype(acc_dtype));
  if (N * C == 0 || HW == 0) return {out, mask, stats.zero_(), tv.zero_()};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "sharp_attention_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto prm = make_params<acc_t>(tau, eps, mode, residual);
    const scalar_t* t_data = t.const_data_ptr<scalar_t>();
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
    scalar_t* mask_data = return_mask ? mask.mutable_data_ptr<scalar_t>() : nullptr;
    acc_t* stats_data = stats.mutable_data_ptr<acc_t>();
    acc_t* tv_data = return_tv ? tv.mutable_data_ptr<acc_t>() : nullptr;
    const int64_t groups = (HW + 3) / 4;

    if (const VecKernels* vk = vec_for<acc_t>(HW)) {
      // Float32 accumulation only (vec_for is null otherwise).
      const auto prmf = make_params<float>(tau, eps, mode, residual);
      const int64_t HWp = padded_size(HW);
      const bool noisy = prmf.mode != MaskMode::kMean;
      at::parallel_for(0, N * C, grain(HW), [&](int64_t begin, int64_t end) {
        // x, mask, output, t (when separate): padded per-task scratch reused across planes.
        std::vector<float> scratch((separate_x ? 4 : 3) * HWp);
        std::vector<uint32_t> words(noisy ? HWp : 0, 0u);  // past 4 * groups stays 0
        float* xs = scratch.data();
        float* ms = xs + HWp;
        float* fs = xs + 2 * HWp;
        float* ts = separate_x ? xs + 3 * HWp : xs;
        std::optional<StencilBuffer> attn;  // A = M T, with the stencil's margins
        std::optional<ColumnTables> cols;
        if (return_tv) {
          attn.emplace(H, W);
          cols.emplace(H, W);
        }
        for (int64_t p = begin; p < end; ++p) {
          const int64_t n = p / C, c = p % C;
          load_plane(plane_of(x_data, x.strides().data(), n, c), H, W, xs);
          float lo, hi;
          vk->min_max(xs, HW, &lo, &hi);
          std::fill(xs + HW, xs + HWp, lo);  // padding: any finite value
          if (separate_x) {
            load_plane(plane_of(t_data, t.strides().data(), n, c), H, W, ts);
            std::fill(ts + HW, ts + HWp, 0.0f);
          }
          const PlaneRange<float> range(lo, hi, prmf.eps);
          if (noisy)
            vk->philox_words(words.data(), groups,
                             philox_counter(static_cast<uint64_t>(offset), p, groups, 0),
                             static_cast<uint64_t>(seed));
          vk->mask_values(xs, words.data(), HWp, range, prmf, ms, nullptr);
          vk->gate(ms, ts, HWp, prmf.residual, fs, return_tv ? attn->data() : nullptr);
          store_plane(fs, H, W, plane_of(out_data, out.strides().data(), n, c));
          if (return_mask) store_plane(ms, H, W, plane_of(mask_data, mask.strides().data(), n, c));
          if (return_tv)
            tv_data[p] = static_cast<float>(vk->tv_plane(attn->data(), H, W, cols->right.data()));
          stats_data[2 * p] = lo;
          stats_data[2 * p + 1] = hi;
        }
      });
      return;
    }

    at::parallel_for(0, N * C, grain(HW), [&](int64_t begin, int64_t end) {
      // x, t (when separate), noise, output, mask: per-task scratch reused across planes.
      std::vector<acc_t> scratch(5 * HW);
      acc_t* xs = scratch.data();
      acc_t* ts = separate_x ? xs + HW : xs;
      acc_t* noise = xs + 2 * HW;
      acc_t* fs = xs + 3 * HW;
      acc_t* ms = xs + 4 * HW;
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / C, c = p % C;
        load_plane(plane_of(x_data, x.strides().data(), n, c), H, W, xs);
        if (separate_x) load_plane(plane_of(t_data, t.strides().data(), n, c), H, W, ts);
        acc_t lo, hi;
        plane_min_max(xs, HW, &lo, &hi);
        const PlaneRange<acc_t> range(lo, hi, prm.eps);
        if (prm.mode != MaskMode::kMean)
          fill_noise(noise, HW, static_cast<uint64_t>(seed),
                     philox_counter(static_cast<uint64_t>(offset), p, groups, 0));
        for (int64_t j = 0; j < HW; ++j) {
          const acc_t m = mask_value(xs[j], noise[j], range, prm);
          ms[j] = m;
          fs[j] = gate_output(m, ts[j], prm.residual);
        }
        store_plane(fs, H, W, plane_of(out_data, out.strides().data(), n, c));
        if (return_mask) store_plane(ms, H, W, plane_of(mask_data, mask.strides().data(), n, c));
        if (return_tv) {
          // TV of the attention-aware feature A = M T, from the plane already in cache; the
          // mask buffer becomes A (it has been written out above).
          for (int64_t j = 0; j < HW; ++j) ms[j] *= ts[j];
          tv_data[p] = static_cast<acc_t>(tv_plane(ms, H, W));
        }
        stats_data[2 * p] = lo;
        stats_data[2 * p + 1] = hi;
      }
    });
  });
  return {out, mask, stats, tv};
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_out,
                                            const c10::optional<at::Tensor>& grad_tv_opt,
                                            const at::Tensor& t,
                                            const c10::optional<at::Tensor>& x_opt,
                                            const at::Tensor& stats, double tau, int64_t seed,
                                            int64_t offset, c10::string_view mode, bool residual,
                                            double eps) {
  const bool with_tv = check_backward_args(grad_out, grad_tv_opt, t, x_opt, stats, tau);
  const at::Tensor& x = x_opt.has_value() ? *x_opt : t;
  const bool separate_x = x_opt.has_value();
  const int64_t N = t.size(0), C = t.size(1), H = t.size(2), W = t.size(3), HW = H * W;
  at::Tensor grad_t = at::empty_like(t);
  at::Tensor grad_x = separate_x ? at::empty_like(x) : at::empty({0}, t.options());
  if (N * C == 0 || HW == 0) return {grad_t, grad_x};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "sharp_attention_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto prm = make_params<acc_t>(tau, eps, mode, residual);
    const scalar_t* t_data = t.const_data_ptr<scalar_t>();
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    const scalar_t* g_data = grad_out.const_data_ptr<scalar_t>();
    scalar_t* gt_data = grad_t.mutable_data_ptr<scalar_t>();
    scalar_t* gx_data = separate_x ? grad_x.mutable_data_ptr<scalar_t>() : nullptr;
    const acc_t* stats_data = stats.const_data_ptr<acc_t>();
    const acc_t* gtv_data = with_tv ? grad_tv_opt->const_data_ptr<acc_t>() : nullptr;
    const int64_t groups = (HW + 3) / 4;

    if (const VecKernels* vk = vec_for<acc_t>(HW)) {
      // Float32 accumulation only (vec_for is null otherwise).
      const auto prmf = make_params<float>(tau, eps, mode, residual);
      const int64_t HWp = padded_size(HW);
      const bool noisy = prmf.mode != MaskMode::kMean, hard = prmf.mode == MaskMode::kHard;
      at::parallel_for(0, N * C, grain(HW), [&](int64_t begin, int64_t end) {
        // x, grad_out, mask, dT, dX, t (when separate), the relaxed sample (hard mode), dTV/dA
        // (with TV): padded per-task scratch reused across planes.
        const int64_t buffers = 5 + separate_x + hard + with_tv;
        std::vector<float> scratch(buffers * HWp);
        std::vector<uint32_t> words(noisy ? HWp : 0, 0u);  // past 4 * groups stays 0
        float* next = scratch.data();
        auto take = [&]() { float* b = next; next += HWp; return b; };
        float* xs = take();
        float* gs = take();
        float* ms = take();
        float* dts = take();
        float* dxs = take();
        float* ts = separate_x ? take() : xs;
        float* soft = hard ? take() : ms;  // sample mode: the mask is the relaxed sample
        float* tvg = with_tv ? take() : nullptr;
        std::optional<StencilBuffer> attn;  // A = M T, with the stencil's margins
        std::optional<ColumnTables> cols;
        if (with_tv) {
          attn.emplace(H, W);
          cols.emplace(H, W);
        }
        for (int64_t p = begin; p < end; ++p) {
          const int64_t n = p / C, c = p % C;
          const PlaneRange<float> range(stats_data[2 * p], stats_data[2 * p + 1], prmf.eps);
          load_plane(plane_of(x_data, x.strides().data(), n, c), H, W, xs);
          std::fill(xs + HW, xs + HWp, range.lo);  // padding: any finite value
          if (separate_x) {
            load_plane(plane_of(t_data, t.strides().data(), n, c), H, W, ts);
            std::fill(ts + HW, ts + HWp, 0.0f);
          }
          load_plane(plane_of(g_data, grad_out.strides().data(), n, c), H, W, gs);
          std::fill(gs + HW, gs + HWp, 0.0f);
          if (noisy)
            vk->philox_words(words.data(), groups,
                             philox_counter(static_cast<uint64_t>(offset), p, groups, 0),
                             static_cast<uint64_t>(seed));
          vk->mask_values(xs, words.data(), HWp, range, prmf, ms, hard ? soft : nullptr);
          // With TV, dL/dA at an element needs A at its neighbours: A = M T for the whole
          // plane first (dts is only scratch for gate's F here), then dTV/dA.
          if (with_tv) {
            vk->gate(ms, ts, HWp, prmf.residual, dts, attn->data());
            vk->tv_grad(attn->data(), H, W, 1.0f, cols->left.data(), cols->right.data(), tvg);
          }
          TieSums sums;
          vk->mask_grad(xs, ts, gs, ms, soft, tvg, with_tv ? gtv_data[p] : 0.0f, HW, range,
                        prmf, dts, dxs, &sums);
          // The min/max gradient shared evenly among the tied elements (torch.amin rule).
          const float share_lo =
              sums.count_lo ? static_cast<float>(sums.sum_lo / sums.count_lo) : 0.0f;
          const float share_hi =
              sums.count_hi ? static_cast<float>(sums.sum_hi / sums.count_hi) : 0.0f;
          vk->add_tie_shares(xs, HWp, range.lo, range.hi, share_lo, share_hi, dxs, dts,
                             !separate_x);
          store_plane(dts, H, W, plane_of(gt_data, grad_t.strides().data(), n, c));
          if (separate_x) store_plane(dxs, H, W, plane_of(gx_data, grad_x.strides().data(), n, c));
        }
      });
      return;
    }

    at::parallel_for(0, N * C, grain(HW), [&](int64_t begin, int64_t end) {
      // x, t (when separate), grad_out, noise, dT, dX, A = M T: per-task scratch.
      std::vector<acc_t> scratch((with_tv ? 7 : 6) * HW);
      acc_t* xs = scratch.data();
      acc_t* ts = separate_x ? xs + HW : xs;
      acc_t* gs = xs + 2 * HW;
      acc_t* noise = xs + 3 * HW;
      acc_t* dts = xs + 4 * HW;
      acc_t* dxs = xs + 5 * HW;
      acc_t* attn = with_tv ? xs + 6 * HW : nullptr;
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / C, c = p % C;
        load_plane(plane_of(x_data, x.strides().data(), n, c), H, W, xs);
        if (separate_x) load_plane(plane_of(t_data, t.strides().data(), n, c), H, W, ts);
        load_plane(plane_of(g_data, grad_out.strides().data(), n, c), H, W, gs);
        const PlaneRange<acc_t> range(stats_data[2 * p], stats_data[2 * p + 1], prm.eps);
        if (prm.mode != MaskMode::kMean)
          fill_noise(noise, HW, static_cast<uint64_t>(seed),
                     philox_counter(static_cast<uint64_t>(offset), p, groups, 0));
        // With TV, dL/dA at an element needs A at its neighbours: recompute A = M T first.
        const acc_t gtv = with_tv ? gtv_data[p] : acc_t(0);
        if (with_tv)
          for (int64_t j = 0; j < HW; ++j) attn[j] = mask_value(xs[j], noise[j], range, prm) * ts[j];
        // Pass 1: per-element derivatives, and the plane sums that reach lo and hi.
        double sum_lo = 0, sum_hi = 0;
        int64_t count_lo = 0, count_hi = 0;
        for (int64_t j = 0; j < HW; ++j) {
          const acc_t g_attn = with_tv ? gtv * tv_grad_at(attn, j / W, j % W, H, W) : acc_t(0);
          const ElementGrad<acc_t> eg =
              element_grad(gs[j], g_attn, xs[j], ts[j], noise[j], range, prm);
          dts[j] = eg.dt;
          dxs[j] = eg.dx_direct;
          sum_lo += eg.dlo;
          sum_hi += eg.dhi;
          count_lo += xs[j] == range.lo;
          count_hi += xs[j] == range.hi;
        }
        // Pass 2: the min/max gradient shared evenly among the tied elements (torch.amin rule).
        const acc_t share_lo = count_lo ? static_cast<acc_t>(sum_lo / count_lo) : acc_t(0);
        const acc_t share_hi = count_hi ? static_cast<acc_t>(sum_hi / count_hi) : acc_t(0);
        for (int64_t j = 0; j < HW; ++j) {
          dxs[j] += (xs[j] == range.lo ? share_lo : acc_t(0)) + (xs[j] == range.hi ? share_hi : acc_t(0));
          if (!separate_x) dts[j] += dxs[j];
        }
        store_plane(dts, H, W, plane_of(gt_data, grad_t.strides().data(), n, c));
        if (separate_x) store_plane(dxs, H, W, plane_of(gx_data, grad_x.strides().data(), n, c));
      }
    });
  });
  return {grad_t, grad_x};
}

void philox_uniform_out(at::Tensor& out, int64_t seed, int64_t offset) {
  TORCH_CHECK(out.dim() == 2 && out.is_contiguous(), "sharpattn: out must be a contiguous (P, S) tensor");
  TORCH_CHECK(out.scalar_type() == at::kFloat || out.scalar_type() == at::kDouble,
              "sharpattn: philox_uniform_out writes float32 or float64");
  const int64_t P = out.size(0), S = out.size(1), groups = (S + 3) / 4;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "philox_uniform_out_cpu", [&] {
    scalar_t* data = out.mutable_data_ptr<scalar_t>();
    if (const VecKernels* vk = vec_kernels()) {
      // Words from the vectorised Philox, chunk by chunk of each row; then the same conversion.
      constexpr int64_t kChunk = 1024;  // counters per task item
      const int64_t chunks = (groups + kChunk - 1) / kChunk;
      at::parallel_for(0, P * chunks, 4, [&](int64_t begin, int64_t end) {
        std::vector<uint32_t> words(4 * kChunk);
        for (int64_t i = begin; i < end; ++i) {
          const int64_t p = i / chunks, g0 = (i % chunks) * kChunk;
          const int64_t ng = std::min(kChunk, groups - g0);
          vk->philox_words(words.data(), ng,
                           philox_counter(static_cast<uint64_t>(offset), p, groups, 4 * g0),
                           static_cast<uint64_t>(seed));
          const int64_t j0 = 4 * g0, j1 = std::min(S, 4 * (g0 + ng));
          scalar_t* row = data + p * S;
          for (int64_t j = j0; j < j1; ++j) row[j] = uniform_from_word<scalar_t>(words[j - j0]);
        }
      });
      return;
    }
    at::parallel_for(0, P * groups, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t p = i / groups, j0 = 4 * (i % groups);
        const PhiloxWords r = philox4x32_10(
            philox_counter(static_cast<uint64_t>(offset), p, groups, j0), static_cast<uint64_t>(seed));
        for (int64_t k = 0; k < 4 && j0 + k < S; ++k) data[p * S + j0 + k] = uniform_from_word<scalar_t>(r.w[k]);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(sharpattn, CPU, m) {
  m.impl("sharp_attention_forward", &forward);
  m.impl("sharp_attention_backward", &backward);
  m.impl("philox_uniform_out", &philox_uniform_out);
}

}  // namespace sharpattn::cpu
