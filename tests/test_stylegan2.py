"""StyleGAN2 G/D: rosinality layout, arithmetic against a naive independent implementation, latent semantics."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fstrain.models.latents import (broadcast_w, mix_layers, modulation_basis, modulation_weight_matrix, truncate,
                                    v_to_w, w_to_v, z_plus_to_w_plus)
from fstrain.models.stylegan2 import Discriminator, Generator

CM2_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}
STYLE_DIM = 32


def published_generator_layout(size: int, style_dim: int = 512, n_mlp: int = 8) -> dict[str, tuple]:
    """Key -> shape of rosinality's Generator (channel_multiplier=2), written out from the published layout."""
    ch = CM2_CHANNELS
    log_size = int(math.log2(size))
    layout: dict[str, tuple] = {}
    for i in range(1, n_mlp + 1):
        layout[f"style.{i}.weight"] = (style_dim, style_dim)
        layout[f"style.{i}.bias"] = (style_dim,)
    layout["input.input"] = (1, ch[4], 4, 4)

    def styled(prefix: str, cin: int, cout: int, upsample: bool) -> None:
        layout[f"{prefix}.conv.weight"] = (1, cout, cin, 3, 3)
        layout[f"{prefix}.conv.modulation.weight"] = (cin, style_dim)
        layout[f"{prefix}.conv.modulation.bias"] = (cin,)
        layout[f"{prefix}.noise.weight"] = (1,)
        layout[f"{prefix}.activate.bias"] = (cout,)
        if upsample:
            layout[f"{prefix}.conv.blur.kernel"] = (4, 4)

    def to_rgb(prefix: str, cin: int, upsample: bool) -> None:
        layout[f"{prefix}.bias"] = (1, 3, 1, 1)
        layout[f"{prefix}.conv.weight"] = (1, 3, cin, 1, 1)
        layout[f"{prefix}.conv.modulation.weight"] = (cin, style_dim)
        layout[f"{prefix}.conv.modulation.bias"] = (cin,)
        if upsample:
            layout[f"{prefix}.upsample.kernel"] = (4, 4)

    styled("conv1", ch[4], ch[4], False)
    to_rgb("to_rgb1", ch[4], False)
    for k, res_log in enumerate(range(3, log_size + 1)):
        cin, cout = ch[2 ** (res_log - 1)], ch[2 ** res_log]
        styled(f"convs.{2 * k}", cin, cout, True)
        styled(f"convs.{2 * k + 1}", cout, cout, False)
        to_rgb(f"to_rgbs.{k}", cout, True)
    for j in range((log_size - 2) * 2 + 1):
        r = 2 ** ((j + 5) // 2)
        layout[f"noises.noise_{j}"] = (1, 1, r, r)
    return layout


def published_discriminator_layout(size: int) -> dict[str, tuple]:
    ch = CM2_CHANNELS
    log_size = int(math.log2(size))
    layout = {"convs.0.0.weight": (ch[size], 3, 1, 1), "convs.0.1.bias": (ch[size],)}
    for j, i in enumerate(range(log_size, 2, -1), start=1):
        cin, cout = ch[2 ** i], ch[2 ** (i - 1)]
        layout |= {f"convs.{j}.conv1.0.weight": (cin, cin, 3, 3), f"convs.{j}.conv1.1.bias": (cin,),
                   f"convs.{j}.conv2.0.kernel": (4, 4), f"convs.{j}.conv2.1.weight": (cout, cin, 3, 3),
                   f"convs.{j}.conv2.2.bias": (cout,), f"convs.{j}.skip.0.kernel": (4, 4),
                   f"convs.{j}.skip.1.weight": (cout, cin, 1, 1)}
    layout |= {"final_conv.0.weight": (512, 513, 3, 3), "final_conv.1.bias": (512,),
               "final_linear.0.weight": (512, 512 * 16), "final_linear.0.bias": (512,),
               "final_linear.1.weight": (1, 512), "final_linear.1.bias": (1,)}
    return layout


def shapes(module: torch.nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ---------------------------------------------------------------- layout


def test_generator_1024_matches_published_layout_exactly():
    with torch.device("meta"):
        g = Generator(1024, 512, 8, channel_multiplier=2)
    assert shapes(g) == published_generator_layout(1024)
    assert len(g.state_dict()) == 171
    assert len(list(g.parameters())) == 138 and len(list(g.buffers())) == 33
    assert sum(p.numel() for p in g.parameters()) == 30_370_060
    assert (g.n_latent, g.num_layers) == (18, 17)


@pytest.mark.parametrize("size, n_keys, n_latent", [(512, 153, 16), (256, 135, 14)])
def test_generator_smaller_sizes_match_published_layout(size, n_keys, n_latent):
    with torch.device("meta"):
        g = Generator(size, 512, 8)
    assert shapes(g) == published_generator_layout(size)
    assert len(g.state_dict()) == n_keys and g.n_latent == n_latent


def test_discriminator_1024_matches_published_layout_exactly():
    with torch.device("meta"):
        d = Discriminator(1024, channel_multiplier=2)
    assert shapes(d) == published_discriminator_layout(1024)
    assert len(d.state_dict()) == 64
    assert sum(p.numel() for p in d.parameters()) == 29_012_513


def test_fir_kernel_buffers_hold_rosinality_values():
    g = Generator(16, STYLE_DIM, 1, channel_max=8)
    d = Discriminator(16, channel_max=8)
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    outer = taps[:, None] * taps[None, :]
    torch.testing.assert_close(g.state_dict()["convs.0.conv.blur.kernel"], outer / 64 * 4)
    torch.testing.assert_close(g.state_dict()["to_rgbs.0.upsample.kernel"], outer / 64 * 4)
    torch.testing.assert_close(d.state_dict()["convs.1.conv2.0.kernel"], outer / 64)


def test_channel_max_caps_channels_and_rejects_bad_sizes():
    g = Generator(32, STYLE_DIM, 2, channel_max=16)
    assert g.state_dict()["convs.2.conv.weight"].shape == (1, 16, 16, 3, 3)
    with pytest.raises(ValueError, match="power of two"):
        Generator(48, STYLE_DIM, 2)


# ---------------------------------------------------------------- arithmetic vs a naive implementation


def randomized_generator(size=32, style_dim=STYLE_DIM, n_mlp=2, channel_max=16, seed=0) -> Generator:
    """A tiny generator whose zero/one-initialised parameters (noise strength, biases) are made non-trivial."""
    torch.manual_seed(seed)
    g = Generator(size, style_dim, n_mlp, channel_multiplier=1, channel_max=channel_max)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise.weight") or name.endswith("activate.bias") or name.endswith(".bias"):
                p.normal_(0, 0.3)
            if name.endswith("modulation.bias"):
                p.add_(1.0)
    return g.eval()


BLUR4 = torch.tensor([1.0, 3.0, 3.0, 1.0])[:, None] * torch.tensor([1.0, 3.0, 3.0, 1.0])[None, :] / 64 * 4


def naive_zero_insert(x: torch.Tensor) -> torch.Tensor:
    out = x.new_zeros(x.shape[0], x.shape[1], x.shape[2] * 2, x.shape[3] * 2)
    out[:, :, ::2, ::2] = x
    return out


def naive_fir(x: torch.Tensor, kernel: torch.Tensor, pad0: int, pad1: int) -> torch.Tensor:
    x = F.pad(x, [pad0, pad1, pad0, pad1])
    c = x.shape[1]
    return F.conv2d(x, kernel.flip([0, 1]).to(x)[None, None].repeat(c, 1, 1, 1), groups=c)


def naive_modconv(sd, prefix, x, w, demodulate=True, upsample=False):
    """Per-sample modulated conv as the StyleGAN2 equations define it, no grouped-conv fusion."""
    weight = sd[f"{prefix}.weight"][0]                      # (out, in, k, k)
    mod_w, mod_b = sd[f"{prefix}.modulation.weight"], sd[f"{prefix}.modulation.bias"]
    out_ch, in_ch, k, _ = weight.shape
    outs = []
    for b in range(x.shape[0]):
        s = w[b] @ (mod_w / math.sqrt(mod_w.shape[1])).T + mod_b           # EqualLinear, lr_mul 1
        wb = weight / math.sqrt(in_ch * k * k) * s[None, :, None, None]
        if demodulate:
            wb = wb / torch.sqrt((wb ** 2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        xb = x[b:b + 1]
        if upsample:  # transposed conv, stride 2 == zero insertion + full padding + flipped kernel
            y = F.conv2d(F.pad(naive_zero_insert(xb), [k - 1, k - 2, k - 1, k - 2]), wb.flip([2, 3]))
            y = naive_fir(y, BLUR4.to(y), 1, 1)
        else:
            y = F.conv2d(xb, wb, padding=k // 2)
        outs.append(y)
    return torch.cat(outs)


def naive_synthesis(g: Generator, w_plus: torch.Tensor, noises: list[torch.Tensor]) -> torch.Tensor:
    sd = g.state_dict()

    def styled(prefix, x, w, noise, upsample=False):
        y = naive_modconv(sd, f"{prefix}.conv", x, w, upsample=upsample)
        y = y + sd[f"{prefix}.noise.weight"] * noise
        return F.leaky_relu(y + sd[f"{prefix}.activate.bias"][None, :, None, None], 0.2) * math.sqrt(2)

    def to_rgb(prefix, x, w, skip):
        y = naive_modconv(sd, f"{prefix}.conv", x, w, demodulate=False) + sd[f"{prefix}.bias"]
        if skip is not None:
            y = y + naive_fir(naive_zero_insert(skip), BLUR4.to(skip), 2, 1)
        return y

    x = sd["input.input"].repeat(w_plus.shape[0], 1, 1, 1)
    x = styled("conv1", x, w_plus[:, 0], noises[0])
    skip = to_rgb("to_rgb1", x, w_plus[:, 1], None)
    for j in range(len(g.to_rgbs)):
        x = styled(f"convs.{2 * j}", x, w_plus[:, 1 + 2 * j], noises[1 + 2 * j], upsample=True)
        x = styled(f"convs.{2 * j + 1}", x, w_plus[:, 2 + 2 * j], noises[2 + 2 * j])
        skip = to_rgb(f"to_rgbs.{j}", x, w_plus[:, 3 + 2 * j], skip)
    return skip


def naive_mapping(g: Generator, z: torch.Tensor, lr_mul: float = 0.01) -> torch.Tensor:
    sd = g.state_dict()
    x = z / torch.sqrt((z ** 2).mean(dim=1, keepdim=True) + 1e-8)
    for i in range(1, g.n_mlp + 1):
        weight, bias = sd[f"style.{i}.weight"], sd[f"style.{i}.bias"]
        x = x @ (weight * lr_mul / math.sqrt(weight.shape[1])).T + bias * lr_mul
        x = F.leaky_relu(x, 0.2) * math.sqrt(2)
    return x


def test_synthesis_matches_naive_modulated_conv_equations():
    g = randomized_generator()
    torch.manual_seed(1)
    w_plus = torch.randn(2, g.n_latent, STYLE_DIM)
    noises = g.fixed_noise(seed=3, batch=2)
    with torch.no_grad():
        fused = g.synthesis(w_plus, noise=noises)
        # float64 on both sides: the fused path must equal the equations up to rounding, not just roughly.
        g64 = randomized_generator().double()
        fused64 = g64.synthesis(w_plus.double(), noise=[n.double() for n in noises])
        naive64 = naive_synthesis(g64, w_plus.double(), [n.double() for n in noises])
    assert fused.shape == (2, 3, 32, 32)
    torch.testing.assert_close(fused64, naive64, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(fused.double(), naive64, atol=1e-4, rtol=1e-4)


def test_mapping_matches_equal_linear_equations():
    g = randomized_generator()
    z = torch.randn(5, STYLE_DIM, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(g.double().get_latent(z), naive_mapping(g, z), atol=1e-10, rtol=1e-9)


def test_forward_z_equals_synthesis_of_mapped_w():
    g = randomized_generator()
    z = torch.randn(2, STYLE_DIM)
    with torch.no_grad():
        img, latent = g([z], return_latents=True, randomize_noise=False)
        expected = g.synthesis(broadcast_w(g.get_latent(z), g.n_latent))
    assert latent.shape == (2, g.n_latent, STYLE_DIM)
    torch.testing.assert_close(img, expected, atol=0, rtol=0)


# ---------------------------------------------------------------- noise, truncation, z_plus, mixing


def test_fixed_noise_renders_bit_identical_and_random_noise_differs():
    g = randomized_generator()
    z = torch.randn(2, STYLE_DIM)
    with torch.no_grad():
        a, _ = g([z], randomize_noise=False)
        b, _ = g([z], randomize_noise=False)
        c, _ = g([z], noise=g.fixed_noise(7, batch=2))
        d, _ = g([z], noise=g.fixed_noise(7, batch=2))
        r1, _ = g([z])
        r2, _ = g([z])
    assert torch.equal(a, b) and torch.equal(c, d)
    assert not torch.equal(a, c)
    assert not torch.equal(r1, r2)
    assert [tuple(n.shape[2:]) for n in g.make_noise()] == [tuple(n.shape[2:]) for n in g.noise_buffers()]


def test_truncation_psi_zero_renders_mean_latent_image():
    g = randomized_generator()
    w_avg = g.mean_latent(512, generator=torch.Generator().manual_seed(0))
    assert w_avg.shape == (1, STYLE_DIM)
    z = torch.randn(3, STYLE_DIM)
    with torch.no_grad():
        truncated, _ = g([z], truncation=0, truncation_latent=w_avg, randomize_noise=False)
        mean_image, _ = g([w_avg.repeat(3, 1)], input_is_latent=True, randomize_noise=False)
        half, _ = g([z], truncation=0.5, truncation_latent=w_avg, randomize_noise=False)
        half_expected = g.synthesis(broadcast_w(truncate(g.get_latent(z), w_avg, 0.5), g.n_latent))
    torch.testing.assert_close(truncated, mean_image, atol=0, rtol=0)
    torch.testing.assert_close(half, half_expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="truncation_latent"):
        g([z], truncation=0.5)


def test_z_plus_with_identical_rows_equals_z():
    g = randomized_generator()
    z = torch.randn(2, STYLE_DIM)
    z_plus = z[:, None].repeat(1, g.n_latent, 1)
    with torch.no_grad():
        from_z, _ = g([z], randomize_noise=False)
        from_z_plus, _ = g([z_plus], randomize_noise=False)
        w_plus = z_plus_to_w_plus(g, z_plus)
    torch.testing.assert_close(from_z_plus, from_z, atol=1e-5, rtol=1e-5)
    # Per-layer mapping: each row is normalised on its own (not across layers).
    z_plus[:, 3] *= 10.0
    torch.testing.assert_close(z_plus_to_w_plus(g, z_plus)[:, 3], w_plus[:, 3], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [1, 4, 7])
def test_style_mixing_takes_layers_from_k_from_second_code(k):
    g = randomized_generator()
    z1, z2 = torch.randn(2, STYLE_DIM), torch.randn(2, STYLE_DIM)
    with torch.no_grad():
        img, latent = g([z1, z2], inject_index=k, return_latents=True, randomize_noise=False)
        w1, w2 = g.get_latent(z1), g.get_latent(z2)
        mixed = mix_layers(broadcast_w(w1, g.n_latent), broadcast_w(w2, g.n_latent), k)
        expected = g.synthesis(mixed)
    torch.testing.assert_close(latent[:, :k], w1[:, None].expand(-1, k, -1))
    torch.testing.assert_close(latent[:, k:], w2[:, None].expand(-1, g.n_latent - k, -1))
    torch.testing.assert_close(img, expected, atol=0, rtol=0)


def test_mix_layers_validates_inputs():
    a, b = torch.zeros(1, 10, 4), torch.ones(1, 10, 4)
    assert mix_layers(a, b, 0).eq(1).all() and mix_layers(a, b, 10).eq(0).all()
    with pytest.raises(ValueError, match="outside 0..10"):
        mix_layers(a, b, 11)
    with pytest.raises(ValueError, match="same"):
        mix_layers(a, torch.ones(1, 9, 4), 3)


def test_w_plus_input_and_shape_errors():
    g = randomized_generator()
    w_plus = torch.randn(1, g.n_latent, STYLE_DIM)
    with torch.no_grad():
        img, _ = g([w_plus], input_is_latent=True, randomize_noise=False)
    torch.testing.assert_close(img, g.synthesis(w_plus), atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"\(N, 8, 32\)"):
        g([torch.randn(1, 5, STYLE_DIM)], input_is_latent=True)
    with pytest.raises(ValueError, match="w_plus"):
        g.synthesis(torch.randn(1, STYLE_DIM))


# ---------------------------------------------------------------- V basis


def test_modulation_basis_is_orthonormal_right_singular_basis_and_round_trips():
    g = randomized_generator()
    basis = modulation_basis(g)
    assert basis.shape == (STYLE_DIM, STYLE_DIM)
    torch.testing.assert_close(basis @ basis.T, torch.eye(STYLE_DIM), atol=1e-5, rtol=0)
    # Columns are right-singular vectors: V^T (W^T W) V is diagonal with descending entries.
    matrix = modulation_weight_matrix(g)
    gram = basis.double().T @ matrix.T @ matrix @ basis.double()
    diag = torch.diagonal(gram)
    torch.testing.assert_close(gram - torch.diag(diag), torch.zeros_like(gram), atol=1e-6 * diag.max().item(),
                               rtol=0)
    assert torch.all(diag[:-1] >= diag[1:] - 1e-6)
    # to_rgbs are excluded, conv1 / to_rgb1 / convs included (SeFa's key filter).
    expected_rows = sum(v.shape[0] for k, v in g.state_dict().items()
                        if "modulation.weight" in k and "to_rgbs" not in k)
    assert matrix.shape == (expected_rows, STYLE_DIM)
    v = torch.randn(4, STYLE_DIM)
    torch.testing.assert_close(w_to_v(v_to_w(v, basis), basis), v, atol=1e-5, rtol=1e-5)
    w_plus = torch.randn(2, g.n_latent, STYLE_DIM)
    torch.testing.assert_close(v_to_w(w_to_v(w_plus, basis), basis), w_plus, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- discriminator


def test_discriminator_scores_any_batch_and_supports_r1_double_backward():
    torch.manual_seed(0)
    d = Discriminator(32, channel_multiplier=1, channel_max=16)
    for batch in (1, 3, 4, 6):
        assert d(torch.randn(batch, 3, 32, 32)).shape == (batch, 1)
    real = torch.randn(4, 3, 32, 32, requires_grad=True)
    (grad,) = torch.autograd.grad(d(real).sum(), real, create_graph=True)
    r1 = grad.pow(2).sum()
    r1.backward()
    # The last bias cannot change input gradients; every weight that shapes them receives a gradient.
    grads = {name: p.grad for name, p in d.named_parameters()}
    assert grads["final_linear.1.bias"] is None
    assert grads["convs.0.0.weight"].abs().sum() > 0
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)


def test_discriminator_minibatch_stddev_feature_depends_on_the_group():
    torch.manual_seed(0)
    d = Discriminator(16, channel_multiplier=1, channel_max=8).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        alone = d(x[:1].repeat(4, 1, 1, 1))[0]
        in_group = d(x)[0]
    # Same first image, different group statistics -> different score (the stddev channel is wired in).
    assert not torch.allclose(alone, in_group)


def naive_discriminator(d: Discriminator, x: torch.Tensor) -> torch.Tensor:
    """rosinality's residual D written out from its equations, one layer at a time, no shared modules."""
    sd = d.state_dict()
    blur = BLUR4.to(x) / 4                                  # [1, 3, 3, 1] outer product, normalised to sum 1

    def conv(prefix, y, stride=1, padding=0):
        weight = sd[f"{prefix}.weight"]
        return F.conv2d(y, weight / math.sqrt(weight[0].numel()), stride=stride, padding=padding)

    def act(y, bias):
        shape = (1, -1) + (1,) * (y.ndim - 2)
        return F.leaky_relu(y + bias.reshape(shape), 0.2) * math.sqrt(2)

    out = act(conv("convs.0.0", x), sd["convs.0.1.bias"])
    for j in range(1, len(d.convs)):
        p = f"convs.{j}"
        main = act(conv(f"{p}.conv1.0", out, padding=1), sd[f"{p}.conv1.1.bias"])
        main = act(conv(f"{p}.conv2.1", naive_fir(main, blur, 2, 2), stride=2), sd[f"{p}.conv2.2.bias"])
        skip = conv(f"{p}.skip.1", naive_fir(out, blur, 1, 1), stride=2)
        out = (main + skip) / math.sqrt(2)
    # Minibatch stddev: groups of the largest divisor of the batch <= 4; sample n is grouped with every sample
    # whose index is n modulo (batch / group). One scalar per sample: mean over (C, H, W) of the group's std.
    batch = out.shape[0]
    group = max(g for g in range(1, min(batch, 4) + 1) if batch % g == 0)
    columns = batch // group
    feature = torch.empty(batch, 1, *out.shape[2:], dtype=out.dtype)
    for n in range(batch):
        members = out[n % columns::columns]
        std = torch.sqrt(((members - members.mean(0)) ** 2).mean(0) + 1e-8)
        feature[n] = std.mean()
    out = act(conv("final_conv.0", torch.cat([out, feature], 1), padding=1), sd["final_conv.1.bias"])
    flat = out.reshape(batch, -1)
    w0, w1 = sd["final_linear.0.weight"], sd["final_linear.1.weight"]
    hidden = act(flat @ (w0 / math.sqrt(w0.shape[1])).T, sd["final_linear.0.bias"])
    return hidden @ (w1 / math.sqrt(w1.shape[1])).T + sd["final_linear.1.bias"]


@pytest.mark.parametrize("batch", [1, 4, 6])
def test_discriminator_matches_naive_equations(batch):
    torch.manual_seed(2)
    d = Discriminator(32, channel_multiplier=1, channel_max=16).double().eval()
    with torch.no_grad():
        for name, param in d.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.3)
    x = torch.randn(batch, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        torch.testing.assert_close(d(x), naive_discriminator(d, x), rtol=1e-10, atol=1e-10)
