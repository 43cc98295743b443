// The CPU kernels' shared layer (sparse_ffn_cpu.cpp, teal_ffn_cpu.cpp): a minimal vector layer
// (AVX-512 / AVX2 / scalar), row dot products and row AXPYs with prefetch, dynamically scheduled
// tasks, and the row-sparse accumulation y += h_k * W[j_k] over a list of active rows (the down
// pass of the sparse FFN; TEAL's input-sparse projections are the same operation).
#pragma once

#include "sparse_ffn.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <immintrin.h>

#include <algorithm>
#include <optional>
#include <type_traits>

namespace actsparse {
namespace cpu {

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

}  // namespace cpu
}  // namespace actsparse
