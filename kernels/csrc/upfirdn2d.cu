// upfirdn2d: zero-insertion upsampling, padding/cropping, FIR filtering (true convolution), downsampling.
// One thread per output element in a grid-stride loop; the per-output arithmetic is in upfirdn2d_core.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "common.h"
#include "upfirdn2d_core.h"

namespace fstrain_kernels {
namespace {

template <typename scalar_t, typename acc_t>
__global__ void upfirdn2d_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ x,
                                 const acc_t* __restrict__ kernel, const Upfirdn2dParams p) {
  extern __shared__ unsigned char shared_bytes[];
  acc_t* taps = reinterpret_cast<acc_t*>(shared_bytes);
  const int num_taps = p.kernel_h * p.kernel_w;
  for (int i = threadIdx.x; i < num_taps; i += blockDim.x) taps[i] = kernel[i];
  __syncthreads();

  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < p.total;
       index += step) {
    out[index] = static_cast<scalar_t>(upfirdn2d_point<scalar_t, acc_t>(x, taps, p, index));
  }
}

int64_t output_size(int64_t in, int64_t up, int64_t down, int64_t pad0, int64_t pad1, int64_t taps) {
  // Python-style floor division, as in the reference (the numerator can be negative for bad arguments).
  const int64_t num = in * up + pad0 + pad1 - taps + down;
  return num >= 0 ? num / down : -((-num + down - 1) / down);
}

}  // namespace
}  // namespace fstrain_kernels

torch::Tensor upfirdn2d_cuda(const torch::Tensor& x, const torch::Tensor& kernel, int64_t up_x, int64_t up_y,
                             int64_t down_x, int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0,
                             int64_t pad_y1) {
  using namespace fstrain_kernels;
  TORCH_CHECK(x.is_cuda(), "upfirdn2d_cuda: x must be a CUDA tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 4, "upfirdn2d_cuda: x must be (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(kernel.dim() == 2, "upfirdn2d_cuda: kernel must be 2-D (kh, kw), got ", kernel.sizes());
  TORCH_CHECK(kernel.numel() > 0, "upfirdn2d_cuda: kernel is empty");
  TORCH_CHECK(up_x >= 1 && up_y >= 1 && down_x >= 1 && down_y >= 1,
              "upfirdn2d_cuda: up and down factors must be >= 1");
  const int64_t in_h = x.size(2), in_w = x.size(3);
  const int64_t kernel_h = kernel.size(0), kernel_w = kernel.size(1);
  const int64_t out_h = output_size(in_h, up_y, down_y, pad_y0, pad_y1, kernel_h);
  const int64_t out_w = output_size(in_w, up_x, down_x, pad_x0, pad_x1, kernel_w);
  TORCH_CHECK(out_h >= 1 && out_w >= 1, "upfirdn2d_cuda: output would be empty (", out_h, "x", out_w,
              ") for input ", x.sizes(), ", kernel ", kernel.sizes(), ", up (", up_x, ",", up_y, "), down (",
              down_x, ",", down_y, "), pad (", pad_x0, ",", pad_x1, ",", pad_y0, ",", pad_y1, ")");
  // All per-axis coordinates are held in int: keep them far from overflow.
  constexpr int64_t kLimit = 1 << 29;
  TORCH_CHECK(in_h * up_y + std::abs(pad_y0) + std::abs(pad_y1) + kernel_h < kLimit &&
                  in_w * up_x + std::abs(pad_x0) + std::abs(pad_x1) + kernel_w < kLimit &&
                  out_h * down_y < kLimit && out_w * down_x < kLimit,
              "upfirdn2d_cuda: spatial sizes too large");

  const c10::cuda::OptionalCUDAGuard guard(x.device());
  auto out = torch::empty({x.size(0), x.size(1), out_h, out_w}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;

  Upfirdn2dParams p;
  p.total = out.numel();
  p.channels = x.size(1);
  p.stride_n = x.stride(0);
  p.stride_c = x.stride(1);
  p.stride_h = x.stride(2);
  p.stride_w = x.stride(3);
  p.in_h = static_cast<int>(in_h);
  p.in_w = static_cast<int>(in_w);
  p.out_h = static_cast<int>(out_h);
  p.out_w = static_cast<int>(out_w);
  p.up_x = static_cast<int>(up_x);
  p.up_y = static_cast<int>(up_y);
  p.down_x = static_cast<int>(down_x);
  p.down_y = static_cast<int>(down_y);
  p.pad_x0 = static_cast<int>(pad_x0);
  p.pad_y0 = static_cast<int>(pad_y0);
  p.kernel_h = static_cast<int>(kernel_h);
  p.kernel_w = static_cast<int>(kernel_w);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto taps = kernel.to(x.device(), c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const size_t shared_bytes = static_cast<size_t>(taps.numel()) * sizeof(acc_t);
    TORCH_CHECK(shared_bytes <= 48 * 1024, "upfirdn2d_cuda: kernel ", kernel.sizes(),
                " is too large (its taps must fit in 48 KiB of shared memory)");
    upfirdn2d_kernel<scalar_t, acc_t>
        <<<static_cast<unsigned int>(blocks_for(p.total)), kThreadsPerBlock, shared_bytes,
           c10::cuda::getCurrentCUDAStream()>>>(out.data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                               taps.const_data_ptr<acc_t>(), p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}
