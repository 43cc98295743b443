// Tensor-core path of the sparse FFN for batches 2-8 (kernel set kKernelTensorCore; issue 26 item 2).
//
// At 2-8 rows the scalar kernels spend more on FMAs and bf16 unpacking than on bytes (H200: batch
// 8 at 90% ran 0.47x dense). Here every product is a bf16 (or fp16) mma.sync.m16n8k16 with fp32
// accumulation, the batch rows as N (padded to 8 with zero rows), and every weight byte read once:
//   1. tc_gate_up_kernel: a block of kWarps warps owns 16 neurons (M) and splits K = d between its
//      warps. For mma, the order of k inside a step is free as long as A and B agree, so each lane
//      reads 16 contiguous bytes of its neuron row (and of its batch row of x, the B fragment) and
//      feeds them to two k-steps: plain 16-byte coalesced loads, kUnroll of them per row in flight
//      (register-staged, loads of the next chunks issued before the mma of the current ones). The
//      warps' accumulators are summed in shared memory in warp order; the activation is applied;
//      the up rows are read only for neurons active for some batch row (a gather by predicate: an
//      inactive row's loads are never issued, its A fragment is zeros) and h [batch, f] is written
//      in fp32 with exact zeros.
//   2. tc_down_kernel: y^T = W_down_t^T h^T with M = 16 output columns, N = batch, K = neurons.
//      Rows of w_down_t are contiguous along M; with the columns of an m-tile permuted (logical
//      m = g and g + 8 are physical columns 2g and 2g + 1), each lane reads 4-byte words (two
//      columns of one neuron row) and byte-permutes pairs of them into A fragments. Each warp covers
//      64 columns (four m-tiles, 128 contiguous bytes per neuron row) over a slice of the neurons,
//      skipping groups of 16 neurons none of which is active and never loading an inactive row.
//      h is rounded to the weights' dtype for the B fragment (fp32 accumulation throughout).
//   3. reduce_kernel (shared with the three-kernel path): the slices' partials in a fixed order.
// Every sum has a fixed order: bitwise reproducible. No host read-back: CUDA-graph capturable.
// fp32 inputs have no bf16 mma here; the dispatch runs the three kernels for them (with one
// warning). Unmeasured when written (no GPU was lent); needs compute capability 8.0 or newer.
#include "sparse_ffn_cuda_common.h"

namespace actsparse {
namespace {

constexpr int kWarps = 4;       // split-K warps per 16-neuron tile, and warps per down block
constexpr int kUnroll = 4;      // 32-element k chunks per lane in flight in the gate/up kernel
constexpr int kDownCols = 64;   // output columns per down block (four 16-column m-tiles)

template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
#else
  __trap();  // tensor_core_serves refuses GPUs below compute capability 8.0
#endif
}

// Two floats as one register of T pairs, the first in the low half (the lower k index).
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ uint4 load16_or_zero(const void* p, bool on, bool stream) {
  if (!on) return make_uint4(0u, 0u, 0u, 0u);
  return stream ? __ldcs(reinterpret_cast<const uint4*>(p)) : __ldg(reinterpret_cast<const uint4*>(p));
}

// This warp's share of C[16 neurons x 8 batch rows] = W[j0 .. j0+16) . x^T over k chunks
// warp, warp + kWarps, ... of 32 elements. Lane (g, t) = (lane / 4, lane % 4) reads 16 bytes at
// k = chunk * 32 + 8t of neuron rows g and g + 8 and of x row g; they make the k-steps
// {8t..8t+3} and {8t+4..8t+7} of the chunk, in the same order in A and B. Rows whose `on` is
// false are never read (zeros).
template <typename T>
__device__ __forceinline__ void tile_dot(const T* __restrict__ w, int64_t j0, bool lo_on, bool hi_on,
                                         const T* __restrict__ x, int nb, int64_t d, int warp, int lane,
                                         float (&c)[4]) {
  const int g = lane >> 2, t = lane & 3;
  const T* row_lo = w + (j0 + g) * d;
  const T* row_hi = w + (j0 + g + 8) * d;
  const T* xr = x + int64_t(g) * d;
  const bool x_on = g < nb;
#pragma unroll
  for (int e = 0; e < 4; ++e) c[e] = 0.f;
  const int64_t n_chunks = d / 32;
  for (int64_t ch = warp; ch < n_chunks; ch += int64_t(kWarps) * kUnroll) {
    uint4 wl[kUnroll], wh[kUnroll], xv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t cc = ch + int64_t(u) * kWarps;
      const bool in = cc < n_chunks;
      const int64_t k = cc * 32 + 8 * t;
      wl[u] = load16_or_zero(row_lo + k, in && lo_on, true);
      wh[u] = load16_or_zero(row_hi + k, in && hi_on, true);
      xv[u] = load16_or_zero(xr + k, in && x_on, false);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      mma16816<T>(c, wl[u].x, wh[u].x, wl[u].y, wh[u].y, xv[u].x, xv[u].y);
      mma16816<T>(c, wl[u].z, wh[u].z, wl[u].w, wh[u].w, xv[u].z, xv[u].w);
    }
  }
}

// Sums the block's warps' fragments in warp order; every warp gets the same result.
__device__ __forceinline__ void block_sum(float (&c)[4], float (*red)[kWarp][4], int warp, int lane) {
  __syncthreads();  // red may still be read from a previous sum
#pragma unroll
  for (int e = 0; e < 4; ++e) red[warp][lane][e] = c[e];
  __syncthreads();
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) s += red[w][lane][e];
    c[e] = s;
  }
}

template <typename T>
__global__ void __launch_bounds__(kWarps * kWarp)
tc_gate_up_kernel(const T* __restrict__ x, const T* __restrict__ w_in, const T* __restrict__ w_up,
                  const T* __restrict__ b_in, const T* __restrict__ b_up, float threshold, int act, int nb, int64_t f,
                  int64_t d, float* __restrict__ h) {
  __shared__ float red[kWarps][kWarp][4];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int g = lane >> 2, t = lane & 3;
  const int64_t j0 = int64_t(blockIdx.x) * 16;
  const int64_t rows[2] = {j0 + g, j0 + g + 8};
  float c[4];  // C fragment: (row g, batch 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1)
  tile_dot<T>(w_in, j0, rows[0] < f, rows[1] < f, x, nb, d, warp, lane, c);
  block_sum(c, red, warp, lane);
  bool on[4];
  bool row_on[2] = {false, false};
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int64_t j = rows[e >> 1];
    const int b = 2 * t + (e & 1);
    const bool valid = b < nb && j < f;
    const float a = act_value(c[e] + (valid && b_in ? to_f(b_in[j]) : 0.f), act);
    on[e] = valid && act_on(a, threshold, act);  // FATReLU: a NaN gate is active and propagates
    c[e] = on[e] ? a : 0.f;
    row_on[e >> 1] |= on[e];
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {  // a row is active when some batch row keeps it: OR over the quad
    row_on[r] |= __shfl_xor_sync(0xffffffffu, row_on[r], 1);
    row_on[r] |= __shfl_xor_sync(0xffffffffu, row_on[r], 2);
  }
  // Block-uniform: every warp holds the same sums, so the same flags.
  if (w_up && __any_sync(0xffffffffu, row_on[0] || row_on[1])) {
    float u[4];
    tile_dot<T>(w_up, j0, row_on[0], row_on[1], x, nb, d, warp, lane, u);
    block_sum(u, red, warp, lane);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t j = rows[e >> 1];
      if (on[e]) c[e] *= u[e] + (b_up ? to_f(b_up[j]) : 0.f);
    }
  }
  if (warp == 0) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t j = rows[e >> 1];
      const int b = 2 * t + (e & 1);
      if (b < nb && j < f) h[int64_t(b) * f + j] = c[e];  // exact 0 where inactive
    }
  }
}

__device__ __forceinline__ uint32_t load4_or_zero(const void* p, bool on) {
  return on ? __ldcs(reinterpret_cast<const unsigned int*>(p)) : 0u;
}

template <typename T>
__global__ void __launch_bounds__(kWarps * kWarp)
tc_down_kernel(const T* __restrict__ w_out_t, const float* __restrict__ h, int nb, int64_t f, int64_t d_out,
               int64_t slice, float* __restrict__ partial) {
  __shared__ float red[kWarps][4][4][kWarp];  // [warp][m-tile][fragment element][lane]
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int g = lane >> 2, t = lane & 3;
  const int64_t c0 = int64_t(blockIdx.x) * kDownCols;
  const int64_t j0 = int64_t(blockIdx.y) * slice;
  const int64_t j1 = j0 + slice < f ? j0 + slice : f;
  const unsigned same_t = 0x11111111u << t;  // lanes holding the same neuron rows (all batch rows g)
  float acc[4][4];
#pragma unroll
  for (int m = 0; m < 4; ++m)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[m][e] = 0.f;

  for (int64_t k0 = j0 + int64_t(warp) * 16; k0 < j1; k0 += int64_t(kWarps) * 16) {
    // This lane's neurons: the k-steps' rows 2t, 2t+1, 2t+8, 2t+9; its batch row g.
    const int64_t rows[4] = {k0 + 2 * t, k0 + 2 * t + 1, k0 + 2 * t + 8, k0 + 2 * t + 9};
    float hv[4];
    bool row_on[4];
    bool any = false;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      hv[q] = (g < nb && rows[q] < j1) ? h[int64_t(g) * f + rows[q]] : 0.f;
      row_on[q] = (__ballot_sync(0xffffffffu, hv[q] != 0.f) & same_t) != 0u;  // NaN != 0: active
      any |= row_on[q];
    }
    if (!__any_sync(0xffffffffu, any)) continue;  // no neuron of these 16 is active: nothing to read
    const uint32_t b0 = pack2<T>(hv[0], hv[1]), b1 = pack2<T>(hv[2], hv[3]);
    uint32_t wq[4][4];
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      const int64_t col = c0 + m * 16 + 2 * g;  // logical rows g and g + 8 of the m-tile
#pragma unroll
      for (int q = 0; q < 4; ++q) wq[m][q] = load4_or_zero(w_out_t + rows[q] * d_out + col, row_on[q] && col < d_out);
    }
#pragma unroll
    for (int m = 0; m < 4; ++m)
      mma16816<T>(acc[m], __byte_perm(wq[m][0], wq[m][1], 0x5410), __byte_perm(wq[m][0], wq[m][1], 0x7632),
                  __byte_perm(wq[m][2], wq[m][3], 0x5410), __byte_perm(wq[m][2], wq[m][3], 0x7632), b0, b1);
  }
  // Warps in order (deterministic), one partial per slice. Thread (m, lane) writes its m-tile's
  // fragment elements: (column 2g, batch 2t), (2g, 2t+1), (2g+1, 2t), (2g+1, 2t+1).
#pragma unroll
  for (int m = 0; m < 4; ++m)
#pragma unroll
    for (int e = 0; e < 4; ++e) red[warp][m][e][lane] = acc[m][e];
  __syncthreads();
  const int m = warp;  // kWarps == 4 m-tiles: one per warp
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) s += red[w][m][e][lane];
    const int b = 2 * t + (e & 1);
    const int64_t col = c0 + m * 16 + 2 * g + (e >> 1);
    if (b < nb && col < d_out) partial[(int64_t(blockIdx.y) * nb + b) * d_out + col] = s;
  }
}
static_assert(kWarps == 4, "tc_down_kernel gives each warp one of its four m-tiles to write");

template <typename AT>
at::Tensor tensor_core_impl(const FfnArgs& a) {
  using T = typename Native<AT>::type;
  const int nb = int(a.x.size(0));
  const int64_t d = a.x.size(1), f = a.w_in.size(0), d_out = a.w_out_t.size(1);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto f32 = a.x.options().dtype(at::kFloat);
  at::Tensor h = new_scratch({nb, f}, f32);
  tc_gate_up_kernel<T><<<unsigned((f + 15) / 16), kWarps * kWarp, 0, stream>>>(
      reinterpret_cast<const T*>(a.x.data_ptr()), reinterpret_cast<const T*>(a.w_in.data_ptr()),
      a.w_up ? reinterpret_cast<const T*>(a.w_up->data_ptr()) : nullptr, opt_ptr<T>(a.b_in), opt_ptr<T>(a.b_up),
      threshold_for(a.threshold, a.activation), int(a.activation), nb, f, d, h.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Neuron slices (multiples of 16): enough blocks to fill the GPU, few partials.
  int64_t n_slices = std::max<int64_t>(1, std::min<int64_t>(32, f / 512));
  const int64_t slice = ((f + n_slices - 1) / n_slices + 15) / 16 * 16;
  n_slices = (f + slice - 1) / slice;
  at::Tensor partial = new_scratch({n_slices, nb, d_out}, f32);
  const dim3 grid(unsigned((d_out + kDownCols - 1) / kDownCols), unsigned(n_slices));
  tc_down_kernel<T><<<grid, kWarps * kWarp, 0, stream>>>(reinterpret_cast<const T*>(a.w_out_t.data_ptr()),
                                                         h.data_ptr<float>(), nb, f, d_out, slice,
                                                         partial.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor y = at::empty({nb, d_out}, a.x.options());
  if (debug_poison()) y.fill_(NAN);
  const int threads = 256;
  const unsigned blocks = unsigned((int64_t(nb) * d_out + threads - 1) / threads);
  reduce_kernel<T><<<blocks, threads, 0, stream>>>(partial.data_ptr<float>(), opt_ptr<T>(a.b_out), int(n_slices), nb,
                                                   d_out, reinterpret_cast<T*>(y.data_ptr()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

bool aligned4(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 4 == 0; }

}  // namespace

bool tensor_core_serves(const FfnArgs& a, const char** why) {
  const auto dt = a.x.scalar_type();
  if (dt != at::kBFloat16 && dt != at::kHalf) {
    *why = "it computes bf16/fp16 products on tensor cores; float32 inputs have no such path";
    return false;
  }
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, a.x.get_device()));
  if (major < 8) {
    *why = "mma.sync with bf16/fp16 inputs needs compute capability 8.0 or newer";
    return false;
  }
  if (a.x.size(1) % 32 || !aligned16(a.x) || !aligned16(a.w_in) || (a.w_up && !aligned16(*a.w_up)) ||
      a.w_out_t.size(1) % 2 || !aligned4(a.w_out_t)) {
    *why = "it needs d to be a multiple of 32, d_out even and 16-byte aligned weights";
    return false;
  }
  return true;
}

at::Tensor tensor_core_ffn_cuda(const FfnArgs& a) {
  if (a.x.scalar_type() == at::kHalf) return tensor_core_impl<at::Half>(a);
  return tensor_core_impl<at::BFloat16>(a);
}

}  // namespace actsparse
