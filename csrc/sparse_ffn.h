// Declarations shared by ops.cpp (schema, argument checks, dense path) and the CPU / CUDA
// implementations (sparse_ffn_cpu.cpp, sparse_ffn_cuda.cu).
#pragma once

#include <ATen/ATen.h>
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
};

// Sparse CUDA kernel sets, selectable per call (the dispatch table picks from measurements).
constexpr int64_t kKernelThree = 0;     // gate/up, down, reduce: three launches (measured default)
constexpr int64_t kKernelThreePdl = 1;  // the same three with programmatic dependent launch (sm_90+)

// The FATReLU test every path shares: a neuron is active where NOT (z < t). A NaN pre-activation
// is therefore active and propagates into the output, as in the dense path (relu(NaN) = NaN,
// NaN * up = NaN); counting it as inactive made the sparse and dense paths disagree.
#ifdef __CUDACC__
#define ACTSPARSE_HOST_DEVICE __host__ __device__
#else
#define ACTSPARSE_HOST_DEVICE
#endif
ACTSPARSE_HOST_DEVICE inline bool fatrelu_active(float z, float t) { return !(z < t); }

// The threshold as the smallest float >= t: for every float z, z >= t (in double) exactly when
// z >= threshold_f32(t). A plain float(t) rounds to nearest, so a z between t and float(t) could
// flip (the bug fixed in the PyTorch reference path).
float threshold_f32(double t);

// The same for tensors of dtype `dt` (the dense path compares z in the input dtype): the
// smallest value representable in `dt` that is >= t, returned as a double (exact).
double threshold_in(double t, at::ScalarType dt);

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
