"""fstrain.world.generator and fstrain.world.encoders: the world's base G/D (adversarial) and pSp encoders.

Tiny sizes (16 px, 16 channels, a few dozen steps) so the file runs in well under a minute on one thread; the
real 64 px models are trained by `python -m fstrain.world.pretrain` and judged by its instrument report.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from fstrain.losses import discriminator_adversarial_loss, generator_adversarial_loss
from fstrain.models.checkpoints import load_generator, read_checkpoint
from fstrain.models.init import init_models
from fstrain.models.psp import load_encoder
from fstrain.world.encoders import (EncoderSettings, ReconstructionLoss, _new_encoder, _start_from, lpips_net_of,
                                    train_encoders)
from fstrain.world.files import ENCODERS_PREVIEW, FILES, GENERATOR_SAMPLES, WARM_START_ENCODER
from fstrain.world.generator import (AdversarialTrainer, GeneratorSettings, _real_batch, train_generator,
                                     training_photos)
from fstrain.world.splits import HELDOUT, render_identities

SIZE = 16
TINY = GeneratorSettings(n_mlp=2, channel_max=16, batch_size=8, identities=48, views_per_identity=1,
                         latent_pool=64, mapping_steps=20)
TINY_ENCODERS = EncoderSettings(batch_size=8, identities=48, views_per_identity=1)


@pytest.fixture(scope="module")
def world_generator(tmp_path_factory):
    out = tmp_path_factory.mktemp("world-generator")
    result = train_generator(out, size=SIZE, seed=3, budget_s=60, settings=TINY, warm_steps=40, gan_steps=12,
                             log=lambda line: None)
    return out, result


@pytest.fixture(scope="module")
def random_nets(tmp_path_factory):
    """The tiny random identity net and LPIPS trunk that fstrain.models.init writes (stand-ins for B's nets)."""
    out = tmp_path_factory.mktemp("random-nets")
    manifest = init_models(out, size=SIZE, n_mlp=2, channel_multiplier=1, channel_max=16, encoder_depth="tiny",
                           identity="tiny", lpips_net="alex")
    return {name: entry["uri"] for name, entry in manifest["models"].items()}


def test_generator_file_is_the_rosinality_training_layout_and_loads_strictly(world_generator):
    out, result = world_generator
    checkpoint = read_checkpoint(str(out / FILES["generator"]))
    assert set(checkpoint) == {"g", "d", "g_ema", "latent_avg", "args"}
    assert isinstance(checkpoint["args"], dict) and checkpoint["args"]["size"] == SIZE
    loaded = load_generator(str(out / FILES["generator"]))          # g_ema and d, strict
    assert loaded.generator.size == SIZE and loaded.discriminator is not None
    assert loaded.discriminator.size == SIZE
    assert torch.equal(loaded.latent_avg, checkpoint["latent_avg"])
    assert all(float(b.abs().max()) == 0.0 for b in loaded.generator.noise_buffers())
    g = load_generator(str(out / FILES["generator"]), which="g").generator
    assert any(not torch.equal(a, b) for a, b in zip(g.state_dict().values(),
                                                     loaded.generator.state_dict().values())), "g_ema is not an EMA"
    assert loaded.metadata["world_generator"]["gan_steps"] == 12
    grid = Image.open(out / GENERATOR_SAMPLES)
    assert grid.size == (8 * SIZE, 8 * SIZE)
    assert result["steps"] == 52 and result["seconds"] > 0
    for name in result["files"] + result["warm_start_files"]:
        assert (out / name).is_file(), name
    assert load_encoder(str(out / WARM_START_ENCODER)).space == "w+"


def test_same_seed_and_steps_give_the_same_generator(world_generator, tmp_path):
    out, _ = world_generator
    train_generator(tmp_path, size=SIZE, seed=3, budget_s=60, settings=TINY, warm_steps=40, gan_steps=12,
                    log=lambda line: None)
    first, second = read_checkpoint(str(out / FILES["generator"])), read_checkpoint(str(tmp_path / FILES["generator"]))
    for part in ("g_ema", "d"):
        for key, value in first[part].items():
            assert torch.equal(value, second[part][key]), (part, key)


def test_the_discriminator_learns_to_tell_photos_from_samples():
    torch.manual_seed(0)
    rng = torch.Generator().manual_seed(0)
    photos = training_photos(TINY)
    g, d = TINY.generator(), TINY.discriminator()
    trainer = AdversarialTrainer(g, d, TINY, rng)
    z = torch.randn(32, g.style_dim, generator=torch.Generator().manual_seed(1))
    real = photos[:32]

    def d_loss() -> float:
        with torch.no_grad():
            return float(discriminator_adversarial_loss(d(real), d(g([z])[0])))

    before = d_loss()
    for _ in range(25):
        trainer.step(_real_batch(photos, TINY, rng))
    after = d_loss()
    assert after < before - 0.3, (before, after)      # from ln 4 ~ 1.39 (chance) towards 0


def test_the_generator_step_lowers_its_loss_against_a_fixed_discriminator():
    torch.manual_seed(0)
    rng = torch.Generator().manual_seed(0)
    photos = training_photos(TINY)
    g, d = TINY.generator(), TINY.discriminator()
    trainer = AdversarialTrainer(g, d, TINY, rng)
    for _ in range(10):                                  # a D that has an opinion
        trainer.step(_real_batch(photos, TINY, rng))
    frozen = copy.deepcopy(d.state_dict())
    for group in trainer.d_optim.param_groups:
        group["lr"] = 0.0
    z = torch.randn(32, g.style_dim, generator=torch.Generator().manual_seed(1))

    def g_loss() -> float:
        with torch.no_grad():
            return float(generator_adversarial_loss(d(g([z], randomize_noise=False)[0])))

    before = g_loss()
    for _ in range(15):
        trainer.step(_real_batch(photos, TINY, rng))
    assert all(torch.equal(v, d.state_dict()[k]) for k, v in frozen.items())
    assert g_loss() < before - 0.05, (before, g_loss())


def test_encoders_train_against_the_generator_and_load_with_the_psp_loaders(world_generator, random_nets, tmp_path):
    out, _ = world_generator
    result = train_encoders(tmp_path, generator_path=str(out / FILES["generator"]),
                            identity_path=random_nets["identity"],
                            lpips_backbone_path=random_nets["lpips_backbone"], size=SIZE, seed=0, budget_s=60,
                            settings=TINY_ENCODERS, wplus_steps=25, zplus_steps=25, log=lambda line: None)
    assert result["steps"] == 50
    assert set(result["files"]) == {FILES["encoder_wplus"], FILES["encoder_zplus"], ENCODERS_PREVIEW}
    g = load_generator(str(out / FILES["generator"])).generator
    e_w = load_encoder(str(tmp_path / FILES["encoder_wplus"]))
    e_z = load_encoder(str(tmp_path / FILES["encoder_zplus"]))
    assert (e_w.space, e_z.space) == ("w+", "z+") and e_w.n_latent == e_z.n_latent == g.n_latent
    assert Image.open(tmp_path / ENCODERS_PREVIEW).size == (12 * SIZE, 3 * SIZE)

    # Held-out people: trained encoders reconstruct them far better than untrained ones (pSp's own loss).
    from fstrain.models.identity import load_identity
    from fstrain.models.perceptual import load_lpips
    loss = ReconstructionLoss(load_lpips(random_nets["lpips_backbone"], net="alex"),
                              load_identity(random_nets["identity"]), TINY_ENCODERS)
    x = render_identities(HELDOUT, 16, 1, "photo", SIZE).tensor()
    fresh_w = _new_encoder(TINY_ENCODERS, g, load_generator(str(out / FILES["generator"])).latent_avg, "w+", SIZE, 9)
    fresh_z = _new_encoder(TINY_ENCODERS, g, None, "z+", SIZE, 9)
    with torch.no_grad():
        trained_w = float(loss(x, g.synthesis(e_w(x)))["l2"])
        untrained_w = float(loss(x, g.synthesis(fresh_w(x)))["l2"])
        trained_z = float(loss(x, g.synthesis(g.get_latent(e_z(x))))["l2"])
        untrained_z = float(loss(x, g.synthesis(g.get_latent(fresh_z(x))))["l2"])
    # Both untrained encoders render about the average face (E_w+ starts from latent_avg; G's mapping was fitted
    # from the codes' mean, fstrain.world.generator._start_at), so "far better" is 30 % below the average face.
    assert trained_w < 0.7 * untrained_w, (trained_w, untrained_w)
    assert trained_z < 0.7 * untrained_z, (trained_z, untrained_z)


def test_warm_start_keeps_the_codes_under_a_different_latent_average(world_generator):
    out, _ = world_generator
    loaded = load_generator(str(out / FILES["generator"]))
    warm = load_encoder(str(out / WARM_START_ENCODER))
    encoder = _new_encoder(TINY_ENCODERS, loaded.generator, loaded.latent_avg, "w+", SIZE, 5)
    _start_from(encoder, warm)
    x = render_identities(HELDOUT, 4, 1, "photo", SIZE).tensor()
    with torch.no_grad():
        assert torch.allclose(encoder.eval()(x), warm(x), atol=1e-5)


def test_bad_inputs_name_the_file_and_what_to_do(world_generator, random_nets, tmp_path):
    out, _ = world_generator
    with pytest.raises(ValueError, match="renders 16 px, but size=32"):
        train_encoders(tmp_path, generator_path=str(out / FILES["generator"]), identity_path=random_nets["identity"],
                       lpips_backbone_path=random_nets["lpips_backbone"], size=32, seed=0, budget_s=10)
    with pytest.raises(ValueError, match="features.0.weight"):
        lpips_net_of(random_nets["identity"])
    assert lpips_net_of(random_nets["lpips_backbone"]) == "alex"


def test_the_world_latent_draws_the_worlds_own_distribution_and_renders_the_same_person_twice():
    from collections import Counter

    from fstrain.data.synthetic import HAIR_STYLES, LATENT_DRAWS, identity_rng, params_from_normal, sample_identity
    from fstrain.world.splits import render_latent_pool
    rng = np.random.default_rng(0)
    by_latent = [params_from_normal(rng.standard_normal(LATENT_DRAWS))[0] for _ in range(3000)]
    by_numpy = [sample_identity(identity_rng(123, k), "") for k in range(3000)]
    for people in (by_latent, by_numpy):                    # the sampler's own rates: glasses 25 %, bangs 35 %
        assert abs(np.mean([p.glasses for p in people]) - 0.25) < 0.03
        assert abs(np.mean([p.bangs for p in people]) - 0.35) < 0.03
        styles = Counter(p.hair_style for p in people)
        assert set(styles) == set(HAIR_STYLES) and max(styles.values()) / min(styles.values()) < 1.3
        widths = [p.face_half_width for p in people]
        assert 118 <= min(widths) and max(widths) <= 140 and abs(np.mean(widths) - 129) < 0.5
    with pytest.raises(ValueError, match=f"needs {LATENT_DRAWS} normals"):
        params_from_normal(np.zeros(LATENT_DRAWS - 1))

    u, photos = render_latent_pool(70, SIZE, seed=5, workers=2)
    u1, photos1 = render_latent_pool(70, SIZE, seed=5, workers=1)
    assert u.shape == (70, LATENT_DRAWS) and photos.shape == (70, 3, SIZE, SIZE)
    assert torch.equal(u, u1) and torch.equal(photos, photos1)            # same pool for any worker count
    assert not torch.equal(photos[0], photos[1])


def test_the_mapping_fit_to_paired_codes_sends_each_world_latent_to_its_photos_code():
    from fstrain.world.generator import fit_mapping_to_pairs, world_z
    g = TINY.generator()
    rng = torch.Generator().manual_seed(0)
    u = torch.randn(256, 57, generator=rng)
    # Codes that depend on u non-linearly (a discrete choice, as hair style is), on the codes' usual scale.
    basis = torch.randn(57, g.style_dim, generator=rng) * 0.05
    codes = torch.tanh(u @ basis) + 0.3 * (u[:, :1] > 0).float()

    def error() -> float:
        with torch.no_grad():
            return float((g.style(world_z(u, g.style_dim, rng)) - codes).pow(2).sum(1).mean() / codes.var(0).sum())

    before = error()
    final = fit_mapping_to_pairs(g, u, codes, steps=300, lr=3.0, rng=rng, log=lambda line: None)
    assert final < 0.3 < before, (before, final)
    assert error() < 0.3                 # fresh normals in z's other coordinates do not matter: u alone decides
