// Declarations shared by ops.cpp (schema, argument checks, dense path) and the CPU / CUDA
// implementations (sparse_ffn_cpu.cpp, sparse_ffn_cuda.cu).
#pragma once

#include <ATen/ATen.h>
#include <cmath>
#include <optional>

namespace actsparse {

using OptTensor = std::optional<at::Tensor>;

// Both ops share one argument list; a plain FFN has no `w_up` / `b_up` (nullptr / nullopt).
struct FfnArgs {
  const at::Tensor& x;         // [batch, d]
  const at::Tensor& w_in;      // [f, d]  gate (gated FFN) or fc (plain FFN), nn.Linear layout
  const at::Tensor* w_up;      // [f, d]  or nullptr for a plain FFN
  const at::Tensor& w_out_t;   // [f, d]  down / proj weight, transposed once at conversion
  double threshold;            // FATReLU: keep a pre-activation z when z >= threshold
  const OptTensor& b_in;       // [f]
  const OptTensor& b_up;       // [f]
  const OptTensor& b_out;      // [d]
  double dense_above;          // union fraction of active neurons above which up/down run dense
  int64_t kernel;              // which sparse CUDA kernels (kKernel*); the CPU has one set
  int64_t activation;          // kActFatrelu or kActCatsSilu: which gate activation and test
};

// Sparse CUDA kernel sets, selectable per call (the dispatch table picks from measurements).
constexpr int64_t kKernelThree = 0;     // gate/up, down, reduce: three launches (measured default)
constexpr int64_t kKernelThreePdl = 1;  // the same three with programmatic dependent launch (sm_90+)
constexpr int64_t kKernelPersistent = 2;  // batch 1: one persistent pipelined kernel, in-kernel reduction
constexpr int64_t kKernelTensorCore = 3;  // batches 2-8: bf16 mma.sync over the union of active neurons
constexpr int64_t kKernelCount = 4;

// Gate activations (the op's `activation` argument). FATReLU: h = z where NOT (z < t), else 0.
// CATS (Lee et al. 2024): a = SiLU(z), h = a where |a| > t, else 0 (a NaN a is inactive, as in
// actsparse.plugins.training_free.CATSActivation, whose rule is |a| > t).
constexpr int64_t kActFatrelu = 0;
constexpr int64_t kActCatsSilu = 1;

// The FATReLU test every path shares: a neuron is active where NOT (z < t). A NaN pre-activation
// is therefore active and propagates into the output, as in the dense path (relu(NaN) = NaN,
// NaN * up = NaN); counting it as inactive made the sparse and dense paths disagree.
#ifdef __CUDACC__
#define ACTSPARSE_HOST_DEVICE __host__ __device__
#else
#define ACTSPARSE_HOST_DEVICE
#endif
ACTSPARSE_HOST_DEVICE inline bool fatrelu_active(float z, float t) { return !(z < t); }

// The activation's value before its threshold test: z (FATReLU) or SiLU(z) = z / (1 + e^-z)
// (the formula PyTorch's CPU kernel uses; e^-z overflowing to inf gives -0, as there).
ACTSPARSE_HOST_DEVICE inline float act_value(float z, int64_t act) {
  return act == kActCatsSilu ? z / (1.f + expf(-z)) : z;
}
// Whether the activated value `a` is kept: NOT (a < t) for FATReLU, |a| > t for CATS. `t` comes
// from threshold_for (rounded so that the float comparison is the exact one).
ACTSPARSE_HOST_DEVICE inline bool act_on(float a, float t, int64_t act) {
  return act == kActCatsSilu ? fabsf(a) > t : fatrelu_active(a, t);
}
// h = act_value(z) where act_on, else an exact 0.
ACTSPARSE_HOST_DEVICE inline float activate(float z, float t, int64_t act) {
  const float a = act_value(z, act);
  return act_on(a, t, act) ? a : 0.f;
}

// The threshold as the smallest float >= t: for every float z, z >= t (in double) exactly when
// z >= threshold_f32(t). A plain float(t) rounds to nearest, so a z between t and float(t) could
// flip (the bug fixed in the PyTorch reference path).
float threshold_f32(double t);

// The float threshold for an activation: rounded up for FATReLU (z >= t), down for CATS
// (|a| > t holds exactly when |a| > the largest float <= t).
float threshold_for(double t, int64_t act);

// The same for tensors of dtype `dt` (the dense path compares z in the input dtype): the
// smallest value representable in `dt` that is >= t, returned as a double (exact).
double threshold_in(double t, at::ScalarType dt);
// The largest value representable in `dt` that is <= t (CATS's |a| > t), as a double.
double threshold_in_down(double t, at::ScalarType dt);

// The activation applied densely to the pre-activation z (a fresh tensor it may overwrite, in
// x's dtype): FATReLU or SiLU with the CATS mask, exact zeros where inactive.
void activate_dense_(at::Tensor& h, double threshold, int64_t act);
// Bool [batch, f]: where the activation of z is kept (the union test of dense_above in (0, 1)).
at::Tensor active_dense(const at::Tensor& z, double threshold, int64_t act);

// Whether `n_active` neurons of `f` (the union over the batch) exceed `dense_above` of them, so up
// and down run dense: the one rule both backends apply to a dense_above between 0 and 1.
inline bool union_runs_dense(int64_t n_active, int64_t f, double dense_above) {
  return double(n_active) > dense_above * double(f);
}

// Checks shared by every backend so the error text is the same on CPU and CUDA; names the
// argument, what was expected, what was given, and how to fix it.
void check_ffn_args(const char* op, const FfnArgs& a);

// Debug mode for tests: outputs and scratch buffers are filled with NaN before the kernels run,
// so a kernel that skips an element or relies on zeroed memory is caught.
bool debug_poison();
at::Tensor new_scratch(at::IntArrayRef size, const at::TensorOptions& opts);

// Dense remainder of the FFN given the input-projection pre-activation `z` [batch, f], which it
// may overwrite (callers pass a temporary):
// h = FATReLU(z) (* (x w_upᵀ + b_up)), y = h w_out_t + b_out. at::mm lands in MKL/oneDNN on CPU
// and cuBLAS on CUDA; used when the union of active neurons is too large for sparsity to pay.
at::Tensor dense_tail(const FfnArgs& a, const at::Tensor& z);

// The whole FFN dense (z computed with at::mm as well).
at::Tensor dense_ffn(const FfnArgs& a);

}  // namespace actsparse
