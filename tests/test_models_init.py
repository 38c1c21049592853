"""`fstrain.models.init`: random model sets in the real formats, loadable by every loader, locally and on S3."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from fstrain.data import storage
from fstrain.models.checkpoints import load_generator
from fstrain.models.identity import identity_loss, load_identity
from fstrain.models.init import init_models
from fstrain.models.perceptual import load_lpips
from fstrain.models.psp import load_encoder
from fstrain.models.registry import fetch, load_torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_fixture_manifest_is_loud_and_pinned(tiny_models):
    manifest = json.loads((tiny_models.root / "models.json").read_text())
    assert manifest["random_init"] is True and "RANDOM" in manifest["warning"]
    assert set(manifest["models"]) == {"base_generator", "encoder_wplus", "encoder_zplus", "identity",
                                       "lpips_backbone"}
    for name, entry in manifest["models"].items():
        assert hashlib.sha256(Path(entry["uri"]).read_bytes()).hexdigest() == entry["sha256"], name
        fetch(entry["uri"], entry["sha256"])
    assert set(load_torch(tiny_models.generator)) == {"g_ema", "d", "latent_avg"}
    assert json.loads(Path(tiny_models.generator + ".json").read_text())["random_init"] is True


def test_every_fixture_model_loads_and_works_together(tiny_models):
    g = load_generator(tiny_models.generator)
    assert g.generator.size == tiny_models.size and g.discriminator is not None
    assert g.generator.n_latent == tiny_models.n_latent
    wplus = load_encoder(tiny_models.encoder_wplus)
    identity = load_identity(tiny_models.identity)
    lpips = load_lpips(tiny_models.lpips_backbone, net=tiny_models.lpips_net)
    assert identity.kind == tiny_models.identity_kind == "arcface"

    z = torch.randn(2, tiny_models.style_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        image, _ = g.generator([z], randomize_noise=False)
        recon = g.generator.synthesis(wplus(image))
        emb, emb_recon = identity(image), identity(recon)
        assert identity_loss(emb, identity(image.clone())).item() < 1e-6
        assert identity_loss(emb, emb_recon).item() > 0
        assert torch.all(lpips(image, image).abs() < 1e-6) and torch.all(lpips(image, recon) > 0)
    assert recon.shape == image.shape == (2, 3, tiny_models.size, tiny_models.size)


def test_cli_writes_the_same_files_as_the_function(tmp_path):
    out = tmp_path / "cli"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-m", "fstrain.models.init", str(out), "--size", "16",
                             "--channel-multiplier", "1", "--channels-max", "16", "--n-mlp", "1", "--style-dim",
                             "64", "--encoder-depth", "tiny", "--identity", "tiny", "--lpips", "alex",
                             "--seed", "3"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "RANDOMLY INITIALISED" in result.stdout
    names = {p.name for p in out.iterdir()}
    assert {"generator.pt", "encoder_wplus.pt", "encoder_zplus.pt", "identity.pth",
            "lpips_alex_backbone_RANDOM.pth", "models.json"} <= names
    # Same seed and settings through the Python function: identical weights.
    manifest = init_models(tmp_path / "fn", size=16, style_dim=64, n_mlp=1, channel_multiplier=1, channel_max=16,
                           encoder_depth="tiny", identity="tiny", lpips_net="alex", seed=3)
    cli_manifest = json.loads((out / "models.json").read_text())
    for name in ("base_generator", "encoder_wplus", "encoder_zplus", "identity", "lpips_backbone"):
        assert manifest["models"][name]["sha256"] == cli_manifest["models"][name]["sha256"], name
    assert (tmp_path / "fn" / "generator.pt.json").read_text() == (out / "generator.pt.json").read_text()
    enc = load_encoder(str(out / "encoder_zplus.pt"))
    assert enc.space == "z+" and enc.encoder.style_dim == 64 and enc.n_latent == 6


def test_init_to_s3_and_load_pinned(s3_root, tmp_path, monkeypatch):
    monkeypatch.setenv("FSTRAIN_MODEL_CACHE", str(tmp_path / "cache"))
    prefix = storage.join(s3_root, "models")
    manifest = init_models(prefix, size=16, style_dim=64, n_mlp=1, channel_multiplier=1, channel_max=16,
                           encoder_depth="tiny", identity="tiny", lpips_net="alex", seed=1)
    assert storage.read_json(storage.join(prefix, "models.json"))["random_init"] is True
    entry = manifest["models"]["encoder_wplus"]
    assert entry["uri"] == storage.join(prefix, "encoder_wplus.pt")
    encoder = load_encoder(entry["uri"], sha256=entry["sha256"])
    assert encoder.space == "w+" and encoder.n_latent == 6
    identity = manifest["models"]["identity"]
    assert load_identity(identity["uri"], sha256=identity["sha256"]).kind == "arcface"
    assert len(list((tmp_path / "cache").iterdir())) == 2
