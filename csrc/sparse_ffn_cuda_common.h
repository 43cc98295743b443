// Device helpers and launch plumbing shared by the CUDA files of the sparse FFN
// (sparse_ffn_cuda.cu: the three measured kernels and the dispatch; sparse_ffn_persistent.cu:
// the persistent batch-1 kernel; sparse_ffn_tensor_core.cu: the bf16/fp16 mma path for batches
// 2-8). Everything here has internal linkage (an anonymous namespace): each file gets its own copy.
#pragma once

#include "sparse_ffn.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

namespace actsparse {

// The kernel sets of sparse_ffn_persistent.cu and sparse_ffn_tensor_core.cu, called by
// dispatch_cuda (sparse_ffn_cuda.cu) after the argument checks, with x 16-byte aligned and
// batch <= kMaxSparseBatch rows.
at::Tensor persistent_ffn_cuda(const FfnArgs& a);
at::Tensor tensor_core_ffn_cuda(const FfnArgs& a);
// Whether tensor_core_ffn_cuda serves these arguments (bf16/fp16, aligned widths); otherwise the
// caller runs the three kernels and says so once.
bool tensor_core_serves(const FfnArgs& a, const char** why);
// Whether persistent_ffn_cuda serves these arguments (16-byte aligned rows); see above.
bool persistent_serves(const FfnArgs& a, const char** why);

namespace {

constexpr int kMaxSparseBatch = 8;
constexpr int kWarp = 32;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// 16 bytes of T, unpacked to floats.
template <typename T>
struct Vec {
  static constexpr int N = 16 / sizeof(T);
  float v[N];
  __device__ __forceinline__ void load(const T* p) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = to_f(e[i]);
  }
  // Weights are streamed once: bypass L1 and mark them evict-first in L2 so x, h and the
  // partial sums stay cached.
  __device__ __forceinline__ void load_stream(const T* p) { unpack(load_raw_stream(p)); }
  // Loads kept packed (4 registers instead of N floats) until used: several loads in flight
  // without running out of registers at batch 4-8.
  static __device__ __forceinline__ uint4 load_raw_stream(const T* p) {
    return __ldcs(reinterpret_cast<const uint4*>(p));
  }
  __device__ __forceinline__ void unpack(const uint4& raw) {
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = to_f(e[i]);
  }
};

// Programmatic dependent launch (kernel set kKernelThreePdl, sm_90+): a kernel launched with the
// programmatic-stream-serialization attribute may start while its predecessor still runs; it
// waits here, before its first read of the predecessor's output, until that grid has completed
// and its writes are visible. Without the attribute (the default set) this returns at once.
__device__ __forceinline__ void wait_for_predecessor() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// y = b_out + the slices' partial sums, added in slice order (a fixed order: bitwise reproducible).
template <typename T>
__global__ void reduce_kernel(const float* __restrict__ partial, const T* __restrict__ b_out, int n_slices,
                              int nb, int64_t d_out, T* __restrict__ y) {
  wait_for_predecessor();  // partial comes from down_kernel
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(nb) * d_out) return;
  float s = b_out ? to_f(b_out[i % d_out]) : 0.f;
  for (int k = 0; k < n_slices; ++k) s += partial[int64_t(k) * nb * d_out + i];
  y[i] = from_f<T>(s);
}

template <typename T> struct Native { using type = T; };
template <> struct Native<at::Half> { using type = __half; };
template <> struct Native<at::BFloat16> { using type = __nv_bfloat16; };

template <typename T>
const T* opt_ptr(const OptTensor& t) {
  return t.has_value() ? reinterpret_cast<const T*>(t->data_ptr()) : nullptr;
}

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

// Template batch sizes 1, 2, 4, 8: registers per batch row; runtime nb <= NB masks the rest.
template <typename Fn>
void with_nb(int nb, Fn&& fn) {
  if (nb == 1) fn(std::integral_constant<int, 1>{});
  else if (nb == 2) fn(std::integral_constant<int, 2>{});
  else if (nb <= 4) fn(std::integral_constant<int, 4>{});
  else fn(std::integral_constant<int, 8>{});
}

// Launch `kernel` plainly, or (pdl) with programmatic stream serialization, so its launch overlaps
// the tail of the kernel before it (which it waits for in wait_for_predecessor). Graph-capturable.
template <typename... Params, typename... Args>
void launch(bool pdl, void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, Args... args) {
  if (!pdl) {
    kernel<<<grid, block, 0, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = 0;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = 1;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...));
}

template <typename Fn>
void with_bool(bool v, Fn&& fn) {
  if (v) fn(std::true_type{});
  else fn(std::false_type{});
}

}  // namespace
}  // namespace actsparse
