// The op schema of actsparse (torch.ops.actsparse.*), the argument checks every backend shares,
// and the dense path. Kernels register themselves per backend in sparse_ffn_cpu.cpp and
// sparse_ffn_cuda.cu (TORCH_LIBRARY_IMPL), so a CPU-only build simply has no CUDA kernel.
#include "sparse_ffn.h"

#include <torch/library.h>

#include <atomic>
#include <cmath>

namespace actsparse {

namespace {
std::atomic<bool> g_poison{false};

bool set_debug_poison(bool on) { return g_poison.exchange(on); }

std::string describe(const at::Tensor& t) {
  std::ostringstream s;
  s << t.scalar_type() << " " << t.sizes() << " on " << t.device();
  return s.str();
}

void check_weight(const char* op, const char* name, const at::Tensor& w, const at::Tensor& x,
                  int64_t rows, int64_t cols) {
  TORCH_CHECK(w.device() == x.device(), op, ": ", name, " is on ", w.device(), " but x is on ",
              x.device(), "; move the module (model.to(device)) so weights and inputs share a device.");
  TORCH_CHECK(w.scalar_type() == x.scalar_type(), op, ": ", name, " has dtype ", w.scalar_type(),
              " but x has dtype ", x.scalar_type(), "; cast one of them (e.g. x.to(", name, ".dtype)).");
  TORCH_CHECK(w.dim() == 2 && w.size(0) == rows && (cols < 0 || w.size(1) == cols), op, ": ", name,
              " must be neuron-major [f, d] = [", rows, ", ", (cols < 0 ? std::string("d_out") : std::to_string(cols)),
              "], got ", describe(w),
              ". Down/proj weights are stored transposed (nn.Linear's weight.t().contiguous()).");
  TORCH_CHECK(w.is_contiguous(), op, ": ", name, " ", describe(w), " is not contiguous (strides ",
              w.strides(), "); store it once with .contiguous() (SparseFFN.from_dense does) rather "
              "than paying a copy on every call.");
}

void check_bias(const char* op, const char* name, const OptTensor& b, const at::Tensor& x, int64_t n) {
  if (!b.has_value()) return;
  TORCH_CHECK(b->device() == x.device() && b->scalar_type() == x.scalar_type(), op, ": ", name, " is ",
              describe(*b), " but x is ", describe(x), "; biases must match x's dtype and device.");
  TORCH_CHECK(b->dim() == 1 && b->size(0) == n && b->is_contiguous(), op, ": ", name,
              " must be a contiguous 1-D tensor of size ", n, ", got ", describe(*b), ".");
}
}  // namespace

bool debug_poison() { return g_poison.load(std::memory_order_relaxed); }

at::Tensor new_scratch(at::IntArrayRef size, const at::TensorOptions& opts) {
  if (debug_poison()) return at::full(size, NAN, opts);
  return at::empty(size, opts);
}

void check_ffn_args(const char* op, const FfnArgs& a) {
  const auto& x = a.x;
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D [batch, d], got ", describe(x),
              "; flatten leading dimensions (the Python front actsparse.plugins.sparse_ffn does).");
  TORCH_CHECK(x.size(0) > 0 && x.size(1) > 0, op, ": x must be non-empty, got ", describe(x), ".");
  const int64_t d = x.size(1), f = a.w_in.size(0);
  const char* in_name = a.w_up ? "w_gate" : "w_fc";
  check_weight(op, in_name, a.w_in, x, f, d);
  TORCH_CHECK(f > 0, op, ": ", in_name, " has no rows (f = 0).");
  if (a.w_up) check_weight(op, "w_up", *a.w_up, x, f, d);
  check_weight(op, a.w_up ? "w_down_t" : "w_proj_t", a.w_out_t, x, f, -1);
  check_bias(op, a.w_up ? "b_gate" : "b_fc", a.b_in, x, f);
  check_bias(op, "b_up", a.b_up, x, f);
  check_bias(op, a.w_up ? "b_down" : "b_proj", a.b_out, x, a.w_out_t.size(1));
  TORCH_CHECK(std::isfinite(a.threshold), op, ": threshold must be finite, got ", a.threshold, ".");
  TORCH_CHECK(a.kernel >= 0 && a.kernel < kKernelCount, op, ": kernel must be 0 (three kernels), 1 (three kernels "
              "with programmatic dependent launch), 2 (persistent, batch 1) or 3 (tensor cores, batches 2-8), got ",
              a.kernel, ". The Python fronts take names: actsparse.plugins.sparse_ffn_dispatch.KERNELS.");
  TORCH_CHECK(a.activation == kActFatrelu || a.activation == kActCatsSilu, op, ": activation must be 0 (FATReLU: "
              "z where z >= threshold) or 1 (CATS: SiLU(z) where |SiLU(z)| > threshold), got ", a.activation, ".");
  TORCH_CHECK(a.activation != kActCatsSilu || a.threshold >= 0.0, op, ": the CATS threshold is a magnitude "
              "(|SiLU(z)| > threshold) and must be >= 0, got ", a.threshold, ".");
}

float threshold_f32(double t) {
  float f = static_cast<float>(t);
  if (static_cast<double>(f) < t) f = std::nextafter(f, INFINITY);
  return f;
}

float threshold_for(double t, int64_t act) {
  if (act != kActCatsSilu) return threshold_f32(t);
  float f = static_cast<float>(t);
  if (static_cast<double>(f) > t) f = std::nextafter(f, -INFINITY);
  return f;
}

double threshold_in_down(double t, at::ScalarType dt) {
  if (dt == at::kDouble) return t;
  if (dt == at::kFloat) return threshold_for(t, kActCatsSilu);
  at::Tensor v = at::scalar_tensor(t, at::kDouble).to(dt);
  if (v.to(at::kDouble).item<double>() > t) v = at::nextafter(v, at::scalar_tensor(-INFINITY, v.options()));
  return v.to(at::kDouble).item<double>();
}

void activate_dense_(at::Tensor& h, double threshold, int64_t act) {
  if (act == kActCatsSilu) {
    h = at::silu(h);
    // keep |a| > t; a NaN a is dropped, as CATSActivation's where(|a| > t, a, 0) does
    h.masked_fill_(at::logical_not(h.abs() > threshold_in_down(threshold, h.scalar_type())), 0);
  } else if (threshold == 0.0) {
    h.relu_();  // FATReLU_0 == ReLU: relu(z) and z >= 0 ? z : 0 agree everywhere
  } else {
    // FATReLU: keep z >= t (and NaN, which propagates as in relu), exact zeros elsewhere; the
    // threshold rounded up to h's dtype, so the comparison is exact (see threshold_in).
    h.masked_fill_(h < threshold_in(threshold, h.scalar_type()), 0);
  }
}

at::Tensor active_dense(const at::Tensor& z, double threshold, int64_t act) {
  if (act == kActCatsSilu) return at::silu(z).abs() > threshold_in_down(threshold, z.scalar_type());
  return at::logical_not(z < threshold_in(threshold, z.scalar_type()));  // NaN counts as active
}

double threshold_in(double t, at::ScalarType dt) {
  if (dt == at::kDouble) return t;
  if (dt == at::kFloat) return threshold_f32(t);
  // bf16 / fp16: round on the CPU and step up one representable value when rounding went down.
  at::Tensor v = at::scalar_tensor(t, at::kDouble).to(dt);
  if (v.to(at::kDouble).item<double>() < t) v = at::nextafter(v, at::scalar_tensor(INFINITY, v.options()));
  return v.to(at::kDouble).item<double>();
}

at::Tensor dense_tail(const FfnArgs& a, const at::Tensor& z_in) {
  // In place on a private copy of z: one elementwise kernel for the activation and one for the
  // gating product, the same as the dense F.linear path (no compare + zeros + where).
  at::Tensor h = z_in.scalar_type() == a.x.scalar_type() && z_in.is_contiguous() ? z_in : z_in.to(a.x.scalar_type()).contiguous();
  activate_dense_(h, a.threshold, a.activation);
  if (a.w_up) h.mul_(a.b_up ? at::addmm(*a.b_up, a.x, a.w_up->t()) : at::mm(a.x, a.w_up->t()));
  return a.b_out ? at::addmm(*a.b_out, h, a.w_out_t) : at::mm(h, a.w_out_t);
}

at::Tensor dense_ffn(const FfnArgs& a) {
  // z is a fresh result of mm/addmm, so dense_tail may overwrite it.
  auto z = a.b_in ? at::addmm(*a.b_in, a.x, a.w_in.t()) : at::mm(a.x, a.w_in.t());
  return dense_tail(a, z);
}

}  // namespace actsparse

TORCH_LIBRARY(actsparse, m) {
  // y = (FATReLU_t(x w_gateᵀ + b_gate) * (x w_upᵀ + b_up)) w_down_t + b_down (activation=0), or with
  // CATS's SiLU(z)·1[|SiLU(z)| > t] in place of FATReLU (activation=1).
  // All weights neuron-major [f, d]; x [batch, d]. Up and down touch only the neurons active
  // for some row of the batch; above `dense_above` * f active neurons they run dense.
  m.def("sparse_gated_ffn(Tensor x, Tensor w_gate, Tensor w_up, Tensor w_down_t, float threshold=0., "
        "Tensor? b_gate=None, Tensor? b_up=None, Tensor? b_down=None, float dense_above=1., int kernel=0, int activation=0) -> Tensor");
  // y = FATReLU_t(x w_fcᵀ + b_fc) w_proj_t + b_proj (GPT-2 / BERT / OPT FFNs carry biases).
  m.def("sparse_ffn(Tensor x, Tensor w_fc, Tensor w_proj_t, float threshold=0., "
        "Tensor? b_fc=None, Tensor? b_proj=None, float dense_above=1., int kernel=0, int activation=0) -> Tensor");
  // TEAL (activation: 0 SiLU, 1 ReLU, 2 GELU, 3 GELU-tanh; the FFN's own): the projections read
  // x·1[|x| > input_threshold] and x1·1[|x1| > down_threshold], x1 = act(x w_in) (* x w_up).
  // w_in_t / w_up_t input-major [d, f], w_out_t [f, d_out]; CPU kernel in teal_ffn_cpu.cpp.
  m.def("teal_ffn(Tensor x, Tensor w_in_t, Tensor? w_up_t, Tensor w_out_t, float input_threshold, "
        "float down_threshold, Tensor? b_in=None, Tensor? b_up=None, Tensor? b_out=None, int activation=0, "
        "float dense_above=1.) -> Tensor");
  // Tests only: NaN-fill outputs and scratch before kernels run. Returns the previous setting.
  m.def("_set_debug_poison(bool on) -> bool", &actsparse::set_debug_poison);
}
