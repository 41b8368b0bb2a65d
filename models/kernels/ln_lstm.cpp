// The time loop of one ln_lstm layer (models/layer_norm_cells.py) in C++, forward and
// backward, built and called by models/ln_lstm_kernel.py. Per step: one matrix product,
// then one pass over each row that does all of the step's element-wise work (the layer
// norms of both sides of the gates, the nonlinearities, the cell update and its layer
// norm), in place of the twenty-odd small ATen kernels, each a pass over memory, that the
// Python loop runs. Rows are split between ATen's intra-op threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// exp for float in a form the compiler vectorizes (glibc's expf is a scalar call):
// range reduction by ln 2 and a degree-6 polynomial, within 1 ulp on [-87, 88]. The input
// is clamped so the result stays finite (sigmoid and tanh saturate long before), and a
// NaN stays NaN.
inline float exp_vec(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float k = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}
inline double exp_vec(double x) { return std::exp(x); }  // double: exactness for gradcheck

template <typename T> inline T sigmoid(T x) { return T(1) / (T(1) + exp_vec(-x)); }
template <typename T> inline T tanh_vec(T x) { return T(2) / (T(1) + exp_vec(T(-2) * x)) - T(1); }

// Layer norm of n values without gain: out = (x - mean) / std; returns 1 / std.
template <typename T>
__attribute__((always_inline)) inline T normalize(const T* __restrict x, T* __restrict out, int64_t n, T eps,
                                                  T* mean_out = nullptr) {
  T mean = 0, var = 0;
#pragma omp simd reduction(+ : mean)
  for (int64_t j = 0; j < n; ++j) mean += x[j];
  mean /= n;
#pragma omp simd reduction(+ : var)
  for (int64_t j = 0; j < n; ++j) var += (x[j] - mean) * (x[j] - mean);
  const T rstd = T(1) / std::sqrt(var / n + eps);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) out[j] = (x[j] - mean) * rstd;
  if (mean_out) *mean_out = mean;
  return rstd;
}

// Its backward: the gradient of x from that of the normalised values (in place).
template <typename T>
__attribute__((always_inline)) inline void normalize_backward(T* __restrict d, const T* __restrict xhat, T rstd, int64_t n) {
  T sum = 0, dot = 0;
#pragma omp simd reduction(+ : sum, dot)
  for (int64_t j = 0; j < n; ++j) {
    sum += d[j];
    dot += d[j] * xhat[j];
  }
  sum /= n;
  dot /= n;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) d[j] = rstd * (d[j] - sum - xhat[j] * dot);
}

constexpr int64_t kGrain = 4;  // rows per task: a row is about a microsecond of work

// What one layer keeps from its forward for its backward, all (T, B, .) time-major. The
// input side's normalised values are not kept but recomputed from xp and their statistics:
// reading them back would cost as much memory traffic as reading xp, and writing them
// is saved.
struct Saved {
  at::Tensor hs, cells, x_mean, x_rstd, hhat, h_rstd, acts, chat, c_rstd, tanh_c;
};

template <typename T>
void forward_steps(const at::Tensor& xp, const at::Tensor& bias, const at::Tensor& gain_ih,
                   const at::Tensor& weight_hh, const at::Tensor& gain_hh,
                   const at::Tensor& gain_c, const at::Tensor& shift_c, T eps, at::Tensor& out,
                   Saved& s) {
  const int64_t steps = xp.size(0), batch = xp.size(1), H = weight_hh.size(1), G = 4 * H;
  const at::Tensor w_t = weight_hh.t();
  at::Tensor hh = xp.new_empty({batch, G});
  const T* bias_p = bias.data_ptr<T>();
  const T* g_ih = gain_ih.data_ptr<T>();
  const T* g_hh = gain_hh.data_ptr<T>();
  const T* g_c = gain_c.data_ptr<T>();
  const T* s_c = shift_c.data_ptr<T>();
  const T* xp_p = xp.data_ptr<T>();
  T* x_mean_p = s.x_mean.data_ptr<T>();
  T* x_rstd_p = s.x_rstd.data_ptr<T>();
  T* out_p = out.data_ptr<T>();
  for (int64_t t = 0; t < steps; ++t) {
    at::mm_out(hh, s.hs[t], w_t);
    const T* hh_p = hh.data_ptr<T>();
    T* hhat_t = s.hhat[t].data_ptr<T>();
    T* h_rstd_t = s.h_rstd[t].data_ptr<T>();
    T* act_t = s.acts[t].data_ptr<T>();
    const T* c_prev = s.cells[t].data_ptr<T>();
    T* c_t = s.cells[t + 1].data_ptr<T>();
    T* chat_t = s.chat[t].data_ptr<T>();
    T* c_rstd_t = s.c_rstd[t].data_ptr<T>();
    T* tc_t = s.tanh_c[t].data_ptr<T>();
    T* h_t = s.hs[t + 1].data_ptr<T>();
    at::parallel_for(0, batch, kGrain, [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(G);
      T* __restrict xn = scratch.data();
      for (int64_t b = begin; b < end; ++b) {
        const int64_t row = t * batch + b;
        T* __restrict hn = hhat_t + b * G;
        T* __restrict a = act_t + b * G;
        for (int64_t k = 0; k < 4; ++k) {
          x_rstd_p[row * 4 + k] =
              normalize(xp_p + row * G + k * H, xn + k * H, H, eps, x_mean_p + row * 4 + k);
          h_rstd_t[b * 4 + k] = normalize(hh_p + b * G + k * H, hn + k * H, H, eps);
        }
#pragma omp simd
        for (int64_t j = 0; j < G; ++j) a[j] = xn[j] * g_ih[j] + hn[j] * g_hh[j] + bias_p[j];
#pragma omp simd
        for (int64_t j = 0; j < 2 * H; ++j) a[j] = sigmoid(a[j]);
#pragma omp simd
        for (int64_t j = 2 * H; j < 3 * H; ++j) a[j] = tanh_vec(a[j]);
#pragma omp simd
        for (int64_t j = 3 * H; j < G; ++j) a[j] = sigmoid(a[j]);
        const T* __restrict cp = c_prev + b * H;
        T* __restrict c = c_t + b * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) c[j] = a[H + j] * cp[j] + a[j] * a[2 * H + j];
        T* __restrict ch = chat_t + b * H;
        c_rstd_t[b] = normalize(c, ch, H, eps);
        T* __restrict tc = tc_t + b * H;
        T* __restrict h = h_t + b * H;
        T* __restrict o = out_p + (b * steps + t) * H;  // (B, T, H)
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          tc[j] = tanh_vec(ch[j] * g_c[j] + s_c[j]);
          h[j] = a[3 * H + j] * tc[j];
          o[j] = h[j];
        }
      }
    });
  }
}

// Gradients summed over every row and step: per thread first, so the threads never
// write to the same place, then over the threads.
template <typename T>
struct ThreadSums {
  at::Tensor sums;  // (threads, width)
  ThreadSums(const at::Tensor& like, int64_t width)
      : sums(at::zeros({at::get_num_threads(), width}, like.options())) {}
  T* mine() { return sums.data_ptr<T>() + at::get_thread_num() * sums.size(1); }
  at::Tensor total(int64_t begin, int64_t width) const {
    return sums.narrow(1, begin, width).sum(0);
  }
};

template <typename T>
void backward_steps(const at::Tensor& d_out, const at::Tensor& xp, at::Tensor& d_h,
                    at::Tensor& d_c, const at::Tensor& gain_ih, const at::Tensor& weight_hh,
                    const at::Tensor& gain_hh, const at::Tensor& gain_c, const Saved& s,
                    at::Tensor& d_xp, at::Tensor& d_hh, ThreadSums<T>& sums) {
  const int64_t batch = d_out.size(0), steps = d_out.size(1), H = weight_hh.size(1), G = 4 * H;
  const T* g_ih = gain_ih.data_ptr<T>();
  const T* xp_p = xp.data_ptr<T>();
  const T* g_hh = gain_hh.data_ptr<T>();
  const T* g_c = gain_c.data_ptr<T>();
  const T* d_out_p = d_out.data_ptr<T>();
  const T* x_mean_p = s.x_mean.data_ptr<T>();
  const T* x_rstd_p = s.x_rstd.data_ptr<T>();
  T* d_xp_p = d_xp.data_ptr<T>();
  T* dh = d_h.data_ptr<T>();
  T* dc = d_c.data_ptr<T>();
  for (int64_t t = steps - 1; t >= 0; --t) {
    const T* c_prev = s.cells[t].data_ptr<T>();
    const T* hhat_t = s.hhat[t].data_ptr<T>();
    const T* h_rstd_t = s.h_rstd[t].data_ptr<T>();
    const T* act_t = s.acts[t].data_ptr<T>();
    const T* chat_t = s.chat[t].data_ptr<T>();
    const T* c_rstd_t = s.c_rstd[t].data_ptr<T>();
    const T* tc_t = s.tanh_c[t].data_ptr<T>();
    T* dhh_t = d_hh[t].data_ptr<T>();
    at::parallel_for(0, batch, kGrain, [&](int64_t begin, int64_t end) {
      // Summed: d bias (G), d gain_ih (G), d gain_hh (G), d gain_c (H), d shift_c (H).
      T* __restrict sum = sums.mine();
      std::vector<T> scratch(G);
      T* __restrict xn = scratch.data();
      for (int64_t b = begin; b < end; ++b) {
        const int64_t row = t * batch + b;
        for (int64_t k = 0; k < 4; ++k) {
          const T* __restrict x = xp_p + row * G + k * H;
          const T mean = x_mean_p[row * 4 + k], rstd = x_rstd_p[row * 4 + k];
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) xn[k * H + j] = (x[j] - mean) * rstd;
        }
        const T* __restrict a = act_t + b * G;
        const T* __restrict tc = tc_t + b * H;
        const T* __restrict ch = chat_t + b * H;
        const T* __restrict cp = c_prev + b * H;
        const T* __restrict hn = hhat_t + b * G;
        const T* __restrict d_o = d_out_p + (b * steps + t) * H;  // (B, T, H)
        T* __restrict dhr = dh + b * H;  // d h_t in, d of the normalised cell out
        T* __restrict dcr = dc + b * H;  // d c_t in, d c_{t-1} out
        T* __restrict dp = d_xp_p + row * G;  // d of the gates' pre-activations, then of xp
        T* __restrict dhh = dhh_t + b * G;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const T g = d_o[j] + dhr[j];
          const T o = a[3 * H + j];
          const T dcn = g * o * (T(1) - tc[j] * tc[j]);
          dp[3 * H + j] = g * tc[j] * o * (T(1) - o);
          sum[3 * G + j] += dcn * ch[j];
          sum[3 * G + H + j] += dcn;
          dhr[j] = dcn * g_c[j];
        }
        normalize_backward(dhr, ch, c_rstd_t[b], H);
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const T d = dcr[j] + dhr[j];
          const T i = a[j], f = a[H + j], g = a[2 * H + j];
          dp[j] = d * g * i * (T(1) - i);
          dp[H + j] = d * cp[j] * f * (T(1) - f);
          dp[2 * H + j] = d * i * (T(1) - g * g);
          dcr[j] = d * f;
        }
#pragma omp simd
        for (int64_t j = 0; j < G; ++j) {
          sum[j] += dp[j];
          sum[G + j] += dp[j] * xn[j];
          sum[2 * G + j] += dp[j] * hn[j];
          dhh[j] = dp[j] * g_hh[j];
          dp[j] *= g_ih[j];
        }
        for (int64_t k = 0; k < 4; ++k) {
          normalize_backward(dhh + k * H, hn + k * H, h_rstd_t[b * 4 + k], H);
          normalize_backward(dp + k * H, xn + k * H, x_rstd_p[row * 4 + k], H);
        }
      }
    });
    at::mm_out(d_h, d_hh[t], weight_hh);
  }
}

void check(const at::Tensor& x, int64_t dims, const char* name) {
  TORCH_CHECK(x.dim() == dims && x.is_contiguous() && x.device().is_cpu(), "ln_lstm kernel: ",
              name, " must be a contiguous CPU tensor of ", dims, " dimensions");
}

// xp (T, B, 4H) = W_ih x_t for every step, time-major -> out (B, T, H), batch-first, and
// what the backward needs (h_T and c_T are the last of hs and cells).
std::vector<at::Tensor> ln_lstm_forward(const at::Tensor& xp, const at::Tensor& bias,
                                        const at::Tensor& gain_ih, const at::Tensor& weight_hh,
                                        const at::Tensor& gain_hh, const at::Tensor& gain_c,
                                        const at::Tensor& shift_c, const at::Tensor& h0,
                                        const at::Tensor& c0, double eps) {
  for (const auto* x : {&bias, &gain_ih, &gain_hh, &gain_c, &shift_c}) check(*x, 1, "a gain");
  check(xp, 3, "xp");
  check(weight_hh, 2, "weight_hh");
  const int64_t steps = xp.size(0), batch = xp.size(1), H = weight_hh.size(1);
  Saved s{xp.new_empty({steps + 1, batch, H}), xp.new_empty({steps + 1, batch, H}),
          xp.new_empty({steps, batch, 4}), xp.new_empty({steps, batch, 4}),
          xp.new_empty({steps, batch, 4 * H}), xp.new_empty({steps, batch, 4}),
          xp.new_empty({steps, batch, 4 * H}), xp.new_empty({steps, batch, H}),
          xp.new_empty({steps, batch}), xp.new_empty({steps, batch, H})};
  s.hs[0].copy_(h0);
  s.cells[0].copy_(c0);
  auto out = xp.new_empty({batch, steps, H});
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "ln_lstm_forward", [&] {
    forward_steps<scalar_t>(xp, bias, gain_ih, weight_hh, gain_hh, gain_c, shift_c,
                            static_cast<scalar_t>(eps), out, s);
  });
  return {out, s.hs, s.cells, s.x_mean, s.x_rstd, s.hhat, s.h_rstd, s.acts, s.chat, s.c_rstd,
          s.tanh_c};
}

std::vector<at::Tensor> ln_lstm_backward(const at::Tensor& d_out, const at::Tensor& xp,
                                         const at::Tensor& d_h_last,
                                         const at::Tensor& d_c_last, const at::Tensor& gain_ih,
                                         const at::Tensor& weight_hh, const at::Tensor& gain_hh,
                                         const at::Tensor& gain_c, at::TensorList saved) {
  const Saved s{saved[0], saved[1], saved[2], saved[3], saved[4],
                saved[5], saved[6], saved[7], saved[8], saved[9]};
  const int64_t batch = d_out.size(0), steps = d_out.size(1), H = weight_hh.size(1), G = 4 * H;
  auto d_h = d_h_last.contiguous().clone();
  auto d_c = d_c_last.contiguous().clone();
  auto d_xp = d_out.new_empty({steps, batch, G});
  auto d_hh = d_out.new_empty({steps, batch, G});
  std::vector<at::Tensor> sums;
  AT_DISPATCH_FLOATING_TYPES(d_out.scalar_type(), "ln_lstm_backward", [&] {
    ThreadSums<scalar_t> per_thread(d_out, 3 * G + 2 * H);
    backward_steps<scalar_t>(d_out.contiguous(), xp, d_h, d_c, gain_ih, weight_hh, gain_hh, gain_c,
                             s, d_xp, d_hh, per_thread);
    for (int64_t begin : {int64_t(0), G, 2 * G}) sums.push_back(per_thread.total(begin, G));
    for (int64_t begin : {3 * G, 3 * G + H}) sums.push_back(per_thread.total(begin, H));
  });
  auto flat = [](const at::Tensor& x) { return x.reshape({-1, x.size(-1)}); };
  auto d_weight = at::mm(flat(d_hh).t(), flat(s.hs.narrow(0, 0, steps)));
  // d xp, d bias, d gain_ih, d weight_hh, d gain_hh, d gain_c, d shift_c, d h0, d c0
  return {d_xp, sums[0], sums[1], d_weight, sums[2], sums[3], sums[4], d_h, d_c};
}

}  // namespace

TORCH_LIBRARY(rnn_orch, m) {
  m.def("ln_lstm_forward(Tensor xp, Tensor bias, Tensor gain_ih, Tensor weight_hh, "
        "Tensor gain_hh, Tensor gain_c, Tensor shift_c, Tensor h0, Tensor c0, float eps) "
        "-> Tensor[]", &ln_lstm_forward);
  m.def("ln_lstm_backward(Tensor d_out, Tensor xp, Tensor d_h_last, Tensor d_c_last, Tensor gain_ih, "
        "Tensor weight_hh, Tensor gain_hh, Tensor gain_c, Tensor[] saved) -> Tensor[]",
        &ln_lstm_backward);
}
