"""Pretrain TINY base models on photos (by default the synthetic portrait world) so the demo shows the method.

    python -m fstrain.world.autoencoder OUT [--photos synthetic|FOLDER|DATASET_PREFIX] [--count N] [--seed S] ...

!! These are DEMO / TEST models trained for a minute or two on synthetic cartoon-like "photos" at 32 px. They are
!! not FFHQ StyleGAN2 / pSp / DualStyleGAN weights and know nothing about real faces. For real runs use the
!! official checkpoints (README, "Real checkpoints").

Why: `fstrain.models.init` writes random networks, whose encoder ignores the face and whose generator draws the
same blob for every code, so a stylized picture says nothing about the method. Three short phases give the
base models the relations the method relies on:

1. autoencoder  E_w+ and G's synthesis network trained jointly: G.synthesis(E_w+(x)) ~ x (pixel L1 at full and
                half resolution). Half of each batch is drawn from the image's mean code on every layer instead,
                and a small penalty keeps the layer codes near that mean, so the codes stay close to StyleGAN's W
                (one w for every layer), where G(z) samples live.
2. mapping      G's mapping network regressed onto the Gaussian with the mean and covariance of the encoder's
                (mean) codes: random G(z) then look like photos, which the fine-tune's L_adv and L_sem (both driven
                by G(z)) need.
3. Z+ encoder   E_z+ trained so G's mapping of E_z+(x), layer by layer, matches E_w+(x): level-1/2 pseudo-pairs
                then start from the photo's own code.

OUT receives exactly what `fstrain.models.init` writes (rosinality generator with `d`, pSp W+ and Z+ encoders,
identity net, LPIPS backbone, models.json) and loads with the same loaders. Only the generator and the two
encoders are trained; the discriminator, identity net and LPIPS backbone stay random (models.json says which).
The generator's stored noise maps are zero, so renders from stored noise (pairs, stylization) are noise-free.
Deterministic for a given seed, source and torch thread count.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fstrain import losses
from fstrain.data import storage
from fstrain.data.images import IMAGE_SUFFIXES
from fstrain.models.checkpoints import MEAN_LATENT_SAMPLES, load_generator, save_generator
from fstrain.models.init import init_models
from fstrain.models.psp import PSPEncoder, build_encoder, save_encoder
from fstrain.models.registry import save_json, sha256_file
from fstrain.models.stylegan2 import Generator
from fstrain.stylize.images import from_uint8, image_grid, to_uint8

WARNING = ("PRETRAINED DEMO/TEST weights from fstrain.world.autoencoder: tiny models trained on synthetic portraits, "
           "not on real faces (not FFHQ)")
TRAINED_FILES = ("generator.pt", "encoder_wplus.pt", "encoder_zplus.pt")

Log = Callable[[str], None]


@dataclass(frozen=True)
class PretrainSettings:
    """Architecture (as fstrain.models.init) and the length of each phase."""
    size: int = 32
    style_dim: int = 512
    n_mlp: int = 2
    channel_multiplier: int = 1
    channel_max: int = 32
    encoder_depth: str = "tiny"
    identity: str = "tiny"
    lpips_net: str = "alex"
    seed: int = 0
    batch_size: int = 32
    autoencoder_steps: int = 1200
    mapping_steps: int = 600
    zplus_steps: int = 300
    lr: float = 6e-3
    mapping_lr: float = 3.0             # on EqualLinear's stored weights (lr_mul 0.01): effectively 0.03
    layer_spread_weight: float = 0.05   # phase 1: penalty on |w+_l - mean_l w+_l|^2
    edge_weight: float = 0.0            # phase 1: L1 between the images' pixel differences (pixel_loss)
    feature_weight: float = 1.0         # phase 1: pixel-loss weight of the eye/brow band and mouth
                                        # (fstrain.losses.face_weight_map)

    def init_args(self) -> dict[str, Any]:
        return {"size": self.size, "style_dim": self.style_dim, "n_mlp": self.n_mlp,
                "channel_multiplier": self.channel_multiplier, "channel_max": self.channel_max,
                "encoder_depth": self.encoder_depth, "identity": self.identity, "lpips_net": self.lpips_net,
                "seed": self.seed}


# ---------------------------------------------------------------- photos


def _to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images -> (N, 3, H, W) float in [-1, 1]."""
    return from_uint8(np.stack([np.asarray(im.convert("RGB")) for im in images]))


def load_photos(source: str, count: int, size: int, seed: int = 0) -> torch.Tensor:
    """`count` aligned photos at `size` px, (N, 3, size, size) in [-1, 1].

    source: "synthetic" (the synthetic world's `photo` domain, rendered at 2x and Lanczos-resized like
    fstrain.ingest does), a folder/prefix of images, or an ingested dataset prefix (shard-*.tar with .png).
    """
    from fstrain.data.images import center_crop_resize, decode_image

    if source == "synthetic":
        from fstrain.data.synthetic import generate
        images = [center_crop_resize(im, size) for _, im, _ in generate("photo", count, size * 2, seed)]
        return _to_tensor(images)
    from fstrain.data.shards import list_shards, read_samples
    images = []
    if list_shards(source):
        for sample in read_samples(source):
            if "png" in sample and len(images) < count:
                images.append(center_crop_resize(decode_image(sample["png"], sample["__key__"]), size))
    else:
        for uri in storage.list_uris(source, IMAGE_SUFFIXES)[:count]:
            images.append(center_crop_resize(decode_image(storage.read_bytes(uri), uri), size))
    if len(images) < 2:
        raise ValueError(f"{source}: found {len(images)} photos; pretraining needs at least 2 aligned face images "
                         f"(a folder of {'/'.join(IMAGE_SUFFIXES)} files, an ingested dataset prefix, or 'synthetic')")
    return _to_tensor(images)


# ---------------------------------------------------------------- the three phases


def _batches(n: int, batch_size: int, steps: int, rng: torch.Generator):
    """Indices of `steps` mini-batches, reshuffled every epoch from `rng`."""
    order = torch.randperm(n, generator=rng)
    position = 0
    for _ in range(steps):
        if position + batch_size > n:
            order, position = torch.randperm(n, generator=rng), 0
        yield order[position:position + batch_size]
        position += batch_size


def pixel_loss(rendered: torch.Tensor, target: torch.Tensor, edge_weight: float = 0.0,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """L1 at full and half resolution (the half-resolution term weights colour and layout over edges), plus
    `edge_weight` x L1 between horizontal and vertical pixel differences: a blurred eye or glasses rim misses its
    edges entirely, which plain L1 on a few pixels hardly notices. `weight` (fstrain.losses.face_weight_map) weights
    pixels."""
    diff = rendered - target
    half = F.avg_pool2d(rendered, 2) - F.avg_pool2d(target, 2)
    if weight is None:
        loss = diff.abs().mean() + half.abs().mean()
    else:
        loss = (diff.abs() * weight).mean() + (half.abs() * F.avg_pool2d(weight, 2)).mean()
    if edge_weight > 0:
        dy, dx = diff[..., 1:, :] - diff[..., :-1, :], diff[..., :, 1:] - diff[..., :, :-1]
        if weight is not None:
            dy, dx = dy * weight[..., 1:, :], dx * weight[..., :, 1:]
        loss = loss + edge_weight * (dy.abs().mean() + dx.abs().mean())
    return loss


def _synthesis_parameters(g: Generator) -> list[torch.nn.Parameter]:
    return [p for name, p in g.named_parameters() if not name.startswith("style.")]


@torch.no_grad()
def reconstruction_error(encoder: PSPEncoder, g: Generator, photos: torch.Tensor, batch_size: int = 64) -> float:
    """Mean absolute pixel error of G.synthesis(E_w+(x)) against x (images in [-1, 1])."""
    total = 0.0
    device = g.input.input.device
    for start in range(0, len(photos), batch_size):
        x = photos[start:start + batch_size].to(device)
        total += float((g.synthesis(encoder(x)) - x).abs().sum())
    return total / photos.numel()


def _log_every(steps: int) -> int:
    return max(steps // 6, 1)


def _cosine(optim: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate decayed to zero along a half cosine: short runs end converged rather than mid-step."""
    return torch.optim.lr_scheduler.LambdaLR(optim, lambda step: 0.5 * (1 + math.cos(math.pi * min(step / steps, 1))))


def train_autoencoder(encoder: PSPEncoder, g: Generator, photos: torch.Tensor, s: PretrainSettings,
                      rng: torch.Generator, log: Log, deadline: float | None = None) -> int:
    """Phase 1: E_w+ and G.synthesis jointly, pixel loss + layer-spread penalty. Returns the steps run: all
    `s.autoencoder_steps`, or fewer when time.perf_counter() passes `deadline` (a caller's time budget)."""
    encoder.train()
    g.train()
    params = list(encoder.parameters()) + _synthesis_parameters(g)
    optim = torch.optim.Adam(params, lr=s.lr, betas=(0.9, 0.99))
    started = time.perf_counter()
    # Progress is the larger of the step and time fractions, so a run cut by its deadline (a slow or shared CPU)
    # has still decayed its learning rate rather than stopping at full rate.
    progress = (lambda step: step / s.autoencoder_steps) if deadline is None else (
        lambda step: max(step / s.autoencoder_steps,
                         (time.perf_counter() - started) / max(deadline - started, 1e-3)))
    schedule = torch.optim.lr_scheduler.LambdaLR(optim,
                                                 lambda step: 0.5 * (1 + math.cos(math.pi * min(progress(step), 1))))
    device = g.input.input.device        # the models' device; `photos` may stay on the CPU
    weight = losses.face_weight_map(photos.shape[-1], s.feature_weight)
    weight = weight.to(device) if weight is not None else None
    step = 0
    for step, idx in enumerate(_batches(len(photos), s.batch_size, s.autoencoder_steps, rng), 1):
        x = photos[idx].to(device)
        w_plus = encoder(x)
        w_mean = w_plus.mean(1, keepdim=True)
        spread = (w_plus - w_mean).pow(2).mean()
        # Half the batch renders from its w+ codes; the other half from the per-image mean code alone on every
        # layer (a point of W, where mapped z lands), so random G(z) and the fine-tune's L_adv/L_sem see
        # photo-like images too. Splitting the batch keeps one synthesis pass per step.
        half = len(x) // 2
        codes = torch.cat([w_plus[:half], w_mean[half:].expand_as(w_plus[half:])])
        rendered = g.synthesis(codes)
        pixel = pixel_loss(rendered[:half], x[:half], s.edge_weight, weight)
        pixel_w = pixel_loss(rendered[half:], x[half:], s.edge_weight, weight)
        loss = pixel + pixel_w + s.layer_spread_weight * spread
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        schedule.step()
        out_of_time = deadline is not None and time.perf_counter() > deadline
        if step % _log_every(s.autoencoder_steps) == 0 or step == s.autoencoder_steps or out_of_time:
            log(f"  autoencoder {step}/{s.autoencoder_steps}  pixel L1 w+ {float(pixel.detach()):.4f}  "
                f"w {float(pixel_w.detach()):.4f}  layer spread {float(spread.detach()):.5f}"
                + ("  (time budget reached)" if out_of_time else ""))
        if out_of_time:
            break
    encoder.eval()
    g.eval()
    return step


def gaussian_model(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), B (D, D)) with codes ~ mean + u @ B for u ~ N(0, I): the codes' mean and covariance."""
    mean = codes.mean(0)
    _, singular, vh = torch.linalg.svd(codes - mean, full_matrices=False)
    basis = torch.zeros(codes.shape[1], codes.shape[1])
    basis[:len(singular)] = torch.diag(singular) @ vh / math.sqrt(max(len(codes) - 1, 1))
    return mean, basis


def fit_mapping(g: Generator, codes: torch.Tensor, s: PretrainSettings, rng: torch.Generator, log: Log) -> None:
    """Phase 2: the mapping network so that mapping(z), z ~ N(0, I), has the mean and covariance of `codes`.

    A regression, not a distribution match: the target of z is mean + PixelNorm(z) @ B (the Gaussian with the
    codes' moments; PixelNorm(z) has unit variance per coordinate), a fixed function the MLP can learn in a few
    hundred steps.
    """
    mean, basis = gaussian_model(codes)
    mapping = g.style
    mapping.train()
    optim = torch.optim.Adam(mapping.parameters(), lr=s.mapping_lr, betas=(0.9, 0.99))
    scale = float(codes.var(0).sum())
    for step in range(1, s.mapping_steps + 1):
        z = torch.randn(256, g.style_dim, generator=rng)
        with torch.no_grad():
            target = mean + mapping[0](z) @ basis
        loss = (mapping(z) - target).pow(2).sum(1).mean() / scale    # relative to the codes' total variance
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if step % _log_every(s.mapping_steps) == 0 or step == s.mapping_steps:
            log(f"  mapping {step}/{s.mapping_steps}  relative MSE to the codes' Gaussian {float(loss.detach()):.4f}")
    mapping.eval()
    with torch.no_grad():
        mapped = mapping(torch.randn(len(codes), g.style_dim, generator=rng))
    log(f"  mapped z: total variance {float(mapped.var(0).sum()):.3f} (codes {scale:.3f}), distance of the means "
        f"{float((mapped.mean(0) - mean).norm()):.3f}")


def train_zplus_encoder(encoder_z: PSPEncoder, encoder_w: PSPEncoder, g: Generator, photos: torch.Tensor,
                        s: PretrainSettings, rng: torch.Generator, log: Log) -> None:
    """Phase 3: E_z+ so that G's mapping of E_z+(x), layer by layer, matches E_w+(x)."""
    encoder_z.train()
    g.requires_grad_(False)
    optim = torch.optim.Adam(encoder_z.parameters(), lr=s.lr, betas=(0.9, 0.99))
    schedule = _cosine(optim, s.zplus_steps)
    for step, idx in enumerate(_batches(len(photos), s.batch_size, s.zplus_steps, rng), 1):
        x = photos[idx]
        with torch.no_grad():
            target = encoder_w(x)
        w_plus = g.get_latent(encoder_z(x))
        latent = (w_plus - target).pow(2).mean()
        pixel = pixel_loss(g.synthesis(w_plus), x)
        loss = latent + pixel
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        schedule.step()
        if step % _log_every(s.zplus_steps) == 0 or step == s.zplus_steps:
            log(f"  z+ encoder {step}/{s.zplus_steps}  w+ MSE {float(latent.detach()):.4f}  "
                f"pixel L1 {float(pixel.detach()):.4f}")
    g.requires_grad_(True)
    encoder_z.eval()


# ---------------------------------------------------------------- writing the model set


def _fold_code_mean(encoder: PSPEncoder, photos: torch.Tensor) -> None:
    """Move the mean code over `photos` into latent_avg (pSp's start_from_latent_avg) without changing outputs.

    The last EqualLinear of each map2style block has lr_mul 1, so its bias is added as is: subtracting the mean
    there and adding it to latent_avg leaves E_w+(x) unchanged, and latent_avg becomes the average photo's code.
    """
    with torch.no_grad():
        mean = encoder(photos).mean(0)                                   # (n_latent, D)
        shift = mean - encoder.latent_avg
        for layer, block in enumerate(encoder.encoder.styles):
            block.linear.bias.sub_(shift[layer] / block.linear.lr_mul)
        encoder.latent_avg.copy_(mean)


@torch.no_grad()
def preview(encoder_w: PSPEncoder, encoder_z: PSPEncoder, g: Generator, photos: torch.Tensor,
            seed: int) -> Image.Image:
    """Rows: held-out photos | G(E_w+(x)) | G(mapping(E_z+(x))) | random G(z)."""
    z = torch.randn(len(photos), g.style_dim, generator=torch.Generator().manual_seed(seed))
    rows = [photos, g.synthesis(encoder_w(photos)), g.synthesis(g.get_latent(encoder_z(photos))),
            g([z], randomize_noise=False)[0]]
    return image_grid([list(to_uint8(row)) for row in rows], pad=0)


def pretrain_models(out: str | Path, settings: PretrainSettings = PretrainSettings(), *, photos: str = "synthetic",
                    count: int = 2048, holdout: int = 64, photo_seed: int = 500, log: Log = print) -> dict[str, Any]:
    """Train the base models on `count` photos from `photos` and write the model set into `out` (folder or s3://).

    Returns the models.json content: init's entries plus "pretrained" (settings, seconds, held-out pixel errors
    of the random and the trained models).
    """
    s = settings
    started = time.perf_counter()
    data = load_photos(photos, count + holdout, s.size, photo_seed)
    if len(data) <= holdout + 1:
        raise ValueError(f"{photos}: {len(data)} photos; need more than holdout={holdout}")
    train, held_out = data[:-holdout], data[-holdout:]
    log(f"pretraining tiny base models on {len(train)} {photos} photos ({s.size} px), {holdout} held out")

    with tempfile.TemporaryDirectory(prefix="fstrain-pretrain-") as tmp:
        # The random set first: identity net, LPIPS backbone and D stay as init writes them.
        manifest = init_models(tmp, **s.init_args())
        loaded = load_generator(str(Path(tmp) / "generator.pt"))
        g, discriminator = loaded.generator, loaded.discriminator
        # Stored noise maps set to zero (NVlabs' noise_mode="none" for every render from stored noise: pairs,
        # stylization, sample grids). A few hundred fine-tuning steps on these tiny models grow the noise
        # weights into visible speckle; training itself still draws random noise.
        for buffer in g.noise_buffers():
            buffer.zero_()
        encoders = {}
        for offset, space in enumerate(("w+", "z+")):
            core = build_encoder(s.encoder_depth, g.n_latent, s.style_dim, s.size, seed=s.seed + 1 + offset)
            encoders[space] = PSPEncoder(core, torch.zeros(g.n_latent, s.style_dim), space)
        encoder_w, encoder_z = encoders["w+"], encoders["z+"]

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s.seed)
            rng = torch.Generator().manual_seed(s.seed)
            random_error = reconstruction_error(encoder_w, g, held_out)
            train_autoencoder(encoder_w, g, train, s, rng, log)
            _fold_code_mean(encoder_w, train)
            with torch.no_grad():
                codes = torch.cat([encoder_w(train[i:i + 256]).mean(1) for i in range(0, len(train), 256)])
            fit_mapping(g, codes, s, rng, log)
            train_zplus_encoder(encoder_z, encoder_w, g, train, s, rng, log)
        trained_error = reconstruction_error(encoder_w, g, held_out)
        seconds = round(time.perf_counter() - started, 1)
        log(f"held-out pixel L1 of G(E_w+(x)): random models {random_error:.4f} -> pretrained {trained_error:.4f}")

        pretrained = {"warning": WARNING, "source": photos, "photos": len(train), "photo_seed": photo_seed,
                      "holdout": holdout, "seconds": seconds, "settings": dataclasses.asdict(s),
                      "trained": list(TRAINED_FILES), "still_random": ["d", "identity", "lpips_backbone"],
                      "heldout_pixel_l1": {"random": round(random_error, 5), "pretrained": round(trained_error, 5)}}
        latent_avg = g.mean_latent(MEAN_LATENT_SAMPLES, generator=torch.Generator().manual_seed(s.seed)).reshape(-1)
        save_generator(str(Path(tmp) / "generator.pt"), g, latent_avg,
                       {"random_init": False, "pretrained": pretrained, "warning": WARNING, "seed": s.seed},
                       discriminator=discriminator)
        opts = {"output_size": s.size, "random_init": False, "encoder_depth": s.encoder_depth,
                "pretrained": WARNING}
        save_encoder(str(Path(tmp) / "encoder_wplus.pt"), encoder_w, opts=opts)
        save_encoder(str(Path(tmp) / "encoder_zplus.pt"), encoder_z, opts=opts)
        preview(encoder_w, encoder_z, g, held_out[:12], s.seed).save(Path(tmp) / "pretrain_preview.png")

        for entry in manifest["models"].values():
            entry["sha256"] = sha256_file(Path(tmp) / entry["file"])
        manifest.update({"random_init": False, "warning": WARNING, "pretrained": pretrained})
        base = str(out).rstrip("/")
        for path in sorted(Path(tmp).iterdir()):
            if path.name != "models.json":
                storage.upload_file(str(path), storage.join(base, path.name))
        for entry in manifest["models"].values():
            entry["uri"] = storage.join(base, entry["file"]) if "://" in base else \
                str(Path(base).resolve() / entry["file"])
    save_json(manifest, storage.join(base, "models.json"))
    log(f"wrote pretrained tiny models to {base} in {seconds} s (preview: {base}/pretrain_preview.png)")
    return manifest


def main(argv: list[str] | None = None) -> None:
    defaults = PretrainSettings()
    parser = argparse.ArgumentParser(prog="python -m fstrain.world.autoencoder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="output folder or s3:// prefix (the same files fstrain.models.init writes)")
    parser.add_argument("--photos", default="synthetic",
                        help="'synthetic' (default), a folder/prefix of aligned face images, or an ingested dataset "
                             "prefix (shard-*.tar)")
    parser.add_argument("--count", type=int, default=2048, help="training photos (synthetic: how many to render)")
    parser.add_argument("--holdout", type=int, default=64, help="photos kept out of training for the error report")
    parser.add_argument("--photo-seed", type=int, default=500, help="synthetic photos: the world's dataset seed")
    parser.add_argument("--size", type=int, default=defaults.size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--autoencoder-steps", type=int, default=defaults.autoencoder_steps)
    parser.add_argument("--mapping-steps", type=int, default=defaults.mapping_steps)
    parser.add_argument("--zplus-steps", type=int, default=defaults.zplus_steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    a = parser.parse_args(argv)
    settings = dataclasses.replace(defaults, size=a.size, seed=a.seed, autoencoder_steps=a.autoencoder_steps,
                                   mapping_steps=a.mapping_steps, zplus_steps=a.zplus_steps,
                                   batch_size=a.batch_size)
    print(WARNING)
    manifest = pretrain_models(a.out, settings, photos=a.photos, count=a.count, holdout=a.holdout,
                               photo_seed=a.photo_seed)
    for name, entry in manifest["models"].items():
        print(f"{name:16s} {entry['uri']}  sha256={entry['sha256'][:16]}...")


if __name__ == "__main__":
    main()
