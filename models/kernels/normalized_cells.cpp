// The time loops of the normalized cells (ln_lstm, ln_gru: models/layer_norm_cells.py;
// bn_lstm: models/batch_norm_lstm.py) in C++, forward and backward, built and called by
// models/compiled_loops.py. Per step: one matrix product, then one pass over each row
// that does all of the step's element-wise work (the norms of both sides of the gates,
// the nonlinearities, the state update, the LSTM's cell norm), in place of the twenty-odd
// small ATen kernels, each a pass over memory, that the Python loop runs. Rows are split
// between ATen's intra-op threads; bn_lstm's statistics over the rows take passes of
// their own, split by unit.
//
// Layouts: xp, the input side's product W_ih x_t for every step, and everything a
// backward keeps are (T, B, .) time-major, so a step's rows are contiguous; the outputs
// and their gradients are (B, T, H), as the layer returns them. The input side's
// normalised values are not kept but recomputed from xp and their statistics: reading
// them back would cost the same memory traffic as reading xp, and writing them is saved.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
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
inline double exp_vec(double x) { return std::exp(x); }  // double: exact, for gradcheck

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + exp_vec(-x));
}
template <typename T>
inline T tanh_vec(T x) {
  return T(2) / (T(1) + exp_vec(T(-2) * x)) - T(1);
}

// Layer norm without gain of each of `blocks` blocks of H values of a row:
// out = (x - mean) / std per block, with each block's mean and 1 / std written out.
template <typename T>
inline void normalize(const T* __restrict x, T* __restrict out, int64_t blocks, int64_t H,
                      T eps, T* __restrict mean_out, T* __restrict rstd_out) {
  for (int64_t k = 0; k < blocks; ++k, x += H, out += H) {
    T mean = 0, var = 0;
#pragma omp simd reduction(+ : mean)
    for (int64_t j = 0; j < H; ++j) mean += x[j];
    mean /= H;
#pragma omp simd reduction(+ : var)
    for (int64_t j = 0; j < H; ++j) var += (x[j] - mean) * (x[j] - mean);
    const T rstd = T(1) / std::sqrt(var / H + eps);
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) out[j] = (x[j] - mean) * rstd;
    if (mean_out) mean_out[k] = mean;
    rstd_out[k] = rstd;
  }
}

// The normalised values again, from x and the statistics `normalize` wrote.
template <typename T>
inline void renormalize(const T* __restrict x, T* __restrict out, int64_t blocks, int64_t H,
                        const T* __restrict mean, const T* __restrict rstd) {
  for (int64_t k = 0; k < blocks; ++k, x += H, out += H) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) out[j] = (x[j] - mean[k]) * rstd[k];
  }
}

// Layer norm's backward, block by block, in place: the gradient of x from that of the
// normalised values xhat.
template <typename T>
inline void normalize_backward(T* __restrict d, const T* __restrict xhat, int64_t blocks,
                               int64_t H, const T* __restrict rstd) {
  for (int64_t k = 0; k < blocks; ++k, d += H, xhat += H) {
    T sum = 0, dot = 0;
#pragma omp simd reduction(+ : sum, dot)
    for (int64_t j = 0; j < H; ++j) {
      sum += d[j];
      dot += d[j] * xhat[j];
    }
    sum /= H;
    dot /= H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) d[j] = rstd[k] * (d[j] - sum - xhat[j] * dot);
  }
}

constexpr int64_t kGrain = 4;  // rows per task: a row is about a microsecond of work

// Sums over rows, taken in the passes over them: each thread adds its rows into its own
// row of `partial`, so that threads never write to the same place, and `total` adds the
// threads' rows up afterwards.
template <typename T>
struct ThreadSums {
  int64_t width;
  std::vector<T> partial, sum;
  explicit ThreadSums(int64_t width_)
      : width(width_), partial(at::get_num_threads() * width_, T(0)), sum(width_) {}
  void clear() { std::fill(partial.begin(), partial.end(), T(0)); }
  T* mine() { return partial.data() + at::get_thread_num() * width; }
  const T* total() {
    std::fill(sum.begin(), sum.end(), T(0));
    for (size_t k = 0; k < partial.size(); k += width)
      for (int64_t j = 0; j < width; ++j) sum[j] += partial[k + j];
    return sum.data();
  }
  // The total as a tensor like `like`, cut into parts of these widths.
  std::vector<at::Tensor> total_parts(const at::Tensor& like, std::vector<int64_t> widths) {
    at::Tensor all = like.new_empty({width});
    std::copy_n(total(), width, all.data_ptr<T>());
    std::vector<at::Tensor> parts;
    int64_t begin = 0;
    for (int64_t w : widths) {
      parts.push_back(all.narrow(0, begin, w));
      begin += w;
    }
    return parts;
  }
};

void check(const at::Tensor& x, int64_t dims, const char* name) {
  TORCH_CHECK(x.dim() == dims && x.is_contiguous() && x.device().is_cpu(),
              "normalized cell kernel: ", name, " must be a contiguous CPU tensor of ", dims,
              " dimensions");
}

void check_count(at::TensorList tensors, size_t count, const char* what) {
  TORCH_CHECK(tensors.size() == count, what, " kernel: expected ", count, " tensors, got ",
              tensors.size());
}

at::Tensor flat(const at::Tensor& x) { return x.reshape({-1, x.size(-1)}); }

// ---- ln_lstm: gates i, f, g, o (torch's order), G = 4H ----------------------------------

struct LstmSaved {
  at::Tensor hs, cells, x_mean, x_rstd, hhat, h_rstd, acts, chat, c_rstd, tanh_c;
};

template <typename T>
void lstm_forward_steps(const at::Tensor& xp, const at::Tensor& bias,
                        const at::Tensor& gain_ih, const at::Tensor& weight_hh,
                        const at::Tensor& gain_hh, const at::Tensor& gain_c,
                        const at::Tensor& shift_c, T eps, at::Tensor& out, LstmSaved& s) {
  const int64_t steps = xp.size(0), batch = xp.size(1), H = weight_hh.size(1), G = 4 * H;
  const at::Tensor w_t = weight_hh.t();
  at::Tensor hh = xp.new_empty({batch, G});
  const T *bias_p = bias.data_ptr<T>(), *g_ih = gain_ih.data_ptr<T>();
  const T *g_hh = gain_hh.data_ptr<T>(), *g_c = gain_c.data_ptr<T>();
  const T *s_c = shift_c.data_ptr<T>(), *xp_p = xp.data_ptr<T>(), *hh_p = hh.data_ptr<T>();
  T *x_mean = s.x_mean.data_ptr<T>(), *x_rstd = s.x_rstd.data_ptr<T>();
  T *hhat = s.hhat.data_ptr<T>(), *h_rstd = s.h_rstd.data_ptr<T>();
  T *acts = s.acts.data_ptr<T>(), *cells = s.cells.data_ptr<T>(), *chat = s.chat.data_ptr<T>();
  T *c_rstd = s.c_rstd.data_ptr<T>(), *tanh_c = s.tanh_c.data_ptr<T>();
  T *hs = s.hs.data_ptr<T>(), *out_p = out.data_ptr<T>();
  for (int64_t t = 0; t < steps; ++t) {
    at::mm_out(hh, s.hs[t], w_t);
    at::parallel_for(0, batch, kGrain, [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(G);
      T* __restrict xn = scratch.data();
      for (int64_t b = begin; b < end; ++b) {
        const int64_t row = t * batch + b;  // in (T, B, .); the state at t is row + batch
        T* __restrict hn = hhat + row * G;
        T* __restrict a = acts + row * G;
        normalize(xp_p + row * G, xn, 4, H, eps, x_mean + row * 4, x_rstd + row * 4);
        normalize(hh_p + b * G, hn, 4, H, eps, static_cast<T*>(nullptr), h_rstd + row * 4);
#pragma omp simd
        for (int64_t j = 0; j < G; ++j) a[j] = xn[j] * g_ih[j] + hn[j] * g_hh[j] + bias_p[j];
#pragma omp simd
        for (int64_t j = 0; j < 2 * H; ++j) a[j] = sigmoid(a[j]);
#pragma omp simd
        for (int64_t j = 2 * H; j < 3 * H; ++j) a[j] = tanh_vec(a[j]);
#pragma omp simd
        for (int64_t j = 3 * H; j < G; ++j) a[j] = sigmoid(a[j]);
        const T* __restrict c_prev = cells + row * H;
        T* __restrict c = cells + (row + batch) * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) c[j] = a[H + j] * c_prev[j] + a[j] * a[2 * H + j];
        T* __restrict ch = chat + row * H;
        normalize(c, ch, 1, H, eps, static_cast<T*>(nullptr), c_rstd + row);
        T* __restrict tc = tanh_c + row * H;
        T* __restrict h = hs + (row + batch) * H;
        T* __restrict o = out_p + (b * steps + t) * H;
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

// Sums per thread: d bias, d gain_ih, d gain_hh (G each), d gain_c, d shift_c (H each).
template <typename T>
void lstm_backward_steps(const at::Tensor& d_out, const at::Tensor& xp, at::Tensor& d_h,
                         at::Tensor& d_c, const at::Tensor& gain_ih, const at::Tensor& weight_hh,
                         const at::Tensor& gain_hh, const at::Tensor& gain_c,
                         const LstmSaved& s, at::Tensor& d_xp, at::Tensor& d_hh,
                         ThreadSums<T>& sums) {
  const int64_t batch = d_out.size(0), steps = d_out.size(1), H = weight_hh.size(1), G = 4 * H;
  const T *g_ih = gain_ih.data_ptr<T>(), *g_hh = gain_hh.data_ptr<T>();
  const T *g_c = gain_c.data_ptr<T>(), *xp_p = xp.data_ptr<T>(), *d_out_p = d_out.data_ptr<T>();
  const T *x_mean = s.x_mean.data_ptr<T>(), *x_rstd = s.x_rstd.data_ptr<T>();
  const T *hhat = s.hhat.data_ptr<T>(), *h_rstd = s.h_rstd.data_ptr<T>();
  const T *acts = s.acts.data_ptr<T>(), *cells = s.cells.data_ptr<T>();
  const T *chat = s.chat.data_ptr<T>(), *c_rstd = s.c_rstd.data_ptr<T>();
  const T* tanh_c = s.tanh_c.data_ptr<T>();
  T *d_xp_p = d_xp.data_ptr<T>(), *d_hh_p = d_hh.data_ptr<T>();
  T *dh = d_h.data_ptr<T>(), *dc = d_c.data_ptr<T>();
  for (int64_t t = steps - 1; t >= 0; --t) {
    at::parallel_for(0, batch, kGrain, [&](int64_t begin, int64_t end) {
      T* __restrict sum = sums.mine();
      std::vector<T> scratch(G);
      T* __restrict xn = scratch.data();
      for (int64_t b = begin; b < end; ++b) {
        const int64_t row = t * batch + b;
        renormalize(xp_p + row * G, xn, 4, H, x_mean + row * 4, x_rstd + row * 4);
        const T* __restrict a = acts + row * G;
        const T* __restrict tc = tanh_c + row * H;
        const T* __restrict ch = chat + row * H;
        const T* __restrict c_prev = cells + row * H;
        const T* __restrict hn = hhat + row * G;
        const T* __restrict d_o = d_out_p + (b * steps + t) * H;
        T* __restrict dhr = dh + b * H;       // d h_t in, then d of the normalised cell
        T* __restrict dcr = dc + b * H;       // d c_t in, d c_{t-1} out
        T* __restrict dp = d_xp_p + row * G;  // d of the gates' pre-activations, then of xp
        T* __restrict dhh = d_hh_p + row * G;
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
        normalize_backward(dhr, ch, 1, H, c_rstd + row);
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const T d = dcr[j] + dhr[j];
          const T i = a[j], f = a[H + j], g = a[2 * H + j];
          dp[j] = d * g * i * (T(1) - i);
          dp[H + j] = d * c_prev[j] * f * (T(1) - f);
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
        normalize_backward(dhh, hn, 4, H, h_rstd + row * 4);
        normalize_backward(dp, xn, 4, H, x_rstd + row * 4);
      }
    });
    at::mm_out(d_h, d_hh[t], weight_hh);
  }
}

// xp (T, B, 4H) and (bias, gain_ih, weight_hh, gain_hh, gain_c, shift_c, h0, c0) -> out
// (B, T, H) and what the backward needs; h_T and c_T are the last rows of hs and cells.
std::vector<at::Tensor> ln_lstm_forward(const at::Tensor& xp, at::TensorList params,
                                        double eps) {
  check_count(params, 8, "ln_lstm");
  const at::Tensor &bias = params[0], &gain_ih = params[1], &weight_hh = params[2],
                   &gain_hh = params[3], &gain_c = params[4], &shift_c = params[5],
                   &h0 = params[6], &c0 = params[7];
  for (const auto* x : {&bias, &gain_ih, &gain_hh, &gain_c, &shift_c}) check(*x, 1, "a gain");
  check(xp, 3, "xp");
  check(weight_hh, 2, "weight_hh");
  const int64_t steps = xp.size(0), batch = xp.size(1), H = weight_hh.size(1);
  auto empty = [&](std::initializer_list<int64_t> shape) { return xp.new_empty(shape); };
  LstmSaved s{empty({steps + 1, batch, H}), empty({steps + 1, batch, H}),
              empty({steps, batch, 4}),     empty({steps, batch, 4}),
              empty({steps, batch, 4 * H}), empty({steps, batch, 4}),
              empty({steps, batch, 4 * H}), empty({steps, batch, H}),
              empty({steps, batch}),        empty({steps, batch, H})};
  s.hs[0].copy_(h0);
  s.cells[0].copy_(c0);
  auto out = empty({batch, steps, H});
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "ln_lstm_forward", [&] {
    lstm_forward_steps<scalar_t>(xp, bias, gain_ih, weight_hh, gain_hh, gain_c, shift_c,
                                 static_cast<scalar_t>(eps), out, s);
  });
  return {out,      s.hs,   s.cells,  s.x_mean, s.x_rstd,
          s.hhat,   s.h_rstd, s.acts, s.chat,   s.c_rstd, s.tanh_c};
}

// -> d xp, d bias, d gain_ih, d weight_hh, d gain_hh, d gain_c, d shift_c, d h0, d c0
std::vector<at::Tensor> ln_lstm_backward(const at::Tensor& d_out, const at::Tensor& xp,
                                         at::TensorList d_states, at::TensorList params,
                                         at::TensorList saved) {
  const at::Tensor &gain_ih = params[1], &weight_hh = params[2], &gain_hh = params[3],
                   &gain_c = params[4], &d_h_last = d_states[0], &d_c_last = d_states[1];
  const LstmSaved s{saved[0], saved[1], saved[2], saved[3], saved[4],
                    saved[5], saved[6], saved[7], saved[8], saved[9]};
  const int64_t batch = d_out.size(0), steps = d_out.size(1), H = weight_hh.size(1), G = 4 * H;
  auto d_h = d_h_last.contiguous().clone();
  auto d_c = d_c_last.contiguous().clone();
  auto d_xp = d_out.new_empty({steps, batch, G});
  auto d_hh = d_out.new_empty({steps, batch, G});
  std::vector<at::Tensor> sums;
  AT_DISPATCH_FLOATING_TYPES(d_out.scalar_type(), "ln_lstm_backward", [&] {
    ThreadSums<scalar_t> per_thread(3 * G + 2 * H);
    lstm_backward_steps<scalar_t>(d_out.contiguous(), xp, d_h, d_c, gain_ih, weight_hh,
                                  gain_hh, gain_c, s, d_xp, d_hh, per_thread);
    sums = per_thread.total_parts(d_out, {G, G, G, H, H});
  });
  auto d_weight = at::mm(flat(d_hh).t(), flat(s.hs.narrow(0, 0, steps)));
  return {d_xp, sums[0], sums[1], d_weight, sums[2], sums[3], sums[4], d_h, d_c};
}

// ---- ln_gru: gates r, z, n (torch's order), G = 3H -------------------------------------
//   r = sigmoid(x_r + h_r), z = sigmoid(x_z + h_z), n = tanh(x_n + r * h_n),
//   h_t = n + z * (h_{t-1} - n), where x = norm(W_ih x_t) + b_ih, h = norm(W_hh h_{t-1}) + b_hh

struct GruSaved {
  at::Tensor hs, x_mean, x_rstd, hhat, h_rstd, acts;
};

template <typename T>
void gru_forward_steps(const at::Tensor& xp, const at::Tensor& bias_ih,
                       const at::Tensor& gain_ih, const at::Tensor& weight_hh,
                       const at::Tensor& bias_hh, const at::Tensor& gain_hh, T eps,
                       at::Tensor& out, GruSaved& s) {
  const int64_t steps = xp.size(0), batch = xp.size(1), H = weight_hh.size(1), G = 3 * H;
  const at::Tensor w_t = weight_hh.t();
  at::Tensor hh = xp.new_empty({batch, G});
  const T *b_ih = bias_ih.data_ptr<T>(), *g_ih = gain_ih.data_ptr<T>();
  const T *b_hh = bias_hh.data_ptr<T>(), *g_hh = gain_hh.data_ptr<T>();
  const T *xp_p = xp.data_ptr<T>(), *hh_p = hh.data_ptr<T>();
  T *x_mean = s.x_mean.data_ptr<T>(), *x_rstd = s.x_rstd.data_ptr<T>();
  T *hhat = s.hhat.data_ptr<T>(), *h_rstd = s.h_rstd.data_ptr<T>();
  T *acts = s.acts.data_ptr<T>(), *hs = s.hs.data_ptr<T>(), *out_p = out.data_ptr<T>();
  for (int64_t t = 0; t < steps; ++t) {
    at::mm_out(hh, s.hs[t], w_t);
    at::parallel_for(0, batch, kGrain, [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(G);
      T* __restrict xn = scratch.data();
      for (int64_t b = begin; b < end; ++b) {
        const int64_t row = t * batch + b;
        T* __restrict hn = hhat + row * G;
        T* __restrict a = acts + row * G;
        normalize(xp_p + row * G, xn, 3, H, eps, x_mean + row * 3, x_rstd + row * 3);
        normalize(hh_p + b * G, hn, 3, H, eps, static_cast<T*>(nullptr), h_rstd + row * 3);
#pragma omp simd
        for (int64_t j = 0; j < 2 * H; ++j)
          a[j] = sigmoid(xn[j] * g_ih[j] + b_ih[j] + hn[j] * g_hh[j] + b_hh[j]);
#pragma omp simd
        for (int64_t j = 2 * H; j < G; ++j)
          a[j] = tanh_vec(xn[j] * g_ih[j] + b_ih[j] + a[j - 2 * H] * (hn[j] * g_hh[j] + b_hh[j]));
        const T* __restrict h_prev = hs + row * H;
        T* __restrict h = hs + (row + batch) * H;
        T* __restrict o = out_p + (b * steps + t) * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const T n = a[2 * H + j];
          h[j] = n + a[H + j] * (h_prev[j] - n);
          o[j] = h[j];
        }
      }
    });
  }
}

// Sums per thread: d bias_ih, d gain_ih, d bias_hh, d gain_hh (G each).
template <typename T>
void gru_backward_steps(const at::Tensor& d_out, const at::Tensor& xp, at::Tensor& d_h,
                        const at::Tensor& gain_ih, const at::Tensor& weight_hh,
                        const at::Tensor& bias_hh, const at::Tensor& gain_hh,
                        const GruSaved& s, at::Tensor& d_xp, at::Tensor& d_hh,
                        ThreadSums<T>& sums) {
  const int64_t batch = d_out.size(0), steps = d_out.size(1), H = weight_hh.size(1), G = 3 * H;
  const T *g_ih = gain_ih.data_ptr<T>(), *b_hh = bias_hh.data_ptr<T>();
  const T *g_hh = gain_hh.data_ptr<T>(), *xp_p = xp.data_ptr<T>();
  const T *d_out_p = d_out.data_ptr<T>(), *hs = s.hs.data_ptr<T>();
  const T *x_mean = s.x_mean.data_ptr<T>(), *x_rstd = s.x_rstd.data_ptr<T>();
  const T *hhat = s.hhat.data_ptr<T>(), *h_rstd = s.h_rstd.data_ptr<T>();
  const T* acts = s.acts.data_ptr<T>();
  T *d_xp_p = d_xp.data_ptr<T>(), *d_hh_p = d_hh.data_ptr<T>(), *dh = d_h.data_ptr<T>();
  for (int64_t t = steps - 1; t >= 0; --t) {
    at::parallel_for(0, batch, kGrain, [&](int64_t begin, int64_t end) {
      T* __restrict sum = sums.mine();
      std::vector<T> scratch(G);
      T* __restrict xn = scratch.data();
      for (int64_t b = begin; b < end; ++b) {
        const int64_t row = t * batch + b;
        renormalize(xp_p + row * G, xn, 3, H, x_mean + row * 3, x_rstd + row * 3);
        const T* __restrict a = acts + row * G;
        const T* __restrict hn = hhat + row * G;
        const T* __restrict h_prev = hs + row * H;
        const T* __restrict d_o = d_out_p + (b * steps + t) * H;
        T* __restrict dhr = dh + b * H;       // d h_t in, its direct share in d h_{t-1} out
        T* __restrict dp = d_xp_p + row * G;  // d of the input side's pre-activations, then of xp
        T* __restrict dhh = d_hh_p + row * G;  // the same for the recurrent side
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const T g = d_o[j] + dhr[j];
          const T r = a[j], z = a[H + j], n = a[2 * H + j];
          const T dn = g * (T(1) - z) * (T(1) - n * n);
          const T h_n = hn[2 * H + j] * g_hh[2 * H + j] + b_hh[2 * H + j];
          dp[j] = dn * h_n * r * (T(1) - r);
          dp[H + j] = g * (h_prev[j] - n) * z * (T(1) - z);
          dp[2 * H + j] = dn;
          dhh[j] = dp[j];
          dhh[H + j] = dp[H + j];
          dhh[2 * H + j] = dn * r;
          dhr[j] = g * z;
        }
#pragma omp simd
        for (int64_t j = 0; j < G; ++j) {
          sum[j] += dp[j];
          sum[G + j] += dp[j] * xn[j];
          sum[2 * G + j] += dhh[j];
          sum[3 * G + j] += dhh[j] * hn[j];
          dhh[j] *= g_hh[j];
          dp[j] *= g_ih[j];
        }
        normalize_backward(dhh, hn, 3, H, h_rstd + row * 3);
        normalize_backward(dp, xn, 3, H, x_rstd + row * 3);
      }
    });
    d_h.addmm_(d_hh[t], weight_hh);
  }
}

// xp (T, B, 3H) and (bias_ih, gain_ih, weight_hh, bias_hh, gain_hh, h0) -> out (B, T, H)
// and what the backward needs; h_T is the last row of hs.
std::vector<at::Tensor> ln_gru_forward(const at::Tensor& xp, at::TensorList params,
                                       double eps) {
  check_count(params, 6, "ln_gru");
  const at::Tensor &bias_ih = params[0], &gain_ih = params[1], &weight_hh = params[2],
                   &bias_hh = params[3], &gain_hh = params[4], &h0 = params[5];
  for (const auto* x : {&bias_ih, &gain_ih, &bias_hh, &gain_hh}) check(*x, 1, "a gain");
  check(xp, 3, "xp");
  check(weight_hh, 2, "weight_hh");
  const int64_t steps = xp.size(0), batch = xp.size(1), H = weight_hh.size(1);
  auto empty = [&](std::initializer_list<int64_t> shape) { return xp.new_empty(shape); };
  GruSaved s{empty({steps + 1, batch, H}), empty({steps, batch, 3}),
             empty({steps, batch, 3}),     empty({steps, batch, 3 * H}),
             empty({steps, batch, 3}),     empty({steps, batch, 3 * H})};
  s.hs[0].copy_(h0);
  auto out = empty({batch, steps, H});
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "ln_gru_forward", [&] {
    gru_forward_steps<scalar_t>(xp, bias_ih, gain_ih, weight_hh, bias_hh, gain_hh,
                                static_cast<scalar_t>(eps), out, s);
  });
  return {out, s.hs, s.x_mean, s.x_rstd, s.hhat, s.h_rstd, s.acts};
}

// -> d xp, d bias_ih, d gain_ih, d weight_hh, d bias_hh, d gain_hh, d h0
std::vector<at::Tensor> ln_gru_backward(const at::Tensor& d_out, const at::Tensor& xp,
                                        at::TensorList d_states, at::TensorList params,
                                        at::TensorList saved) {
  const at::Tensor &gain_ih = params[1], &weight_hh = params[2], &bias_hh = params[3],
                   &gain_hh = params[4], &d_h_last = d_states[0];
  const GruSaved s{saved[0], saved[1], saved[2], saved[3], saved[4], saved[5]};
  const int64_t batch = d_out.size(0), steps = d_out.size(1), H = weight_hh.size(1), G = 3 * H;
  auto d_h = d_h_last.contiguous().clone();
  auto d_xp = d_out.new_empty({steps, batch, G});
  auto d_hh = d_out.new_empty({steps, batch, G});
  std::vector<at::Tensor> sums;
  AT_DISPATCH_FLOATING_TYPES(d_out.scalar_type(), "ln_gru_backward", [&] {
    ThreadSums<scalar_t> per_thread(4 * G);
    gru_backward_steps<scalar_t>(d_out.contiguous(), xp, d_h, gain_ih, weight_hh, bias_hh,
                                 gain_hh, s, d_xp, d_hh, per_thread);
    sums = per_thread.total_parts(d_out, {G, G, G, G});
  });
  auto d_weight = at::mm(flat(d_hh).t(), flat(s.hs.narrow(0, 0, steps)));
  return {d_xp, sums[0], sums[1], d_weight, sums[2], sums[3], d_h};
}


// ---- bn_lstm: batch statistics per step, over the rows, per unit; gates as ln_lstm -----
//   gates = BN_ih(W_ih x_t) + BN_hh(W_hh h_{t-1}) + b,   c_t = f c_{t-1} + i g,
//   h_t = o tanh(BN_cell(c_t)),   BN_ih and BN_hh with gains only, BN_cell with a shift.
// In training the statistics are the batch's, and the running ones (one row per step of
// each running mean and variance) move towards them as F.batch_norm moves them; in
// evaluation the running ones normalise, and nothing changes.

// Per-unit mean and 1 / std over the rows of x (rows x width), for units [begin, end): in
// training the batch's (biased variance), with the running statistics updated; in
// evaluation the running ones.
template <typename T>
void column_statistics(const T* x, int64_t rows, int64_t width, int64_t begin, int64_t end,
                       bool from_batch, T eps, T momentum, T* __restrict running_mean,
                       T* __restrict running_var, T* __restrict mean, T* __restrict rstd) {
  if (!from_batch) {
    for (int64_t j = begin; j < end; ++j) {
      mean[j] = running_mean[j];
      rstd[j] = T(1) / std::sqrt(running_var[j] + eps);
    }
    return;
  }
  std::vector<T> var(end - begin, T(0));
  for (int64_t j = begin; j < end; ++j) mean[j] = 0;
  for (int64_t b = 0; b < rows; ++b) {
    const T* __restrict row = x + b * width;
#pragma omp simd
    for (int64_t j = begin; j < end; ++j) mean[j] += row[j];
  }
  for (int64_t j = begin; j < end; ++j) mean[j] /= rows;
  for (int64_t b = 0; b < rows; ++b) {
    const T* __restrict row = x + b * width;
#pragma omp simd
    for (int64_t j = begin; j < end; ++j)
      var[j - begin] += (row[j] - mean[j]) * (row[j] - mean[j]);
  }
  for (int64_t j = begin; j < end; ++j) {
    const T biased = var[j - begin] / rows;
    rstd[j] = T(1) / std::sqrt(biased + eps);
    running_mean[j] += momentum * (mean[j] - running_mean[j]);
    running_var[j] += momentum * (biased * rows / (rows - 1) - running_var[j]);
  }
}

// The same for every unit, the units split between the threads.
template <typename T>
void column_statistics(const T* x, int64_t rows, int64_t width, bool from_batch, T eps,
                       T momentum, T* running_mean, T* running_var, T* mean, T* rstd) {
  at::parallel_for(0, width, 64, [&](int64_t begin, int64_t end) {
    column_statistics(x, rows, width, begin, end, from_batch, eps, momentum, running_mean,
                      running_var, mean, rstd);
  });
}

// The running statistics of the steps one pass covers: (T, width) each.
struct Running {
  at::Tensor mean_ih, var_ih, mean_hh, var_hh, mean_c, var_c;
};

struct BnSaved {
  at::Tensor hs, cells, x_mean, x_rstd, hh, hh_mean, hh_rstd, acts, chat, c_rstd, tanh_c;
};

template <typename T>
void bn_forward_steps(const at::Tensor& xp, const at::Tensor& bias, const at::Tensor& gain_ih,
                      const at::Tensor& weight_hh, const at::Tensor& gain_hh,
                      const at::Tensor& gain_c, const at::Tensor& shift_c, Running& r,
                      bool from_batch, T eps, T momentum, at::Tensor& out, BnSaved& s) {
  const int64_t steps = xp.size(0), batch = xp.size(1), H = weight_hh.size(1), G = 4 * H;
  const at::Tensor w_t = weight_hh.t();
  std::vector<T> c_mean(H);
  const T *bias_p = bias.data_ptr<T>(), *g_ih = gain_ih.data_ptr<T>();
  const T *g_hh = gain_hh.data_ptr<T>(), *g_c = gain_c.data_ptr<T>();
  const T *s_c = shift_c.data_ptr<T>(), *xp_p = xp.data_ptr<T>();
  T *rm_ih = r.mean_ih.data_ptr<T>(), *rv_ih = r.var_ih.data_ptr<T>();
  T *rm_hh = r.mean_hh.data_ptr<T>(), *rv_hh = r.var_hh.data_ptr<T>();
  T *rm_c = r.mean_c.data_ptr<T>(), *rv_c = r.var_c.data_ptr<T>();
  T *x_mean = s.x_mean.data_ptr<T>(), *x_rstd = s.x_rstd.data_ptr<T>();
  T *hh = s.hh.data_ptr<T>(), *hh_mean = s.hh_mean.data_ptr<T>();
  T *hh_rstd = s.hh_rstd.data_ptr<T>(), *acts = s.acts.data_ptr<T>();
  T *cells = s.cells.data_ptr<T>(), *chat = s.chat.data_ptr<T>();
  T *c_rstd = s.c_rstd.data_ptr<T>(), *tanh_c = s.tanh_c.data_ptr<T>();
  T *hs = s.hs.data_ptr<T>(), *out_p = out.data_ptr<T>();
  // The input side's statistics wait for no step: all of them first, the steps split
  // between the threads.
  at::parallel_for(0, steps, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      column_statistics(xp_p + t * batch * G, batch, G, 0, G, from_batch, eps, momentum,
                        rm_ih + t * G, rv_ih + t * G, x_mean + t * G, x_rstd + t * G);
  });
  for (int64_t t = 0; t < steps; ++t) {
    const int64_t first = t * batch;
    at::Tensor hh_t = s.hh[t];
    at::mm_out(hh_t, s.hs[t], w_t);
    column_statistics(hh + first * G, batch, G, from_batch, eps, momentum, rm_hh + t * G,
                      rv_hh + t * G, hh_mean + t * G, hh_rstd + t * G);
    at::parallel_for(0, batch, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t row = first + b;
        const T* __restrict x = xp_p + row * G;
        const T* __restrict xm = x_mean + t * G;
        const T* __restrict xr = x_rstd + t * G;
        const T* __restrict h_in = hh + row * G;
        const T* __restrict hm = hh_mean + t * G;
        const T* __restrict hr = hh_rstd + t * G;
        T* __restrict a = acts + row * G;
#pragma omp simd
        for (int64_t j = 0; j < G; ++j)
          a[j] = (x[j] - xm[j]) * xr[j] * g_ih[j] + (h_in[j] - hm[j]) * hr[j] * g_hh[j] +
                 bias_p[j];
#pragma omp simd
        for (int64_t j = 0; j < 2 * H; ++j) a[j] = sigmoid(a[j]);
#pragma omp simd
        for (int64_t j = 2 * H; j < 3 * H; ++j) a[j] = tanh_vec(a[j]);
#pragma omp simd
        for (int64_t j = 3 * H; j < G; ++j) a[j] = sigmoid(a[j]);
        const T* __restrict c_prev = cells + row * H;
        T* __restrict c = cells + (row + batch) * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) c[j] = a[H + j] * c_prev[j] + a[j] * a[2 * H + j];
      }
    });
    const T* c_now = cells + (first + batch) * H;
    T* crstd = c_rstd + t * H;
    column_statistics(c_now, batch, H, from_batch, eps, momentum, rm_c + t * H, rv_c + t * H,
                      c_mean.data(), crstd);
    at::parallel_for(0, batch, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t row = first + b;
        const T* __restrict m = c_mean.data();
        const T* __restrict c = c_now + b * H;
        const T* __restrict a = acts + row * G;
        T* __restrict ch = chat + row * H;
        T* __restrict tc = tanh_c + row * H;
        T* __restrict h = hs + (row + batch) * H;
        T* __restrict o = out_p + (b * steps + t) * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          ch[j] = (c[j] - m[j]) * crstd[j];
          tc[j] = tanh_vec(ch[j] * g_c[j] + s_c[j]);
          h[j] = a[3 * H + j] * tc[j];
          o[j] = h[j];
        }
      }
    });
  }
}

// The gradient of a batch norm's input from that of its output before the gain (d, in
// place), per row: gain * rstd * (d - (sum_d + xhat * sum_dx) * per_row), where per_row
// is 1 / rows in training (the statistics depend on every row) and 0 in evaluation.
template <typename T>
inline void column_norm_backward(T* __restrict d, const T* __restrict x,
                                 const T* __restrict mean, const T* __restrict rstd,
                                 const T* __restrict gain, const T* __restrict sum_d,
                                 const T* __restrict sum_dx, T per_row, int64_t width) {
#pragma omp simd
  for (int64_t j = 0; j < width; ++j) {
    const T xhat = (x[j] - mean[j]) * rstd[j];
    d[j] = gain[j] * rstd[j] * (d[j] - per_row * (sum_d[j] + xhat * sum_dx[j]));
  }
}

// Sums, over every step: d bias, d gain_ih, d gain_hh (G each), d gain_c, d shift_c (H).
template <typename T>
void bn_backward_steps(const at::Tensor& d_out, const at::Tensor& xp, at::Tensor& d_h,
                       at::Tensor& d_c, const at::Tensor& gain_ih, const at::Tensor& weight_hh,
                       const at::Tensor& gain_hh, const at::Tensor& gain_c, bool from_batch,
                       const BnSaved& s, at::Tensor& d_xp, at::Tensor& d_hh, T* sums) {
  const int64_t batch = d_out.size(0), steps = d_out.size(1), H = weight_hh.size(1), G = 4 * H;
  const T *g_ih = gain_ih.data_ptr<T>(), *g_hh = gain_hh.data_ptr<T>();
  const T *g_c = gain_c.data_ptr<T>(), *d_out_p = d_out.data_ptr<T>(), *xp_p = xp.data_ptr<T>();
  const T *x_mean = s.x_mean.data_ptr<T>(), *x_rstd = s.x_rstd.data_ptr<T>();
  const T *hh = s.hh.data_ptr<T>(), *hh_mean = s.hh_mean.data_ptr<T>();
  const T *hh_rstd = s.hh_rstd.data_ptr<T>(), *acts = s.acts.data_ptr<T>();
  const T *cells = s.cells.data_ptr<T>(), *chat = s.chat.data_ptr<T>();
  const T *c_rstd = s.c_rstd.data_ptr<T>(), *tanh_c = s.tanh_c.data_ptr<T>();
  T *d_xp_p = d_xp.data_ptr<T>(), *d_hh_p = d_hh.data_ptr<T>();
  T *dh = d_h.data_ptr<T>(), *dc = d_c.data_ptr<T>();
  std::vector<T> d_cn(batch * H);
  ThreadSums<T> cell_sums(2 * H);  // of d_cn and d_cn * chat
  ThreadSums<T> gate_sums(3 * G);  // of dp, dp * xhat and dp * hhat
  const T per_row = from_batch ? T(1) / batch : T(0);
  for (int64_t t = steps - 1; t >= 0; --t) {
    const int64_t first = t * batch;
    const T *xm = x_mean + t * G, *xr = x_rstd + t * G;
    const T *hm = hh_mean + t * G, *hr = hh_rstd + t * G;
    cell_sums.clear();
    at::parallel_for(0, batch, kGrain, [&](int64_t begin, int64_t end) {
      T* __restrict sum = cell_sums.mine();
      for (int64_t b = begin; b < end; ++b) {
        const int64_t row = first + b;
        const T* __restrict a = acts + row * G;
        const T* __restrict tc = tanh_c + row * H;
        const T* __restrict ch = chat + row * H;
        const T* __restrict d_o = d_out_p + (b * steps + t) * H;
        const T* __restrict dhr = dh + b * H;
        T* __restrict dp = d_xp_p + row * G;
        T* __restrict dcn = d_cn.data() + b * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const T g = d_o[j] + dhr[j];
          const T o = a[3 * H + j];
          dcn[j] = g * o * (T(1) - tc[j] * tc[j]);
          dp[3 * H + j] = g * tc[j] * o * (T(1) - o);
          sum[j] += dcn[j];
          sum[H + j] += dcn[j] * ch[j];
        }
      }
    });
    const T* c1 = cell_sums.total();  // sums over the rows of d_cn, then of d_cn * chat
    const T* c2 = c1 + H;
    for (int64_t j = 0; j < H; ++j) {
      sums[3 * G + j] += c2[j];
      sums[3 * G + H + j] += c1[j];
    }
    gate_sums.clear();
    at::parallel_for(0, batch, kGrain, [&](int64_t begin, int64_t end) {
      T* __restrict sum = gate_sums.mine();
      for (int64_t b = begin; b < end; ++b) {
        const int64_t row = first + b;
        const T* __restrict a = acts + row * G;
        const T* __restrict ch = chat + row * H;
        const T* __restrict c_prev = cells + row * H;
        const T* __restrict crstd = c_rstd + t * H;
        const T* __restrict dcn = d_cn.data() + b * H;
        const T* __restrict x = xp_p + row * G;
        const T* __restrict h_in = hh + row * G;
        T* __restrict dcr = dc + b * H;
        T* __restrict dp = d_xp_p + row * G;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const T d_norm = g_c[j] * crstd[j] * (dcn[j] - per_row * (c1[j] + ch[j] * c2[j]));
          const T d = dcr[j] + d_norm;
          const T i = a[j], f = a[H + j], g = a[2 * H + j];
          dp[j] = d * g * i * (T(1) - i);
          dp[H + j] = d * c_prev[j] * f * (T(1) - f);
          dp[2 * H + j] = d * i * (T(1) - g * g);
          dcr[j] = d * f;
        }
        // dp is now the gradient of the gates' pre-activations, both sides' share
#pragma omp simd
        for (int64_t j = 0; j < G; ++j) {
          sum[j] += dp[j];
          sum[G + j] += dp[j] * (x[j] - xm[j]) * xr[j];
          sum[2 * G + j] += dp[j] * (h_in[j] - hm[j]) * hr[j];
        }
      }
    });
    const T* x1 = gate_sums.total();  // sums of dp, dp * xhat, dp * hhat
    const T *x2 = x1 + G, *h2 = x1 + 2 * G;
    for (int64_t j = 0; j < G; ++j) {
      sums[j] += x1[j];
      sums[G + j] += x2[j];
      sums[2 * G + j] += h2[j];
    }
    at::parallel_for(0, batch, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t row = first + b;
        T* __restrict dp = d_xp_p + row * G;
        T* __restrict dhh = d_hh_p + row * G;
        std::memcpy(dhh, dp, G * sizeof(T));
        column_norm_backward(dhh, hh + row * G, hm, hr, g_hh, x1, h2, per_row, G);
        column_norm_backward(dp, xp_p + row * G, xm, xr, g_ih, x1, x2, per_row, G);
      }
    });
    at::mm_out(d_h, d_hh[t], weight_hh);
  }
}

// xp (T, B, 4H) and (bias, gain_ih, weight_hh, gain_hh, gain_c, shift_c, h0, c0) -> out
// (B, T, H) and what the backward needs; h_T and c_T are the last rows of hs and cells.
// The running statistics (mean and variance of the input side, the recurrent side and
// the cell), (T, .) each, are views of the buffers' rows for these steps in training,
// updated in place; read in evaluation.
std::vector<at::Tensor> bn_lstm_forward(const at::Tensor& xp, at::TensorList params,
                                        at::TensorList running, bool from_batch, double eps,
                                        double momentum) {
  check_count(params, 8, "bn_lstm");
  check_count(running, 6, "bn_lstm's running statistics:");
  const at::Tensor &bias = params[0], &gain_ih = params[1], &weight_hh = params[2],
                   &gain_hh = params[3], &gain_c = params[4], &shift_c = params[5],
                   &h0 = params[6], &c0 = params[7];
  for (const auto* x : {&bias, &gain_ih, &gain_hh, &gain_c, &shift_c}) check(*x, 1, "a gain");
  for (const auto& x : running) check(x, 2, "a running statistic");
  check(xp, 3, "xp");
  check(weight_hh, 2, "weight_hh");
  const int64_t steps = xp.size(0), batch = xp.size(1), H = weight_hh.size(1), G = 4 * H;
  TORCH_CHECK(!from_batch || batch > 1, "bn_lstm kernel: batch statistics need 2 rows");
  Running r{running[0], running[1], running[2], running[3], running[4], running[5]};
  auto empty = [&](std::initializer_list<int64_t> shape) { return xp.new_empty(shape); };
  BnSaved s{empty({steps + 1, batch, H}), empty({steps + 1, batch, H}),
            empty({steps, G}),            empty({steps, G}),
            empty({steps, batch, G}),     empty({steps, G}),
            empty({steps, G}),            empty({steps, batch, G}),
            empty({steps, batch, H}),     empty({steps, H}),
            empty({steps, batch, H})};
  s.hs[0].copy_(h0);
  s.cells[0].copy_(c0);
  auto out = empty({batch, steps, H});
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "bn_lstm_forward", [&] {
    bn_forward_steps<scalar_t>(xp, bias, gain_ih, weight_hh, gain_hh, gain_c, shift_c, r,
                               from_batch, static_cast<scalar_t>(eps),
                               static_cast<scalar_t>(momentum), out, s);
  });
  return {out,       s.hs,      s.cells,  s.x_mean, s.x_rstd, s.hh,
          s.hh_mean, s.hh_rstd, s.acts,   s.chat,   s.c_rstd, s.tanh_c};
}

// -> d xp, d bias, d gain_ih, d weight_hh, d gain_hh, d gain_c, d shift_c, d h0, d c0
std::vector<at::Tensor> bn_lstm_backward(const at::Tensor& d_out, const at::Tensor& xp,
                                         at::TensorList d_states, at::TensorList params,
                                         bool from_batch, at::TensorList saved) {
  const at::Tensor &gain_ih = params[1], &weight_hh = params[2], &gain_hh = params[3],
                   &gain_c = params[4], &d_h_last = d_states[0], &d_c_last = d_states[1];
  const BnSaved s{saved[0], saved[1], saved[2], saved[3], saved[4],  saved[5],
                  saved[6], saved[7], saved[8], saved[9], saved[10]};
  const int64_t batch = d_out.size(0), steps = d_out.size(1), H = weight_hh.size(1), G = 4 * H;
  auto d_h = d_h_last.contiguous().clone();
  auto d_c = d_c_last.contiguous().clone();
  auto d_xp = d_out.new_empty({steps, batch, G});
  auto d_hh = d_out.new_empty({steps, batch, G});
  auto sums = d_out.new_zeros({3 * G + 2 * H});
  AT_DISPATCH_FLOATING_TYPES(d_out.scalar_type(), "bn_lstm_backward", [&] {
    bn_backward_steps<scalar_t>(d_out.contiguous(), xp, d_h, d_c, gain_ih, weight_hh, gain_hh,
                                gain_c, from_batch, s, d_xp, d_hh, sums.data_ptr<scalar_t>());
  });
  auto d_weight = at::mm(flat(d_hh).t(), flat(s.hs.narrow(0, 0, steps)));
  return {d_xp,
          sums.narrow(0, 0, G),
          sums.narrow(0, G, G),
          d_weight,
          sums.narrow(0, 2 * G, G),
          sums.narrow(0, 3 * G, H),
          sums.narrow(0, 3 * G + H, H),
          d_h,
          d_c};
}

}  // namespace

// Every cell's ops take the same shape of arguments: xp, the cell's tensors (`params`:
// the parameters in the order of its forward's arguments, the initial state last), and
// its settings; the backward takes the gradients of the outputs and of the final state
// (`d_states`) and returns those of xp and of every tensor in `params`, in order.
TORCH_LIBRARY(rnn_orch, m) {
  m.def("ln_lstm_forward(Tensor xp, Tensor[] params, float eps) -> Tensor[]",
        &ln_lstm_forward);
  m.def("ln_lstm_backward(Tensor d_out, Tensor xp, Tensor[] d_states, Tensor[] params, "
        "Tensor[] saved) -> Tensor[]",
        &ln_lstm_backward);
  m.def("ln_gru_forward(Tensor xp, Tensor[] params, float eps) -> Tensor[]", &ln_gru_forward);
  m.def("ln_gru_backward(Tensor d_out, Tensor xp, Tensor[] d_states, Tensor[] params, "
        "Tensor[] saved) -> Tensor[]",
        &ln_gru_backward);
  m.def("bn_lstm_forward(Tensor xp, Tensor[] params, Tensor(a!)[] running, bool from_batch, "
        "float eps, float momentum) -> Tensor[]",
        &bn_lstm_forward);
  m.def("bn_lstm_backward(Tensor d_out, Tensor xp, Tensor[] d_states, Tensor[] params, "
        "bool from_batch, Tensor[] saved) -> Tensor[]",
        &bn_lstm_backward);
}
