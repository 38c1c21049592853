"""The world's base StyleGAN2: G and D trained adversarially on world photos (the FFHQ StyleGAN2 role).

    train_generator(out_dir, size=64, seed=0, budget_s=1500)

Two phases, on photos of the TRAIN identities (fstrain.world.splits; held-out identities are never seen) and on a
pool of photos drawn through the world's Gaussian latent u (fstrain.data.synthetic.params_from_normal: u ~ N(0, I)
selects a world person and view, so z = (u, fresh normals) is an ordinary N(0, I) draw with a known rendering):

1. warm start  (fstrain.world.autoencoder) G's synthesis network and a throw-away pSp encoder trained as an
               autoencoder (pixel loss weighted up on eyes, brows and mouth), then G's mapping regressed so that
               mapping(z) for the pool's z is the encoder's code of that z's photo (`fit_mapping_to_pairs`):
               random G(z) already look like blurry world portraits, so the short adversarial phase below
               refines instead of discovering faces from noise.
2. adversarial the StyleGAN2 objective (rosinality's train.py): non-saturating logistic loss, R1 on reals with
               lazy regularisation (every `d_reg_every` D steps, Adam betas/lr rescaled), optional style mixing, an
               EMA copy g_ema, optional path-length regularisation. D starts from scratch here and is saved, so the
               fine-tune starts from a trained D as the paper's does. G's step also keeps the warm start's pixel
               loss on encoder reconstructions and on the pool's G(z) against their photos (AdversarialTrainer).

Output (out_dir, a folder or s3:// prefix):
    generator.pt (+ .json)   rosinality TRAINING layout {"g", "d", "g_ema", "latent_avg", "args"} (`args` a plain
                             dict); `fstrain.models.checkpoints.load_generator` reads it strictly (g_ema and d)
    generator_samples.png    8 x 8 samples of g_ema from fixed z, stored (zero) noise

Channel widths are uniform (rosinality's table capped at `channel_max`): on 2 CPU cores a 64 px model at 32
channels takes about a second per step at batch 16, so a 25-minute budget buys roughly a thousand steps.
Stored noise maps are zero (NVlabs' noise_mode="none"), as for every render from stored noise in the project;
training draws random noise. Deterministic for a seed when the step counts are given (`warm_steps`,
`gan_steps`); from a budget alone they are planned from the measured speed of this machine and recorded.
"""
from __future__ import annotations

import copy
import dataclasses
import io
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image
from torch import nn

from fstrain.data import storage
from fstrain.losses import (discriminator_adversarial_loss, face_weight_map, generator_adversarial_loss,
                            lazy_regularization_ratio, r1_penalty)
from fstrain.models.checkpoints import FORMAT_NAME, MEAN_LATENT_SAMPLES, metadata_uri, read_checkpoint
from fstrain.models.psp import PSPEncoder, build_encoder, load_encoder, save_encoder
from fstrain.models.stylegan2 import Discriminator, Generator
from fstrain.stylize.images import image_grid, to_uint8
from fstrain.world import autoencoder
from fstrain.world.files import FILES, GENERATOR_SAMPLES, WARM_START_ENCODER
from fstrain.world.splits import TRAIN, render_identities, render_latent_pool
from fstrain.world.training import seconds_per_call

Log = Callable[[str], None]


@dataclass(frozen=True)
class GeneratorSettings:
    """Architecture and optimisation of the world's base G/D."""
    size: int = 64
    style_dim: int = 512
    n_mlp: int = 4
    channel_multiplier: int = 1
    channel_max: int = 16           # 16 runs ~3x faster than 32 on 2 CPU cores: more steps in the same budget
    batch_size: int = 16
    identities: int = 2048          # TRAIN identities rendered ...
    views_per_identity: int = 2     # ... in this many views each (expression, gaze, light, background vary)
    warm_fraction: float = 0.6      # share of the training budget spent on the autoencoder warm start ...
    warm_max_s: float = 360.0       # ... at most this long: past it adversarial steps pay more (continuing a G whose
                                    # warm start had 756 s took FID 24.7 -> 14.1 in 5300 more adversarial steps)
    plan_margin: float = 0.8        # planned steps use this share of the budget (speed varies on a shared CPU)
    latent_pool: int = 8192         # photos drawn through the world's Gaussian latent (see `world_z`)
    mapping_steps: int = 3000       # ~20 ms each: u -> code is a curved function (hair style, glasses are discrete)
    feature_weight: float = 3.0     # pixel-loss weight of the eye/brow band and mouth (fstrain.losses.face_weight_map)
    lr: float = 0.002
    d_lr_multiplier: float = 2.0    # D's lr = lr x this (a D that learns faster tells G sooner what blur looks like)
    reconstruction_weight: float = 1.0  # > 0: the adversarial phase keeps the warm start's pixel loss (below)
    edge_weight: float = 2.0        # pixel loss's edge term (fstrain.world.autoencoder.pixel_loss), both phases
    r1_gamma: float = 0.5           # small: 64 px images (StyleGAN2-ADA's heuristic gives ~0.05-1 here)
    d_reg_every: int = 16
    path_length_weight: float = 0.0  # rosinality: 2 every 4 steps; off by default (doubles the G step on CPU)
    g_reg_every: int = 4
    mixing: float = 0.0             # rosinality: 0.9. Off: the pixel loss of the pool's G(z) has no target for a
                                    # mixed code, and a D shown mixed fakes that G's step never makes is fooled by none
    ema_half_life_images: float = 2000.0
    xflip: bool = True

    def generator(self) -> Generator:
        return Generator(self.size, self.style_dim, self.n_mlp, channel_multiplier=self.channel_multiplier,
                         channel_max=self.channel_max)

    def discriminator(self) -> Discriminator:
        return Discriminator(self.size, channel_multiplier=self.channel_multiplier, channel_max=self.channel_max)


# ---------------------------------------------------------------- data


def training_photos(settings: GeneratorSettings) -> torch.Tensor:
    """(N, 3, size, size) in [-1, 1]: TRAIN identities x views in the photo domain (never held-out people)."""
    batch = render_identities(TRAIN, settings.identities, settings.views_per_identity, "photo", settings.size)
    return batch.tensor()


def _real_batch(photos: torch.Tensor, settings: GeneratorSettings, rng: torch.Generator) -> torch.Tensor:
    idx = torch.randint(len(photos), (settings.batch_size,), generator=rng)
    x = photos[idx]
    if settings.xflip:
        flip = torch.rand(len(x), generator=rng) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


def world_z(latents: torch.Tensor, style_dim: int, rng: torch.Generator) -> torch.Tensor:
    """z whose first LATENT_DRAWS coordinates are the world latents u (fstrain.data.synthetic.params_from_normal)
    and the rest fresh N(0, 1): distributed exactly as z ~ N(0, I), so G(z) for random z is a G(world_z(u))."""
    z = torch.randn(len(latents), style_dim, generator=rng)
    z[:, :latents.shape[1]] = latents
    return z


@torch.no_grad()
def _start_at(mapping: nn.Sequential, codes: torch.Tensor, rng: torch.Generator) -> None:
    """Rescale the mapping's last layer (EqualLinear + leaky ReLU(0.2) x sqrt 2) so that, for random z, its
    pre-activations have the mean and spread of the codes' pre-activations: the regression then starts on the
    codes' scale (as pSp starts from latent_avg) instead of wherever a random MLP points (about ten times the
    codes' spread), and converges in far fewer steps while mapping(z) still varies with z."""
    last = mapping[-1]
    hidden = mapping[:-1](torch.randn(1024, codes.shape[1], generator=rng).to(last.weight.device))
    codes = codes.to(last.weight.device)
    pre = torch.nn.functional.linear(hidden, last.weight * last.scale)
    target = torch.where(codes >= 0, codes, codes / 0.2) / math.sqrt(2)
    gain = float(target.std(0).mean() / pre.std(0).mean().clamp_min(1e-8))
    last.weight.mul_(gain)
    last.bias.copy_((target.mean(0) - gain * pre.mean(0)) / last.lr_mul)


def fit_mapping_to_pairs(g: Generator, latents: torch.Tensor, codes: torch.Tensor, steps: int, lr: float,
                         rng: torch.Generator, log: Log, batch_size: int = 256) -> float:
    """G's mapping regressed so that mapping(world_z(u)) = the warm-start encoder's code of u's photo.

    Random z then land where the encoder puts world photos, on the codes' own (curved) manifold, rather than on a
    Gaussian fitted to it, whose off-manifold points render as faces with impossible colours. Returns the final
    MSE relative to the codes' total variance.
    """
    mapping = g.style
    device = g.input.input.device
    _start_at(mapping, codes, rng)
    mapping.train()
    optim = torch.optim.Adam(mapping.parameters(), lr=lr, betas=(0.9, 0.99))
    schedule = torch.optim.lr_scheduler.LambdaLR(optim, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    scale = float(codes.var(0).sum())
    loss = torch.zeros(())
    for step in range(1, steps + 1):
        idx = torch.randint(len(latents), (min(batch_size, len(latents)),), generator=rng)
        z = world_z(latents[idx], g.style_dim, rng).to(device)
        loss = (mapping(z) - codes[idx].to(device)).pow(2).sum(1).mean() / scale
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        schedule.step()
        if step % max(steps // 6, 1) == 0 or step == steps:
            log(f"  mapping {step}/{steps}  relative MSE to the paired codes {float(loss.detach()):.4f}")
    mapping.eval()
    return float(loss.detach())


# ---------------------------------------------------------------- the adversarial step


def _latents(g: Generator, batch: int, mixing: float, rng: torch.Generator) -> list[torch.Tensor]:
    """One z, or two (style mixing) with probability `mixing`, as rosinality's mixing_noise."""
    device = g.input.input.device
    if mixing > 0 and float(torch.rand((), generator=rng)) < mixing:
        return [torch.randn(batch, g.style_dim, generator=rng).to(device),
                torch.randn(batch, g.style_dim, generator=rng).to(device)]
    return [torch.randn(batch, g.style_dim, generator=rng).to(device)]


def _mix_index(g: Generator, styles: list[torch.Tensor], rng: torch.Generator) -> int | None:
    return int(torch.randint(1, g.n_latent, (), generator=rng)) if len(styles) == 2 else None


def _set_trainable(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def _path_length_penalty(g: Generator, s: GeneratorSettings, mean_path: torch.Tensor,
                         rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """rosinality's g_path_regularize: (|J_w^T y| - a)^2, a the running mean path length."""
    batch = max(s.batch_size // 2, 1)
    styles = _latents(g, batch, s.mixing, rng)
    fake, latents = g(styles, return_latents=True, inject_index=_mix_index(g, styles, rng))
    noise = torch.randn(fake.shape, generator=rng).to(fake.device) / math.sqrt(fake.shape[2] * fake.shape[3])
    (grad,) = torch.autograd.grad((fake * noise).sum(), latents, create_graph=True)
    lengths = grad.pow(2).sum(2).mean(1).sqrt()
    new_mean = mean_path + 0.01 * (lengths.detach().mean() - mean_path)
    return (lengths - new_mean).pow(2).mean(), new_mean


class AdversarialTrainer:
    """rosinality's training loop for one G/D pair (and g_ema), on the models' device (random draws come from the
    CPU generator `rng` and move there, so a seed gives the same draws on any device).

    With `encoder` and `s.reconstruction_weight` > 0, half of G's step renders G.synthesis(E_w+(x)) for real photos
    x instead of G(z): those reconstructions get the adversarial loss and the warm start's pixel loss (as VQGAN
    trains its decoder), and E_w+ keeps training with G. The pixel loss pins G's layout to real faces while D's
    gradient removes the blur, which a short CPU run of the plain GAN objective does not manage alone. With a
    `pool` of (world latent u, photo) pairs the other half renders G(world_z(u)) and gets the pixel loss to its
    photo as well, so random samples, not only reconstructions, are pinned to world faces.
    """

    def __init__(self, g: Generator, d: Discriminator, s: GeneratorSettings, rng: torch.Generator,
                 encoder: PSPEncoder | None = None, pool: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.g, self.d, self.s, self.rng = g, d, s, rng
        self.encoder = encoder if s.reconstruction_weight > 0 else None
        self.pool = pool if s.reconstruction_weight > 0 else None
        self.device = g.input.input.device
        self.weight = face_weight_map(s.size, s.feature_weight)
        if self.weight is not None:
            self.weight = self.weight.to(self.device)
        self.g_ema = copy.deepcopy(g).eval()
        _set_trainable(self.g_ema, False)
        g_ratio = lazy_regularization_ratio(s.g_reg_every) if s.path_length_weight > 0 else 1.0
        d_ratio = lazy_regularization_ratio(s.d_reg_every)
        self.g_optim = torch.optim.Adam(g.parameters(), lr=s.lr * g_ratio, betas=(0.0, 0.99 ** g_ratio))
        self.d_optim = torch.optim.Adam(d.parameters(), lr=s.lr * s.d_lr_multiplier * d_ratio,
                                        betas=(0.0, 0.99 ** d_ratio))
        self.e_optim = (torch.optim.Adam(self.encoder.parameters(), lr=s.lr, betas=(0.9, 0.99))
                        if self.encoder is not None else None)
        self.ema_decay = 0.5 ** (s.batch_size / s.ema_half_life_images)
        self.mean_path = torch.zeros((), device=self.device)
        self.step_count = 0

    def step(self, real: torch.Tensor) -> dict[str, float]:
        g, d, s, rng = self.g, self.d, self.s, self.rng
        real = real.to(self.device)
        figures: dict[str, float] = {}
        # D: logistic loss on reals vs fakes.
        _set_trainable(g, False)
        _set_trainable(d, True)
        styles = _latents(g, s.batch_size, s.mixing, rng)
        with torch.no_grad():
            fake = g(styles, inject_index=_mix_index(g, styles, rng))[0]
        real_logits, fake_logits = d(real), d(fake)
        d_loss = discriminator_adversarial_loss(real_logits, fake_logits)
        self.d_optim.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_optim.step()
        figures.update(d_loss=float(d_loss.detach()), real_logit=float(real_logits.detach().mean()),
                       fake_logit=float(fake_logits.detach().mean()))
        if s.d_reg_every > 0 and self.step_count % s.d_reg_every == 0:
            real_req = real.detach().requires_grad_(True)
            r1 = r1_penalty(d(real_req), real_req)
            self.d_optim.zero_grad(set_to_none=True)
            (s.r1_gamma / 2 * r1 * s.d_reg_every).backward()
            self.d_optim.step()
            figures["r1"] = float(r1.detach())
        # G: non-saturating loss through D.
        _set_trainable(g, True)
        _set_trainable(d, False)
        if self.encoder is None:
            styles = _latents(g, s.batch_size, s.mixing, rng)
            fake = g(styles, inject_index=_mix_index(g, styles, rng))[0]
            g_loss = generator_adversarial_loss(d(fake))
            total = g_loss
        else:
            half = s.batch_size // 2
            paired = torch.zeros((), device=self.device)
            if self.pool is None:
                styles = _latents(g, s.batch_size - half, s.mixing, rng)
                fake = g(styles, inject_index=_mix_index(g, styles, rng))[0]
            else:   # z drawn through the world's latent: each sample has its own rendering as a target
                pool_latents, pool_photos = self.pool
                idx = torch.randint(len(pool_latents), (s.batch_size - half,), generator=rng)
                fake = g([world_z(pool_latents[idx], g.style_dim, rng).to(self.device)])[0]
                paired = autoencoder.pixel_loss(fake, pool_photos[idx].to(self.device), s.edge_weight, self.weight)
                figures["pixel_paired"] = float(paired.detach())
            photos = real[:half]
            self.encoder.train()
            rebuilt = g.synthesis(self.encoder(photos), randomize_noise=True)
            g_loss = generator_adversarial_loss(d(torch.cat([fake, rebuilt])))
            pixel = autoencoder.pixel_loss(rebuilt, photos, s.edge_weight, self.weight)
            total = g_loss + s.reconstruction_weight * (pixel + paired)
            self.e_optim.zero_grad(set_to_none=True)
            figures["pixel"] = float(pixel.detach())
        self.g_optim.zero_grad(set_to_none=True)
        total.backward()
        self.g_optim.step()
        if self.e_optim is not None:
            self.e_optim.step()
        figures["g_loss"] = float(g_loss.detach())
        if s.path_length_weight > 0 and self.step_count % s.g_reg_every == 0:
            penalty, self.mean_path = _path_length_penalty(g, s, self.mean_path, rng)
            self.g_optim.zero_grad(set_to_none=True)
            (s.path_length_weight * s.g_reg_every * penalty).backward()
            self.g_optim.step()
            figures["path_length"] = float(penalty.detach())
        with torch.no_grad():
            for p_ema, p in zip(self.g_ema.parameters(), g.parameters()):
                p_ema.lerp_(p, 1 - self.ema_decay)
        self.step_count += 1
        return figures


# ---------------------------------------------------------------- measuring and planning


def plan_steps(s: GeneratorSettings, photos: torch.Tensor, pool: tuple[torch.Tensor, torch.Tensor], budget_s: float,
               seed: int, device: torch.device | str = "cpu") -> dict[str, float]:
    """Steps of each phase that fit `budget_s`, from the measured speed of throw-away copies of the models."""
    rng = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        g, d = s.generator().to(device), s.discriminator().to(device)
        encoder = PSPEncoder(build_encoder("tiny", g.n_latent, s.style_dim, min(s.size, 64), seed=seed),
                             torch.zeros(g.n_latent, s.style_dim), "w+").to(device)
        warm = autoencoder.PretrainSettings(size=s.size, batch_size=s.batch_size, autoencoder_steps=1,
                                            feature_weight=s.feature_weight)
        warm_s = seconds_per_call(lambda: autoencoder.train_autoencoder(encoder, g, photos, warm, rng,
                                                                         lambda line: None))
        trainer = AdversarialTrainer(g, d, s, rng, encoder, pool)
        gan_s = seconds_per_call(lambda: trainer.step(_real_batch(photos, s, rng)), repeats=3)
        gan_s *= 1 + 0.5 / max(s.d_reg_every, 1)        # the lazy R1 step costs about half a D step
    spend = max(budget_s * s.plan_margin, 1.0)
    warm_spend = min(s.warm_fraction * spend, s.warm_max_s)
    warm_steps = max(int(warm_spend / warm_s), 1)
    gan_steps = max(int((spend - warm_spend) / gan_s), 1)
    return {"warm_s_per_step": warm_s, "gan_s_per_step": gan_s, "warm_steps": warm_steps, "gan_steps": gan_steps}


def adversarial_phase(trainer: AdversarialTrainer, photos: torch.Tensor, steps: int | None, deadline: float | None,
                      log: Log) -> tuple[int, dict[str, float]]:
    """Up to `steps` adversarial steps (None: until the clock passes `deadline`; fewer when it passes it first);
    returns the steps taken and the phase's figures (seconds, mean losses and logits of its last tenth). Logs
    every tenth of the steps, or every minute when their number is open."""
    started = last_log = time.perf_counter()
    history: list[dict[str, float]] = []
    logged = 0                                  # len(history) at the last log line
    log_every = max(steps // 10, 1) if steps is not None else 0
    for step in itertools.count(1) if steps is None else range(1, steps + 1):
        history.append(trainer.step(_real_batch(photos, trainer.s, trainer.rng)))
        now = time.perf_counter()
        out_of_time = deadline is not None and now > deadline
        due = step % log_every == 0 if log_every else now - last_log > 60
        if due or step == steps or out_of_time:
            recent, logged, last_log = history[logged:], len(history), now
            mean = {k: sum(h[k] for h in recent if k in h) / max(sum(k in h for h in recent), 1)
                    for k in ("d_loss", "g_loss", "real_logit", "fake_logit", "pixel", "pixel_paired")}
            log(f"  adversarial {step}/{steps or 'budget'}  D loss {mean['d_loss']:.3f}  G loss {mean['g_loss']:.3f}  "
                f"D(real) {mean['real_logit']:+.2f}  D(fake) {mean['fake_logit']:+.2f}  "
                + (f"pixel L1 {mean['pixel']:.4f}  " if trainer.encoder is not None else "")
                + (f"paired {mean['pixel_paired']:.4f}  " if trainer.pool is not None else "") +
                f"{(now - started) / step:.2f} s/step" + ("  (time budget reached)" if out_of_time else ""))
        if out_of_time:
            break
    figures = {"gan_seconds": round(time.perf_counter() - started, 1)}
    tail = history[-max(len(history) // 10, 1):]
    for key in ("d_loss", "g_loss", "real_logit", "fake_logit"):
        figures[f"final_{key}"] = round(sum(h[key] for h in tail) / len(tail), 4)
    return len(history), figures


# ---------------------------------------------------------------- writing


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in module.state_dict().items()}


def save_training_checkpoint(uri: str, g: Generator, d: Discriminator, g_ema: Generator, latent_avg: torch.Tensor,
                             args: dict[str, Any], metadata: dict[str, Any]) -> str:
    """rosinality's training layout {"g", "d", "g_ema", "latent_avg", "args"} plus our `<uri>.json` sidecar."""
    payload = {"g": _cpu_state(g), "d": _cpu_state(d), "g_ema": _cpu_state(g_ema),
               "latent_avg": latent_avg.detach().cpu().float().reshape(-1), "args": dict(args)}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    storage.write_bytes(uri, buffer.getvalue())
    sidecar = {"format": FORMAT_NAME, **metadata, "architecture": g_ema.architecture(),
               "discriminator_architecture": d.architecture()}
    storage.write_bytes(metadata_uri(uri), json.dumps(sidecar, indent=2, sort_keys=True).encode("utf-8"))
    return uri


@torch.no_grad()
def sample_grid(g: Generator, seed: int, rows: int = 8, columns: int = 8) -> Image.Image:
    """rows x columns samples of `g` from z drawn with `seed`, rendered with the stored noise maps."""
    z = torch.randn(rows * columns, g.style_dim, generator=torch.Generator().manual_seed(seed)).to(g.input.input.device)
    images = to_uint8(g([z], randomize_noise=False)[0])
    return image_grid([list(images[r * columns:(r + 1) * columns]) for r in range(rows)], pad=0)


def _write_png(uri: str, image: Image.Image) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    storage.write_bytes(uri, buffer.getvalue())


# ---------------------------------------------------------------- the entry point


def sized_for_budget(s: GeneratorSettings, budget_s: float) -> GeneratorSettings:
    """A tiny budget cannot use thousands of photos (rendering them would eat it, ~10 ms a photo), nor 3000
    mapping steps (~20 ms each): all shrink with the budget (full size from ~20 minutes on)."""
    return dataclasses.replace(s, identities=min(s.identities, max(32, int(budget_s * 3))),
                               latent_pool=min(s.latent_pool, max(64, int(budget_s * 8))),
                               mapping_steps=min(s.mapping_steps, max(25, int(budget_s * 2.5))))


def train_generator(out_dir: str | Path, *, size: int = 64, seed: int, budget_s: float, log: Log = print,
                    settings: GeneratorSettings | None = None, warm_steps: int | None = None,
                    gan_steps: int | None = None, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Train the world's base G/D within `budget_s` seconds and write generator.pt + generator_samples.png.

    `warm_steps` / `gan_steps` fix the step counts (deterministic for a seed; the budget is then not enforced);
    otherwise the warm start's steps are planned from the budget and this machine's measured speed (stopping early
    when its share is spent) and the adversarial phase runs until the budget is spent. `device` runs the models
    there (e.g. "cuda"); the data and the random draws stay on the CPU, so a seed draws the same batches anywhere.
    Returns {"seconds", "steps", "files", ...training figures}.
    """
    started = time.perf_counter()
    s = dataclasses.replace(settings or GeneratorSettings(), size=size)
    if warm_steps is None or gan_steps is None:
        s = sized_for_budget(s, budget_s)
    base = str(out_dir).rstrip("/")
    photos = training_photos(s)
    pool = render_latent_pool(s.latent_pool, s.size, seed)
    render_s = time.perf_counter() - started
    log(f"world generator: {len(photos)} TRAIN photos ({s.identities} identities x {s.views_per_identity} views, "
        f"{s.size} px) and {len(pool[0])} photos drawn through the world latent rendered in {render_s:.0f} s")

    plan: dict[str, float] = {}
    if warm_steps is None or gan_steps is None:
        plan = plan_steps(s, photos, pool, budget_s - (time.perf_counter() - started) - s.mapping_steps * 0.03,
                          seed, device)
        log(f"  measured {plan['warm_s_per_step']:.2f} s/step warm start, {plan['gan_s_per_step']:.2f} s/step "
            f"adversarial; planned {plan['warm_steps']} warm-start steps, then adversarial ones until the budget is "
            f"spent (~{plan['gan_steps']})")
    enforce_budget = bool(plan)
    warm_steps = int(plan["warm_steps"]) if warm_steps is None else warm_steps
    gan_steps = int(plan["gan_steps"]) if gan_steps is None else gan_steps
    deadline = started + budget_s - 15                       # 15 s: mean latent, sample grid, writing
    warm_deadline = time.perf_counter() + min(s.warm_fraction * (deadline - time.perf_counter()), s.warm_max_s)

    figures: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rng = torch.Generator().manual_seed(seed)
        g, d = s.generator(), s.discriminator()
        for buffer in g.noise_buffers():     # stored noise zero from the start (training draws random noise)
            buffer.zero_()
        encoder = PSPEncoder(build_encoder("tiny", g.n_latent, s.style_dim, min(s.size, 64), seed=seed + 1),
                             torch.zeros(g.n_latent, s.style_dim), "w+")
        g, d, encoder = g.to(device), d.to(device), encoder.to(device)

        # Phase 1: warm start (autoencoder, then the mapping fitted to the codes' Gaussian).
        phase = time.perf_counter()
        warm = autoencoder.PretrainSettings(size=s.size, style_dim=s.style_dim, n_mlp=s.n_mlp,
                                            channel_multiplier=s.channel_multiplier, channel_max=s.channel_max,
                                            seed=seed, batch_size=s.batch_size, autoencoder_steps=warm_steps,
                                            mapping_steps=s.mapping_steps, edge_weight=s.edge_weight,
                                            feature_weight=s.feature_weight)
        if warm_steps > 0:
            warm_steps = autoencoder.train_autoencoder(encoder, g, photos, warm, rng, log,
                                                       deadline=warm_deadline if enforce_budget else None)
            with torch.no_grad():
                codes = torch.cat([encoder(pool[1][i:i + 256].to(device)).mean(1).cpu()
                                   for i in range(0, len(pool[1]), 256)])
            figures["mapping_relative_mse"] = round(
                fit_mapping_to_pairs(g, pool[0], codes, s.mapping_steps, warm.mapping_lr, rng, log), 5)
        figures["warm_seconds"] = round(time.perf_counter() - phase, 1)
        figures["warm_heldin_pixel_l1"] = round(autoencoder.reconstruction_error(encoder, g, photos[:256]), 5)

        # Phase 2: adversarial.
        g.train()
        d.train()
        trainer = AdversarialTrainer(g, d, s, rng, encoder, pool)
        gan_steps, gan_figures = adversarial_phase(trainer, photos, None if enforce_budget else gan_steps,
                                                   deadline if enforce_budget else None, log)
        figures.update(gan_figures)
        g_ema = trainer.g_ema
        latent_avg = g_ema.mean_latent(MEAN_LATENT_SAMPLES, generator=torch.Generator().manual_seed(seed)).reshape(-1)

    g.eval()
    d.eval()
    args = {"size": s.size, "latent": s.style_dim, "n_mlp": s.n_mlp, "channel_multiplier": s.channel_multiplier,
            "channel_max": s.channel_max, "batch": s.batch_size, "r1": s.r1_gamma, "d_reg_every": s.d_reg_every,
            "path_regularize": s.path_length_weight, "g_reg_every": s.g_reg_every, "mixing": s.mixing,
            "lr": s.lr, "seed": seed, "warm_steps": warm_steps, "iter": gan_steps}
    seconds = round(time.perf_counter() - started, 1)
    metadata = {"random_init": False, "seed": seed, "world_generator": {
        "settings": dataclasses.asdict(s), "warm_steps": warm_steps, "gan_steps": gan_steps, "seconds": seconds,
        "photos": len(photos), "latent_pool_photos": len(pool[0]), "identity_set": TRAIN.name,
        "identity_seed": TRAIN.seed, **figures},
        "warning": "trained on the synthetic portrait world only (fstrain.world.generator), not on real faces"}
    generator_uri = storage.join(base, FILES["generator"])
    save_training_checkpoint(generator_uri, g, d, g_ema, latent_avg, args, metadata)
    samples_uri = storage.join(base, GENERATOR_SAMPLES)
    _write_png(samples_uri, sample_grid(g_ema, seed))
    save_encoder(storage.join(base, WARM_START_ENCODER), encoder,
                 opts={"output_size": s.size, "random_init": False, "encoder_depth": "tiny",
                       "trained_by": "fstrain.world.generator warm start (autoencoder with G's synthesis)"})
    log(f"wrote {generator_uri} and {samples_uri} after {seconds:.0f} s ({warm_steps} warm-start + {gan_steps} "
        f"adversarial steps)")
    return {"seconds": seconds, "steps": warm_steps + gan_steps, "warm_steps": warm_steps, "gan_steps": gan_steps,
            "files": [FILES["generator"], FILES["generator"] + ".json", GENERATOR_SAMPLES],
            "warm_start_files": [WARM_START_ENCODER],
            "s_per_step": {"warm": plan.get("warm_s_per_step"), "gan": plan.get("gan_s_per_step"),
                           "gan_measured": figures["gan_seconds"] / max(gan_steps, 1)},
            "render_seconds": round(render_s, 1), **figures}


def continue_generator(out_dir: str | Path, *, seed: int, budget_s: float, log: Log = print,
                       gan_steps: int | None = None, device: torch.device | str = "cpu") -> dict[str, Any]:
    """More adversarial steps for the G, D and g_ema already in `out_dir`/generator.pt (what a rerun of the pretrain
    command's generator stage does): the same settings and data as the run that wrote it, fresh Adam state.

    The reconstruction half of G's step needs a W+ encoder of this G: the warm-start encoder when the folder still
    has it, else the folder's trained E_w+; the one trained alongside is written as the warm-start encoder, which
    the encoders stage then starts from. `gan_steps` fixes the step count (budget not enforced); otherwise the phase
    runs until the budget is spent. The sidecar keeps the first run's figures and appends this continuation's.
    `device` as for `train_generator`.
    """
    started = time.perf_counter()
    base = str(out_dir).rstrip("/")
    generator_uri = storage.join(base, FILES["generator"])
    checkpoint = read_checkpoint(generator_uri)
    missing = [k for k in ("g", "d", "g_ema") if not isinstance(checkpoint.get(k), dict)]
    if missing:
        raise ValueError(f"{generator_uri} has no {', '.join(missing)} state; only a training checkpoint "
                         f"(fstrain.world.generator's g, d, g_ema) can be continued - run the full command instead")
    metadata = json.loads(storage.read_bytes(metadata_uri(generator_uri)).decode("utf-8"))
    first = metadata["world_generator"]
    s = GeneratorSettings(**first["settings"])
    if gan_steps is None:
        s = sized_for_budget(s, budget_s)
    candidates = (storage.join(base, WARM_START_ENCODER), storage.join(base, FILES["encoder_wplus"]))
    encoder_uri = next((u for u in candidates if storage.exists(u)), None)
    if encoder_uri is None:
        raise ValueError(f"{base} has neither {WARM_START_ENCODER} nor {FILES['encoder_wplus']}; the adversarial phase "
                         f"needs a W+ encoder of this G - run the full command instead")
    photos = training_photos(s)
    pool = render_latent_pool(s.latent_pool, s.size, seed)
    log(f"world generator (continued): {len(photos)} TRAIN photos and {len(pool[0])} latent-pool photos rendered in "
        f"{time.perf_counter() - started:.0f} s; encoder {encoder_uri.rsplit('/', 1)[-1]}")
    continued = list(first.get("continued", []))
    with torch.random.fork_rng(devices=[]):
        run_seed = seed + 1000 * (len(continued) + 1)      # not the first run's stream of batches and noise
        torch.manual_seed(run_seed)
        rng = torch.Generator().manual_seed(run_seed)
        g, d, g_ema = s.generator(), s.discriminator(), s.generator()
        for module, key in ((g, "g"), (d, "d"), (g_ema, "g_ema")):
            module.load_state_dict({k: v.float() for k, v in checkpoint[key].items()})
        g, d, g_ema = g.to(device), d.to(device), g_ema.to(device)
        encoder = load_encoder(encoder_uri, space="w+").to(device).requires_grad_(True)
        g.train()
        d.train()
        trainer = AdversarialTrainer(g, d, s, rng, encoder, pool)
        trainer.g_ema = g_ema.eval().requires_grad_(False)
        deadline = None if gan_steps is not None else started + budget_s - 15
        taken, figures = adversarial_phase(trainer, photos, gan_steps, deadline, log)
        latent_avg = g_ema.mean_latent(MEAN_LATENT_SAMPLES, generator=torch.Generator().manual_seed(seed)).reshape(-1)
    g.eval()
    d.eval()
    seconds = round(time.perf_counter() - started, 1)
    continued.append({"gan_steps": taken, "seconds": seconds, "seed": run_seed,
                      "encoder": encoder_uri.rsplit("/", 1)[-1], **figures})
    total_steps = int(first["gan_steps"]) + sum(int(c["gan_steps"]) for c in continued)
    metadata["world_generator"] = {**first, "continued": continued, "gan_steps_total": total_steps}
    metadata.pop("architecture", None)
    metadata.pop("discriminator_architecture", None)
    args = {**dict(checkpoint.get("args") or {}), "iter": total_steps}
    save_training_checkpoint(generator_uri, g, d, g_ema, latent_avg, args, metadata)
    _write_png(storage.join(base, GENERATOR_SAMPLES), sample_grid(g_ema, seed))
    save_encoder(storage.join(base, WARM_START_ENCODER), encoder,
                 opts={"output_size": s.size, "random_init": False,
                       "trained_by": "fstrain.world.generator continuation (trained alongside G)"})
    log(f"wrote {generator_uri} after {seconds:.0f} s: {taken} more adversarial steps ({total_steps} in all)")
    return {"seconds": seconds, "steps": taken, "gan_steps": taken, "gan_steps_total": total_steps,
            "continued_from": FILES["generator"],
            "files": [FILES["generator"], FILES["generator"] + ".json", GENERATOR_SAMPLES],
            "warm_start_files": [WARM_START_ENCODER], **figures}
