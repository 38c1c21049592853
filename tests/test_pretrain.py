"""fstrain.world.autoencoder: tiny base models trained on synthetic photos reconstruct and follow their inputs."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from fstrain.data.synthetic import generate
from fstrain.models.checkpoints import load_generator, read_checkpoint
from fstrain.models.init import init_models
from fstrain.world.autoencoder import PretrainSettings, load_photos, main, pretrain_models, reconstruction_error
from fstrain.models.psp import load_encoder

# Short phases: enough to learn colour and layout at 32 px in ~15 s on one thread.
QUICK = PretrainSettings(batch_size=16, autoencoder_steps=250, mapping_steps=150, zplus_steps=120)
HELD_OUT_SEED = 77          # a dataset seed the training photos (photo_seed 500) do not come from
FACE = (slice(10, 22), slice(11, 21))   # rows/cols of the face centre in a 32 px aligned portrait


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrained")
    manifest = pretrain_models(out, QUICK, count=384, holdout=32, log=lambda line: None)
    random_dir = tmp_path_factory.mktemp("random")
    init_models(random_dir, **QUICK.init_args())
    return out, random_dir, manifest


def _load(folder):
    return (load_generator(str(folder / "generator.pt")).generator, load_encoder(str(folder / "encoder_wplus.pt")),
            load_encoder(str(folder / "encoder_zplus.pt")))


def test_files_strict_load_with_the_pipeline_loaders_and_record_what_is_trained(models):
    out, _, manifest = models
    loaded = load_generator(str(out / "generator.pt"))
    assert loaded.generator.size == 32 and loaded.discriminator is not None
    assert loaded.metadata["random_init"] is False and "not on real faces" in loaded.metadata["warning"]
    assert set(read_checkpoint(str(out / "generator.pt"))) == {"g_ema", "latent_avg", "d"}
    assert load_encoder(str(out / "encoder_wplus.pt")).space == "w+"
    assert load_encoder(str(out / "encoder_zplus.pt")).space == "z+"
    assert manifest["random_init"] is False
    assert manifest["pretrained"]["still_random"] == ["d", "identity", "lpips_backbone"]
    assert set(manifest["models"]) == {"base_generator", "encoder_wplus", "encoder_zplus", "identity",
                                       "lpips_backbone"}
    errors = manifest["pretrained"]["heldout_pixel_l1"]
    assert errors["pretrained"] < 0.5 * errors["random"], errors
    # Stored noise maps are zero, so renders from stored noise are noise-free.
    assert all(float(b.abs().max()) == 0.0 for b in loaded.generator.noise_buffers())


def test_reconstruction_on_unseen_photos_is_far_better_than_the_random_models(models):
    out, random_dir, _ = models
    photos = load_photos("synthetic", 32, 32, HELD_OUT_SEED)
    g, e_w, e_z = _load(out)
    g0, e_w0, e_z0 = _load(random_dir)
    trained, untrained = reconstruction_error(e_w, g, photos), reconstruction_error(e_w0, g0, photos)
    assert trained < 0.35 * untrained, (trained, untrained)
    assert trained < 0.2, trained          # mean |error| on a [-1, 1] scale
    # Level-1 path: G's mapping of E_z+(x), layer by layer, draws the photo too.
    with torch.no_grad():
        via_z = float((g.synthesis(g.get_latent(e_z(photos))) - photos).abs().mean())
        via_z0 = float((g0.synthesis(g0.get_latent(e_z0(photos))) - photos).abs().mean())
    assert via_z < 0.4 * via_z0, (via_z, via_z0)


def test_renders_follow_their_photos_darker_skin_renders_darker(models):
    out, _, _ = models
    g, e_w, _ = _load(out)
    metas = [meta for _, _, meta in generate("photo", 24, 64, HELD_OUT_SEED)]
    photos = load_photos("synthetic", 24, 32, HELD_OUT_SEED)
    skin = torch.tensor([sum(meta["identity"]["skin"]) / 3 for meta in metas])
    darkest, lightest = int(skin.argmin()), int(skin.argmax())
    assert skin[lightest] - skin[darkest] > 60          # the held-out set spans the skin ramp
    with torch.no_grad():
        renders = g.synthesis(e_w(photos))
    face = renders[:, :, FACE[0], FACE[1]].mean(dim=(1, 2, 3))
    photo_face = photos[:, :, FACE[0], FACE[1]].mean(dim=(1, 2, 3))
    assert face[lightest] - face[darkest] > 0.5 * (photo_face[lightest] - photo_face[darkest])
    # Across all 24 photos the rendered face brightness tracks the photo's.
    correlation = torch.corrcoef(torch.stack([face, photo_face]))[0, 1]
    assert correlation > 0.8, correlation


def test_random_samples_look_like_the_photos_on_average(models):
    out, random_dir, _ = models
    photos = load_photos("synthetic", 64, 32, HELD_OUT_SEED)
    z = torch.randn(64, 512, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        errors = [float((g([z], randomize_noise=False)[0].mean(0) - photos.mean(0)).abs().mean())
                  for g in (_load(out)[0], _load(random_dir)[0])]
    assert errors[0] < 0.5 * errors[1], errors


def test_same_seed_same_weights_and_cli_writes_the_set(tmp_path):
    tiny = dataclasses.replace(QUICK, autoencoder_steps=6, mapping_steps=4, zplus_steps=4)
    states = []
    for name in ("a", "b"):
        pretrain_models(tmp_path / name, tiny, count=40, holdout=8, log=lambda line: None)
        states.append(read_checkpoint(str(tmp_path / name / "generator.pt"))["g_ema"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    main([str(tmp_path / "cli"), "--count", "40", "--holdout", "8", "--autoencoder-steps", "2",
          "--mapping-steps", "2", "--zplus-steps", "2", "--batch-size", "8"])
    for name in ("generator.pt", "encoder_wplus.pt", "encoder_zplus.pt", "identity.pth", "models.json",
                 "pretrain_preview.png"):
        assert (tmp_path / "cli" / name).exists(), name


def test_writes_the_model_set_to_s3_and_it_loads_back_from_there(s3_root):
    from fstrain.data import storage
    from fstrain.provenance import sha256_uri

    tiny = dataclasses.replace(QUICK, autoencoder_steps=4, mapping_steps=2, zplus_steps=2)
    models_uri = f"{s3_root}/models"
    manifest = pretrain_models(models_uri, tiny, count=40, holdout=8, log=lambda line: None)
    assert load_generator(f"{models_uri}/generator.pt").generator.size == 32
    assert load_encoder(f"{models_uri}/encoder_zplus.pt").space == "z+"
    assert storage.read_json(f"{models_uri}/models.json") == json.loads(json.dumps(manifest))
    for entry in manifest["models"].values():        # every file the manifest names is in the bucket, unchanged
        assert sha256_uri(f"{models_uri}/{entry['file']}") == entry["sha256"], entry["file"]


def test_a_folder_with_too_few_photos_is_an_error_naming_it(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(ValueError, match="photos"):
        load_photos(str(tmp_path / "photos"), 10, 32)


def test_demo_claims_only_an_empty_or_own_root_before_it_may_delete_outputs(tmp_path):
    from cluster.demo import DEMO_MARKER, DemoRootError, claim_demo_root, main

    empty = tmp_path / "empty"
    claim_demo_root(str(empty))
    assert (empty / DEMO_MARKER).exists()
    (empty / "styles" / "cartoon").mkdir(parents=True)
    (empty / "styles" / "cartoon" / "generator.pt").write_bytes(b"made by an earlier demo")
    claim_demo_root(str(empty))            # its own root: allowed, outputs untouched until models change
    assert (empty / "styles" / "cartoon" / "generator.pt").exists()

    foreign = tmp_path / "production"
    (foreign / "styles" / "anime").mkdir(parents=True)
    (foreign / "styles" / "anime" / "generator.pt").write_bytes(b"someone's trained style")
    with pytest.raises(DemoRootError, match=r"production already holds styles .*empty --root"):
        claim_demo_root(str(foreign))
    assert main(["--root", str(foreign)]) == 2
    assert (foreign / "styles" / "anime" / "generator.pt").read_bytes() == b"someone's trained style"
    assert not (foreign / DEMO_MARKER).exists()
