"""StyleGAN2's hot ops: `upfirdn2d` and `bias_act`, each with a PyTorch reference and a CUDA kernel.

`impl="auto"` picks CUDA when the tensor is on a GPU and the extension builds, the reference otherwise.
Nothing is compiled at import time.
"""
from kernels.ops import bias_act, upfirdn2d, using_impl  # noqa: F401
