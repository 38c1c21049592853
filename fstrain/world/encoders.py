"""The world's pSp encoders E_w+ and E_z+, trained against the world's base G (the pSp / DualStyleGAN role).

    train_encoders(out_dir, generator_path=..., identity_path=..., lpips_backbone_path=..., size=64, seed=0,
                   budget_s=600)

Both are pSp GradualStyleEncoders trained with G frozen, on photos of the TRAIN identities (fstrain.world.splits),
with pSp's losses between a photo x and its reconstruction y (rendered from G's stored, zero noise maps, as every
render from a code is in the project):

    L = lambda_l2 * |x - y|^2 + lambda_lpips * LPIPS(x, y) + lambda_id * (1 - cos(ID(x), ID(y)))

E_w+ outputs w+ = codes + latent_avg (pSp's start_from_latent_avg, latent_avg = G's average w) and renders
y = G.synthesis(w+). E_z+ outputs z+ codes that G maps layer by layer (DualStyleGAN's encoder), y =
G.synthesis(mapping(z+)); it is trained second, with an extra term pulling mapping(E_z+(x)) onto the trained
E_w+(x) (a target the mapping can reach), so level-1/2 pseudo-pairs start from the photo's own code.

The LPIPS and identity nets are the files given (the world's own perceptual and identity nets, or any files the
project's loaders read). Output: encoder_wplus.pt and encoder_zplus.pt in pSp's layout (read by
fstrain.models.psp.load_encoder) and encoders_preview.png (rows: photos of held-out identities, G(E_w+(x)),
G(mapping(E_z+(x)))). Deterministic for a seed when step counts are given; from a budget alone they are planned
from the measured speed and recorded.
"""
from __future__ import annotations

import dataclasses
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from fstrain.data import storage
from fstrain.losses import identity_distance, perceptual_distance
from fstrain.models.checkpoints import load_generator
from fstrain.models.identity import load_identity
from fstrain.models.perceptual import load_lpips
from fstrain.models.psp import PSPEncoder, build_encoder, load_encoder, save_encoder
from fstrain.models.registry import load_torch
from fstrain.models.stylegan2 import Generator
from fstrain.stylize.images import image_grid, to_uint8
from fstrain.world.files import ENCODERS_PREVIEW, FILES, WARM_START_ENCODER
from fstrain.world.splits import HELDOUT, TRAIN, render_identities
from fstrain.world.training import seconds_per_call

Log = Callable[[str], None]


@dataclass(frozen=True)
class EncoderSettings:
    encoder_depth: str = "tiny"
    batch_size: int = 16
    identities: int = 2048
    views_per_identity: int = 2
    first_view: int = 2              # other views of the TRAIN people than the generator saw
    lr: float = 1e-3                 # pSp: Ranger 1e-4 for 256 px IR-SE50; tiny encoders from scratch want more
    lambda_l2: float = 1.0
    lambda_lpips: float = 0.8        # pSp's FFHQ encoding values
    lambda_id: float = 1.0           # pSp: 0.1. At 0.1 E_w+ kept 0.57 identity similarity (evaluation net) while
                                     # W+ optimisation against the same G reaches 0.93: the encoder, not G, fell
                                     # short. Continued from that E_w+: 0.71 at 0.5, 0.72 at 1.0 (shipped)
    lambda_latent: float = 1.0       # E_z+ only: |mapping(E_z+(x)) - E_w+(x)|^2
    wplus_fraction: float = 0.6      # of the training budget


def lpips_net_of(path: str) -> str:
    """'alex' or 'vgg', read off a torchvision-format trunk file (AlexNet's first conv is 11x11, VGG's 3x3)."""
    state = load_torch(path)
    first = state.get("features.0.weight") if hasattr(state, "get") else None
    if first is None:
        raise ValueError(f"{path}: no 'features.0.weight'; expected a torchvision AlexNet/VGG16 trunk state dict "
                         f"(the LPIPS backbone file)")
    return "alex" if first.shape[-1] == 11 else "vgg"


class ReconstructionLoss(torch.nn.Module):
    """pSp's encoder loss terms between photos and their reconstructions, per term and total."""

    def __init__(self, lpips: torch.nn.Module, identity: torch.nn.Module, s: EncoderSettings):
        super().__init__()
        self.lpips, self.identity, self.s = lpips, identity, s

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        l2 = F.mse_loss(y, x)
        perceptual = perceptual_distance(self.lpips, y, x).mean()
        with torch.no_grad():
            target_id = self.identity(x)
        ident = identity_distance(self.identity(y), target_id).mean()
        total = self.s.lambda_l2 * l2 + self.s.lambda_lpips * perceptual + self.s.lambda_id * ident
        return {"total": total, "l2": l2, "lpips": perceptual, "id": ident}


def _new_encoder(s: EncoderSettings, g: Generator, latent_avg: torch.Tensor | None, space: str, size: int,
                 seed: int) -> PSPEncoder:
    core = build_encoder(s.encoder_depth, g.n_latent, g.style_dim, min(size, 64), seed=seed)
    avg = latent_avg.reshape(1, -1).repeat(g.n_latent, 1) if latent_avg is not None else None
    return PSPEncoder(core, avg, space)


def _warm_start_path(generator_path: str, warm_start: str | None, out_dir: str) -> str | None:
    """"auto": the generator's warm-start encoder next to it when present, else the E_w+ already in `out_dir` (a
    rerun continues it: fstrain.world.pretrain deletes the warm start once used); None: none; else that file."""
    if warm_start != "auto":
        return warm_start
    warm = storage.join(storage.dirname(str(generator_path)), WARM_START_ENCODER)
    return next((uri for uri in (warm, storage.join(out_dir, FILES["encoder_wplus"])) if storage.exists(uri)), None)


@torch.no_grad()
def _start_from(encoder: PSPEncoder, warm: PSPEncoder) -> None:
    """Copy `warm`'s weights into `encoder` so both output the same codes despite different latent_avg.

    The last EqualLinear of each map2style head adds its bias as is (lr_mul 1): moving the difference of the two
    averages into that bias keeps E(x) unchanged (as fstrain.world.autoencoder folds its code mean).
    """
    if warm.encoder.config != encoder.encoder.config:
        raise ValueError(f"warm-start encoder architecture {warm.encoder.config} differs from "
                         f"{encoder.encoder.config}; pass warm_start=None")
    encoder.encoder.load_state_dict(warm.encoder.state_dict())
    warm_avg = warm.latent_avg if warm.add_latent_avg else torch.zeros_like(warm.latent_avg)
    shift = encoder.latent_avg - warm_avg
    for layer, block in enumerate(encoder.encoder.styles):
        block.linear.bias.sub_(shift[layer] / block.linear.lr_mul)


def _render_wplus(g: Generator, encoder: PSPEncoder, x: torch.Tensor) -> torch.Tensor:
    return g.synthesis(encoder(x))


def _render_zplus(g: Generator, encoder: PSPEncoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w_plus = g.get_latent(encoder(x))
    return g.synthesis(w_plus), w_plus


def _batches(n: int, batch_size: int, steps: int, rng: torch.Generator):
    order, position = torch.randperm(n, generator=rng), 0
    for _ in range(steps):
        if position + batch_size > n:
            order, position = torch.randperm(n, generator=rng), 0
        yield order[position:position + batch_size]
        position += batch_size


def _train(name: str, encoder: PSPEncoder, step_loss: Callable[[torch.Tensor], dict[str, torch.Tensor]],
           photos: torch.Tensor, s: EncoderSettings, steps: int, rng: torch.Generator, log: Log,
           deadline: float | None = None) -> tuple[int, dict[str, float]]:
    """Adam with a half-cosine decay, stopping early past `deadline` (time.perf_counter()).

    Returns (steps run, the mean of each loss term over the last tenth of them)."""
    encoder.train()
    optim = torch.optim.Adam(encoder.parameters(), lr=s.lr, betas=(0.9, 0.999))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda step: 0.5 * (1 + torch.cos(torch.tensor(torch.pi * min(step / max(steps, 1), 1.0))).item()))
    history: list[dict[str, float]] = []
    log_every = max(steps // 8, 1)
    started = time.perf_counter()
    device = next(encoder.parameters()).device      # photos stay on the CPU; each batch moves to the models
    for step, idx in enumerate(_batches(len(photos), s.batch_size, steps, rng), 1):
        terms = step_loss(photos[idx].to(device))
        optim.zero_grad(set_to_none=True)
        terms["total"].backward()
        optim.step()
        schedule.step()
        history.append({k: float(v.detach()) for k, v in terms.items()})
        out_of_time = deadline is not None and time.perf_counter() > deadline
        if step % log_every == 0 or step == steps or out_of_time:
            recent = history[-log_every:]
            text = "  ".join(f"{k} {sum(h[k] for h in recent) / len(recent):.4f}" for k in recent[0])
            log(f"  {name} {step}/{steps}  {text}  {(time.perf_counter() - started) / step:.2f} s/step"
                + ("  (time budget reached)" if out_of_time else ""))
        if out_of_time:
            break
    encoder.eval()
    tail = history[-max(len(history) // 10, 1):]
    return len(history), ({k: round(sum(h[k] for h in tail) / len(tail), 5) for k in tail[0]} if tail else {})


@torch.no_grad()
def preview(g: Generator, encoder_w: PSPEncoder, encoder_z: PSPEncoder, photos: torch.Tensor):
    photos = photos.to(g.input.input.device)
    rows = [photos, _render_wplus(g, encoder_w, photos), _render_zplus(g, encoder_z, photos)[0]]
    return image_grid([list(to_uint8(row)) for row in rows], pad=0)


def train_encoders(out_dir: str | Path, *, generator_path: str, identity_path: str, lpips_backbone_path: str,
                   size: int, seed: int, budget_s: float, log: Log = print, settings: EncoderSettings | None = None,
                   wplus_steps: int | None = None, zplus_steps: int | None = None,
                   warm_start: str | None = "auto", device: torch.device | str = "cpu") -> dict[str, Any]:
    """Train E_w+ then E_z+ against the generator in `generator_path` and write them (pSp layout) to `out_dir`.

    `warm_start`: a pSp W+ encoder file E_w+ starts from; "auto" takes the generator's warm-start encoder
    (fstrain.world.files.WARM_START_ENCODER) next to `generator_path` when it is there, else the E_w+ already in
    `out_dir` (`_warm_start_path`).
    Step counts given: deterministic for a seed, budget not enforced; else planned from the budget.
    `device` runs G, the loss nets and the encoders there (e.g. "cuda"); photos and random draws stay on the CPU.

    Returns {"seconds", "steps", "files", "started_from", ...final loss terms of each encoder}.
    """
    started = time.perf_counter()
    s = settings or EncoderSettings()
    if wplus_steps is None or zplus_steps is None:
        s = dataclasses.replace(s, identities=min(s.identities, max(32, int(budget_s * 3))))
    base = str(out_dir).rstrip("/")
    loaded = load_generator(str(generator_path), load_discriminator=False)
    g, latent_avg = loaded.generator.eval().to(device), loaded.latent_avg
    if g.size != size:
        raise ValueError(f"{generator_path}: the generator renders {g.size} px, but size={size} was asked; pass "
                         f"size={g.size} or train a {size} px generator")
    g.requires_grad_(False)
    lpips = load_lpips(str(lpips_backbone_path), net=lpips_net_of(str(lpips_backbone_path)))
    identity = load_identity(str(identity_path))
    loss = ReconstructionLoss(lpips, identity, s).to(device)

    photos = render_identities(TRAIN, s.identities, s.views_per_identity, "photo", size,
                               first_view=s.first_view).tensor()
    log(f"world encoders: {len(photos)} TRAIN photos ({size} px) rendered in {time.perf_counter() - started:.0f} s")

    encoder_w = _new_encoder(s, g, latent_avg, "w+", size, seed + 1)
    encoder_z = _new_encoder(s, g, None, "z+", size, seed + 2)
    warm_path = _warm_start_path(generator_path, warm_start, base)
    if warm_path is not None:
        _start_from(encoder_w, load_encoder(warm_path, space="w+"))
        log(f"  E_w+ starts from {warm_path}")
    encoder_w, encoder_z = encoder_w.to(device), encoder_z.to(device)

    def wplus_loss(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return loss(x, _render_wplus(g, encoder_w, x))

    def zplus_loss(x: torch.Tensor) -> dict[str, torch.Tensor]:
        y, w_plus = _render_zplus(g, encoder_z, x)
        terms = loss(x, y)
        with torch.no_grad():
            target = encoder_w(x)
        terms["latent"] = (w_plus - target).pow(2).mean()
        terms["total"] = terms["total"] + s.lambda_latent * terms["latent"]
        return terms

    plan: dict[str, float] = {}
    if wplus_steps is None or zplus_steps is None:
        probe = photos[:s.batch_size].to(device)
        with torch.random.fork_rng(devices=[]):
            w_s = seconds_per_call(lambda: wplus_loss(probe)["total"].backward())
            z_s = seconds_per_call(lambda: zplus_loss(probe)["total"].backward())
        for p in list(encoder_w.parameters()) + list(encoder_z.parameters()):
            p.grad = None
        left = max(budget_s - (time.perf_counter() - started) - 20, 1.0)   # 20 s: preview and writing
        plan = {"wplus_s_per_step": w_s, "zplus_s_per_step": z_s,
                "wplus_steps": max(int(s.wplus_fraction * left / w_s), 1),
                "zplus_steps": max(int((1 - s.wplus_fraction) * left / z_s), 1)}
        log(f"  measured {w_s:.2f} s/step E_w+, {z_s:.2f} s/step E_z+; planned {plan['wplus_steps']} + "
            f"{plan['zplus_steps']} steps")
    wplus_steps = int(plan["wplus_steps"]) if wplus_steps is None else wplus_steps
    zplus_steps = int(plan["zplus_steps"]) if zplus_steps is None else zplus_steps

    figures: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rng = torch.Generator().manual_seed(seed)
        phase = time.perf_counter()
        deadline = started + budget_s - 20 if plan else None
        wplus_deadline = None if deadline is None else phase + s.wplus_fraction * (deadline - phase)
        wplus_steps, figures["wplus"] = _train("E_w+", encoder_w, wplus_loss, photos, s, wplus_steps, rng, log,
                                               wplus_deadline)
        figures["wplus_seconds"] = round(time.perf_counter() - phase, 1)
        encoder_w.requires_grad_(False)
        # E_z+ starts from E_w+'s weights: the face features carry over, the heads re-learn their target space.
        encoder_z.encoder.load_state_dict(encoder_w.encoder.state_dict())
        phase = time.perf_counter()
        zplus_steps, figures["zplus"] = _train("E_z+", encoder_z, zplus_loss, photos, s, zplus_steps, rng, log,
                                               deadline)
        figures["zplus_seconds"] = round(time.perf_counter() - phase, 1)

    opts = {"output_size": size, "random_init": False, "encoder_depth": s.encoder_depth,
            "trained_by": "fstrain.world.encoders", "seed": seed, "generator": str(generator_path),
            "steps": {"w+": wplus_steps, "z+": zplus_steps}}
    save_encoder(storage.join(base, FILES["encoder_wplus"]), encoder_w, opts=opts)
    save_encoder(storage.join(base, FILES["encoder_zplus"]), encoder_z, opts=opts)
    held_out = render_identities(HELDOUT, 12, 1, "photo", size).tensor()   # shown, never trained on
    buffer = io.BytesIO()
    preview(g, encoder_w, encoder_z, held_out).save(buffer, format="PNG")
    storage.write_bytes(storage.join(base, ENCODERS_PREVIEW), buffer.getvalue())
    seconds = round(time.perf_counter() - started, 1)
    log(f"wrote {FILES['encoder_wplus']}, {FILES['encoder_zplus']} and {ENCODERS_PREVIEW} to {base} after "
        f"{seconds:.0f} s ({wplus_steps} + {zplus_steps} steps)")
    return {"seconds": seconds, "started_from": warm_path.rsplit("/", 1)[-1] if warm_path else "scratch",
            "steps": wplus_steps + zplus_steps, "wplus_steps": wplus_steps,
            "zplus_steps": zplus_steps, "files": [FILES["encoder_wplus"], FILES["encoder_zplus"], ENCODERS_PREVIEW],
            "s_per_step": {"w+": plan.get("wplus_s_per_step"), "z+": plan.get("zplus_s_per_step"),
                           "w+_measured": figures["wplus_seconds"] / max(wplus_steps, 1),
                           "z+_measured": figures["zplus_seconds"] / max(zplus_steps, 1)},
            "settings": dataclasses.asdict(s), **figures}
