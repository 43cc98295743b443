// CUDA kernels of the sparse FFN (bf16, fp16, fp32) for small batches (decoding).
//
// Batch-1 decoding is bound by weight bytes, so every kernel is built around wide coalesced
// loads and enough loads in flight, never around flops. Three kernels, no host read-back:
//   1. gate_up_kernel: one warp per neuron row. The warp streams w_in[j] with 16-byte loads
//      (8 bf16 per lane, kGateUnroll loads in flight), reduces with shuffles, applies FATReLU
//      and, only when the neuron is active for some batch row, streams w_up[j] the same way.
//      Writes h [batch, f] in fp32 (exact zeros for inactive neurons). Divergence is per warp,
//      never inside one.
//   2. down_kernel: grid (column tiles of w_out_t, slices of the neuron range). Each warp scans
//      32 neurons of its slice with one ballot on h, then for each active neuron reads one
//      512-byte coalesced segment of w_out_t[j] (one 16-byte load per lane), several neurons
//      at once for memory-level parallelism. Warps reduce in shared memory; each block writes
//      fp32 partial sums for its slice.
//   3. reduce_kernel: sums the slices (+ bias) in a fixed order and casts to the output dtype.
// Every summation order is fixed, so results are bitwise reproducible. Two further kernel sets,
// unmeasured when written, are chosen per call by the op's `kernel` argument:
// sparse_ffn_persistent.cu (one persistent cooperative kernel, batch 1) and
// sparse_ffn_tensor_core.cu (bf16/fp16 mma.sync for batches 2-8); the CATS activation
// (activation=1: SiLU(z) kept where |SiLU(z)| > t) runs in all of them. Measured on the H200
// (bench/h200/2026-11-29-run2.md, seven configurations side by side): this beat a single fused
// kernel (gate, up and down per block of neurons, fp32 atomics, last-block epilogue) in three
// block shapes by 15-35% at batch 1, and beat gates with 2 or 4 rows per warp or 16 loads in
// flight by 1-15%. No step reads anything back to the host: the ops are CUDA-graph capturable
// and sparse for any union size; batches above kMaxSparseBatch rows go to the dense cuBLAS path,
// as does dense_above <= 0. The Python front picks 0 or 1 per batch size and layer sparsity from
// the measured dispatch table (actsparse.plugins.sparse_ffn_dispatch). A dense_above strictly
// between 0 and 1 keeps the schema's meaning (dense above that union fraction) at the price of
// one host read-back of the union size per call, refused under CUDA-graph capture.
// FATReLU keeps NaN (fatrelu_active), as the dense path's relu does; the threshold is rounded up
// to float (threshold_f32), so z >= t is decided exactly.
#include "sparse_ffn_cuda_common.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <type_traits>

namespace actsparse {
namespace {

constexpr int kGateWarps = 8;   // rows per gate block
constexpr int kDownWarps = 4;   // warps sharing one column tile in the down kernel
constexpr int kDownBatch = 4;   // active neurons whose loads a warp issues together
constexpr int kGateRows = 1;    // neuron rows per gate warp (2 and 4 measured slower, see above)
constexpr int kGateUnroll = 4;  // 16-byte loads in flight per gate row (8 and 16 measured no faster)

// acc[r][b] = dot(w[j0 + r], x[b]) for the rows r set in `rows` (others stay 0, their bytes are
// never read), summed over the warp. Weight loads of all rows and unroll steps go out before
// any FMA; each x vector is loaded once and used by every row.
template <typename T, int NB, bool VEC, int R, int UNROLL>
__device__ __forceinline__ void warp_dot_rows(const T* __restrict__ w, int64_t j0, unsigned rows,
                                              const T* __restrict__ x, int nb, int64_t d, int lane,
                                              float (&acc)[R][NB]) {
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int b = 0; b < NB; ++b) acc[r][b] = 0.f;
  if constexpr (VEC) {
    constexpr int N = Vec<T>::N;
    const int64_t step = int64_t(kWarp) * N;
    int64_t k = int64_t(lane) * N;
    auto chunk = [&](auto unroll_tag) {
      constexpr int U = decltype(unroll_tag)::value;
      uint4 raw[R][U];
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int u = 0; u < U; ++u)
          raw[r][u] = (rows >> r) & 1u ? Vec<T>::load_raw_stream(w + (j0 + r) * d + k + u * step)
                                       : make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        Vec<T> wv[R];
#pragma unroll
        for (int r = 0; r < R; ++r) wv[r].unpack(raw[r][u]);
#pragma unroll
        for (int b = 0; b < NB; ++b) {
          if (b >= nb) break;
          Vec<T> xv;
          xv.load(x + b * d + k + u * step);
#pragma unroll
          for (int r = 0; r < R; ++r)
#pragma unroll
            for (int i = 0; i < N; ++i) acc[r][b] = fmaf(wv[r].v[i], xv.v[i], acc[r][b]);
        }
      }
    };
    for (; k + (UNROLL - 1) * step < d; k += UNROLL * step) chunk(std::integral_constant<int, UNROLL>{});
    for (; k < d; k += step) chunk(std::integral_constant<int, 1>{});
  } else {  // odd shapes: element-wise, still coalesced across the warp
    for (int64_t k = lane; k < d; k += kWarp) {
      float wk[R];
#pragma unroll
      for (int r = 0; r < R; ++r) wk[r] = (rows >> r) & 1u ? to_f(w[(j0 + r) * d + k]) : 0.f;
#pragma unroll
      for (int b = 0; b < NB; ++b) {
        if (b >= nb) break;
        const float xk = to_f(x[b * d + k]);
#pragma unroll
        for (int r = 0; r < R; ++r) acc[r][b] = fmaf(wk[r], xk, acc[r][b]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int b = 0; b < NB; ++b) acc[r][b] = warp_sum(acc[r][b]);
}

template <typename T, int NB, bool VEC>
__global__ void __launch_bounds__(kGateWarps * kWarp)
gate_up_kernel(const T* __restrict__ x, const T* __restrict__ w_in, const T* __restrict__ w_up,
               const T* __restrict__ b_in, const T* __restrict__ b_up, float threshold, int act, int nb,
               int64_t f, int64_t d, float* __restrict__ h) {
  constexpr int R = kGateRows, U = kGateUnroll;
  const int lane = threadIdx.x % kWarp;
  const int64_t j0 = (int64_t(blockIdx.x) * kGateWarps + threadIdx.x / kWarp) * R;
  if (j0 >= f) return;
  const unsigned rows = f - j0 >= R ? (1u << R) - 1u : (1u << (f - j0)) - 1u;
  float z[R][NB];
  warp_dot_rows<T, NB, VEC, R, U>(w_in, j0, rows, x, nb, d, lane, z);
  unsigned active = 0;  // rows active for some batch row
#pragma unroll
  for (int r = 0; r < R; ++r) {
    bool any = false;
#pragma unroll
    for (int b = 0; b < NB; ++b) {
      if (b < nb) {
        z[r][b] += (b_in && (rows >> r) & 1u) ? to_f(b_in[j0 + r]) : 0.f;
        z[r][b] = activate(z[r][b], threshold, act);  // FATReLU: NaN stays NaN; CATS: SiLU, |a| > t
        any |= z[r][b] != 0.f;  // NaN != 0: active. An active value of exactly 0 contributes 0 either way
      }
    }
    active |= (any && (rows >> r) & 1u) ? 1u << r : 0u;
  }
  // Up only for the active rows (the warp agrees on `active`: z is warp-uniform after warp_sum).
  if (active && w_up) {
    float u[R][NB];
    warp_dot_rows<T, NB, VEC, R, U>(w_up, j0, active, x, nb, d, lane, u);
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int b = 0; b < NB; ++b)
        if (b < nb && (active >> r) & 1u) z[r][b] *= u[r][b] + (b_up ? to_f(b_up[j0 + r]) : 0.f);
  }
  if (lane < nb) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (!((rows >> r) & 1u)) continue;
      float v = 0.f;
#pragma unroll
      for (int b = 0; b < NB; ++b)
        if (b == lane) v = (active >> r) & 1u ? z[r][b] : 0.f;
      h[int64_t(lane) * f + j0 + r] = v;  // inactive neurons get an exact 0: h is never assumed zeroed
    }
  }
}

template <typename T, int NB, bool VEC>
__global__ void __launch_bounds__(kDownWarps * kWarp)
down_kernel(const T* __restrict__ w_out_t, const float* __restrict__ h, int nb, int64_t f,
            int64_t d_out, int64_t slice, float* __restrict__ partial) {
  wait_for_predecessor();  // h comes from gate_up_kernel
  constexpr int N = VEC ? Vec<T>::N : 1;
  constexpr int kTile = kWarp * N;
  __shared__ float red[kDownWarps][NB][kTile];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t c0 = int64_t(blockIdx.x) * kTile;
  const int64_t col = c0 + int64_t(lane) * N;
  const int64_t j0 = int64_t(blockIdx.y) * slice, j1 = min(f, j0 + slice);
  float acc[NB][N];
#pragma unroll
  for (int b = 0; b < NB; ++b)
#pragma unroll
    for (int i = 0; i < N; ++i) acc[b][i] = 0.f;

  for (int64_t g = j0 + int64_t(warp) * kWarp; g < j1; g += int64_t(kDownWarps) * kWarp) {
    const int64_t jl = g + lane;
    float hv[NB];
    bool act = false;
#pragma unroll
    for (int b = 0; b < NB; ++b) {
      hv[b] = (b < nb && jl < j1) ? h[int64_t(b) * f + jl] : 0.f;
      act |= hv[b] != 0.f;
    }
    unsigned mask = __ballot_sync(0xffffffffu, act);
    while (mask) {
      // Pop up to kDownBatch active neurons and issue their loads before any FMA.
      int src[kDownBatch];
      int cnt = 0;
#pragma unroll
      for (int q = 0; q < kDownBatch; ++q) {
        src[q] = mask ? __ffs(mask) - 1 : -1;
        if (mask) { mask &= mask - 1; ++cnt; }
      }
      Vec<T> wv[kDownBatch];
      float ws[kDownBatch];
#pragma unroll
      for (int q = 0; q < kDownBatch; ++q) {
        if (src[q] < 0) continue;
        const T* row = w_out_t + (g + src[q]) * d_out;
        if constexpr (VEC) {
          if (col < d_out) {
            wv[q].load_stream(row + col);
          } else {  // past the last column tile's end: zeros, never uninitialised registers
#pragma unroll
            for (int i = 0; i < N; ++i) wv[q].v[i] = 0.f;
          }
        } else {
          ws[q] = col < d_out ? to_f(row[col]) : 0.f;
        }
      }
#pragma unroll
      for (int q = 0; q < kDownBatch; ++q) {
        if (q >= cnt) break;
#pragma unroll
        for (int b = 0; b < NB; ++b) {
          const float hb = __shfl_sync(0xffffffffu, hv[b], src[q]);
          if constexpr (VEC) {
#pragma unroll
            for (int i = 0; i < N; ++i) acc[b][i] = fmaf(hb, wv[q].v[i], acc[b][i]);
          } else {
            acc[b][0] = fmaf(hb, ws[q], acc[b][0]);
          }
        }
      }
    }
  }
  // Fixed-order reduction over the block's warps (deterministic), then one partial per slice.
#pragma unroll
  for (int b = 0; b < NB; ++b)
#pragma unroll
    for (int i = 0; i < N; ++i) red[warp][b][lane * N + i] = acc[b][i];
  __syncthreads();
  for (int t = threadIdx.x; t < NB * kTile; t += blockDim.x) {
    const int b = t / kTile, c = t % kTile;
    if (b >= nb || c0 + c >= d_out) continue;
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < kDownWarps; ++w) s += red[w][b][c];
    partial[(int64_t(blockIdx.y) * nb + b) * d_out + c0 + c] = s;
  }
}

template <typename AT>
at::Tensor sparse_ffn_cuda_impl(const FfnArgs& a) {
  using T = typename Native<AT>::type;
  const int nb = int(a.x.size(0));
  const int64_t d = a.x.size(1), f = a.w_in.size(0), d_out = a.w_out_t.size(1);
  constexpr int N = Vec<T>::N;
  // x is copied to an aligned buffer by the caller (dispatch_cuda); weights are not (a copy per
  // call would cost what the kernels save), so unaligned or odd-width weights take element loads,
  // with one warning.
  const bool vec_in = d % N == 0 && aligned16(a.x) && aligned16(a.w_in) && (!a.w_up || aligned16(*a.w_up));
  const bool vec_out = d_out % N == 0 && aligned16(a.w_out_t);
  if (!vec_in || !vec_out) {
    TORCH_WARN_ONCE("actsparse: the sparse FFN's CUDA kernels run with element-wise (2-4 byte) loads, several times "
                    "slower than their 16-byte path, because ", !vec_in ? "d" : "d_out", " is not a multiple of ", N,
                    " or a weight does not start on a 16-byte boundary (d = ", d, ", d_out = ", d_out,
                    "). Store weights with .contiguous().clone() (SparseFFN does) and pad widths to a multiple of ", N, ".");
  }
  // c10 headers only: ATen/cuda/CUDAContext.h pulls in cuBLAS/cuSPARSE headers we do not use.
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto f32 = a.x.options().dtype(at::kFloat);
  const bool pdl = a.kernel == kKernelThreePdl;
  if (pdl) {
    int major = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, a.x.get_device()));
    TORCH_CHECK(major >= 9, "actsparse: kernel=1 (programmatic dependent launch) needs compute capability 9.0 or "
                "newer (H100/H200); this GPU is ", major, ".x. Use kernel=0.");
  }

  at::Tensor h = new_scratch({nb, f}, f32);
  const T* x = reinterpret_cast<const T*>(a.x.data_ptr());
  const T* w_up = a.w_up ? reinterpret_cast<const T*>(a.w_up->data_ptr()) : nullptr;
  const int64_t gate_rows_per_block = int64_t(kGateWarps) * kGateRows;
  const dim3 gate_grid(unsigned((f + gate_rows_per_block - 1) / gate_rows_per_block));
  auto launch_gate = [&](auto nb_tag, auto vec_tag) {
    constexpr int NB = decltype(nb_tag)::value;
    constexpr bool V = decltype(vec_tag)::value;
    gate_up_kernel<T, NB, V><<<gate_grid, kGateWarps * kWarp, 0, stream>>>(
        x, reinterpret_cast<const T*>(a.w_in.data_ptr()), w_up, opt_ptr<T>(a.b_in), opt_ptr<T>(a.b_up),
        threshold_for(a.threshold, a.activation), int(a.activation), nb, f, d, h.data_ptr<float>());
  };

  // Slices of the neuron range: enough blocks to fill the GPU, few enough partials to stay in L2.
  const int64_t n_slices = std::max<int64_t>(1, std::min<int64_t>(64, f / 256));
  const int64_t slice = (f + n_slices - 1) / n_slices;
  at::Tensor partial = new_scratch({n_slices, nb, d_out}, f32);
  auto launch_down = [&](auto nb_tag, auto vec_tag) {
    constexpr int NB = decltype(nb_tag)::value;
    constexpr bool V = decltype(vec_tag)::value;
    constexpr int64_t tile = kWarp * (V ? N : 1);
    const dim3 grid(unsigned((d_out + tile - 1) / tile), unsigned(n_slices));
    launch(pdl, down_kernel<T, NB, V>, grid, dim3(kDownWarps * kWarp), stream,
           reinterpret_cast<const T*>(a.w_out_t.data_ptr()), static_cast<const float*>(h.data_ptr<float>()), nb, f,
           d_out, slice, partial.data_ptr<float>());
  };
  with_nb(nb, [&](auto nb_tag) { with_bool(vec_in, [&](auto v) { launch_gate(nb_tag, v); }); });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  with_nb(nb, [&](auto nb_tag) { with_bool(vec_out, [&](auto v) { launch_down(nb_tag, v); }); });

  at::Tensor y = at::empty({nb, d_out}, a.x.options());
  if (debug_poison()) y.fill_(NAN);
  const int threads = 256;
  const unsigned blocks = unsigned((int64_t(nb) * d_out + threads - 1) / threads);
  launch(pdl, reduce_kernel<T>, dim3(blocks), dim3(threads), stream, static_cast<const float*>(partial.data_ptr<float>()),
         opt_ptr<T>(a.b_out), int(n_slices), nb, d_out, reinterpret_cast<T*>(y.data_ptr()));
  return y;
}

bool stream_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  return status != cudaStreamCaptureStatusNone;
}

// dense_above strictly between 0 and 1: the rule of the CPU path and the schema (up/down dense
// when the union of active neurons exceeds that fraction). The union lives on the device, so the
// host reads its size back: one synchronization, which a CUDA graph cannot capture (refused
// with the fix). The gate runs with cuBLAS here; a sparse verdict then runs the kernels as usual.
bool union_says_dense(const char* op, const FfnArgs& a, at::Tensor* z_out) {
  TORCH_CHECK(!stream_capturing(c10::cuda::getCurrentCUDAStream().stream()), op, ": dense_above=", a.dense_above,
              " (between 0 and 1) decides per call from the number of active neurons, which the host must read "
              "back: a synchronization a CUDA graph cannot capture. Pass dense_above=0 (dense) or 1 (sparse "
              "kernels), or None for the measured dispatch table (actsparse.plugins.sparse_ffn_dispatch).");
  at::Tensor z = a.b_in ? at::addmm(*a.b_in, a.x, a.w_in.t()) : at::mm(a.x, a.w_in.t());
  const int64_t n = active_dense(z, a.threshold, a.activation).any(0).sum().item<int64_t>();
  *z_out = z;
  return union_runs_dense(n, a.w_in.size(0), a.dense_above);
}

at::Tensor dispatch_cuda(const char* op, const FfnArgs& args) {
  check_ffn_args(op, args);
  TORCH_CHECK(args.x.is_cuda(), op, ": the CUDA kernel got x on ", args.x.device(), ".");
  const auto dt = args.x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op,
              ": the CUDA kernels support float32, float16 and bfloat16, got ", dt, ".");
  const c10::cuda::CUDAGuard guard(args.x.device());
  if (args.dense_above <= 0.0 || args.x.size(0) > kMaxSparseBatch) return dense_ffn(args);
  if (args.dense_above < 1.0) {
    at::Tensor z;
    if (union_says_dense(op, args, &z)) return dense_tail(args, z);
  }
  // A misaligned x (a view into a larger buffer) would drop every load of the op to element
  // width; x is batch x d, so an aligned copy costs next to nothing. Said once per process.
  at::Tensor x_aligned;
  if (!aligned16(args.x)) {
    TORCH_WARN_ONCE(op, ": x does not start on a 16-byte boundary (a view at an odd offset); the CUDA kernels "
                    "copy it to an aligned buffer on every such call. Pass x.clone() or a contiguous tensor "
                    "that owns its storage to skip the copy.");
    x_aligned = args.x.clone(at::MemoryFormat::Contiguous);
  }
  const FfnArgs a{x_aligned.defined() ? x_aligned : args.x, args.w_in, args.w_up, args.w_out_t, args.threshold,
                  args.b_in, args.b_up, args.b_out, args.dense_above, args.kernel, args.activation};
  if (a.kernel == kKernelPersistent) {
    const char* why = "";
    if (persistent_serves(a, &why)) return persistent_ffn_cuda(a);
    TORCH_WARN_ONCE(op, ": kernel='persistent' cannot serve this call (", why, "); the three kernels run instead.");
  } else if (a.kernel == kKernelTensorCore) {
    const char* why = "";
    if (tensor_core_serves(a, &why)) return tensor_core_ffn_cuda(a);
    TORCH_WARN_ONCE(op, ": kernel='tensor_core' cannot serve this call (", why, "); the three kernels run instead.");
  }
  if (dt == at::kFloat) return sparse_ffn_cuda_impl<float>(a);
  if (dt == at::kHalf) return sparse_ffn_cuda_impl<at::Half>(a);
  return sparse_ffn_cuda_impl<at::BFloat16>(a);
}

at::Tensor sparse_gated_ffn_cuda(const at::Tensor& x, const at::Tensor& w_gate, const at::Tensor& w_up,
                                 const at::Tensor& w_down_t, double threshold, const OptTensor& b_gate,
                                 const OptTensor& b_up, const OptTensor& b_down, double dense_above,
                                 int64_t kernel, int64_t activation) {
  const at::Tensor xc = x.contiguous();
  return dispatch_cuda("actsparse.sparse_gated_ffn", FfnArgs{xc, w_gate, &w_up, w_down_t, threshold, b_gate, b_up,
                                                             b_down, dense_above, kernel, activation});
}

at::Tensor sparse_ffn_cuda(const at::Tensor& x, const at::Tensor& w_fc, const at::Tensor& w_proj_t,
                           double threshold, const OptTensor& b_fc, const OptTensor& b_proj, double dense_above,
                           int64_t kernel, int64_t activation) {
  const at::Tensor xc = x.contiguous();
  const OptTensor none;
  return dispatch_cuda("actsparse.sparse_ffn", FfnArgs{xc, w_fc, nullptr, w_proj_t, threshold, b_fc, none, b_proj,
                                                       dense_above, kernel, activation});
}

}  // namespace
}  // namespace actsparse

TORCH_LIBRARY_IMPL(actsparse, CUDA, m) {
  m.impl("sparse_gated_ffn", &actsparse::sparse_gated_ffn_cuda);
  m.impl("sparse_ffn", &actsparse::sparse_ffn_cuda);
}
