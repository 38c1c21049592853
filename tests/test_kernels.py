"""kernels/: reference ops against naive loops, the CUDA path's autograd math (run on the reference backend),
dispatch, the build cache's configuration and its lock. Nothing here compiles; see test_kernels_build.py."""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import kernels
from kernels import build as kbuild
from kernels.autograd import BiasAct, BiasActGrad, Upfirdn2d
from kernels.backends import ReferenceBackend
from kernels.host_harness import HarnessUnavailable, HostHarnessBackend, compile_harness
from kernels.lock import BuildLock, LockTimeoutError
from kernels.reference import bias_act_ref, upfirdn2d_ref
from support.kernels import UPFIRDN_CASES, naive_bias_act, naive_upfirdn2d

REPO = Path(__file__).resolve().parents[1]
REF = ReferenceBackend()
CASE_IDS = [case[0] for case in UPFIRDN_CASES]


def case_tensors(shape, kernel, seed=0, dtype=torch.float64, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator, dtype=dtype, requires_grad=requires_grad)
    return x, torch.tensor(kernel, dtype=dtype)


# -- upfirdn2d ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", UPFIRDN_CASES, ids=CASE_IDS)
def test_upfirdn2d_reference_matches_naive_loops(case):
    _, shape, kernel, up, down, pad = case
    x, k = case_tensors(shape, kernel)
    expected = naive_upfirdn2d(x.numpy(), kernel, up, down, pad)
    got = upfirdn2d_ref(x, k, up=up, down=down, pad=pad)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    # The public op on CPU is the reference, with rosinality's (p0, p1) padding as a shorthand for both axes.
    if pad[:2] == pad[2:] and up[0] == up[1] and down[0] == down[1]:
        torch.testing.assert_close(kernels.upfirdn2d(x, k, up=up[0], down=down[0], pad=pad[:2]), got)


def test_upfirdn2d_output_sizes_of_the_generator_and_discriminator():
    blur = torch.ones(4, 4)
    x = torch.randn(1, 2, 8, 8)
    assert upfirdn2d_ref(x, blur, up=2, pad=(2, 1)).shape[2:] == (16, 16)  # ToRGB skip upsample
    assert upfirdn2d_ref(x, blur, down=2, pad=(1, 1)).shape[2:] == (4, 4)  # Downsample
    assert upfirdn2d_ref(torch.randn(1, 2, 17, 17), blur, pad=(1, 1)).shape[2:] == (16, 16)  # blur after conv_T
    assert upfirdn2d_ref(x, blur, pad=(2, 2)).shape[2:] == (9, 9)  # D conv3 downsample blur


@pytest.mark.parametrize("case", UPFIRDN_CASES, ids=CASE_IDS)
def test_upfirdn2d_function_forward_and_gradient_match_reference_autograd(case):
    _, shape, kernel, up, down, pad = case
    x, k = case_tensors(shape, kernel, requires_grad=True)
    y_fn = Upfirdn2d.apply(x, k, up, down, pad, REF)
    y_ref = upfirdn2d_ref(x, k, up=up, down=down, pad=pad)
    torch.testing.assert_close(y_fn, y_ref)
    dy = torch.randn_like(y_ref)
    (g_fn,) = torch.autograd.grad(y_fn, x, dy)
    (g_ref,) = torch.autograd.grad(y_ref, x, dy)
    torch.testing.assert_close(g_fn, g_ref, rtol=1e-10, atol=1e-10)


GRADCHECK_CASES = [c for c in UPFIRDN_CASES if c[0] in
                   ("G-torgb-upsample", "D-conv3-blur", "downsample", "axis-factors", "negative-pads", "crop-and-down")]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=[c[0] for c in GRADCHECK_CASES])
def test_upfirdn2d_function_gradcheck_and_gradgradcheck(case):
    _, shape, kernel, up, down, pad = case
    small = (1, 1) + tuple(shape[2:])
    x, k = case_tensors(small, kernel, seed=1, requires_grad=True)
    fn = lambda t: Upfirdn2d.apply(t, k, up, down, pad, REF)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_upfirdn2d_reference_gradcheck_including_the_kernel():
    x, k = case_tensors((1, 1, 5, 5), np.random.default_rng(5).standard_normal((3, 2)), requires_grad=True)
    k.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: upfirdn2d_ref(a, b, up=2, down=1, pad=(1, 0, 2, 1)), (x, k))


def test_upfirdn2d_kernel_requiring_grad_goes_to_the_reference_path():
    """Routed for a CUDA device (the decision is pure, so no GPU is needed): auto falls back to the reference and
    says why, an explicit impl="cuda" refuses; a plain kernel on the same device goes to CUDA."""
    from kernels.ops import Route, route, upfirdn2d_unsupported

    gpu = torch.device("cuda", 0)
    learnable, fixed = torch.ones(2, 2, requires_grad=True), torch.ones(2, 2)
    assert route("upfirdn2d", gpu, "auto", upfirdn2d_unsupported(learnable)) == Route(
        False, "using reference upfirdn2d (a kernel that requires grad)")
    with pytest.raises(ValueError, match="impl='cuda' for upfirdn2d does not support a kernel that requires grad"):
        route("upfirdn2d", gpu, "cuda", upfirdn2d_unsupported(learnable))
    assert route("upfirdn2d", gpu, "auto", upfirdn2d_unsupported(fixed)) == Route(
        True, "using CUDA upfirdn2d (tensor on cuda:0)")
    assert route("upfirdn2d", gpu, "cuda", upfirdn2d_unsupported(fixed)) == Route(True, None)
    # The reference path it falls back to does differentiate the kernel: every tap meets every input once.
    x = torch.randn(1, 1, 4, 4, requires_grad=True)
    kernels.upfirdn2d(x, learnable, pad=(1, 1)).sum().backward()
    assert learnable.grad is not None and torch.allclose(learnable.grad, torch.full((2, 2), x.sum().item()))


def test_routing_decision_for_every_impl_device_and_reason():
    from kernels.ops import Route, bias_act_unsupported, route

    gpu, cpu = torch.device("cuda", 1), torch.device("cpu")
    assert route("bias_act", gpu, "ref", None) == Route(False, None)
    assert route("bias_act", cpu, "auto", None) == Route(False, "using reference bias_act (tensor on cpu)")
    assert route("bias_act", gpu, "auto", None) == Route(True, "using CUDA bias_act (tensor on cuda:1)")
    x = torch.zeros(2, 3)
    reasons = {"gain": bias_act_unsupported(x, "lrelu", 0.2, 0.0, 1),
               "alpha": bias_act_unsupported(x, "lrelu", -0.1, 1.0, 1),
               "dim": bias_act_unsupported(x, "relu", 0.2, 1.0, 2)}
    assert reasons == {"gain": "gain=0.0 (the kernels need a positive gain)",
                       "alpha": "alpha=-0.1 (the kernels need alpha >= 0)",
                       "dim": "dim=2 for x of shape (2, 3)"}
    assert bias_act_unsupported(x, "relu", -0.1, 1.0, -1) is None   # alpha only matters for lrelu
    for reason in reasons.values():
        assert route("bias_act", gpu, "auto", reason) == Route(False, f"using reference bias_act ({reason})")
        with pytest.raises(ValueError, match="does not support"):
            route("bias_act", gpu, "cuda", reason)
    with pytest.raises(ValueError, match="needs a CUDA tensor, got one on cpu"):
        route("bias_act", cpu, "cuda", None)
    # using_impl changes what "auto" means, and only that.
    with kernels.using_impl("ref"):
        assert route("bias_act", gpu, "auto", None) == Route(False, None)
        assert route("bias_act", gpu, "cuda", None) == Route(True, None)
    with kernels.using_impl("cuda"):
        with pytest.raises(ValueError, match="does not support gain=0.0"):
            route("bias_act", gpu, "auto", reasons["gain"])


def test_upfirdn2d_rejects_bad_shapes_and_padding():
    with pytest.raises(ValueError, match="expects x"):
        kernels.upfirdn2d(torch.randn(2, 4, 4), torch.ones(2, 2))
    with pytest.raises(ValueError, match="pad must be"):
        kernels.upfirdn2d(torch.randn(1, 1, 4, 4), torch.ones(2, 2), pad=(1, 2, 3))


# -- bias_act -------------------------------------------------------------------------------------------------------
BIAS_ACT_CASES = [
    # (act, alpha, gain, clamp, shape, dim)
    ("lrelu", 0.2, None, None, (2, 5, 3, 3), 1),  # StyledConv's FusedLeakyReLU
    ("lrelu", 0.2, None, None, (4, 6), 1),  # EqualLinear with fused lrelu (mapping network, D's final_linear)
    ("lrelu", 0.1, 1.5, 0.5, (2, 3, 4), 2),
    ("relu", 0.2, None, 0.7, (2, 4, 3, 3), 1),
    ("relu", 0.2, 2.0, None, (3, 4), 0),
    ("linear", 0.2, None, None, (2, 4, 3, 3), 1),
    ("linear", 0.2, 0.5, 0.35, (2, 4, 3), 1),
]
BIAS_ACT_IDS = [f"{c[0]}-gain{c[2]}-clamp{c[3]}-dim{c[5]}" for c in BIAS_ACT_CASES]


def bias_act_inputs(shape, dim, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator, dtype=dtype)
    bias = torch.randn(shape[dim], generator=generator, dtype=dtype)
    return x, bias


@pytest.mark.parametrize("case", BIAS_ACT_CASES, ids=BIAS_ACT_IDS)
def test_bias_act_reference_matches_naive_loops(case):
    act, alpha, gain, clamp, shape, dim = case
    x, bias = bias_act_inputs(shape, dim)
    expected = naive_bias_act(x.numpy(), bias.numpy(), act, alpha, gain, clamp, dim)
    got = bias_act_ref(x, bias, act=act, alpha=alpha, gain=gain, clamp=clamp, dim=dim)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kernels.bias_act(x, bias, act=act, alpha=alpha, gain=gain, clamp=clamp, dim=dim), got)
    no_bias = naive_bias_act(x.numpy(), None, act, alpha, gain, clamp, dim)
    np.testing.assert_allclose(kernels.bias_act(x, None, act=act, alpha=alpha, gain=gain, clamp=clamp,
                                                dim=dim).numpy(), no_bias, rtol=1e-12, atol=1e-12)


def away_from_kinks(shape, dim, gain, clamp, seed=0, act="lrelu", alpha=0.2):
    """Inputs whose pre-activation keeps clear of 0 and of the clamp edges, so finite differences are valid."""
    generator = torch.Generator().manual_seed(seed)
    bias = torch.randn(shape[dim], generator=generator, dtype=torch.float64) * 0.1
    levels = torch.tensor([-0.9, -0.6, -0.3, -0.15, 0.15, 0.2, 0.6, 0.9], dtype=torch.float64)
    pre = levels[torch.randint(0, len(levels), shape, generator=generator)]
    pre = pre + 0.01 * torch.rand(shape, generator=generator, dtype=torch.float64)
    if clamp is not None:
        unclamped = bias_act_ref(pre, act=act, alpha=alpha, gain=gain)
        assert ((unclamped.abs() - clamp).abs() > 0.02).all(), "test inputs too close to the clamp edge"
    broadcast = [1] * len(shape)
    broadcast[dim] = -1
    return (pre - bias.reshape(broadcast)).requires_grad_(True), bias.requires_grad_(True)


@pytest.mark.parametrize("case", BIAS_ACT_CASES, ids=BIAS_ACT_IDS)
def test_bias_act_function_gradients_match_reference_and_gradcheck(case):
    act, alpha, gain, clamp, shape, dim = case
    x, bias = away_from_kinks(shape, dim, gain, clamp, act=act, alpha=alpha)
    g = (1.0 if act == "linear" else math.sqrt(2)) if gain is None else gain
    fn = lambda a, b: BiasAct.apply(a, b, act, alpha, g, clamp, dim, REF)  # noqa: E731
    y_fn, y_ref = fn(x, bias), bias_act_ref(x, bias, act=act, alpha=alpha, gain=gain, clamp=clamp, dim=dim)
    torch.testing.assert_close(y_fn, y_ref)
    dy = torch.randn_like(y_ref)
    grads_fn = torch.autograd.grad(y_fn, (x, bias), dy)
    grads_ref = torch.autograd.grad(y_ref, (x, bias), dy)
    for a, b in zip(grads_fn, grads_ref):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(fn, (x, bias))
    assert torch.autograd.gradgradcheck(fn, (x, bias))


def test_bias_act_double_backward_matches_reference_for_an_r1_style_penalty():
    """R1 differentiates a gradient: grad(sum(f(x)), x) is itself differentiated."""
    x, bias = away_from_kinks((2, 3, 4, 4), 1, None, None, seed=3)
    weight = torch.randn(2, 3, 4, 4, dtype=torch.float64)

    def penalty(op):
        y = op(x * weight, bias)
        (grad,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
        return grad.pow(2).sum()

    p_fn = penalty(lambda a, b: BiasAct.apply(a, b, "lrelu", 0.2, math.sqrt(2), None, 1, REF))
    p_ref = penalty(lambda a, b: bias_act_ref(a, b))
    torch.testing.assert_close(p_fn, p_ref)
    torch.testing.assert_close(torch.autograd.grad(p_fn, bias)[0], torch.autograd.grad(p_ref, bias)[0])


def test_bias_act_grad_reads_clamp_in_storage_precision():
    """A clamped half/bf16 output equals the clamp rounded to that dtype: its gradient must still be cut."""
    y = torch.tensor([0.1, -0.1, 0.05], dtype=torch.bfloat16)  # 0.1 is not exact in bf16
    dx = REF.bias_act_grad(torch.ones_like(y), y, "linear", 0.2, 1.0, 0.1)
    assert dx.tolist() == [0.0, 0.0, 1.0]


def test_bias_act_grad_function_is_its_own_gradient():
    y = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    dy = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64, requires_grad=True)
    dx = BiasActGrad.apply(dy, y, "lrelu", 0.2, 2.0, None, REF)
    assert dx.tolist() == pytest.approx([2.0, 0.4, 2.0])
    (ddy,) = torch.autograd.grad(dx, dy, torch.ones(3, dtype=torch.float64))
    assert ddy.tolist() == pytest.approx([2.0, 0.4, 2.0])


def test_bias_act_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        kernels.bias_act(torch.randn(2, 3), act="gelu")
    with pytest.raises(ValueError, match="does not match dim 1"):
        kernels.bias_act(torch.randn(2, 3), torch.randn(4))


# -- the CUDA kernels' own per-element code, compiled for the host -------------------------------------------------
@pytest.fixture(scope="module")
def host_backend(tmp_path_factory):
    try:
        return HostHarnessBackend(compile_harness(tmp_path_factory.mktemp("host-harness")))
    except HarnessUnavailable as error:
        pytest.skip(str(error))


@pytest.mark.parametrize("case", UPFIRDN_CASES, ids=CASE_IDS)
def test_kernel_code_upfirdn2d_matches_naive_loops_for_any_strides(case, host_backend):
    _, shape, kernel, up, down, pad = case
    x, k = case_tensors(shape, kernel)
    expected = naive_upfirdn2d(x.numpy(), kernel, up, down, pad)
    np.testing.assert_allclose(host_backend.upfirdn2d(x, k, up, down, pad).numpy(), expected, rtol=1e-12, atol=1e-12)
    # The same values read through other layouts: channels-last, and a strided view of a bigger tensor.
    channels_last = x.contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(host_backend.upfirdn2d(channels_last, k, up, down, pad).numpy(), expected,
                               rtol=1e-12, atol=1e-12)
    bigger = torch.zeros(shape[0], shape[1], shape[2] * 2, shape[3] + 3, dtype=x.dtype)
    bigger[:, :, ::2, 1:-2] = x
    view = bigger[:, :, ::2, 1:-2]
    np.testing.assert_allclose(host_backend.upfirdn2d(view, k, up, down, pad).numpy(), expected,
                               rtol=1e-12, atol=1e-12)
    x32 = x.float()
    np.testing.assert_allclose(host_backend.upfirdn2d(x32, k.float(), up, down, pad).numpy(),
                               upfirdn2d_ref(x32, k.float(), up=up, down=down, pad=pad).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=[c[0] for c in GRADCHECK_CASES])
def test_kernel_code_upfirdn2d_gradients_through_the_cuda_autograd(case, host_backend):
    _, shape, kernel, up, down, pad = case
    x, k = case_tensors((1, 2) + tuple(shape[2:]), kernel, seed=2, requires_grad=True)
    fn = lambda t: Upfirdn2d.apply(t, k, up, down, pad, host_backend)  # noqa: E731
    dy = torch.randn_like(upfirdn2d_ref(x, k, up=up, down=down, pad=pad))
    (g_kernel,) = torch.autograd.grad(fn(x), x, dy)
    (g_ref,) = torch.autograd.grad(upfirdn2d_ref(x, k, up=up, down=down, pad=pad), x, dy)
    torch.testing.assert_close(g_kernel, g_ref, rtol=1e-10, atol=1e-10)
    x1 = x[:1, :1].detach().requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (x1,))
    assert torch.autograd.gradgradcheck(fn, (x1,))


@pytest.mark.parametrize("case", BIAS_ACT_CASES, ids=BIAS_ACT_IDS)
def test_kernel_code_bias_act_matches_naive_and_its_gradients_check(case, host_backend):
    act, alpha, gain, clamp, shape, dim = case
    x, bias = bias_act_inputs(shape, dim)
    g = (1.0 if act == "linear" else math.sqrt(2)) if gain is None else gain
    expected = naive_bias_act(x.numpy(), bias.numpy(), act, alpha, gain, clamp, dim)
    np.testing.assert_allclose(host_backend.bias_act(x, bias, act, alpha, g, clamp, dim).numpy(), expected,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(host_backend.bias_act(x, None, act, alpha, g, clamp, dim).numpy(),
                               naive_bias_act(x.numpy(), None, act, alpha, gain, clamp, dim), rtol=1e-12, atol=1e-12)
    xs, bs = away_from_kinks(shape, dim, gain, clamp, seed=4, act=act, alpha=alpha)
    fn = lambda a, b: BiasAct.apply(a, b, act, alpha, g, clamp, dim, host_backend)  # noqa: E731
    y_ref = bias_act_ref(xs, bs, act=act, alpha=alpha, gain=gain, clamp=clamp, dim=dim)
    dy = torch.randn_like(y_ref)
    for a, b in zip(torch.autograd.grad(fn(xs, bs), (xs, bs), dy), torch.autograd.grad(y_ref, (xs, bs), dy)):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(fn, (xs, bs))
    assert torch.autograd.gradgradcheck(fn, (xs, bs))


# -- dispatch -------------------------------------------------------------------------------------------------------
def test_auto_on_cpu_uses_reference_and_says_why_once(caplog):
    from kernels import ops

    ops._announced.clear()
    caplog.set_level(logging.INFO, logger="kernels")
    x = torch.randn(1, 2, 4, 4)
    for _ in range(3):
        kernels.upfirdn2d(x, torch.ones(2, 2), pad=(1, 0))
        kernels.bias_act(x, torch.zeros(2))
    lines = [r.getMessage() for r in caplog.records if r.name == "kernels"]
    # one line for the process, not one per op (it was repeated per op, per worker and per stage in job logs)
    assert lines == ["kernels: using the reference ops (tensors on cpu; the CUDA kernels need a GPU)"]
    assert ops.announcements() == [lines[0][len("kernels: "):]]


def test_quiet_worker_leaves_the_line_to_its_driver(caplog):
    from kernels import ops

    ops._announced.clear()
    caplog.set_level(logging.WARNING, logger="kernels")
    ops.quiet_routes()
    try:
        kernels.bias_act(torch.randn(1, 2, 4, 4), torch.zeros(2))
    finally:
        ops.quiet_routes(False)
    assert not [r for r in caplog.records if r.name == "kernels"]
    assert ops.announcements() == ["using the reference ops (tensors on cpu; the CUDA kernels need a GPU)"]


def test_explicit_cuda_impl_on_cpu_tensor_is_a_clear_error():
    with pytest.raises(ValueError, match="impl='cuda' for upfirdn2d needs a CUDA tensor, got one on cpu"):
        kernels.upfirdn2d(torch.randn(1, 1, 4, 4), torch.ones(2, 2), impl="cuda")
    with pytest.raises(ValueError, match="impl must be one of"):
        kernels.bias_act(torch.randn(2, 3), impl="triton")


def test_using_impl_switches_what_auto_means_and_restores_it():
    x = torch.randn(1, 1, 4, 4)
    with kernels.using_impl("cuda"):
        with pytest.raises(ValueError, match="needs a CUDA tensor"):
            kernels.upfirdn2d(x, torch.ones(2, 2))
        # An explicit impl still wins over the block's default.
        assert kernels.upfirdn2d(x, torch.ones(2, 2), impl="ref").shape == (1, 1, 3, 3)
    assert kernels.upfirdn2d(x, torch.ones(2, 2)).shape == (1, 1, 3, 3)


def test_importing_kernels_builds_nothing(tmp_path):
    code = ("import sys, kernels, torch; kernels.upfirdn2d(torch.ones(1,1,2,2), torch.ones(1,1)); "
            "print('cpp_extension' in ' '.join(sys.modules), 'kernels.build' in sys.modules)")
    env = dict(os.environ, FSTRAIN_KERNELS_CACHE=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "False"  # kernels.build (the compiler driver) was never imported
    assert not (tmp_path / "cache").exists()


# -- build configuration (no compiling) ------------------------------------------------------------------------------
def test_arch_lists_are_parsed_like_torch_cuda_arch_list():
    assert kbuild.parse_arch_list("9.0;8.0") == ["8.0", "9.0"]
    assert kbuild.parse_arch_list("sm_80, 90 9.0+PTX") == ["8.0", "9.0", "9.0+PTX"]
    assert kbuild.parse_arch_list("9.0a") == ["9.0a"]
    with pytest.raises(kbuild.BuildError, match="cannot read CUDA arch 'volta'"):
        kbuild.parse_arch_list("volta")
    assert kbuild.gencode_flags(["8.0", "9.0+PTX"]) == [
        "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90"]
    assert kbuild.arch_covers(("8.0", "9.0"), (9, 0)) and not kbuild.arch_covers(("8.0",), (8, 6))
    assert kbuild.arch_covers(("8.0+PTX",), (9, 0)) and not kbuild.arch_covers(("9.0+PTX",), (8, 0))


def test_arch_list_comes_from_argument_then_env_else_a_clear_error(monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6")
    assert kbuild.resolve_archs() == ["8.6"]
    assert kbuild.resolve_archs("9.0") == ["9.0"]
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    if not torch.cuda.is_available():
        with pytest.raises(kbuild.BuildError, match="pass --arch 8.0,9.0 or set TORCH_CUDA_ARCH_LIST"):
            kbuild.resolve_archs()


def test_build_key_tracks_sources_archs_and_torch(tmp_path, kernels_cache):
    sources = tmp_path / "csrc"
    sources.mkdir()
    for path in kbuild.source_files():
        (sources / path.name).write_bytes(path.read_bytes())
    key = kbuild.build_key(["8.0", "9.0"], sources)
    assert key == kbuild.build_key(["8.0", "9.0"], kbuild.SOURCE_DIR)
    assert key.startswith(f"torch{torch.__version__.split('+')[0]}-cu") and "-sm80_90-" in key
    assert kbuild.build_key(["9.0"], sources) != key
    (sources / "bias_act.cu").write_text((sources / "bias_act.cu").read_text() + "\n// edited\n")
    assert kbuild.build_key(["8.0", "9.0"], sources) != key
    assert kbuild.cache_root() == kernels_cache


# -- build lock -----------------------------------------------------------------------------------------------------
def write_lock(path: Path, pid: int, host: str, token: str = "other", age_s: float = 0.0) -> None:
    path.write_text(json.dumps({"pid": pid, "host": host, "token": token, "created": time.time() - age_s}))
    if age_s:
        old = time.time() - age_s
        os.utime(path, (old, old))


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_lock_is_exclusive_and_removed_on_release(tmp_path):
    path = tmp_path / "key.lock"
    with BuildLock(path, timeout_s=5):
        owner = json.loads(path.read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(LockTimeoutError, match=f"waiting for the build lock {path} held by PID {os.getpid()}"):
            BuildLock(path, timeout_s=0.3, poll_s=0.05).acquire()
    assert not path.exists()


def test_lock_of_a_dead_process_is_removed_with_a_warning(tmp_path, caplog):
    path = tmp_path / "key.lock"
    pid = dead_pid()
    write_lock(path, pid, socket.gethostname())
    caplog.set_level(logging.WARNING, logger="kernels.lock")
    started = time.monotonic()
    with BuildLock(path, timeout_s=5):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert time.monotonic() - started < 2
    assert any(f"owner PID {pid}" in r.getMessage() and "stale build lock" in r.getMessage() for r in caplog.records)


def test_lock_from_another_host_goes_stale_by_age_only(tmp_path):
    path = tmp_path / "key.lock"
    write_lock(path, 1, "some-other-host", age_s=30)
    with pytest.raises(LockTimeoutError, match="PID 1 on some-other-host"):
        BuildLock(path, timeout_s=0.3, stale_after_s=60, poll_s=0.05).acquire()
    with BuildLock(path, timeout_s=2, stale_after_s=10):
        assert json.loads(path.read_text())["host"] == socket.gethostname()


def test_unreadable_lock_file_goes_stale_by_age(tmp_path):
    path = tmp_path / "key.lock"
    path.write_text("")  # a writer that died between creating and writing it
    old = time.time() - 100
    os.utime(path, (old, old))
    with BuildLock(path, timeout_s=2, stale_after_s=10):
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_live_holder_keeps_its_lock_fresh_and_waiter_gets_it_after_release(tmp_path, caplog):
    """The holder's heartbeat keeps a long build from looking stale; the waiter proceeds once it is released."""
    path = tmp_path / "key.lock"
    holder = BuildLock(path, stale_after_s=0.4, timeout_s=5)
    holder.acquire()
    released_at = []

    def release_later():
        time.sleep(1.2)  # three times stale_after_s
        released_at.append(time.monotonic())
        holder.release()

    thread = threading.Thread(target=release_later)
    caplog.set_level(logging.WARNING, logger="kernels.lock")
    thread.start()
    with BuildLock(path, stale_after_s=0.4, timeout_s=5, poll_s=0.05):
        acquired_at = time.monotonic()
    thread.join()
    assert released_at and acquired_at >= released_at[0]
    assert not [r for r in caplog.records if "stale" in r.getMessage()]


def test_breaking_a_stale_lock_never_removes_a_fresh_replacement(tmp_path):
    path = tmp_path / "key.lock"
    write_lock(path, os.getpid(), socket.gethostname(), token="fresh")
    BuildLock(path)._break_stale({"token": "judged-stale", "pid": 1, "host": "x"}, "test")
    assert json.loads(path.read_text())["token"] == "fresh"
    assert [p.name for p in tmp_path.iterdir()] == ["key.lock"]


# -- GPU programs on a machine without a GPU ------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
@pytest.mark.parametrize("program", ["kernels.check", "kernels.bench"])
def test_gpu_programs_exit_2_with_a_clear_message_without_cuda(program):
    out = subprocess.run([sys.executable, "-m", program], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "no CUDA device" in out.stderr


def test_kernels_imports_nothing_above_it():
    """kernels <- fstrain.models <- fstrain: no module of kernels/ imports fstrain (or cluster, batch)."""
    import ast

    upward = []
    for path in sorted((REPO / "kernels").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            upward += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("fstrain", "cluster", "batch")]
    assert upward == []
