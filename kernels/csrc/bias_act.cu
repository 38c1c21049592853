// bias_act: fused bias + activation + gain + clamp (mode 0), and its gradient (mode 1); the per-element
// arithmetic is in bias_act_core.h. The gradient is linear in dy and piecewise constant in the saved output, so its
// own gradient is this same kernel again: that is what makes double backward (R1) work without a second-order kernel.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "bias_act_core.h"
#include "common.h"

namespace fstrain_kernels {
namespace {

template <typename scalar_t, typename acc_t>
__global__ void bias_act_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ x,
                                const scalar_t* __restrict__ bias, const scalar_t* __restrict__ saved,
                                const BiasActParams p) {
  const acc_t alpha = static_cast<acc_t>(p.alpha);
  const acc_t gain = static_cast<acc_t>(p.gain);
  const acc_t clamp = static_cast<acc_t>(p.clamp);
  // The saved output went through scalar_t: compare it with the clamp value rounded the same way.
  const acc_t stored_clamp = static_cast<acc_t>(static_cast<scalar_t>(static_cast<acc_t>(p.clamp)));
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < p.total; i += step) {
    const acc_t v = static_cast<acc_t>(x[i]);
    if (p.mode == 0) {
      const acc_t b = p.has_bias ? static_cast<acc_t>(bias[bias_index(i, p)]) : acc_t(0);
      out[i] = static_cast<scalar_t>(bias_act_forward<acc_t>(v + b, alpha, gain, clamp, p));
    } else {
      const acc_t y = static_cast<acc_t>(saved[i]);
      out[i] = static_cast<scalar_t>(v * bias_act_slope<acc_t>(y, alpha, gain, stored_clamp, p));
    }
  }
}

}  // namespace
}  // namespace fstrain_kernels

torch::Tensor bias_act_cuda(const torch::Tensor& x_in, const std::optional<torch::Tensor>& bias_in,
                            const std::optional<torch::Tensor>& saved_in, int64_t dim, int64_t act, double alpha,
                            double gain, double clamp, int64_t mode) {
  using namespace fstrain_kernels;
  TORCH_CHECK(x_in.is_cuda(), "bias_act_cuda: x must be a CUDA tensor, got ", x_in.device());
  TORCH_CHECK(act >= kLinear && act <= kLrelu, "bias_act_cuda: unknown activation code ", act);
  TORCH_CHECK(mode == 0 || mode == 1, "bias_act_cuda: mode must be 0 (forward) or 1 (gradient), got ", mode);
  TORCH_CHECK(x_in.dim() >= 1, "bias_act_cuda: x must have at least one dimension");
  TORCH_CHECK(dim >= 0 && dim < x_in.dim(), "bias_act_cuda: dim ", dim, " out of range for x ", x_in.sizes());
  TORCH_CHECK(gain > 0, "bias_act_cuda: gain must be positive (the gradient reads the sign off the output)");

  const c10::cuda::OptionalCUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous();
  torch::Tensor bias, saved;
  const bool has_bias = mode == 0 && bias_in.has_value() && bias_in->defined();
  if (has_bias) {
    TORCH_CHECK(bias_in->dim() == 1 && bias_in->size(0) == x.size(dim), "bias_act_cuda: bias ", bias_in->sizes(),
                " does not match dim ", dim, " of x ", x.sizes());
    bias = bias_in->to(x.device(), x.scalar_type()).contiguous();
  }
  if (mode == 1) {
    TORCH_CHECK(saved_in.has_value() && saved_in->defined(), "bias_act_cuda: the gradient needs the saved output");
    TORCH_CHECK(saved_in->sizes() == x.sizes(), "bias_act_cuda: saved output ", saved_in->sizes(),
                " does not match the gradient ", x.sizes());
    saved = saved_in->to(x.device(), x.scalar_type()).contiguous();
  }

  auto out = torch::empty_like(x, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;

  BiasActParams p;
  p.total = x.numel();
  p.channels = x.size(dim);
  p.inner = 1;
  for (int64_t d = dim + 1; d < x.dim(); ++d) p.inner *= x.size(d);
  if (p.inner == 0) p.inner = 1;  // unreachable for non-empty x; keeps the division safe
  p.act = static_cast<int>(act);
  p.mode = static_cast<int>(mode);
  p.has_bias = has_bias;
  p.has_clamp = clamp >= 0;
  p.alpha = alpha;
  p.gain = gain;
  p.clamp = clamp >= 0 ? clamp : 0.0;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_act_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    bias_act_kernel<scalar_t, acc_t>
        <<<static_cast<unsigned int>(blocks_for(p.total)), kThreadsPerBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
            out.data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
            has_bias ? bias.const_data_ptr<scalar_t>() : nullptr,
            mode == 1 ? saved.const_data_ptr<scalar_t>() : nullptr, p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}
