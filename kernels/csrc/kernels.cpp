// Python bindings of the fstrain CUDA kernels. All argument checking happens in the .cu host functions.
#include <torch/extension.h>

#include "common.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fstrain StyleGAN2 CUDA kernels: upfirdn2d and bias_act (no autograd here; see kernels/autograd.py)";
  m.def("upfirdn2d", &upfirdn2d_cuda,
        "Zero-insert upsample, pad/crop, FIR filter (true convolution), downsample. x: (N,C,H,W) on CUDA.",
        py::arg("x"), py::arg("kernel"), py::arg("up_x"), py::arg("up_y"), py::arg("down_x"), py::arg("down_y"),
        py::arg("pad_x0"), py::arg("pad_x1"), py::arg("pad_y0"), py::arg("pad_y1"));
  m.def("bias_act", &bias_act_cuda,
        "mode 0: gain*act(x+bias) clamped; mode 1: gradient of that given dy (as x) and the saved output.",
        py::arg("x"), py::arg("bias"), py::arg("output"), py::arg("dim"), py::arg("act"), py::arg("alpha"),
        py::arg("gain"), py::arg("clamp"), py::arg("mode"));
}
