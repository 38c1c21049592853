"""Write a set of RANDOMLY initialised models in the real file formats (tests, demos, training from scratch).

    python -m fstrain.models.init OUT --size 32 --channel-multiplier 1 --channels-max 32 --n-mlp 2 \\
        --encoder-depth tiny --identity tiny --lpips alex

OUT (a local folder or s3:// prefix) receives:
    generator.pt (+ .json)            rosinality layout: g_ema, d, latent_avg (g_ema = g at initialisation)
    encoder_wplus.pt, encoder_zplus.pt pSp layout; latent_avg = the generator's mean latent, one row per layer
    identity.pth                      arcface_torch IResNet raw state dict (or pSp IR-SE50 with --identity irse50)
    lpips_<net>_backbone_RANDOM.pth   torchvision-format trunk (+ .json)
    models.json                       every file with its sha256, `"random_init": true`; its "models" entries
                                      are named like the fields of `fstrain.settings.ModelsConfig`
None of these weights mean anything: they exercise the pipeline, they do not stylise faces.
"""
from __future__ import annotations

import argparse
import hashlib
import tempfile
from pathlib import Path
from typing import Any

import torch

from fstrain.models.checkpoints import MEAN_LATENT_SAMPLES, save_generator
from fstrain.models.identity import ARCFACE_UNITS, IResNet, IRSEBackbone, save_identity, tiny_arcface
from fstrain.models.perceptual import save_random_backbone_weights
from fstrain.models.psp import ENCODER_PRESETS, PSPEncoder, build_encoder, save_encoder
from fstrain.models.registry import is_remote, save_json
from fstrain.models.stylegan2 import Discriminator, Generator

IDENTITY_CHOICES = ("tiny", "r50", "r100", "irse50")
RANDOM_WARNING = "RANDOMLY INITIALISED weights from fstrain.models.init: for tests and demos, not real models"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _encoder_input_size(depth: str, size: int) -> int:
    if depth == "50":
        return ENCODER_PRESETS["50"]["input_size"]
    return max(16, min(size, 64))  # tiny: the generator's own size, capped for speed


def _identity_net(kind: str, seed: int) -> tuple[torch.nn.Module, str]:
    if kind == "tiny":
        return tiny_arcface(input_size=32, seed=seed), "arcface"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "irse50":
            return IRSEBackbone(), "irse50"
        return IResNet(ARCFACE_UNITS[kind]), f"arcface_{kind}"


def _write_all(out: Path, *, size: int, style_dim: int, n_mlp: int, channel_multiplier: int, channel_max: int,
               encoder_depth: str, identity: str, lpips_net: str, seed: int) -> dict[str, dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g_ema = Generator(size, style_dim, n_mlp, channel_multiplier=channel_multiplier, channel_max=channel_max)
        discriminator = Discriminator(size, channel_multiplier=channel_multiplier, channel_max=channel_max)
    g_ema.eval()
    latent_avg = g_ema.mean_latent(MEAN_LATENT_SAMPLES, generator=torch.Generator().manual_seed(seed)).reshape(-1)
    metadata = {"random_init": True, "warning": RANDOM_WARNING, "seed": seed}
    save_generator(str(out / "generator.pt"), g_ema, latent_avg, metadata, discriminator=discriminator)
    entries: dict[str, dict[str, Any]] = {"base_generator": {"file": "generator.pt"}}

    n_latent = g_ema.n_latent
    input_size = _encoder_input_size(encoder_depth, size)
    for offset, (space, field, name) in enumerate((("w+", "encoder_wplus", "encoder_wplus.pt"),
                                                   ("z+", "encoder_zplus", "encoder_zplus.pt"))):
        core = build_encoder(encoder_depth, n_latent, style_dim, input_size, seed=seed + 1 + offset)
        encoder = PSPEncoder(core, latent_avg.unsqueeze(0).repeat(n_latent, 1), space)
        opts = {"output_size": size, "random_init": True, "encoder_depth": encoder_depth}
        save_encoder(str(out / name), encoder, opts=opts)
        entries[field] = {"file": name, "space": space}

    net, kind = _identity_net(identity, seed + 3)
    save_identity(str(out / "identity.pth"), net)
    entries["identity"] = {"file": "identity.pth", "kind": kind}

    lpips_name = f"lpips_{lpips_net}_backbone_RANDOM.pth"
    save_random_backbone_weights(out / lpips_name, lpips_net, seed + 4)
    entries["lpips_backbone"] = {"file": lpips_name, "net": lpips_net}

    for entry in entries.values():
        entry["sha256"] = _sha256(out / entry["file"])
    return entries


def init_models(out: str | Path, size: int, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                channel_max: int = 512, encoder_depth: str = "50", identity: str = "r50", lpips_net: str = "vgg",
                seed: int = 0) -> dict[str, Any]:
    """Write the random model set into `out` (folder or s3:// prefix); returns the models.json content.

    Each "models" entry has "uri" (where it was written), "file", "sha256" and kind-specific fields.
    """
    if encoder_depth not in ENCODER_PRESETS:
        raise ValueError(f"encoder_depth must be one of {sorted(ENCODER_PRESETS)}; got {encoder_depth!r}")
    if identity not in IDENTITY_CHOICES:
        raise ValueError(f"identity must be one of {IDENTITY_CHOICES}; got {identity!r}")
    args = {"size": size, "style_dim": style_dim, "n_mlp": n_mlp, "channel_multiplier": channel_multiplier,
            "channel_max": channel_max, "encoder_depth": encoder_depth, "identity": identity,
            "lpips_net": lpips_net, "seed": seed}
    out = str(out)
    if is_remote(out):
        from fstrain.data import storage
        with tempfile.TemporaryDirectory(prefix="fstrain-init-") as tmp:
            entries = _write_all(Path(tmp), **args)
            for path in sorted(Path(tmp).iterdir()):
                storage.upload_file(str(path), storage.join(out, path.name))
        base = out.rstrip("/")
        for entry in entries.values():
            entry["uri"] = f"{base}/{entry['file']}"
    else:
        entries = _write_all(Path(out), **args)
        for entry in entries.values():
            entry["uri"] = str(Path(out).resolve() / entry["file"])
    manifest = {"random_init": True, "warning": RANDOM_WARNING, "args": args, "models": entries}
    save_json(manifest, f"{out.rstrip('/')}/models.json")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fstrain.models.init", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="output folder or s3:// prefix")
    parser.add_argument("--size", type=int, required=True, help="generator resolution (power of two, 8..1024)")
    parser.add_argument("--style-dim", type=int, default=512)
    parser.add_argument("--n-mlp", type=int, default=8)
    parser.add_argument("--channel-multiplier", type=int, default=2)
    parser.add_argument("--channels-max", type=int, default=512, help="cap on every generator/discriminator width")
    parser.add_argument("--encoder-depth", choices=sorted(ENCODER_PRESETS), default="50")
    parser.add_argument("--identity", choices=IDENTITY_CHOICES, default="r50")
    parser.add_argument("--lpips", choices=("alex", "vgg"), default="vgg")
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args(argv)
    manifest = init_models(a.out, a.size, a.style_dim, a.n_mlp, a.channel_multiplier, a.channels_max,
                           a.encoder_depth, a.identity, a.lpips, a.seed)
    print(RANDOM_WARNING)
    for name, entry in manifest["models"].items():
        print(f"{name:16s} {entry['uri']}  sha256={entry['sha256'][:16]}...")


if __name__ == "__main__":
    main()
