// The per-element arithmetic of bias_act, shared by the CUDA kernel and a host-compiled test harness
// (kernels/host_harness.py runs exactly this code on the CPU).
//
// forward:  y = clamp(gain * act(x + bias), -clamp, clamp)
// gradient: dx = dy * slope(y), slope read off the saved output y: y > 0 exactly when x + bias > 0 because
//           gain > 0 and alpha >= 0 (the Python side sends other cases to the reference); zero where clamped.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace fstrain_kernels {

// Same numbering as kernels/backends.py ACT_CODES.
enum Activation : int { kLinear = 0, kRelu = 1, kLrelu = 2 };

struct BiasActParams {
  int64_t total;
  int64_t inner;     // elements per step along `dim` (product of the sizes after it)
  int64_t channels;  // size of `dim`
  int act;
  int mode;          // 0 forward, 1 gradient
  bool has_bias;
  bool has_clamp;
  double alpha, gain, clamp;
};

FSK_HOST_DEVICE inline int64_t bias_index(int64_t i, const BiasActParams& p) { return (i / p.inner) % p.channels; }

// v = x + bias, already summed.
template <typename acc_t>
FSK_HOST_DEVICE inline acc_t bias_act_forward(acc_t v, acc_t alpha, acc_t gain, acc_t clamp, const BiasActParams& p) {
  if (p.act == kRelu) {
    v = v > acc_t(0) ? v : acc_t(0);
  } else if (p.act == kLrelu) {
    v = v > acc_t(0) ? v : v * alpha;
  }
  v *= gain;
  if (p.has_clamp) v = v > clamp ? clamp : (v < -clamp ? -clamp : v);
  return v;
}

// d(output)/d(input) given the saved output y; `stored_clamp` is the clamp rounded to y's storage type.
template <typename acc_t>
FSK_HOST_DEVICE inline acc_t bias_act_slope(acc_t y, acc_t alpha, acc_t gain, acc_t stored_clamp,
                                            const BiasActParams& p) {
  acc_t slope = gain;
  if (p.act == kRelu) {
    slope = y > acc_t(0) ? gain : acc_t(0);
  } else if (p.act == kLrelu) {
    slope = y > acc_t(0) ? gain : gain * alpha;
  }
  if (p.has_clamp && !(y < stored_clamp && y > -stored_clamp)) slope = acc_t(0);
  return slope;
}

}  // namespace fstrain_kernels
