// Small helpers shared by the kernels of the fstrain extension.
#pragma once

#include <cstdint>

#include <torch/types.h>

namespace fstrain_kernels {

constexpr int kThreadsPerBlock = 256;
// Grid-stride loops cover any size; capping the grid keeps launches well inside CUDA's limits.
constexpr int64_t kMaxBlocks = 65535LL * 16;

inline int64_t blocks_for(int64_t total) {
  const int64_t blocks = (total + kThreadsPerBlock - 1) / kThreadsPerBlock;
  return blocks < kMaxBlocks ? blocks : kMaxBlocks;
}


}  // namespace fstrain_kernels

// Host entry points (defined in the .cu files, bound to Python in kernels.cpp).
torch::Tensor upfirdn2d_cuda(const torch::Tensor& x, const torch::Tensor& kernel, int64_t up_x, int64_t up_y,
                             int64_t down_x, int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0,
                             int64_t pad_y1);

torch::Tensor bias_act_cuda(const torch::Tensor& x, const std::optional<torch::Tensor>& bias,
                            const std::optional<torch::Tensor>& output, int64_t dim, int64_t act, double alpha,
                            double gain, double clamp, int64_t mode);
