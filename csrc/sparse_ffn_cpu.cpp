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
#include "sparse_ffn_cpu_common.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace actsparse {
namespace {

using namespace cpu;

// ---- the three passes ---------------------------------------------------------------------------

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
