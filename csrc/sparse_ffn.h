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
};

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
