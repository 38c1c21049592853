"""The compiled CUDA ops against the reference ops on a GPU: forward, first and second order gradients in fp32, fp16
and bf16, the host wrappers' routing and checks, and StyleGAN2 G and D with the CUDA kernels against the reference.

Marked `gpu`; skipped (one line) where no CUDA device is present. `make test` runs them on a GPU machine. The first
call builds the extension (cached on disk, see `python -m kernels.build`)."""
from __future__ import annotations

import pytest
import torch

import kernels
from kernels.reference import bias_act_ref, upfirdn2d_ref

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("gpu tests: no CUDA device (torch.cuda.is_available() is False)", allow_module_level=True)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# max|cuda - ref| / max|ref|, the reference in float64 from the same rounded inputs (kernels.check's tolerances;
# second order compounds two rounded passes, so it gets four times as much).
TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}
BLUR = torch.tensor([1.0, 3.0, 3.0, 1.0])
BLUR = BLUR[:, None] * BLUR[None, :] / 64

UPFIRDN_CASES = [  # name, shape, kernel scale, up, down, pad (x0, x1, y0, y1)
    ("G to_rgb up2", (2, 3, 16, 16), 4.0, (2, 2), (1, 1), (2, 1, 2, 1)),
    ("D conv3 blur", (2, 8, 16, 16), 1.0, (1, 1), (1, 1), (2, 2, 2, 2)),
    ("downsample", (2, 8, 16, 16), 1.0, (1, 1), (2, 2), (1, 1, 1, 1)),
    ("axis factors + negative pads", (2, 5, 17, 13), 1.0, (2, 1), (1, 2), (-1, 2, 0, -2)),
]
BIAS_ACT_CASES = [  # name, shape, act, alpha, gain, clamp, dim
    ("StyledConv lrelu", (2, 8, 6, 6), "lrelu", 0.2, None, None, 1),
    ("EqualLinear lrelu", (4, 32), "lrelu", 0.2, None, None, 1),
    ("relu gain 2 clamp dim 2", (2, 3, 5, 7), "relu", 0.2, 2.0, 0.5, 2),
    ("linear gain 0.5 clamp", (3, 7, 11), "linear", 0.2, 0.5, 0.3, 1),
]


@pytest.fixture(scope="module")
def device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return (got.double() - want).abs().max().item() / max(want.abs().max().item(), 1e-30)


def r1_like(op, x: torch.Tensor) -> torch.Tensor:
    """d/dx |d(sum op(x)^2)/dx|^2: the double backward an R1 penalty takes."""
    (grad,) = torch.autograd.grad(op(x).pow(2).sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(grad.pow(2).sum(), x)
    return second


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("case", UPFIRDN_CASES, ids=[c[0] for c in UPFIRDN_CASES])
def test_cuda_upfirdn2d_matches_reference_forward_first_and_second_order(case, dtype_name, device):
    _, shape, scale, up, down, pad = case
    dtype, tolerance = DTYPES[dtype_name], TOLERANCE[DTYPES[dtype_name]]
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, generator=generator, device=device).to(dtype)
    kernel = (BLUR * scale).to(device)
    args = dict(up=up, down=down, pad=pad)
    x_c, x_r = x.clone().requires_grad_(True), x.double().requires_grad_(True)
    y_c = kernels.upfirdn2d(x_c, kernel, impl="cuda", **args)
    y_r = upfirdn2d_ref(x_r, kernel.double(), **args)
    assert y_c.dtype == dtype and y_c.shape == y_r.shape
    assert relative_error(y_c, y_r) <= tolerance
    dy = torch.randn(y_r.shape, generator=generator, device=device).to(dtype)
    (dx_c,) = torch.autograd.grad(y_c, x_c, dy)
    (dx_r,) = torch.autograd.grad(y_r, x_r, dy.double())
    assert relative_error(dx_c, dx_r) <= tolerance
    second_c = r1_like(lambda t: kernels.upfirdn2d(t, kernel, impl="cuda", **args), x_c)
    second_r = r1_like(lambda t: upfirdn2d_ref(t, kernel.double(), **args), x_r)
    assert relative_error(second_c, second_r) <= 4 * tolerance


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("case", BIAS_ACT_CASES, ids=[c[0] for c in BIAS_ACT_CASES])
def test_cuda_bias_act_matches_reference_forward_first_and_second_order(case, dtype_name, device):
    _, shape, act, alpha, gain, clamp, dim = case
    dtype, tolerance = DTYPES[dtype_name], TOLERANCE[DTYPES[dtype_name]]
    generator = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(shape, generator=generator, device=device).to(dtype)
    bias = torch.randn(shape[dim], generator=generator, device=device).to(dtype)
    weight = torch.randn(shape, generator=generator, device=device).to(dtype)
    args = dict(act=act, alpha=alpha, gain=gain, clamp=clamp, dim=dim)
    inputs_c = [x.clone().requires_grad_(True), bias.clone().requires_grad_(True)]
    inputs_r = [t.detach().double().requires_grad_(True) for t in inputs_c]
    y_c = kernels.bias_act(*inputs_c, impl="cuda", **args)
    y_r = bias_act_ref(*inputs_r, **args)
    assert y_c.dtype == dtype and relative_error(y_c, y_r) <= tolerance
    dy = torch.randn(shape, generator=generator, device=device).to(dtype)
    for g_c, g_r in zip(torch.autograd.grad(y_c, inputs_c, dy), torch.autograd.grad(y_r, inputs_r, dy.double())):
        assert relative_error(g_c, g_r) <= tolerance
    if clamp is not None and dtype != torch.float32:
        return   # a half-precision sum can round across the clamp edge, where the second derivative jumps
    second_c = r1_like(lambda t: kernels.bias_act(t * weight, inputs_c[1], impl="cuda", **args), inputs_c[0])
    second_r = r1_like(lambda t: bias_act_ref(t * weight.double(), inputs_r[1], **args), inputs_r[0])
    assert relative_error(second_c, second_r) <= 4 * tolerance


def test_cuda_ops_cover_channels_last_and_strided_inputs(device):
    generator = torch.Generator(device=device).manual_seed(2)
    base = torch.randn(2, 4, 20, 23, generator=generator, device=device)
    kernel = (BLUR * 4).to(device)
    for x in (base.contiguous(memory_format=torch.channels_last), base[:, :, ::2, 1:-2]):
        want = upfirdn2d_ref(x.double(), kernel.double(), up=2, pad=(2, 1))
        assert relative_error(kernels.upfirdn2d(x, kernel, up=2, pad=(2, 1), impl="cuda"), want) <= 2e-5


def test_auto_routes_cuda_tensors_to_the_kernels_and_learnable_kernels_to_the_reference(device):
    x = torch.randn(1, 2, 8, 8, device=device, requires_grad=True)
    learnable = torch.ones(2, 2, device=device, requires_grad=True)
    kernels.upfirdn2d(x, learnable, pad=(1, 1)).sum().backward()   # auto: the reference differentiates the kernel
    expected = x.detach().sum().expand(2, 2)   # every tap meets every input once
    assert learnable.grad is not None and torch.allclose(learnable.grad, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="does not support a kernel that requires grad"):
        kernels.upfirdn2d(x, learnable, pad=(1, 1), impl="cuda")
    with pytest.raises(ValueError, match="does not match dim 1"):
        kernels.bias_act(torch.randn(2, 3, device=device), torch.randn(4, device=device), impl="cuda")


def _generator_and_discriminator(device):
    from fstrain.models.stylegan2 import Discriminator, Generator

    torch.manual_seed(0)
    g = Generator(32, 64, 2, channel_multiplier=1, channel_max=32).to(device).eval()
    d = Discriminator(32, channel_multiplier=1, channel_max=32).to(device).eval()
    with torch.no_grad():   # non-trivial biases, so the fused bias path is exercised
        for name, param in list(g.named_parameters()) + list(d.named_parameters()):
            if name.endswith("bias") or name.endswith("noise.weight"):
                param.normal_(0, 0.2)
    return g, d


@pytest.fixture
def no_tf32():
    """Full fp32 convolutions and matmuls, so only the kernels differ between the two paths."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_generator_and_discriminator_with_cuda_kernels_match_the_reference(device, no_tf32):
    g, d = _generator_and_discriminator(device)
    z = torch.randn(4, 64, generator=torch.Generator(device=device).manual_seed(3), device=device)
    outputs = {}
    for impl in ("ref", "cuda"):
        with kernels.using_impl(impl):
            image, _ = g([z], randomize_noise=False)
            real = image.detach().requires_grad_(True)
            logits = d(real)
            (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
            (r1_grad,) = torch.autograd.grad(grad.pow(2).sum(), d.convs[0][0].weight)   # R1's double backward
        outputs[impl] = (image.detach(), logits.detach(), r1_grad)
    for what, got, want, tolerance in zip(("image", "logits", "R1 gradient"), outputs["cuda"], outputs["ref"],
                                          (1e-4, 1e-4, 1e-3)):
        assert relative_error(got, want.double()) <= tolerance, what
