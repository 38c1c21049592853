"""Stylization modes and reference codes on tiny random models (CPU).

The generators/encoder are random, so images mean nothing; the tests check the arithmetic of each mode, the
reference inversion's objective, and the storage/reuse contract of reference codes.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fstrain.data import storage
from support.portraits import portrait_photos, style_images
from support.tiny_models import add_delta
from fstrain.losses import perceptual_distance
from fstrain.models.latents import broadcast_w
from fstrain.models.psp import PSPEncoder, build_encoder
from fstrain.models.stylegan2 import Generator
from fstrain.stylize import ReferenceStore, Stylizer, generator_fingerprint, invert_reference, reference_id
from fstrain.stylize.images import decode_png, encode_png, to_uint8

SIZE, STYLE_DIM = 32, 32



def tiny_generator(seed: int) -> Generator:
    torch.manual_seed(seed)
    return Generator(SIZE, style_dim=STYLE_DIM, n_mlp=2, channel_multiplier=1, channel_max=32).eval()


@pytest.fixture(scope="module")
def stylizer() -> Stylizer:
    generators = {"cartoon": tiny_generator(1), "anime": tiny_generator(2)}
    n_latent = generators["cartoon"].n_latent
    latent_avg = generators["cartoon"].mean_latent(256, generator=torch.Generator().manual_seed(0))
    encoder = PSPEncoder(build_encoder("tiny", n_styles=n_latent, style_dim=STYLE_DIM, input_size=32, seed=3),
                         latent_avg.repeat(n_latent, 1)).eval()
    return Stylizer(encoder, generators)


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    """Three aligned synthetic portrait photos, (3, 3, 32, 32) in [-1, 1]."""
    return torch.cat([portrait.tensor() for portrait in portrait_photos(3, size=SIZE, seed=7)])


@pytest.fixture(scope="module")
def lpips_alex_random(tiny_models):
    """LPIPS through the project's loader, with the shared tiny model set's explicitly RANDOM AlexNet trunk."""
    from fstrain.models.perceptual import load_lpips
    return load_lpips(tiny_models.lpips_backbone, net="alex")


def test_encode_shape_and_general_is_render(stylizer: Stylizer, faces: torch.Tensor):
    w_plus = stylizer.encode(faces)
    assert w_plus.shape == (3, stylizer.n_latent, STYLE_DIM)
    general = stylizer.general(w_plus, "cartoon")
    assert general.shape == (3, 3, SIZE, SIZE)
    assert torch.equal(general, stylizer.generator("cartoon").synthesis(w_plus))
    # Different styles render the same content code differently.
    assert not torch.allclose(general, stylizer.general(w_plus, "anime"))


def test_multimodal_with_k_equal_n_latent_is_general(stylizer: Stylizer, faces: torch.Tensor):
    w_plus = stylizer.encode(faces)
    samples = stylizer.multimodal(w_plus, "cartoon", k=stylizer.n_latent, psi=0.7, n=2, seed=5)
    general = stylizer.general(w_plus, "cartoon")
    assert samples.shape == (3, 2, 3, SIZE, SIZE)
    for i in range(2):
        assert torch.equal(samples[:, i], general)


def test_multimodal_samples_differ_only_in_layers_from_k(stylizer: Stylizer, faces: torch.Tensor):
    w_plus = stylizer.encode(faces)
    k = 4
    codes = stylizer.multimodal_codes(w_plus, "cartoon", k=k, psi=0.7, n=2, seed=11)
    assert codes.shape == (3, 2, stylizer.n_latent, STYLE_DIM)
    for i in range(2):
        assert torch.equal(codes[:, i, :k], w_plus[:, :k])          # content layers untouched
    differs = (codes[:, 0] - codes[:, 1]).abs().amax(-1)           # (N, n_latent)
    assert torch.all(differs[:, :k] == 0)
    assert torch.all(differs[:, k:] > 1e-4)                         # every style layer differs
    images = stylizer.multimodal(w_plus, "cartoon", k=k, psi=0.7, n=2, seed=11)
    assert (images[:, 0] - images[:, 1]).abs().amax() > 1e-3
    # Reproducible and independent of the batch a face is in.
    alone = stylizer.multimodal(w_plus[1:2], "cartoon", k=k, psi=0.7, n=2, seed=11)
    assert torch.allclose(alone[0], images[1], atol=1e-5)
    assert not torch.allclose(stylizer.multimodal_codes(w_plus, "cartoon", k, 0.7, 2, seed=12), codes)


def test_multimodal_truncation_psi_zero_gives_mean_latent(stylizer: Stylizer, faces: torch.Tensor):
    w_plus = stylizer.encode(faces)
    codes = stylizer.multimodal_codes(w_plus, "anime", k=2, psi=0.0, n=2, seed=1)
    mean = stylizer.latent_avg("anime").reshape(1, 1, -1)
    assert torch.allclose(codes[:, :, 2:], mean.unsqueeze(0).expand_as(codes[:, :, 2:]), atol=1e-6)


def test_reference_mode_mixes_reference_w_into_layers_from_k(stylizer: Stylizer, faces: torch.Tensor):
    w_plus = stylizer.encode(faces)
    reference_w = torch.randn(1, STYLE_DIM)
    mixed = stylizer.reference_codes(w_plus, reference_w, k=3)
    assert torch.equal(mixed[:, :3], w_plus[:, :3])
    assert torch.equal(mixed[:, 3:], reference_w.expand(3, stylizer.n_latent - 3, -1))
    # k = 0: every layer is the reference, so every face renders the reference's image.
    images = stylizer.reference(w_plus, "cartoon", reference_w, k=0)
    expected = stylizer.generator("cartoon").synthesis(broadcast_w(reference_w, stylizer.n_latent))
    assert torch.allclose(images, expected.expand_as(images), atol=1e-5)


def test_unknown_style_and_mismatched_generators_are_clear_errors(stylizer: Stylizer):
    with pytest.raises(KeyError, match="no generator loaded for style 'fantasy'"):
        stylizer.generator("fantasy")
    with pytest.raises(ValueError, match="n_latent"):
        Stylizer(stylizer.encoder, {"a": tiny_generator(0),
                                    "b": Generator(16, style_dim=STYLE_DIM, n_mlp=2, channel_max=32)})


def test_reference_inversion_lowers_lpips_to_reference(lpips_alex_random):
    generator = tiny_generator(1)
    with torch.no_grad():   # a reference the generator can reach: a render from another w
        target = generator.synthesis(broadcast_w(generator.get_latent(torch.randn(1, STYLE_DIM)), generator.n_latent))
    calls = []
    code = invert_reference(generator, target, lpips_alex_random, steps=30, lr=0.1, noise_reg=1e5,
                            progress=lambda step, total, d: calls.append(d))
    assert code.v.shape == code.w.shape == (1, STYLE_DIM)
    assert len(calls) == 30
    # Measured independently: render w (stored noise, as reference mode does) and compare with the start.
    with torch.no_grad():
        start = generator.synthesis(broadcast_w(generator.mean_latent(4096, torch.Generator().manual_seed(0)),
                                                generator.n_latent))
        final = generator.synthesis(broadcast_w(code.w, generator.n_latent))
        d_start = float(perceptual_distance(lpips_alex_random, start, target))
        d_final = float(perceptual_distance(lpips_alex_random, final, target))
    assert d_final < 0.6 * d_start, (d_start, d_final)
    assert code.meta["lpips_initial"][0] == pytest.approx(d_start, rel=1e-4)
    assert code.meta["lpips_final"][0] == pytest.approx(d_final, rel=1e-4)
    # The generator is left as it was: no gradients requested, no weights touched.
    assert all(p.requires_grad for p in generator.parameters())
    assert all(p.grad is None for p in generator.parameters())


@pytest.mark.parametrize("root_kind", ["local", "s3"])
def test_reference_codes_are_stored_reloaded_and_reused(root_kind, request, lpips_alex_random,
                                                        stylizer: Stylizer, faces: torch.Tensor):
    root = request.getfixturevalue("local_root" if root_kind == "local" else "s3_root")
    generator = stylizer.generator("cartoon")
    reference_image = style_images("cartoon", 1, size=SIZE, seed=3)[0].tensor()
    ref_id = reference_id(encode_png(to_uint8(reference_image)[0]))
    store = ReferenceStore(root)
    inversions = []

    def invert():
        inversions.append(1)
        return invert_reference(generator, reference_image, lpips_alex_random, steps=5, lr=0.1)

    fingerprint = generator_fingerprint(generator)
    code, reused = store.get_or_invert("cartoon", ref_id, invert, fingerprint)
    assert (reused, len(inversions)) == (False, 1)
    uri = storage.join(root, "references", "cartoon", f"{ref_id}.npz")
    assert store.uri("cartoon", ref_id) == uri and storage.exists(uri)

    again, reused = store.get_or_invert("cartoon", ref_id, invert, fingerprint)
    assert (reused, len(inversions)) == (True, 1)             # the optimiser did not run again
    assert torch.equal(again.v, code.v) and torch.equal(again.w, code.w)
    assert again.meta["generator_fingerprint"] == fingerprint and again.meta["id"] == ref_id
    w_plus = stylizer.encode(faces)
    assert torch.equal(stylizer.reference(w_plus, "cartoon", again, k=3),
                       stylizer.reference(w_plus, "cartoon", code, k=3))

    # A code inverted for another G' (the style was retrained) is not reused.
    _, reused = store.get_or_invert("cartoon", ref_id, invert, generator_fingerprint(tiny_generator(9)))
    assert (reused, len(inversions)) == (False, 2)


def test_reference_store_errors_name_the_uri(local_root):
    store = ReferenceStore(local_root)
    with pytest.raises(storage.NotFoundError, match=r"references/cartoon/nope\.npz.*invert the reference"):
        store.load("cartoon", "nope")
    with pytest.raises(ValueError, match="reference id"):
        store.uri("cartoon", "../escape")
    storage.write_bytes(store.uri("cartoon", "junk"), b"not an npz")
    with pytest.raises(ValueError, match=r"junk\.npz: not a reference code file"):
        store.load("cartoon", "junk")


def test_reference_id_is_a_content_hash():
    pixels = np.zeros((8, 8, 3), np.uint8)
    other = pixels.copy()
    other[0, 0, 0] = 1
    assert reference_id(pixels) == reference_id(pixels.copy()) != reference_id(other)
    assert reference_id(encode_png(pixels)) == reference_id(encode_png(pixels)) != reference_id(encode_png(other))
    assert np.array_equal(decode_png(encode_png(other)), other)


def test_cli_grid_with_reference_inverted_once_then_reused(tiny_models, local_root, tmp_path, capsys):
    from fstrain.models.checkpoints import load_generator, save_generator
    from fstrain.stylize.__main__ import main
    from support.portraits import write_portraits

    # Publish a "fine-tuned" G' for the style: the tiny base generator with nudged weights.
    loaded = load_generator(tiny_models.generator, load_discriminator=False)
    with torch.no_grad():
        for name, param in loaded.generator.named_parameters():
            if "conv.weight" in name:
                param.mul_(1.2)
    save_generator(storage.join(local_root, "styles", "cartoon", "generator.pt"), loaded.generator,
                   loaded.latent_avg, {"style": "cartoon"})
    inputs = write_portraits(tmp_path / "faces", "photo", 2, size=SIZE, seed=4)
    reference = write_portraits(tmp_path / "ref", "cartoon", 1, size=SIZE, seed=5)[0]
    t = tiny_models
    config = tmp_path / "stylize.yaml"
    config.write_text(
        "models:\n"
        f"  base_generator: {t.generator}\n  encoder_wplus: {t.encoder_wplus}\n"
        f"  encoder_zplus: {t.encoder_zplus}\n  identity: {t.identity}\n"
        f"  lpips_backbone: {t.lpips_backbone}\n  lpips_net: {t.lpips_net}\n"
        "stylize:\n  mix_layer: 4\n  samples: 2\n  reference_steps: 5\n")
    out = str(tmp_path / "out")
    args = [str(config), str(tmp_path / "faces"), "--root", local_root, "--styles", "cartoon", "--out", out]

    assert main(args + ["--reference", str(reference)]) == 0
    captured = capsys.readouterr()
    assert "inverted and stored" in captured.err
    assert "stylize 2 faces" in captured.err and "1/1" in captured.err        # the progress bar, on stderr
    grid = decode_png(storage.read_bytes(f"{out}/cartoon_grid.png"))
    # rows = inputs under a header naming the columns: input | general | multi 1 | multi 2 | reference
    from fstrain.stylize.images import LABEL_STRIP
    assert grid.shape == (LABEL_STRIP + len(inputs) * (SIZE + 2) + 2, 5 * (SIZE + 2) + 2, 3)
    header = grid[:LABEL_STRIP]
    assert header.min() < 100 and header.max() == 255                       # dark label text on white
    ref_id = reference_id(reference.read_bytes())
    assert storage.exists(storage.join(local_root, "references", "cartoon", f"{ref_id}.npz"))

    # Second run, same reference: the stored code is reused (no inversion), and so is the id alone.
    assert main(args + ["--reference", str(reference)]) == 0
    assert "reused stored code" in capsys.readouterr().err
    assert main(args + ["--reference-id", ref_id]) == 0
    assert "reused stored code" in capsys.readouterr().err
    assert np.array_equal(decode_png(storage.read_bytes(f"{out}/cartoon_grid.png")), grid)


# ---------------------------------------------------------------------------- hybrid inversion (code refinement)
def _reachable_faces(generator: Generator, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(faces, their true codes): renders of random w+ the generator can reach exactly."""
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w_true = generator.get_latent(torch.randn(n, generator.n_latent, STYLE_DIM, generator=rng))
        return generator.synthesis(w_true), w_true


def test_refinement_moves_codes_toward_the_face_and_leaves_the_generator_alone(lpips_alex_random):
    from fstrain.stylize import CodeRefiner, RefineSettings

    base = tiny_generator(1)
    faces, w_true = _reachable_faces(base, 3, seed=4)
    w_start = w_true + 0.5 * torch.randn(w_true.shape, generator=torch.Generator().manual_seed(5))
    refiner = CodeRefiner(base, lpips_alex_random, RefineSettings(steps=40, lr=0.02, anchor_weight=0.0))
    refined = refiner(faces, w_start)
    assert refined.shape == w_start.shape and not refined.requires_grad
    with torch.no_grad():
        before = refiner.per_face_loss(w_start, faces, w_start)
        after = refiner.per_face_loss(refined, faces, refined)      # anchor 0: the reconstruction terms only
        l1_before = (base.synthesis(w_start) - faces).abs().flatten(1).mean(1)
        l1_after = (base.synthesis(refined) - faces).abs().flatten(1).mean(1)
    assert (after < 0.7 * before).all(), (before, after)            # every face, not only on average
    assert (l1_after < l1_before).all(), (l1_before, l1_after)
    assert all(p.grad is None for p in base.parameters())

    # The anchor keeps codes near the encoder's: a heavy pull moves them far less than none.
    anchored = CodeRefiner(base, lpips_alex_random, RefineSettings(steps=40, lr=0.02, anchor_weight=1e4))(
        faces, w_start)
    assert (anchored - w_start).norm() < 0.2 * (refined - w_start).norm()


def test_refinement_of_a_face_does_not_depend_on_its_batch(lpips_alex_random):
    from fstrain.stylize import CodeRefiner, RefineSettings

    base = tiny_generator(1)
    faces, w_true = _reachable_faces(base, 3, seed=6)
    w_start = w_true + 0.3 * torch.randn(w_true.shape, generator=torch.Generator().manual_seed(7))
    refiner = CodeRefiner(base, lpips_alex_random, RefineSettings(steps=15))
    together = refiner(faces, w_start)
    alone = refiner(faces[1:2], w_start[1:2])
    # Equal up to float reduction order, which Adam's per-coordinate normalisation can amplify where a gradient is
    # near zero (measured: up to 2.3e-4 on one machine, 8e-7 on another); the codes move ~0.15, and a loss coupled
    # across the batch would move them apart by far more than 1e-3.
    assert (together[1:2] - w_start[1:2]).abs().max() > 0.05
    torch.testing.assert_close(alone, together[1:2], rtol=0, atol=1e-3)


def test_stylizer_with_refiner_encodes_refined_codes(stylizer: Stylizer, faces: torch.Tensor, lpips_alex_random):
    from fstrain.stylize import CodeRefiner, RefineSettings

    settings = RefineSettings(steps=5)
    refiner = CodeRefiner(tiny_generator(1), lpips_alex_random, settings)
    refining = Stylizer(stylizer.encoder, stylizer.generators, refiner=refiner)
    encoded = stylizer.encode(faces)
    refined = refining.encode(faces)
    torch.testing.assert_close(refined, refiner(faces, encoded))
    assert (refined - encoded).abs().max() > 1e-3
    with pytest.raises(ValueError, match="at least one step"):
        CodeRefiner(tiny_generator(1), lpips_alex_random, RefineSettings(steps=0))
    with pytest.raises(ValueError, match="n_latent"):
        other = Generator(16, style_dim=STYLE_DIM, n_mlp=2, channel_max=32)
        Stylizer(stylizer.encoder, stylizer.generators, refiner=CodeRefiner(other, lpips_alex_random, settings))
    with pytest.raises(ValueError, match="share one resolution"):
        CodeRefiner(tiny_generator(1), lpips_alex_random, settings)(faces[:, :, :16, :16], encoded)


def test_cli_refine_steps_changes_the_codes_and_names_a_missing_base_generator(tiny_models, local_root, tmp_path):
    from fstrain.models.checkpoints import load_generator, save_generator
    from fstrain.stylize.__main__ import main
    from support.portraits import write_portraits

    loaded = load_generator(tiny_models.generator, load_discriminator=False)
    save_generator(storage.join(local_root, "styles", "anime", "generator.pt"), loaded.generator, loaded.latent_avg,
                   {"style": "anime"})
    write_portraits(tmp_path / "faces", "photo", 2, size=SIZE, seed=4)
    t = tiny_models

    def config(base_generator: str):
        path = tmp_path / "stylize.yaml"
        path.write_text("models:\n"
                        f"  base_generator: {base_generator}\n  encoder_wplus: {t.encoder_wplus}\n"
                        f"  encoder_zplus: {t.encoder_zplus}\n  identity: {t.identity}\n"
                        f"  lpips_backbone: {t.lpips_backbone}\n  lpips_net: {t.lpips_net}\n"
                        "stylize:\n  samples: 1\n  refine_steps: 4\n  refine_lr: 0.05\n")
        return str(path)

    def grid(out: str, *extra: str):
        args = [config(t.generator), str(tmp_path / "faces"), "--root", local_root, "--styles", "anime",
                "--out", out, *extra]
        assert main(args) == 0
        return decode_png(storage.read_bytes(f"{out}/anime_grid.png"))

    plain = grid(str(tmp_path / "plain"), "--refine-steps", "0")
    refined = grid(str(tmp_path / "refined"))                       # the config's refine_steps: 4
    assert plain.shape == refined.shape
    assert not np.array_equal(plain, refined)
    # --pivotal-steps renders by G' + each face's tuned change: the input column stays, the outputs move
    tuned = grid(str(tmp_path / "tuned"), "--refine-steps", "0", "--pivotal-steps", "3")
    assert tuned.shape == plain.shape and not np.array_equal(plain, tuned)
    cell = SIZE + 2   # image_grid's pad
    np.testing.assert_array_equal(tuned[:, :cell], plain[:, :cell])
    missing = str(tmp_path / "nowhere" / "generator.pt")
    from fstrain.cli import UsageError
    with pytest.raises(UsageError, match=r"models.base_generator: .*nowhere/generator.pt does not exist"):
        main([config(missing), str(tmp_path / "faces"), "--root", local_root, "--styles", "anime",
              "--out", str(tmp_path / "x")])
    with pytest.raises(UsageError, match=r"models.base_generator: .*nowhere/generator.pt does not exist"):
        main([config(missing), str(tmp_path / "faces"), "--root", local_root, "--styles", "anime",
              "--out", str(tmp_path / "z"), "--refine-steps", "0", "--pivotal-steps", "2"])
    # Without refinement the base G is not needed, so its absence is no error.
    assert main([config(missing), str(tmp_path / "faces"), "--root", local_root, "--styles", "anime",
                 "--out", str(tmp_path / "y"), "--refine-steps", "0"]) == 0


# ---------------------------------------------------------------------------- pivotal tuning (per-face weights)
def test_pivotal_tuning_draws_the_face_closer_and_leaves_the_generator_and_mapping_alone(lpips_alex_random):
    from fstrain.stylize import PivotalSettings, PivotalTuner

    base = tiny_generator(1)
    faces = torch.cat([portrait.tensor() for portrait in portrait_photos(2, size=SIZE, seed=9)])
    _, w_plus = _reachable_faces(base, 2, seed=10)      # codes of other faces: only the weights can close the gap
    before_state = {k: v.clone() for k, v in base.state_dict().items()}
    deltas = PivotalTuner(base, lpips_alex_random, PivotalSettings(steps=30, lr=0.01))(faces, w_plus)
    assert len(deltas) == 2
    assert all(torch.equal(v, before_state[k]) for k, v in base.state_dict().items())
    assert all(p.grad is None for p in base.parameters())
    assert not any(name.startswith("style.") for name in deltas[0])        # the mapping network never moves
    assert set(deltas[0]) == {n for n, _ in base.named_parameters() if not n.startswith("style.")}
    for i, delta in enumerate(deltas):
        tuned = tiny_generator(1)
        add_delta(tuned, delta)
        with torch.no_grad():
            l1_before = (base.synthesis(w_plus[i:i + 1]) - faces[i:i + 1]).abs().mean()
            l1_after = (tuned.synthesis(w_plus[i:i + 1]) - faces[i:i + 1]).abs().mean()
        assert l1_after < 0.8 * l1_before, (i, l1_before, l1_after)
    with pytest.raises(ValueError, match="at least one step"):
        PivotalTuner(base, lpips_alex_random, PivotalSettings(steps=0))
    with pytest.raises(ValueError, match="share one resolution"):
        PivotalTuner(base, lpips_alex_random, PivotalSettings(steps=1))(faces[:, :, :16, :16], w_plus)


def test_pivotal_delta_of_a_face_does_not_depend_on_its_batch(lpips_alex_random):
    from fstrain.stylize import PivotalSettings, PivotalTuner

    base = tiny_generator(1)
    faces = torch.cat([portrait.tensor() for portrait in portrait_photos(3, size=SIZE, seed=11)])
    _, w_plus = _reachable_faces(base, 3, seed=12)
    tuner = PivotalTuner(base, lpips_alex_random, PivotalSettings(steps=5, lr=0.01))
    together, alone = tuner(faces, w_plus)[1], tuner(faces[1:2], w_plus[1:2])[0]
    for name in together:
        torch.testing.assert_close(alone[name], together[name], rtol=0, atol=1e-6)
    assert max(d.abs().max() for d in together.values()) > 1e-3


def test_stylizer_renders_each_face_by_its_own_generator_plus_delta(stylizer: Stylizer, faces: torch.Tensor,
                                                                     lpips_alex_random):
    from fstrain.stylize import DeltaRenderer, PivotalSettings, PivotalTuner

    tuner = PivotalTuner(tiny_generator(1), lpips_alex_random, PivotalSettings(steps=4, lr=0.01))
    tuning = Stylizer(stylizer.encoder, stylizer.generators, tuner=tuner)
    assert stylizer.pivots(faces, stylizer.encode(faces)) is None         # no tuner: G' as it is
    w_plus = tuning.encode(faces)
    pivots = tuning.pivots(faces, w_plus)
    assert len(pivots) == 3
    cartoon = stylizer.generator("cartoon")
    before = {k: v.clone() for k, v in cartoon.state_dict().items()}
    general = tuning.general(w_plus, "cartoon", pivots)
    assert all(torch.equal(v, before[k]) for k, v in cartoon.state_dict().items())     # G' itself untouched
    for i in (0, 2):
        moved = tiny_generator(1)                       # the cartoon G' (same seed), plus face i's change
        add_delta(moved, pivots[i])
        torch.testing.assert_close(general[i:i + 1], moved.synthesis(w_plus[i:i + 1]), rtol=1e-4, atol=1e-5)
    assert (general - tuning.general(w_plus, "cartoon")).abs().max() > 1e-4
    zero = [{name: torch.zeros_like(d) for name, d in pivots[0].items()}] * 3
    torch.testing.assert_close(DeltaRenderer(cartoon).render(w_plus, zero),
                               torch.cat([cartoon.synthesis(w_plus[i:i + 1]) for i in range(3)]))
    # multimodal and reference render through the same per-face weights
    multimodal = tuning.multimodal(w_plus, "cartoon", k=tuning.n_latent, psi=0.7, n=2, seed=0, pivots=pivots)
    torch.testing.assert_close(multimodal[:, 1], general)
    mixed_codes = tuning.multimodal_codes(w_plus, "cartoon", k=2, psi=0.7, n=2, seed=0)
    mixed = tuning.multimodal(w_plus, "cartoon", k=2, psi=0.7, n=2, seed=0, pivots=pivots)
    for sample in range(2):         # face j's sample i is face j's code mix rendered by G' + face j's change
        torch.testing.assert_close(mixed[:, sample], tuning.render(mixed_codes[:, sample], "cartoon", pivots))
    assert (mixed[:, 0] - mixed[:, 1]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="3 codes but 2 pivotal deltas"):
        tuning.general(w_plus, "anime", pivots[:2])
