// The per-output arithmetic of upfirdn2d, shared by the CUDA kernel and a host-compiled test harness
// (kernels/host_harness.py runs exactly this code on the CPU, so its index math is tested without a GPU).
//
// For output position o along an axis the reference computes
//     y[o] = sum_t f[k-1-t] * u[o*down - pad0 + t],  t in [0, k),
// where u is the zero-inserted input (u[q] = x[q/up] when q % up == 0, else 0). Only the taps that land on a real
// input sample are visited, so the zeros are never materialised: about (k/up)^2 multiply-adds per output.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace fstrain_kernels {

struct Upfirdn2dParams {
  int64_t total;      // N * C * out_h * out_w
  int64_t channels;
  int64_t stride_n, stride_c, stride_h, stride_w;  // input strides in elements (any layout works)
  int in_h, in_w, out_h, out_w;
  int up_x, up_y, down_x, down_y;
  int pad_x0, pad_y0;
  int kernel_h, kernel_w;
};

// Floor division for a possibly negative numerator and a positive divisor.
FSK_HOST_DEVICE inline int floor_div(int a, int b) {
  const int q = a / b;
  const int r = a % b;
  return (r != 0 && r < 0) ? q - 1 : q;
}

FSK_HOST_DEVICE inline int ceil_div(int a, int b) { return -floor_div(-a, b); }
FSK_HOST_DEVICE inline int int_max(int a, int b) { return a > b ? a : b; }
FSK_HOST_DEVICE inline int int_min(int a, int b) { return a < b ? a : b; }

// Output element `index` (row-major over N, C, out_h, out_w). `taps` is the kh x kw kernel, row-major.
template <typename scalar_t, typename acc_t>
FSK_HOST_DEVICE inline acc_t upfirdn2d_point(const scalar_t* __restrict__ x, const acc_t* __restrict__ taps,
                                             const Upfirdn2dParams& p, int64_t index) {
  const int ox = static_cast<int>(index % p.out_w);
  const int oy = static_cast<int>((index / p.out_w) % p.out_h);
  const int64_t plane = index / (static_cast<int64_t>(p.out_w) * p.out_h);
  const int64_t n = plane / p.channels;
  const int64_t c = plane % p.channels;
  const scalar_t* __restrict__ src = x + n * p.stride_n + c * p.stride_c;

  // Zero-inserted coordinate of tap t = 0; input sample i sits at zero-inserted coordinate i * up.
  const int qy = oy * p.down_y - p.pad_y0;
  const int qx = ox * p.down_x - p.pad_x0;
  const int iy_begin = int_max(ceil_div(qy, p.up_y), 0);
  const int iy_end = int_min(floor_div(qy + p.kernel_h - 1, p.up_y) + 1, p.in_h);
  const int ix_begin = int_max(ceil_div(qx, p.up_x), 0);
  const int ix_end = int_min(floor_div(qx + p.kernel_w - 1, p.up_x) + 1, p.in_w);

  acc_t acc = 0;
  for (int iy = iy_begin; iy < iy_end; ++iy) {
    const int ty = iy * p.up_y - qy;  // in [0, kernel_h)
    // Row kh-1-ty of the kernel, addressed from its last column: true convolution flips both axes.
    const acc_t* __restrict__ tap_row = taps + (p.kernel_h - 1 - ty) * p.kernel_w + (p.kernel_w - 1);
    const scalar_t* __restrict__ src_row = src + iy * p.stride_h;
    for (int ix = ix_begin; ix < ix_end; ++ix) {
      const int tx = ix * p.up_x - qx;  // in [0, kernel_w)
      acc += static_cast<acc_t>(src_row[ix * p.stride_w]) * tap_row[-tx];
    }
  }
  return acc;
}

}  // namespace fstrain_kernels
