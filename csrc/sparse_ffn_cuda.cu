// CUDA kernels of the sparse FFN (bf16, fp16, fp32) for small batches (decoding).
//
// Batch-1 decoding is bound by weight bytes, so every kernel is built around wide coalesced
// loads and enough loads in flight, never around flops. Two paths:
//
// The fused path (default): ONE kernel, fused_ffn_kernel. Each block owns kFusedRows
// consecutive neurons: its warps compute gate (+ FATReLU) and, for active neurons only, up,
// into shared memory; the block compacts its active neurons and streams their rows of w_out_t
// (whole rows, 16-byte loads, kDownBatch rows in flight), adding its [batch, d_out] partial into
// an fp32 workspace with vector atomics. The last block to finish (a counter) adds the bias,
// casts and writes y. No h round trip through global memory and no second or third launch; the
// workspace is zeroed by one memset node. fp32 atomics make the summation order vary between
// runs (last-bit differences), so under torch.use_deterministic_algorithms(True) the
// deterministic three-kernel path below runs instead.
//
// The deterministic path (three kernels):
//   1. gate_up_kernel: one warp per neuron row. The warp streams w_in[j] with 16-byte loads
//      (8 bf16 per lane), reduces with shuffles, applies FATReLU and, only when the neuron is
//      active for some batch row, streams w_up[j] the same way. Writes h [batch, f] in fp32
//      (exact zeros for inactive neurons). Divergence is per warp, never inside one.
//   2. down_kernel: grid (column tiles of w_out_t, slices of the neuron range). Each warp scans
//      32 neurons of its slice with one ballot on h, then for each active neuron reads one
//      512-byte coalesced segment of w_out_t[j] (one 16-byte load per lane), several neurons
//      at once for memory-level parallelism. Warps reduce in shared memory; each block writes
//      fp32 partial sums for its slice.
//   3. reduce_kernel: sums the slices (+ bias) in a fixed order and casts to the output dtype.
// No step reads anything back to the host: the ops are CUDA-graph capturable and sparse for
// any union size; batches above kMaxSparseBatch rows go to the dense cuBLAS path (their union
// is large and tensor cores win), as does dense_above <= 0 (the Python front picks it per batch
// size, actsparse.plugins.sparse_ffn.default_dense_above: the host cannot see the union without
// a synchronizing read-back).
#include "sparse_ffn.h"

#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <type_traits>

namespace actsparse {
namespace {

constexpr int kMaxSparseBatch = 8;
constexpr int kWarp = 32;
constexpr int kGateWarps = 8;   // rows per gate block
constexpr int kDownWarps = 4;   // warps sharing one column tile in the down kernel
constexpr int kDownBatch = 4;   // active neurons whose loads a warp issues together
// What torch.ops.actsparse._set_cuda_variant selects (the GPU check times them side by side):
// the three-kernel path with its default gate (0), the fused kernel in three block shapes, and
// three other gate shapes of the three-kernel path.
enum Variant : int64_t { kThreeKernel = 0, kFused64 = 1, kFused16 = 2, kFused32 = 3, kGateUnroll16 = 4,
                         kGateRows2 = 5, kGateRows4 = 6 };
constexpr int kFusedWarps = 8;  // warps per fused block (the default configuration)
constexpr int kFusedRows = 64;  // neurons per fused block (8 per warp)

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

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// acc[b] = dot(w[0:d], x[b][0:d]) summed over the warp (every lane gets the total).
// VEC: rows are 16-byte aligned and d is a multiple of the vector width.
template <typename T, int NB, bool VEC, int kUnroll = 4>
__device__ __forceinline__ void warp_dot(const T* __restrict__ w, const T* __restrict__ x, int nb,
                                         int64_t d, int lane, float (&acc)[NB]) {
#pragma unroll
  for (int b = 0; b < NB; ++b) acc[b] = 0.f;
  if constexpr (VEC) {
    constexpr int N = Vec<T>::N;
    const int64_t step = int64_t(kWarp) * N;
    int64_t k = int64_t(lane) * N;
    for (; k + (kUnroll - 1) * step < d; k += kUnroll * step) {
      uint4 raw[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) raw[u] = Vec<T>::load_raw_stream(w + k + u * step);  // loads first: MLP
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        Vec<T> wv;
        wv.unpack(raw[u]);
#pragma unroll
        for (int b = 0; b < NB; ++b) {
          if (b >= nb) break;
          Vec<T> xv;
          xv.load(x + b * d + k + u * step);
#pragma unroll
          for (int i = 0; i < N; ++i) acc[b] = fmaf(wv.v[i], xv.v[i], acc[b]);
        }
      }
    }
    for (; k < d; k += step) {
      Vec<T> wv;
      wv.load_stream(w + k);
#pragma unroll
      for (int b = 0; b < NB; ++b) {
        if (b >= nb) break;
        Vec<T> xv;
        xv.load(x + b * d + k);
#pragma unroll
        for (int i = 0; i < N; ++i) acc[b] = fmaf(wv.v[i], xv.v[i], acc[b]);
      }
    }
  } else {  // odd shapes: element-wise, still coalesced across the warp
    for (int64_t k = lane; k < d; k += kWarp) {
      const float wk = to_f(w[k]);
#pragma unroll
      for (int b = 0; b < NB; ++b)
        if (b < nb) acc[b] = fmaf(wk, to_f(x[b * d + k]), acc[b]);
    }
  }
#pragma unroll
  for (int b = 0; b < NB; ++b) acc[b] = warp_sum(acc[b]);
}

// Gate kernel shapes: R neuron rows per warp (their loads issued together, each x load shared by
// R rows), UNROLL loads in flight per row. GateDefault is what the three-kernel path runs; the
// others are instantiated for bf16 with aligned rows only, for the GPU check to time.
template <int R_, int U1, int U2, int U8>
struct GateShape {
  static constexpr int R = R_;
  template <int NB> static constexpr int unroll() { return NB == 1 ? U1 : NB == 2 ? U2 : U8; }
};
using GateDefault = GateShape<1, 4, 4, 4>;

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

template <typename T, int NB, bool VEC, typename S = GateDefault>
__global__ void __launch_bounds__(kGateWarps * kWarp)
gate_up_kernel(const T* __restrict__ x, const T* __restrict__ w_in, const T* __restrict__ w_up,
               const T* __restrict__ b_in, const T* __restrict__ b_up, float threshold, int nb,
               int64_t f, int64_t d, float* __restrict__ h) {
  constexpr int R = S::R, U = S::template unroll<NB>();
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
        z[r][b] = z[r][b] >= threshold ? z[r][b] : 0.f;  // FATReLU
        any |= z[r][b] != 0.f;  // a pre-activation of exactly 0 contributes 0 either way
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
          if (col < d_out) wv[q].load_stream(row + col);
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

template <typename T>
__global__ void reduce_kernel(const float* __restrict__ partial, const T* __restrict__ b_out, int n_slices,
                              int nb, int64_t d_out, T* __restrict__ y) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(nb) * d_out) return;
  float s = b_out ? to_f(b_out[i % d_out]) : 0.f;
  for (int k = 0; k < n_slices; ++k) s += partial[int64_t(k) * nb * d_out + i];
  y[i] = from_f<T>(s);
}


// ---- the fused path ---------------------------------------------------------------------------

// out[0:N] += v[0:N] into fp32 global memory; one 16-byte vector atomic where the hardware has it.
template <int N>
__device__ __forceinline__ void atomic_add_vec(float* out, const float (&v)[N]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int i = 0; i < N; i += 4)
      atomicAdd(reinterpret_cast<float4*>(out + i), make_float4(v[i], v[i + 1], v[i + 2], v[i + 3]));
    return;
  }
#endif
#pragma unroll
  for (int i = 0; i < N; ++i) atomicAdd(out + i, v[i]);
}

// Loads in flight per warp in the gate: more for small batches, where the registers are free.
template <int NB, int UNROLL1> constexpr int gate_unroll() { return NB == 1 ? UNROLL1 : 4; }

// Block shapes of the fused kernel: ROWS neurons per block, WARPS warps, UNROLL1 gate loads in
// flight per warp at batch 1. Configuration 0 is the default; the others are instantiated for
// bf16 with aligned rows only, so the GPU check can time them side by side
// (torch.ops.actsparse._set_cuda_variant) and the best becomes the default.
template <int ROWS_, int WARPS_, int UNROLL1_>
struct FusedShape {
  static constexpr int ROWS = ROWS_, WARPS = WARPS_, UNROLL1 = UNROLL1_;
};
using FusedDefault = FusedShape<kFusedRows, kFusedWarps, 8>;

template <typename T, int NB, bool VEC_IN, bool VEC_OUT, typename S = FusedDefault>
__global__ void __launch_bounds__(S::WARPS * kWarp)
fused_ffn_kernel(const T* __restrict__ x, const T* __restrict__ w_in, const T* __restrict__ w_up,
                 const T* __restrict__ w_out_t, const T* __restrict__ b_in, const T* __restrict__ b_up,
                 const T* __restrict__ b_out, float threshold, int nb, int64_t f, int64_t d, int64_t d_out,
                 float* __restrict__ ws, unsigned* __restrict__ done, T* __restrict__ y) {
  constexpr int kRows = S::ROWS, kWarps = S::WARPS;
  __shared__ float sh_h[kRows][NB];
  __shared__ int sh_idx[kRows];
  __shared__ int sh_n;
  __shared__ bool sh_last;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t r0 = int64_t(blockIdx.x) * kRows;

  // 1. gate (+ up for active neurons). Warps interleave rows so that neighbouring warps stream
  //    neighbouring rows.
  for (int r = warp; r < kRows; r += kWarps) {
    const int64_t j = r0 + r;
    float z[NB];
    bool any = false;
    if (j < f) {
      warp_dot<T, NB, VEC_IN, gate_unroll<NB, S::UNROLL1>()>(w_in + j * d, x, nb, d, lane, z);
#pragma unroll
      for (int b = 0; b < NB; ++b) {
        if (b < nb) {
          z[b] += b_in ? to_f(b_in[j]) : 0.f;
          z[b] = z[b] >= threshold ? z[b] : 0.f;  // FATReLU
          any |= z[b] != 0.f;  // a pre-activation of exactly 0 contributes 0 either way
        }
      }
      if (any && w_up) {
        float u[NB];
        warp_dot<T, NB, VEC_IN, gate_unroll<NB, S::UNROLL1>()>(w_up + j * d, x, nb, d, lane, u);
#pragma unroll
        for (int b = 0; b < NB; ++b)
          if (b < nb) z[b] *= u[b] + (b_up ? to_f(b_up[j]) : 0.f);
      }
    }
    if (lane == 0) {
#pragma unroll
      for (int b = 0; b < NB; ++b) sh_h[r][b] = (any && b < nb) ? z[b] : 0.f;
    }
  }
  __syncthreads();

  // 2. compact the block's active neurons (warp 0, one ballot per 32 rows).
  if (warp == 0) {
    int n = 0;
#pragma unroll
    for (int base = 0; base < kRows; base += kWarp) {
      bool act = false;
#pragma unroll
      for (int b = 0; b < NB; ++b) act |= base + lane < kRows && sh_h[base + lane][b] != 0.f;
      const unsigned mask = __ballot_sync(0xffffffffu, act);
      if (act) sh_idx[n + __popc(mask & ((1u << lane) - 1u))] = base + lane;
      n += __popc(mask);
    }
    if (lane == 0) sh_n = n;
  }
  __syncthreads();
  const int n = sh_n;

  // 3. down: every thread owns N consecutive columns per pass; kDownBatch rows' loads first.
  if (n > 0) {
    constexpr int N = VEC_OUT ? Vec<T>::N : 1;
    const int64_t per_pass = int64_t(blockDim.x) * N;
    for (int64_t c0 = 0; c0 < d_out; c0 += per_pass) {
      const int64_t col = c0 + int64_t(threadIdx.x) * N;
      if (col >= d_out) break;  // no barrier below: threads may leave early
      float acc[NB][N];
#pragma unroll
      for (int b = 0; b < NB; ++b)
#pragma unroll
        for (int i = 0; i < N; ++i) acc[b][i] = 0.f;
      for (int q0 = 0; q0 < n; q0 += kDownBatch) {
        const int cnt = min(kDownBatch, n - q0);
        uint4 raw[kDownBatch];
        float ws1[kDownBatch];
#pragma unroll
        for (int q = 0; q < kDownBatch; ++q) {
          if (q < cnt) {
            const T* row = w_out_t + (r0 + sh_idx[q0 + q]) * d_out;
            if constexpr (VEC_OUT) raw[q] = Vec<T>::load_raw_stream(row + col);
            else ws1[q] = to_f(row[col]);
          }
        }
#pragma unroll
        for (int q = 0; q < kDownBatch; ++q) {
          if (q < cnt) {
            const int r = sh_idx[q0 + q];
            Vec<T> wv;
            if constexpr (VEC_OUT) wv.unpack(raw[q]);
#pragma unroll
            for (int b = 0; b < NB; ++b) {
              const float hb = sh_h[r][b];
#pragma unroll
              for (int i = 0; i < N; ++i) {
                if constexpr (VEC_OUT) acc[b][i] = fmaf(hb, wv.v[i], acc[b][i]);
                else acc[b][i] = fmaf(hb, ws1[q], acc[b][i]);
              }
            }
          }
        }
      }
#pragma unroll
      for (int b = 0; b < NB; ++b)
        if (b < nb) atomic_add_vec<N>(ws + int64_t(b) * d_out + col, acc[b]);
    }
  }

  // 4. the last block to finish writes y = ws + b_out in the output dtype.
  __threadfence();  // this block's atomics are visible before it is counted
  __syncthreads();
  if (threadIdx.x == 0) sh_last = atomicAdd(done, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!sh_last) return;
  __threadfence();
  for (int64_t i = threadIdx.x; i < int64_t(nb) * d_out; i += blockDim.x) {
    const float v = __ldcg(ws + i) + (b_out ? to_f(b_out[i % d_out]) : 0.f);  // L2, not a stale L1
    y[i] = from_f<T>(v);
  }
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

template <typename Fn>
void with_bool(bool v, Fn&& fn) {
  if (v) fn(std::true_type{});
  else fn(std::false_type{});
}

template <typename AT>
at::Tensor fused_ffn_cuda(const FfnArgs& a, int64_t variant) {
  using T = typename Native<AT>::type;
  const int nb = int(a.x.size(0));
  const int64_t d = a.x.size(1), f = a.w_in.size(0), d_out = a.w_out_t.size(1);
  constexpr int N = Vec<T>::N;
  const bool vec_in = d % N == 0 && aligned16(a.x) && aligned16(a.w_in) && (!a.w_up || aligned16(*a.w_up));
  const bool vec_out = d_out % N == 0 && aligned16(a.w_out_t);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  // fp32 accumulator [nb, d_out] followed by the finished-block counter; zeroed by one memset
  // (a memset node under CUDA graphs). The accumulator is 16-byte aligned for float4 atomics.
  const int64_t acc_floats = (int64_t(nb) * d_out + 3) / 4 * 4;
  at::Tensor ws = at::empty({acc_floats + 4}, a.x.options().dtype(at::kFloat));
  C10_CUDA_CHECK(cudaMemsetAsync(ws.data_ptr(), 0, ws.nbytes(), stream));
  at::Tensor y = at::empty({nb, d_out}, a.x.options());
  if (debug_poison()) y.fill_(NAN);
  float* acc = ws.data_ptr<float>();
  unsigned* done = reinterpret_cast<unsigned*>(acc + acc_floats);
  auto launch = [&](auto nb_tag, auto vin, auto vout, auto shape) {
    using S = decltype(shape);
    const dim3 grid(unsigned((f + S::ROWS - 1) / S::ROWS));
    fused_ffn_kernel<T, decltype(nb_tag)::value, decltype(vin)::value, decltype(vout)::value, S>
        <<<grid, S::WARPS * kWarp, 0, stream>>>(
            reinterpret_cast<const T*>(a.x.data_ptr()), reinterpret_cast<const T*>(a.w_in.data_ptr()),
            a.w_up ? reinterpret_cast<const T*>(a.w_up->data_ptr()) : nullptr,
            reinterpret_cast<const T*>(a.w_out_t.data_ptr()), opt_ptr<T>(a.b_in), opt_ptr<T>(a.b_up),
            opt_ptr<T>(a.b_out), float(a.threshold), nb, f, d, d_out, acc, done,
            reinterpret_cast<T*>(y.data_ptr()));
  };
  with_nb(nb, [&](auto nb_tag) {
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      // The other block shapes (see FusedShape): aligned bf16 only.
      if (vec_in && vec_out && (variant == kFused16 || variant == kFused32)) {
        const std::true_type v;
        if (variant == kFused16) return launch(nb_tag, v, v, FusedShape<16, 8, 16>{});
        return launch(nb_tag, v, v, FusedShape<32, 8, 16>{});
      }
    }
    with_bool(vec_in, [&](auto vin) {
      with_bool(vec_out, [&](auto vout) { launch(nb_tag, vin, vout, FusedDefault{}); });
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

template <typename AT>
at::Tensor sparse_ffn_cuda_impl(const FfnArgs& a, int64_t variant) {
  using T = typename Native<AT>::type;
  const int nb = int(a.x.size(0));
  const int64_t d = a.x.size(1), f = a.w_in.size(0), d_out = a.w_out_t.size(1);
  constexpr int N = Vec<T>::N;
  const bool vec_in = d % N == 0 && aligned16(a.x) && aligned16(a.w_in) && (!a.w_up || aligned16(*a.w_up));
  const bool vec_out = d_out % N == 0 && aligned16(a.w_out_t);
  // c10 headers only: ATen/cuda/CUDAContext.h pulls in cuBLAS/cuSPARSE headers we do not use.
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto f32 = a.x.options().dtype(at::kFloat);

  at::Tensor h = new_scratch({nb, f}, f32);
  const T* x = reinterpret_cast<const T*>(a.x.data_ptr());
  const T* w_up = a.w_up ? reinterpret_cast<const T*>(a.w_up->data_ptr()) : nullptr;
  auto launch_gate = [&](auto nb_tag, auto vec_tag, auto shape) {
    constexpr int NB = decltype(nb_tag)::value;
    constexpr bool V = decltype(vec_tag)::value;
    using S = decltype(shape);
    const int64_t rows_per_block = int64_t(kGateWarps) * S::R;
    const dim3 gate_grid(unsigned((f + rows_per_block - 1) / rows_per_block));
    gate_up_kernel<T, NB, V, S><<<gate_grid, kGateWarps * kWarp, 0, stream>>>(
        x, reinterpret_cast<const T*>(a.w_in.data_ptr()), w_up, opt_ptr<T>(a.b_in), opt_ptr<T>(a.b_up),
        float(a.threshold), nb, f, d, h.data_ptr<float>());
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
    down_kernel<T, NB, V><<<grid, kDownWarps * kWarp, 0, stream>>>(
        reinterpret_cast<const T*>(a.w_out_t.data_ptr()), h.data_ptr<float>(), nb, f, d_out, slice,
        partial.data_ptr<float>());
  };
  with_nb(nb, [&](auto nb_tag) {
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      // The other gate shapes (see GateShape): aligned bf16 only.
      if (vec_in) {
        const std::true_type v;
        if (variant == kGateUnroll16) return launch_gate(nb_tag, v, GateShape<1, 16, 8, 4>{});
        if (variant == kGateRows2) return launch_gate(nb_tag, v, GateShape<2, 8, 4, 2>{});
        if (variant == kGateRows4) return launch_gate(nb_tag, v, GateShape<4, 4, 2, 2>{});
      }
    }
    with_bool(vec_in, [&](auto v) { launch_gate(nb_tag, v, GateDefault{}); });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  with_nb(nb, [&](auto nb_tag) { with_bool(vec_out, [&](auto v) { launch_down(nb_tag, v); }); });
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

at::Tensor dispatch_cuda(const char* op, const FfnArgs& a) {
  check_ffn_args(op, a);
  TORCH_CHECK(a.x.is_cuda(), op, ": the CUDA kernel got x on ", a.x.device(), ".");
  const auto dt = a.x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op,
              ": the CUDA kernels support float32, float16 and bfloat16, got ", dt, ".");
  const c10::cuda::CUDAGuard guard(a.x.device());
  if (a.dense_above <= 0.0 || a.x.size(0) > kMaxSparseBatch) return dense_ffn(a);
  const int64_t variant = cuda_variant();
  const bool fused = variant == kFused64 || variant == kFused16 || variant == kFused32;
  if (fused && !at::globalContext().deterministicAlgorithms()) {
    if (dt == at::kFloat) return fused_ffn_cuda<float>(a, variant);
    if (dt == at::kHalf) return fused_ffn_cuda<at::Half>(a, variant);
    return fused_ffn_cuda<at::BFloat16>(a, variant);
  }
  if (dt == at::kFloat) return sparse_ffn_cuda_impl<float>(a, variant);
  if (dt == at::kHalf) return sparse_ffn_cuda_impl<at::Half>(a, variant);
  return sparse_ffn_cuda_impl<at::BFloat16>(a, variant);
}

at::Tensor sparse_gated_ffn_cuda(const at::Tensor& x, const at::Tensor& w_gate, const at::Tensor& w_up,
                                 const at::Tensor& w_down_t, double threshold, const OptTensor& b_gate,
                                 const OptTensor& b_up, const OptTensor& b_down, double dense_above) {
  const at::Tensor xc = x.contiguous();
  return dispatch_cuda("actsparse.sparse_gated_ffn",
                       FfnArgs{xc, w_gate, &w_up, w_down_t, threshold, b_gate, b_up, b_down, dense_above});
}

at::Tensor sparse_ffn_cuda(const at::Tensor& x, const at::Tensor& w_fc, const at::Tensor& w_proj_t,
                           double threshold, const OptTensor& b_fc, const OptTensor& b_proj, double dense_above) {
  const at::Tensor xc = x.contiguous();
  const OptTensor none;
  return dispatch_cuda("actsparse.sparse_ffn",
                       FfnArgs{xc, w_fc, nullptr, w_proj_t, threshold, b_fc, none, b_proj, dense_above});
}

}  // namespace
}  // namespace actsparse

TORCH_LIBRARY_IMPL(actsparse, CUDA, m) {
  m.impl("sparse_gated_ffn", &actsparse::sparse_gated_ffn_cuda);
  m.impl("sparse_ffn", &actsparse::sparse_ffn_cuda);
}
