// CPU kernels of the sparse FFN (fp32 and bf16), vectorized with AVX-512 / AVX2 (scalar fallback)
// and parallelized with OpenMP (torch.set_num_threads applies: same libgomp runtime as ATen).
//
// Batch-1 decoding is memory-bound: every weight byte is read once and used for one FMA per
// batch row. The kernels therefore aim at streaming bandwidth, not flops:
//   1. gate / fc pass: dense GEMV over w_in in chunks of 64 contiguous rows (1 MB sequential
//      streams), several accumulators, software prefetch ahead of the hardware prefetcher; the
//      threshold test is fused, producing the active mask (FATReLU, or CATS's SiLU and magnitude
//      test: act_value / act_on in sparse_ffn.h; the pre-activation z is kept raw, so the dense
//      tail can start from it).
//   2. up pass (gated FFNs): dot products for the active rows only, prefetching the next active
//      row in lockstep because a gather defeats the hardware prefetcher.
//   3. down pass: y += h_k * w_out_t[j_k] over chunks of active rows, each chunk into its own
//      fp32 partial (whole rows streamed, y in L1), partials summed in a fixed order.
// Chunks are scheduled dynamically: on a shared 2-core machine a static half/half split waits for
// whichever thread the OS preempted (measured: 2-3x slower under load). Every output element is
// summed in an order that depends only on the shapes and the active set, never on scheduling.
// Batches of up to kMaxFusedBatch rows share each weight load; larger batches compute the gate
// with at::mm (MKL is compute-efficient there) and keep the sparse up/down.
#include "sparse_ffn.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace actsparse {
namespace {

using bf16 = c10::BFloat16;
constexpr int kMaxFusedBatch = 8;
// How far ahead of the current position the gate pass prefetches (bytes). Roughly the data in
// flight needed to cover DRAM latency at one core's bandwidth.
constexpr int64_t kPrefetchBytes = 4096;

// ---- a minimal vector layer: W floats per register --------------------------------------------
#if defined(__AVX512F__)
constexpr int W = 16;
using vf = __m512;
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vset1(float a) { return _mm512_set1_ps(a); }
inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline vf vload(const bf16* p) {  // bf16 -> fp32 is a 16-bit left shift of the bit pattern
  __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline void vstore(float* p, vf v) { _mm512_storeu_ps(p, v); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline float vsum(vf v) { return _mm512_reduce_add_ps(v); }
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int W = 8;
using vf = __m256;
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vset1(float a) { return _mm256_set1_ps(a); }
inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline vf vload(const bf16* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline void vstore(float* p, vf v) { _mm256_storeu_ps(p, v); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
inline float vsum(vf v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#else
constexpr int W = 1;
using vf = float;
inline vf vzero() { return 0.f; }
inline vf vset1(float a) { return a; }
inline vf vload(const float* p) { return *p; }
inline vf vload(const bf16* p) { return static_cast<float>(*p); }
inline void vstore(float* p, vf v) { *p = v; }
inline vf vfma(vf a, vf b, vf c) { return a * b + c; }
inline vf vadd(vf a, vf b) { return a + b; }
inline float vsum(vf v) { return v; }
#endif

inline void prefetch(const void* p) { __builtin_prefetch(p, 0, 3); }

// Unroll so that one loop iteration covers 256 bytes of weights (four 64-byte lines) with
// independent accumulator chains: enough loads in flight and no FMA latency stall.
template <typename T>
constexpr int unroll() { return std::max(1, int(256 / (W * sizeof(T)))); }

// s[b] = dot(w[0:d], x[b][0:d]) for NB batch rows. `pf`, when not null, is prefetched at the same
// offsets as `w` is read (the next row of a gather, or `w` + kPrefetchBytes for a stream).
template <int NB, typename T>
inline void dot_rows(const T* __restrict w, const float* __restrict x, int64_t d, const T* pf,
                     float* s) {
  constexpr int U = NB == 1 ? unroll<T>() : std::max(1, unroll<T>() / 2);
  constexpr int64_t kLine = 64 / sizeof(T);
  vf acc[NB][U];
  for (int b = 0; b < NB; ++b)
    for (int u = 0; u < U; ++u) acc[b][u] = vzero();
  int64_t k = 0;
  for (; k + U * W <= d; k += U * W) {
    if (pf)
      for (int64_t l = 0; l < U * W; l += kLine) prefetch(pf + k + l);
    for (int u = 0; u < U; ++u) {
      const vf wv = vload(w + k + u * W);
      for (int b = 0; b < NB; ++b) acc[b][u] = vfma(wv, vload(x + b * d + k + u * W), acc[b][u]);
    }
  }
  for (; k + W <= d; k += W) {
    const vf wv = vload(w + k);
    for (int b = 0; b < NB; ++b) acc[b][0] = vfma(wv, vload(x + b * d + k), acc[b][0]);
  }
  for (int b = 0; b < NB; ++b) {
    vf t = acc[b][0];
    for (int u = 1; u < U; ++u) t = vadd(t, acc[b][u]);
    s[b] = vsum(t);
  }
  for (; k < d; ++k) {  // tail when d is not a multiple of the vector width
    const float wk = static_cast<float>(w[k]);
    for (int b = 0; b < NB; ++b) s[b] += wk * x[b * d + k];
  }
}

// y[b][c0:c1] += h[b] * row[c0:c1] for NB batch rows; `pf` is prefetched alongside.
template <int NB, typename T>
inline void axpy_rows(const T* __restrict row, const float* h, float* __restrict y, int64_t ld,
                      int64_t c0, int64_t c1, const T* pf) {
  constexpr int64_t kLine = 64 / sizeof(T);
  vf hv[NB];
  for (int b = 0; b < NB; ++b) hv[b] = vset1(h[b]);
  int64_t c = c0;
  for (; c + W <= c1; c += W) {
    if (pf && (c - c0) % kLine == 0) prefetch(pf + c);
    const vf wv = vload(row + c);
    for (int b = 0; b < NB; ++b) vstore(y + b * ld + c, vfma(hv[b], wv, vload(y + b * ld + c)));
  }
  for (; c < c1; ++c) {
    const float wc = static_cast<float>(row[c]);
    for (int b = 0; b < NB; ++b) y[b * ld + c] += h[b] * wc;
  }
}

template <typename T>
const T* ptr_or_null(const OptTensor& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

// ---- the three passes ---------------------------------------------------------------------------

// Below this many bytes of weights a layer runs on one thread: waking a team costs more than it
// saves, and on a loaded machine a preempted team member can stall the call for a time slice.
constexpr int64_t kParallelBytes = 2 << 20;

// fn(task) for task in [0, n_tasks), dynamically scheduled over torch's intra-op threads.
template <typename Fn>
void parallel_tasks(int64_t n_tasks, const Fn& fn, bool parallel = true) {
  const int nt = (!parallel || at::in_parallel_region()) ? 1 : int(std::min<int64_t>(at::get_num_threads(), n_tasks));
  if (nt <= 1) {
    for (int64_t i = 0; i < n_tasks; ++i) fn(i);
    return;
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t i = 0; i < n_tasks; ++i) fn(i);
}

// z[b][j] = x[b] . w_in[j] + b_in[j] for all j; active[j] = any_b act_on(act_value(z[b][j])).
template <int NB, typename T>
void gate_pass(const T* w, const float* x, const T* bias, int64_t f, int64_t d, float t, int64_t act, float* z,
               uint8_t* active) {
  constexpr int64_t kRows = 64;  // rows per task: a 1 MB (fp32, d = 4096) sequential stream
  parallel_tasks((f + kRows - 1) / kRows, [&](int64_t task) {
    const int64_t r0 = task * kRows, r1 = std::min(f, r0 + kRows);
    const int64_t ahead = kPrefetchBytes / int64_t(sizeof(T));
    float s[NB];
    for (int64_t j = r0; j < r1; ++j) {
      const T* row = w + j * d;
      dot_rows<NB, T>(row, x, d, row + ahead, s);
      bool any = false;
      for (int b = 0; b < NB; ++b) {
        const float v = s[b] + (bias ? static_cast<float>(bias[j]) : 0.f);
        z[b * f + j] = v;
        any |= act_on(act_value(v, act), t, act);
      }
      active[j] = any;
    }
  });
}

// For the gate computed by at::mm (large batches): only the mask.
void mask_pass(const float* z, int64_t nb, int64_t f, float t, int64_t act, uint8_t* active) {
  at::parallel_for(0, f, 4096, [&](int64_t r0, int64_t r1) {
    for (int64_t j = r0; j < r1; ++j) {
      bool any = false;
      for (int64_t b = 0; b < nb; ++b) any |= act_on(act_value(z[b * f + j], act), t, act);
      active[j] = any;
    }
  });
}

// h[k][b] = act_t(z[b][j_k]) * (x[b] . w_up[j_k] + b_up[j_k])  (or the activation alone, plain FFN).
template <int NB, typename T>
void up_pass(const T* w_up, const float* x, const T* b_up, const float* z, const int64_t* idx,
             int64_t n, int64_t f, int64_t d, float t, int64_t act, float* h) {
  constexpr int64_t kRows = 16;
  parallel_tasks((n + kRows - 1) / kRows, [&](int64_t task) {
    const int64_t k0 = task * kRows, k1 = std::min(n, k0 + kRows);
    float s[NB];
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t j = idx[k];
      if (w_up) {
        const T* next = k + 1 < n ? w_up + idx[k + 1] * d : nullptr;
        dot_rows<NB, T>(w_up + j * d, x, d, next, s);
      }
      for (int b = 0; b < NB; ++b) {
        const float hj = activate(z[b * f + j], t, act);  // FATReLU: NaN propagates; CATS: dropped
        h[k * NB + b] = w_up ? hj * (s[b] + (b_up ? static_cast<float>(b_up[j]) : 0.f)) : hj;
      }
    }
  });
}

// Number of down-pass chunks for n active rows: a function of n only (deterministic sums).
inline int64_t down_chunks(int64_t n) { return std::max<int64_t>(1, std::min<int64_t>(16, n / 32)); }

// partial[c][b][:] = sum over rows k of chunk c of h[k][b] * w_out_t[j_k][:].
template <int NB, typename T>
void down_pass(const T* w_out_t, const float* h, const int64_t* idx, int64_t n, int64_t d_out, float* partial) {
  const int64_t n_chunks = down_chunks(n), per = (n + n_chunks - 1) / n_chunks;
  parallel_tasks(n_chunks, [&](int64_t c) {
    float* y = partial + c * NB * d_out;
    std::fill(y, y + NB * d_out, 0.f);
    const int64_t k1 = std::min(n, (c + 1) * per);
    for (int64_t k = c * per; k < k1; ++k) {
      const T* next = k + 1 < k1 ? w_out_t + idx[k + 1] * d_out : nullptr;
      axpy_rows<NB, T>(w_out_t + idx[k] * d_out, h + k * NB, y, d_out, 0, d_out, next);
    }
  });
}

// y[b][:] = b_out + sum_c partial[c][b][:], chunks added in order.
template <int NB, typename T>
void sum_partials(const float* partial, int64_t n_chunks, const T* b_out, int64_t d_out, float* y) {
  for (int b = 0; b < NB; ++b) {
    float* yb = y + b * d_out;
    for (int64_t c = 0; c < d_out; ++c) yb[c] = b_out ? static_cast<float>(b_out[c]) : 0.f;
    for (int64_t k = 0; k < n_chunks; ++k) {
      const float* p = partial + (k * NB + b) * d_out;
      for (int64_t c = 0; c < d_out; ++c) yb[c] += p[c];
    }
  }
}



// ---- the fused single pass (batch <= kMaxFusedBatch, dense_above >= 1) ---------------------------
//
// One parallel region instead of three: each task owns kFusedRows consecutive neurons and does
// gate -> threshold -> up -> down for them, accumulating into its own fp32 partial output. Only
// one barrier (the region's end), so a thread the OS preempts costs at most its current task,
// and the up/down rows of a task are gathered with lockstep prefetch of the next active row.
constexpr int64_t kFusedRows = 256;

template <int NB, typename T>
void fused_task(const FfnArgs& a, const float* x32, int64_t task, float* y, bool* touched) {
  const int64_t d = a.x.size(1), f = a.w_in.size(0), d_out = a.w_out_t.size(1);
  const T* w_in = a.w_in.data_ptr<T>();
  const T* w_up = a.w_up ? a.w_up->data_ptr<T>() : nullptr;
  const T* w_out_t = a.w_out_t.data_ptr<T>();
  const T* b_in = ptr_or_null<T>(a.b_in);
  const T* b_up = ptr_or_null<T>(a.b_up);
  const int64_t act = a.activation;
  const float t = threshold_for(a.threshold, act);
  const int64_t r0 = task * kFusedRows, r1 = std::min(f, r0 + kFusedRows);
  const int64_t ahead = kPrefetchBytes / int64_t(sizeof(T));

  // gate for the task's rows; keep the activated values of the active ones.
  int64_t idx[kFusedRows];
  float h[kFusedRows * NB];
  int64_t n = 0;
  float s[NB];
  for (int64_t j = r0; j < r1; ++j) {
    const T* row = w_in + j * d;
    dot_rows<NB, T>(row, x32, d, row + ahead, s);
    bool any = false;
    for (int b = 0; b < NB; ++b) {
      const float v = s[b] + (b_in ? static_cast<float>(b_in[j]) : 0.f);
      const float av = act_value(v, act);
      const bool on = act_on(av, t, act);  // FATReLU: a NaN gate is active and propagates
      h[n * NB + b] = on ? av : 0.f;
      any |= on;
    }
    if (any) idx[n++] = j;
  }
  if (n == 0) {
    *touched = false;
    return;
  }
  // up (gated FFNs): only the active rows, prefetching the next one in lockstep.
  if (w_up) {
    for (int64_t k = 0; k < n; ++k) {
      const T* next = k + 1 < n ? w_up + idx[k + 1] * d : nullptr;
      dot_rows<NB, T>(w_up + idx[k] * d, x32, d, next, s);
      for (int b = 0; b < NB; ++b) h[k * NB + b] *= s[b] + (b_up ? static_cast<float>(b_up[idx[k]]) : 0.f);
    }
  }
  // down: whole active rows of w_out_t into this task's partial.
  std::fill(y, y + NB * d_out, 0.f);
  for (int64_t k = 0; k < n; ++k) {
    const T* next = k + 1 < n ? w_out_t + idx[k + 1] * d_out : nullptr;
    axpy_rows<NB, T>(w_out_t + idx[k] * d_out, h + k * NB, y, d_out, 0, d_out, next);
  }
  *touched = true;
}

template <int NB, typename T>
at::Tensor fused_ffn(const FfnArgs& a, const at::Tensor& x32) {
  const int64_t f = a.w_in.size(0), d_out = a.w_out_t.size(1);
  const int64_t n_tasks = (f + kFusedRows - 1) / kFusedRows;
  const auto f32 = a.x.options().dtype(at::kFloat);
  at::Tensor partial = new_scratch({n_tasks, NB, d_out}, f32);
  std::vector<char> touched(n_tasks, 0);
  const float* xp = x32.data_ptr<float>();
  float* pp = partial.data_ptr<float>();
  const int64_t weight_bytes = (a.w_in.numel() + a.w_out_t.numel() + (a.w_up ? a.w_up->numel() : 0)) * int64_t(sizeof(T));
  const bool parallel = weight_bytes >= kParallelBytes;
  parallel_tasks(n_tasks, [&](int64_t task) {
    bool used = false;
    fused_task<NB, T>(a, xp, task, pp + task * NB * d_out, &used);
    touched[task] = used;
  }, parallel);
  // y = b_out + partials in task order (fixed order: results independent of scheduling),
  // parallel over column slices.
  at::Tensor y32 = new_scratch({NB, d_out}, f32);
  const T* b_out = ptr_or_null<T>(a.b_out);
  float* yp = y32.data_ptr<float>();
  constexpr int64_t kCols = 1024;
  parallel_tasks((d_out + kCols - 1) / kCols, [&](int64_t slice) {
    const int64_t c0 = slice * kCols, c1 = std::min(d_out, c0 + kCols);
    for (int b = 0; b < NB; ++b) {
      float* yb = yp + b * d_out;
      for (int64_t c = c0; c < c1; ++c) yb[c] = b_out ? static_cast<float>(b_out[c]) : 0.f;
      for (int64_t k = 0; k < n_tasks; ++k) {
        if (!touched[k]) continue;
        const float* pk = pp + (k * NB + b) * d_out;
        for (int64_t c = c0; c < c1; ++c) yb[c] += pk[c];
      }
    }
  }, parallel);
  return std::is_same<T, float>::value ? y32 : y32.to(a.x.scalar_type());
}

// ---- driver ---------------------------------------------------------------------------------------

// Runs one chunk of at most kMaxFusedBatch rows through the up and down passes.
template <int NB, typename T>
void sparse_tail_chunk(const FfnArgs& a, const float* x32, const float* z, const int64_t* idx,
                       int64_t n, float* h, float* partial, float* y) {
  const int64_t f = a.w_in.size(0), d = a.x.size(1), d_out = a.w_out_t.size(1);
  const T* w_up = a.w_up ? a.w_up->data_ptr<T>() : nullptr;
  up_pass<NB, T>(w_up, x32, ptr_or_null<T>(a.b_up), z, idx, n, f, d, threshold_for(a.threshold, a.activation),
                 a.activation, h);
  down_pass<NB, T>(a.w_out_t.data_ptr<T>(), h, idx, n, d_out, partial);
  sum_partials<NB, T>(partial, down_chunks(n), ptr_or_null<T>(a.b_out), d_out, y);
}

template <int NB, typename T>
void gate_chunk(const FfnArgs& a, const float* x32, float* z, uint8_t* active) {
  const int64_t f = a.w_in.size(0), d = a.x.size(1);
  gate_pass<NB, T>(a.w_in.data_ptr<T>(), x32, ptr_or_null<T>(a.b_in), f, d, threshold_for(a.threshold, a.activation),
                   a.activation, z, active);
}

// Compile-time batch sizes 1..8: the accumulators must live in registers.
template <typename T, typename Fn>
void with_batch(int64_t nb, Fn&& fn) {
  switch (nb) {
    case 1: fn(std::integral_constant<int, 1>{}); break;
    case 2: fn(std::integral_constant<int, 2>{}); break;
    case 3: fn(std::integral_constant<int, 3>{}); break;
    case 4: fn(std::integral_constant<int, 4>{}); break;
    case 5: fn(std::integral_constant<int, 5>{}); break;
    case 6: fn(std::integral_constant<int, 6>{}); break;
    case 7: fn(std::integral_constant<int, 7>{}); break;
    default: fn(std::integral_constant<int, 8>{}); break;
  }
}

template <typename T>
at::Tensor sparse_ffn_cpu_impl(const FfnArgs& a) {
  const int64_t nb = a.x.size(0), d = a.x.size(1), f = a.w_in.size(0), d_out = a.w_out_t.size(1);
  const auto f32 = a.x.options().dtype(at::kFloat);
  const at::Tensor x32 = a.x.to(at::kFloat).contiguous();
  at::Tensor out;
  if (nb <= kMaxFusedBatch && a.dense_above >= 1.0) {
    with_batch<T>(nb, [&](auto NB) { out = fused_ffn<decltype(NB)::value, T>(a, x32); });
    return out;
  }

  // 1. gate / fc pre-activation z [nb, f] and the union mask.
  at::Tensor z;
  auto active = at::empty({f}, a.x.options().dtype(at::kByte));
  if (nb <= kMaxFusedBatch) {
    z = new_scratch({nb, f}, f32);
    with_batch<T>(nb, [&](auto NB) {
      gate_chunk<decltype(NB)::value, T>(a, x32.data_ptr<float>(), z.data_ptr<float>(), active.data_ptr<uint8_t>());
    });
  } else {
    z = (a.b_in ? at::addmm(*a.b_in, a.x, a.w_in.t()) : at::mm(a.x, a.w_in.t())).to(at::kFloat).contiguous();
    mask_pass(z.data_ptr<float>(), nb, f, threshold_for(a.threshold, a.activation), a.activation,
              active.data_ptr<uint8_t>());
  }

  // 2. compact the union (serial: f bytes, microseconds against milliseconds of streaming).
  std::vector<int64_t> idx;
  idx.reserve(f);
  const uint8_t* m = active.data_ptr<uint8_t>();
  for (int64_t j = 0; j < f; ++j)
    if (m[j]) idx.push_back(j);
  const int64_t n = int64_t(idx.size());

  // 3. dense when the union is large: the gate is already paid for, MKL does up and down.
  if (union_runs_dense(n, f, a.dense_above)) return dense_tail(a, z);

  // 4. sparse up + down, in chunks of at most kMaxFusedBatch rows (weights re-read per chunk;
  //    large batches have large unions and usually took the dense branch above).
  at::Tensor y32 = new_scratch({nb, d_out}, f32);
  at::Tensor h = new_scratch({std::max<int64_t>(n, 1) * kMaxFusedBatch}, f32);
  at::Tensor partial = new_scratch({down_chunks(n) * kMaxFusedBatch * d_out}, f32);
  for (int64_t b0 = 0; b0 < nb; b0 += kMaxFusedBatch) {
    const int64_t cb = std::min<int64_t>(kMaxFusedBatch, nb - b0);
    const float* xz = x32.data_ptr<float>() + b0 * d;
    const float* zc = z.data_ptr<float>() + b0 * f;
    with_batch<T>(cb, [&](auto NB) {
      sparse_tail_chunk<decltype(NB)::value, T>(a, xz, zc, idx.data(), n, h.data_ptr<float>(),
                                                partial.data_ptr<float>(), y32.data_ptr<float>() + b0 * d_out);
    });
  }
  return std::is_same<T, float>::value ? y32 : y32.to(a.x.scalar_type());
}

at::Tensor dispatch_cpu(const char* op, const FfnArgs& a) {
  check_ffn_args(op, a);
  TORCH_CHECK(a.x.device().is_cpu(), op, ": the CPU kernel got x on ", a.x.device(), ".");
  const auto dt = a.x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16, op, ": the CPU kernels support float32 and "
              "bfloat16, got ", dt, "; convert the model with .float() or .bfloat16().");
  if (a.dense_above <= 0.0) return dense_ffn(a);
  return dt == at::kFloat ? sparse_ffn_cpu_impl<float>(a) : sparse_ffn_cpu_impl<bf16>(a);
}

at::Tensor sparse_gated_ffn_cpu(const at::Tensor& x, const at::Tensor& w_gate, const at::Tensor& w_up,
                                const at::Tensor& w_down_t, double threshold, const OptTensor& b_gate,
                                const OptTensor& b_up, const OptTensor& b_down, double dense_above,
                                int64_t kernel, int64_t activation) {
  const at::Tensor xc = x.contiguous();
  return dispatch_cpu("actsparse.sparse_gated_ffn", FfnArgs{xc, w_gate, &w_up, w_down_t, threshold, b_gate, b_up,
                                                            b_down, dense_above, kernel, activation});
}

at::Tensor sparse_ffn_cpu(const at::Tensor& x, const at::Tensor& w_fc, const at::Tensor& w_proj_t,
                          double threshold, const OptTensor& b_fc, const OptTensor& b_proj, double dense_above,
                          int64_t kernel, int64_t activation) {
  const at::Tensor xc = x.contiguous();
  const OptTensor none;
  return dispatch_cpu("actsparse.sparse_ffn", FfnArgs{xc, w_fc, nullptr, w_proj_t, threshold, b_fc, none, b_proj,
                                                      dense_above, kernel, activation});
}

}  // namespace
}  // namespace actsparse

TORCH_LIBRARY_IMPL(actsparse, CPU, m) {
  m.impl("sparse_gated_ffn", &actsparse::sparse_gated_ffn_cpu);
  m.impl("sparse_ffn", &actsparse::sparse_ffn_cpu);
}
