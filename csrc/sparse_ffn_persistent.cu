// Persistent batch-1 kernel of the sparse FFN (kernel set kKernelPersistent; issue 26 item 1).
//
// The three-kernel path measured 39.7 us on the H200 at 7B, batch 1, 90% sparsity, against a byte
// floor of ~26 us; a fit over sparsities put ~13 us of every call in latency, launches and tails.
// This kernel is one cooperative launch whose grid fills the GPU (an occupancy query: every
// block resident at once) and does the whole FFN:
//   1. gate / up: block b owns a fixed, contiguous range of neuron rows; each warp streams its
//      rows' gate weights with 16-byte evict-first loads, kUnroll loads per lane in flight, and
//      issues the first chunk of its next row before it reduces the current one (register double
//      buffering: the next row's loads are in flight while the warp reduces, applies the
//      activation and, for an active neuron, streams that neuron's up row). h goes to shared
//      memory, exact zeros for inactive neurons.
//   2. down: the block's warps split the output columns into 512-byte tiles; each warp finds the
//      block's active neurons with one ballot per 32 rows and streams their down-row segments,
//      kDownBatch rows in flight, into registers; the block writes one fp32 partial row.
//   3. a grid barrier (cooperative_groups, which CUDA graphs capture as a cooperative kernel node),
//      then every block sums a slice of the columns over the blocks' partials in block order and
//      writes y.
// Every sum runs in a fixed order that depends only on the shapes and the grid size (fixed per
// GPU model), so results are bitwise reproducible; nothing is read back to the host. The grid is
// sized by the occupancy query, so one launch streams all weights with no tail of late blocks
// waiting on a second wave, and the down product starts per block as soon as its gate rows are
// done (no kernel boundary between the phases). Unmeasured when written (no GPU was lent).
#include "sparse_ffn_cuda_common.h"

#include <c10/cuda/CUDAGuard.h>
#include <cooperative_groups.h>

#include <map>
#include <mutex>
#include <tuple>

namespace actsparse {
namespace {

namespace cg = cooperative_groups;

constexpr int kWarps = 16;     // warps per block (512 threads)
constexpr int kUnroll = 4;     // 16-byte loads per lane in flight per row chunk (2 KB of bf16 row per warp)
constexpr int kDownBatch = 4;  // active neurons whose down loads a warp issues together
constexpr int kMaxSmem = 48 * 1024;

// Issues the loads of one row chunk (kUnroll * 32 * N elements from element c0) into `buf`;
// elements at or past d read as zeros (never uninitialised registers).
template <typename T>
__device__ __forceinline__ void issue_chunk(uint4 (&buf)[kUnroll], const T* row, int64_t c0, int64_t d, int lane) {
  constexpr int N = Vec<T>::N;
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t k = c0 + int64_t(u) * kWarp * N + int64_t(lane) * N;
    buf[u] = k < d ? Vec<T>::load_raw_stream(row + k) : make_uint4(0u, 0u, 0u, 0u);
  }
}

// dot(row, x[b]) for b < nb, summed over the warp (the butterfly leaves the same value in every
// lane). On entry `pre` holds the row's first chunk; before the last chunk's FMAs the first chunk
// of `next` (when not null) is issued into `pre`, so it is in flight while this row finishes.
template <typename T, int NB>
__device__ __forceinline__ void stream_dot(const T* __restrict__ row, const T* next, uint4 (&pre)[kUnroll],
                                           const T* __restrict__ x, int nb, int64_t d, int lane, float (&acc)[NB]) {
  constexpr int N = Vec<T>::N;
  constexpr int64_t kChunk = int64_t(kWarp) * N * kUnroll;
#pragma unroll
  for (int b = 0; b < NB; ++b) acc[b] = 0.f;
  for (int64_t c0 = 0; c0 < d; c0 += kChunk) {
    uint4 cur[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) cur[u] = pre[u];
    if (c0 + kChunk < d) issue_chunk<T>(pre, row, c0 + kChunk, d, lane);
    else if (next) issue_chunk<T>(pre, next, 0, d, lane);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t k = c0 + int64_t(u) * kWarp * N + int64_t(lane) * N;
      if (k >= d) break;
      Vec<T> wv;
      wv.unpack(cur[u]);
#pragma unroll
      for (int b = 0; b < NB; ++b) {
        if (b >= nb) break;
        Vec<T> xv;
        xv.load(x + b * d + k);
#pragma unroll
        for (int i = 0; i < N; ++i) acc[b] = fmaf(wv.v[i], xv.v[i], acc[b]);
      }
    }
  }
#pragma unroll
  for (int b = 0; b < NB; ++b) acc[b] = warp_sum(acc[b]);
}

template <typename T, int NB>
__global__ void __launch_bounds__(kWarps * kWarp)
persistent_kernel(const T* __restrict__ x, const T* __restrict__ w_in, const T* __restrict__ w_up,
                  const T* __restrict__ w_out_t, const T* __restrict__ b_in, const T* __restrict__ b_up,
                  const T* __restrict__ b_out, float threshold, int act, int nb, int64_t f, int64_t d, int64_t d_out,
                  int64_t rows_per_block, float* __restrict__ partial, T* __restrict__ y) {
  constexpr int N = Vec<T>::N;
  constexpr int64_t kTile = int64_t(kWarp) * N;
  extern __shared__ float hs[];  // [rows_per_block][NB]: the block's activated (and gated) values
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t r0 = int64_t(blockIdx.x) * rows_per_block;
  const int64_t r1 = r0 + rows_per_block < f ? r0 + rows_per_block : f;

  // 1. gate, activation, up for the active rows; the next gate row's first loads in flight.
  uint4 pre[kUnroll];
  int64_t j = r0 + warp;
  if (j < r1) issue_chunk<T>(pre, w_in + j * d, 0, d, lane);
  for (; j < r1; j += kWarps) {
    const int64_t jn = j + kWarps;
    float z[NB];
    stream_dot<T, NB>(w_in + j * d, jn < r1 ? w_in + jn * d : nullptr, pre, x, nb, d, lane, z);
    bool any = false;
#pragma unroll
    for (int b = 0; b < NB; ++b) {
      if (b < nb) {
        z[b] = activate(z[b] + (b_in ? to_f(b_in[j]) : 0.f), threshold, act);  // FATReLU: NaN stays NaN
        any |= z[b] != 0.f;  // NaN != 0: active; an active value of exactly 0 contributes 0 either way
      }
    }
    if (any && w_up) {  // warp-uniform: z is the same in every lane
      uint4 up_pre[kUnroll];
      issue_chunk<T>(up_pre, w_up + j * d, 0, d, lane);
      float u[NB];
      stream_dot<T, NB>(w_up + j * d, nullptr, up_pre, x, nb, d, lane, u);
#pragma unroll
      for (int b = 0; b < NB; ++b)
        if (b < nb) z[b] *= u[b] + (b_up ? to_f(b_up[j]) : 0.f);
    }
    if (lane == 0) {
#pragma unroll
      for (int b = 0; b < NB; ++b) hs[(j - r0) * NB + b] = (b < nb && any) ? z[b] : 0.f;
    }
  }
  __syncthreads();

  // 2. down for the block's rows: warps own 512-byte column tiles; one fp32 partial row per block.
  const int64_t n_rows = r1 > r0 ? r1 - r0 : 0;
  for (int64_t c0 = int64_t(warp) * kTile; c0 < d_out; c0 += int64_t(kWarps) * kTile) {
    const int64_t col = c0 + int64_t(lane) * N;
    float acc[NB][N];
#pragma unroll
    for (int b = 0; b < NB; ++b)
#pragma unroll
      for (int i = 0; i < N; ++i) acc[b][i] = 0.f;
    for (int64_t g = 0; g < n_rows; g += kWarp) {
      float hv[NB];
      bool on = false;
#pragma unroll
      for (int b = 0; b < NB; ++b) {
        hv[b] = (b < nb && g + lane < n_rows) ? hs[(g + lane) * NB + b] : 0.f;
        on |= hv[b] != 0.f;
      }
      unsigned mask = __ballot_sync(0xffffffffu, on);
      while (mask) {
        int src[kDownBatch];
        int cnt = 0;
#pragma unroll
        for (int q = 0; q < kDownBatch; ++q) {
          src[q] = mask ? __ffs(mask) - 1 : -1;
          if (mask) { mask &= mask - 1; ++cnt; }
        }
        Vec<T> wv[kDownBatch];
#pragma unroll
        for (int q = 0; q < kDownBatch; ++q) {
          if (src[q] < 0) continue;
          if (col < d_out) {
            wv[q].load_stream(w_out_t + (r0 + g + src[q]) * d_out + col);
          } else {
#pragma unroll
            for (int i = 0; i < N; ++i) wv[q].v[i] = 0.f;
          }
        }
#pragma unroll
        for (int q = 0; q < kDownBatch; ++q) {
          if (q >= cnt) break;
#pragma unroll
          for (int b = 0; b < NB; ++b) {
            const float hb = __shfl_sync(0xffffffffu, hv[b], src[q]);
#pragma unroll
            for (int i = 0; i < N; ++i) acc[b][i] = fmaf(hb, wv[q].v[i], acc[b][i]);
          }
        }
      }
    }
    if (col < d_out) {
#pragma unroll
      for (int b = 0; b < NB; ++b) {
        if (b >= nb) break;
        float* p = partial + (int64_t(blockIdx.x) * nb + b) * d_out + col;
#pragma unroll
        for (int i = 0; i < N; ++i) p[i] = acc[b][i];  // every block writes every column: no zeroed buffer assumed
      }
    }
  }

  // 3. grid barrier, then a fixed-order sum over the blocks' partials, spread over the grid.
  cg::this_grid().sync();
  const int64_t total = int64_t(nb) * d_out;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    float s = b_out ? to_f(b_out[i % d_out]) : 0.f;
    for (unsigned k = 0; k < gridDim.x; ++k) s += partial[int64_t(k) * total + i];
    y[i] = from_f<T>(s);
  }
}

// Blocks per SM for one instantiation at a shared-memory size, queried once per (device, kernel, smem).
int resident_blocks(const void* kernel, int device, size_t smem) {
  static std::mutex mutex;
  static std::map<std::tuple<int, const void*, size_t>, int> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_tuple(device, kernel, smem);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  int blocks = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kWarps * kWarp, smem));
  cache[key] = blocks;
  return blocks;
}

int device_attribute(cudaDeviceAttr attr, int device) {
  int v = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, attr, device));
  return v;
}

// Shared memory for h, sized for the most rows a block can own: ceil(f / sms) when the grid has a
// block per SM or more, else at most kWarps (the grid is capped at one row per warp).
size_t smem_bound(int64_t f, int nb_template, int sms) {
  return size_t(std::max<int64_t>((f + sms - 1) / sms, kWarps)) * nb_template * sizeof(float);
}

template <typename AT>
at::Tensor persistent_impl(const FfnArgs& a) {
  using T = typename Native<AT>::type;
  const int nb = int(a.x.size(0));
  const int64_t d = a.x.size(1), f = a.w_in.size(0), d_out = a.w_out_t.size(1);
  const int device = a.x.get_device();
  const int sms = device_attribute(cudaDevAttrMultiProcessorCount, device);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto f32 = a.x.options().dtype(at::kFloat);
  at::Tensor y = at::empty({nb, d_out}, a.x.options());
  if (debug_poison()) y.fill_(NAN);
  with_nb(nb, [&](auto nb_tag) {
    constexpr int NB = decltype(nb_tag)::value;
    auto kernel = persistent_kernel<T, NB>;
    const size_t smem = smem_bound(f, NB, sms);
    const int per_sm = resident_blocks(reinterpret_cast<const void*>(kernel), device, smem);
    TORCH_CHECK(per_sm > 0, "actsparse: the persistent kernel cannot be resident on this GPU (", smem,
                " bytes of shared memory per block); use kernel='three_kernel'.");
    // Every block resident at once (a cooperative launch requires it), and at least one row per warp.
    const int64_t want = std::min<int64_t>(int64_t(per_sm) * sms, (f + kWarps - 1) / kWarps);
    const int64_t rows_per_block = (f + want - 1) / want;
    const int64_t grid = (f + rows_per_block - 1) / rows_per_block;
    at::Tensor partial = new_scratch({grid, nb, d_out}, f32);
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(unsigned(grid));
    config.blockDim = dim3(kWarps * kWarp);
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    cudaLaunchAttribute attribute[1];
    attribute[0].id = cudaLaunchAttributeCooperative;
    attribute[0].val.cooperative = 1;
    config.attrs = attribute;
    config.numAttrs = 1;
    C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, reinterpret_cast<const T*>(a.x.data_ptr()),
                                      reinterpret_cast<const T*>(a.w_in.data_ptr()),
                                      a.w_up ? reinterpret_cast<const T*>(a.w_up->data_ptr()) : nullptr,
                                      reinterpret_cast<const T*>(a.w_out_t.data_ptr()), opt_ptr<T>(a.b_in),
                                      opt_ptr<T>(a.b_up), opt_ptr<T>(a.b_out), threshold_for(a.threshold, a.activation),
                                      int(a.activation), nb, f, d, d_out, rows_per_block, partial.data_ptr<float>(),
                                      reinterpret_cast<T*>(y.data_ptr())));
  });
  return y;
}

}  // namespace

bool persistent_serves(const FfnArgs& a, const char** why) {
  const int64_t n = 16 / int64_t(a.x.element_size());
  const int device = a.x.get_device();
  if (!device_attribute(cudaDevAttrCooperativeLaunch, device)) {
    *why = "this GPU does not support cooperative launches";
    return false;
  }
  if (a.x.size(1) % n || a.w_out_t.size(1) % n || !aligned16(a.x) || !aligned16(a.w_in) ||
      (a.w_up && !aligned16(*a.w_up)) || !aligned16(a.w_out_t)) {
    *why = "it needs d and d_out to be multiples of 16 bytes and every weight to start on a 16-byte boundary";
    return false;
  }
  const int sms = device_attribute(cudaDevAttrMultiProcessorCount, device);
  if (smem_bound(a.w_in.size(0), kMaxSparseBatch, sms) > size_t(kMaxSmem)) {
    *why = "the layer has too many neurons per SM for its shared-memory activations";
    return false;
  }
  return true;
}

at::Tensor persistent_ffn_cuda(const FfnArgs& a) {
  const auto dt = a.x.scalar_type();
  if (dt == at::kFloat) return persistent_impl<float>(a);
  if (dt == at::kHalf) return persistent_impl<at::Half>(a);
  return persistent_impl<at::BFloat16>(a);
}

}  // namespace actsparse
