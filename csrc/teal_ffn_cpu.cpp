// TEAL (Liu et al. 2024, "Training-Free Activation Sparsity in Large Language Models") on the
// CPU: an FFN whose projections read magnitude-sparsified inputs,
//   x_s  = x·1[|x| > t_in]
//   z    = x_s W_inᵀ + b_in,   u = x_s W_upᵀ + b_up            (u: gated FFNs only)
//   x1   = act(z) (* u),       x1_s = x1·1[|x1| > t_down]
//   y    = x1_s W_out_t + b_out
// Input sparsity selects *columns* of W_in / W_up, so the op takes them transposed ([d, f]: one
// contiguous row per input dimension) and every projection is the same row-sparse accumulation
// y += v_k * W[j_k] over the active inputs (the sparse FFN's down pass, sparse_ffn_cpu_common.h):
// each weight byte a zero input would multiply is never read. Gate and up share one active list.
// The thresholds are compared in x's dtype, as PyTorch's `x.abs() > t` does in the hooks the
// op replaces (actsparse.plugins.training_free.MagnitudeSparsifier), so converted and hooked models
// zero the same entries.
#include "sparse_ffn.h"
#include "sparse_ffn_cpu_common.h"

#include <torch/library.h>

#include <cmath>
#include <vector>

namespace actsparse {
namespace {

using namespace cpu;

// The op's `activation` argument: the FFN's own activation, which TEAL leaves as it is.
constexpr int64_t kTealSilu = 0, kTealRelu = 1, kTealGelu = 2, kTealGeluTanh = 3;

const char* kOp = "actsparse.teal_ffn";

void check_matrix(const char* name, const at::Tensor& w, const at::Tensor& x, int64_t rows, int64_t cols,
                  const char* layout) {
  TORCH_CHECK(w.device() == x.device() && w.scalar_type() == x.scalar_type(), kOp, ": ", name, " is ",
              w.scalar_type(), " on ", w.device(), " but x is ", x.scalar_type(), " on ", x.device(),
              "; weights must share x's dtype and device (model.to(...)).");
  TORCH_CHECK(w.dim() == 2 && w.size(0) == rows && (cols < 0 || w.size(1) == cols), kOp, ": ", name,
              " must be ", layout, " [", rows, ", ", (cols < 0 ? std::string("d_out") : std::to_string(cols)),
              "], got ", w.sizes(), ". TEAL stores every projection input-major (nn.Linear's weight.t()"
              ".contiguous()); TealFFN.from_site does.");
  TORCH_CHECK(w.is_contiguous(), kOp, ": ", name, " is not contiguous; store it once with .contiguous().");
}

void check_vector(const char* name, const OptTensor& b, const at::Tensor& x, int64_t n) {
  if (!b.has_value()) return;
  TORCH_CHECK(b->device() == x.device() && b->scalar_type() == x.scalar_type() && b->dim() == 1 &&
                  b->size(0) == n && b->is_contiguous(),
              kOp, ": ", name, " must be a contiguous 1-D tensor of size ", n, " with x's dtype and device, got ",
              b->scalar_type(), " ", b->sizes(), " on ", b->device(), ".");
}

// A threshold as the comparison `x.abs() > t` uses it: t rounded to x's dtype (nearest).
float compare_threshold(double t, at::ScalarType dt) {
  return at::scalar_tensor(t, at::kDouble).to(dt).to(at::kFloat).item<float>();
}

// The entries of v (float32 [nb, k]) with |v| > t, exact zeros elsewhere (NaN: zero, as in the hooks),
// and the columns nonzero for some row (the union the projections read).
std::vector<int64_t> sparsify_(at::Tensor& v, float t) {
  const int64_t nb = v.size(0), k = v.size(1);
  float* p = v.data_ptr<float>();
  std::vector<int64_t> idx;
  idx.reserve(k);
  for (int64_t j = 0; j < k; ++j) {
    bool any = false;
    for (int64_t b = 0; b < nb; ++b) {
      float& e = p[b * k + j];
      if (std::fabs(e) > t) {
        any = true;
      } else {
        e = 0.f;  // also NaN: !(|NaN| > t)
      }
    }
    if (any) idx.push_back(j);
  }
  return idx;
}

// out = v w + bias for v float32 [nb, k] zero outside the columns idx, w [k, n] (input-major).
// Reads only the rows idx of w, in chunks of at most kMaxFusedBatch batch rows; dense (MKL) when
// the union exceeds dense_above of the inputs.
template <typename T>
at::Tensor rows_mm(const at::Tensor& v, const std::vector<int64_t>& idx, const at::Tensor& w, const OptTensor& bias,
                   double dense_above) {
  const int64_t nb = v.size(0), k = v.size(1), n_out = w.size(1), n = int64_t(idx.size());
  if (union_runs_dense(n, k, dense_above)) {
    const at::Tensor vt = v.to(w.scalar_type());
    return (bias ? at::addmm(*bias, vt, w) : at::mm(vt, w)).to(at::kFloat).contiguous();
  }
  const auto f32 = v.options();
  at::Tensor out = new_scratch({nb, n_out}, f32);
  std::vector<float> h(std::max<int64_t>(n, 1) * kMaxFusedBatch);
  at::Tensor partial = new_scratch({down_chunks(n) * kMaxFusedBatch * n_out}, f32);
  const float* vp = v.data_ptr<float>();
  for (int64_t b0 = 0; b0 < nb; b0 += kMaxFusedBatch) {
    const int64_t cb = std::min<int64_t>(kMaxFusedBatch, nb - b0);
    with_batch<T>(cb, [&](auto NBc) {
      constexpr int NB = decltype(NBc)::value;
      for (int64_t q = 0; q < n; ++q)
        for (int b = 0; b < NB; ++b) h[q * NB + b] = vp[(b0 + b) * k + idx[q]];
      down_pass<NB, T>(w.data_ptr<T>(), h.data(), idx.data(), n, n_out, partial.data_ptr<float>());
      sum_partials<NB, T>(partial.data_ptr<float>(), down_chunks(n), ptr_or_null<T>(bias), n_out,
                          out.data_ptr<float>() + b0 * n_out);
    });
  }
  return out;
}

void activate_(at::Tensor& z, int64_t activation) {
  switch (activation) {
    case kTealSilu: at::silu_(z); break;
    case kTealRelu: z.relu_(); break;
    case kTealGelu: z = at::gelu(z); break;
    default: z = at::gelu(z, "tanh"); break;
  }
}

template <typename T>
at::Tensor teal_impl(const at::Tensor& x, const at::Tensor& w_in_t, const OptTensor& w_up_t,
                     const at::Tensor& w_out_t, double t_in, double t_down, const OptTensor& b_in,
                     const OptTensor& b_up, const OptTensor& b_out, int64_t activation, double dense_above) {
  const auto dt = x.scalar_type();
  at::Tensor xs = dt == at::kFloat ? x.clone() : x.to(at::kFloat);  // a private fp32 copy: sparsified in place
  const std::vector<int64_t> in_idx = sparsify_(xs, compare_threshold(t_in, dt));
  at::Tensor x1 = rows_mm<T>(xs, in_idx, w_in_t, b_in, dense_above);
  if (dt != at::kFloat) x1 = x1.to(dt).to(at::kFloat);  // z as the model's dtype holds it
  activate_(x1, activation);
  if (w_up_t) {
    at::Tensor u = rows_mm<T>(xs, in_idx, *w_up_t, b_up, dense_above);
    if (dt != at::kFloat) u = u.to(dt).to(at::kFloat);
    x1.mul_(u);
  }
  if (dt != at::kFloat) x1 = x1.to(dt).to(at::kFloat);
  x1 = x1.contiguous();
  const std::vector<int64_t> down_idx = sparsify_(x1, compare_threshold(t_down, dt));
  at::Tensor y = rows_mm<T>(x1, down_idx, w_out_t, b_out, dense_above);
  return dt == at::kFloat ? y : y.to(dt);
}

at::Tensor teal_ffn_cpu(const at::Tensor& x_in, const at::Tensor& w_in_t, const OptTensor& w_up_t,
                        const at::Tensor& w_out_t, double input_threshold, double down_threshold,
                        const OptTensor& b_in, const OptTensor& b_up, const OptTensor& b_out, int64_t activation,
                        double dense_above) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.size(0) > 0 && x_in.size(1) > 0, kOp,
              ": x must be a non-empty 2-D [batch, d], got ", x_in.sizes(),
              "; flatten leading dimensions (the Python front actsparse.plugins.teal_ffn does).");
  const at::Tensor x = x_in.contiguous();
  const auto dt = x.scalar_type();
  TORCH_CHECK(x.device().is_cpu(), kOp, ": the CPU kernel got x on ", x.device(), ".");
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16, kOp, ": the CPU kernel supports float32 and bfloat16, got ",
              dt, "; convert the model with .float() or .bfloat16().");
  const int64_t d = x.size(1), f = w_in_t.dim() == 2 ? w_in_t.size(1) : -1;
  check_matrix(w_up_t ? "w_gate_t" : "w_fc_t", w_in_t, x, d, -1, "input-major");
  TORCH_CHECK(f > 0, kOp, ": the input projection has no neurons (f = 0).");
  if (w_up_t) check_matrix("w_up_t", *w_up_t, x, d, f, "input-major");
  check_matrix("w_out_t", w_out_t, x, f, -1, "neuron-major");
  check_vector("b_in", b_in, x, f);
  check_vector("b_up", b_up, x, f);
  check_vector("b_out", b_out, x, w_out_t.size(1));
  TORCH_CHECK(std::isfinite(input_threshold) && input_threshold >= 0 && std::isfinite(down_threshold) &&
                  down_threshold >= 0,
              kOp, ": TEAL's thresholds are magnitudes (|x| > t) and must be finite and >= 0, got input ",
              input_threshold, ", down ", down_threshold, ".");
  TORCH_CHECK(activation >= kTealSilu && activation <= kTealGeluTanh, kOp, ": activation must be 0 (SiLU), 1 "
              "(ReLU), 2 (GELU) or 3 (GELU, tanh approximation), got ", activation, ".");
  TORCH_CHECK(w_up_t || !b_up, kOp, ": b_up given without w_up_t (a plain FFN has no up projection).");
  if (dt == at::kFloat)
    return teal_impl<float>(x, w_in_t, w_up_t, w_out_t, input_threshold, down_threshold, b_in, b_up, b_out,
                            activation, dense_above);
  return teal_impl<bf16>(x, w_in_t, w_up_t, w_out_t, input_threshold, down_threshold, b_in, b_up, b_out, activation,
                         dense_above);
}

}  // namespace
}  // namespace actsparse

TORCH_LIBRARY_IMPL(actsparse, CPU, m) { m.impl("teal_ffn", &actsparse::teal_ffn_cpu); }
