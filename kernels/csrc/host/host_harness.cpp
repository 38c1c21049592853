// Host (CPU) entry points that run the CUDA kernels' own per-element code, upfirdn2d_core.h and bias_act_core.h,
// one element at a time, exactly as each GPU thread does. Built by kernels/host_harness.py with plain g++ and
// called through ctypes, so the kernels' index math is tested on machines without a GPU. Not part of the extension.
#include <cstdint>

#include "../bias_act_core.h"
#include "../upfirdn2d_core.h"

using namespace fstrain_kernels;

namespace {

template <typename scalar_t>
void upfirdn2d_host(const scalar_t* x, const scalar_t* taps, scalar_t* out, const int64_t* sizes,
                    const int64_t* strides, const int* config) {
  // sizes: n, c, in_h, in_w, out_h, out_w; strides: n, c, h, w (elements);
  // config: up_x, up_y, down_x, down_y, pad_x0, pad_y0, kernel_h, kernel_w.
  Upfirdn2dParams p;
  p.channels = sizes[1];
  p.in_h = static_cast<int>(sizes[2]);
  p.in_w = static_cast<int>(sizes[3]);
  p.out_h = static_cast<int>(sizes[4]);
  p.out_w = static_cast<int>(sizes[5]);
  p.total = sizes[0] * sizes[1] * sizes[4] * sizes[5];
  p.stride_n = strides[0];
  p.stride_c = strides[1];
  p.stride_h = strides[2];
  p.stride_w = strides[3];
  p.up_x = config[0];
  p.up_y = config[1];
  p.down_x = config[2];
  p.down_y = config[3];
  p.pad_x0 = config[4];
  p.pad_y0 = config[5];
  p.kernel_h = config[6];
  p.kernel_w = config[7];
  for (int64_t index = 0; index < p.total; ++index) out[index] = upfirdn2d_point<scalar_t, scalar_t>(x, taps, p, index);
}

template <typename scalar_t>
void bias_act_host(const scalar_t* x, const scalar_t* bias, const scalar_t* saved, scalar_t* out, int64_t total,
                   int64_t inner, int64_t channels, int act, int mode, double alpha, double gain, double clamp) {
  BiasActParams p;
  p.total = total;
  p.inner = inner;
  p.channels = channels;
  p.act = act;
  p.mode = mode;
  p.has_bias = bias != nullptr;
  p.has_clamp = clamp >= 0;
  const scalar_t a = static_cast<scalar_t>(alpha), g = static_cast<scalar_t>(gain);
  const scalar_t c = static_cast<scalar_t>(clamp >= 0 ? clamp : 0.0);
  for (int64_t i = 0; i < total; ++i) {
    if (mode == 0) {
      const scalar_t b = p.has_bias ? bias[bias_index(i, p)] : scalar_t(0);
      out[i] = bias_act_forward<scalar_t>(x[i] + b, a, g, c, p);
    } else {
      out[i] = x[i] * bias_act_slope<scalar_t>(saved[i], a, g, c, p);
    }
  }
}

}  // namespace

extern "C" {

void fsk_upfirdn2d_f64(const double* x, const double* taps, double* out, const int64_t* sizes,
                       const int64_t* strides, const int* config) {
  upfirdn2d_host<double>(x, taps, out, sizes, strides, config);
}

void fsk_upfirdn2d_f32(const float* x, const float* taps, float* out, const int64_t* sizes, const int64_t* strides,
                       const int* config) {
  upfirdn2d_host<float>(x, taps, out, sizes, strides, config);
}

void fsk_bias_act_f64(const double* x, const double* bias, const double* saved, double* out, int64_t total,
                      int64_t inner, int64_t channels, int act, int mode, double alpha, double gain, double clamp) {
  bias_act_host<double>(x, bias, saved, out, total, inner, channels, act, mode, alpha, gain, clamp);
}

}  // extern "C"
