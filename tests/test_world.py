"""fstrain.world instruments: identity splits, the loaders' new layouts, verification maths, and the pretraining
command end to end at a tiny budget (every instrument beats its random-weights row on held-out identities)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fstrain.models.registry import WeightsMismatchError
from fstrain.world.splits import EVAL, HELDOUT, TRAIN, render_batch, render_identities


def test_identity_sets_are_disjoint_people_and_batches_are_reproducible():
    people = {s.name: [s.identity(k) for k in range(50)] for s in (TRAIN, EVAL, HELDOUT)}
    keys = {name: {json.dumps({k: v for k, v in p.to_dict().items() if k != "identity_id"}) for p in ps}
            for name, ps in people.items()}
    assert not keys["train"] & keys["heldout"] and not keys["eval"] & keys["heldout"] and not keys["train"] & keys["eval"]
    a = render_identities(HELDOUT, 3, 2, "photo", 32, pose="jitter")
    b = render_batch(HELDOUT, [0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 0, 1], "photo", 32, pose="jitter")
    assert np.array_equal(a.images, b.images) and a.images.dtype == np.uint8
    assert not np.array_equal(a.images[0], a.images[1])            # two views of one person differ
    x = a.tensor()
    assert x.shape == (6, 3, 32, 32) and -1 <= float(x.min()) and float(x.max()) <= 1
    with pytest.raises(ValueError, match="unknown domain"):
        render_batch(HELDOUT, [0], [0], "oil", 32)


def test_verification_scores_perfect_and_chance_embeddings():
    from fstrain.world.identity import verify
    ids = np.repeat(np.arange(60), 3)
    perfect = torch.nn.functional.one_hot(torch.from_numpy(ids), 60).float()
    scores = verify(perfect + 0.01 * torch.randn(len(ids), 60, generator=torch.Generator().manual_seed(0)), ids, 0)
    assert scores["verification_accuracy"] == 1.0 and scores["tar_at_far_1e-3"] == 1.0
    chance = verify(torch.randn(len(ids), 32, generator=torch.Generator().manual_seed(1)), ids, 0)
    assert 0.4 < chance["verification_accuracy"] < 0.6 and chance["tar_at_far_1e-3"] < 0.05


def test_reader_file_loads_as_fid_features_and_mismatched_keys_are_named(tmp_path):
    from fstrain.metrics import load_inception
    from fstrain.models.reader import ImageReader, ReaderFeatures, save_reader
    net = ImageReader((8, 16), {"glasses": 2}, input_size=32)
    save_reader(str(tmp_path / "reader.pth"), net, half=True)
    features = load_inception(str(tmp_path / "reader.pth"))
    assert isinstance(features, ReaderFeatures) and features.dim == 16 and not features.random_init
    out = features(torch.rand(3, 3, 64, 64) * 2 - 1)
    assert out.shape == (3, 16)
    state = torch.load(tmp_path / "reader.pth", weights_only=True)
    state["trunk.0.weight"] = state["trunk.0.weight"][:4]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(WeightsMismatchError, match="trunk"):
        load_inception(str(tmp_path / "broken.pth"))


def test_lpips_loader_uses_heads_stored_in_the_trunk_file(tmp_path):
    from fstrain.models.perceptual import load_lpips
    from fstrain.world.perceptual import new_lpips, save_perceptual
    model = new_lpips(0)
    for i, lin in enumerate(model.lins):
        lin.model[-1].weight.data.fill_(0.5 + i)
    save_perceptual(str(tmp_path / "alex.pth"), model, {})
    loaded = load_lpips(str(tmp_path / "alex.pth"), net="alex")
    assert [float(lin.model[-1].weight.mean()) for lin in loaded.lins] == [0.5, 1.5, 2.5, 3.5, 4.5]
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.allclose(loaded(x, x.flip(0)), model.half().float()(x, x.flip(0)), rtol=1e-2, atol=1e-4)


def test_lpips_heads_beyond_float16_range_survive_saving_and_broken_heads_are_refused(tmp_path):
    from fstrain.models.perceptual import EMBEDDED_HEADS_PREFIX, load_lpips
    from fstrain.world.perceptual import new_lpips, save_perceptual
    model = new_lpips(0)
    for lin in model.lins:
        lin.model[-1].weight.data.fill_(1e5)            # a collapsed trunk rescaled: over float16's 65504
    save_perceptual(str(tmp_path / "alex.pth"), model, {})
    loaded = load_lpips(str(tmp_path / "alex.pth"), net="alex")
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert float(loaded(x, x).abs().max()) == 0.0 and float(loaded(x, x.flip(0)).min()) > 0
    state = torch.load(tmp_path / "alex.pth", weights_only=True)
    state[f"{EMBEDDED_HEADS_PREFIX}lin2.model.1.weight"][0, 0] = float("inf")
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(WeightsMismatchError, match=r"non-finite values in \['lin2"):
        load_lpips(str(tmp_path / "broken.pth"), net="alex")


def test_attributes_kept_counts_glasses_wearers_and_hair_styles_separately():
    """The E_w+ table's attribute columns: glasses kept among wearers only, not added among the others."""
    from fstrain.world.report import attributes_kept
    glasses_logits = torch.tensor([[0., 1.], [1., 0.], [1., 0.], [0., 1.], [1., 0.]])   # read: yes no no yes no
    hair_logits = torch.eye(6)[[0, 1, 2, 2, 5]]                                        # read: 0 1 2 2 5
    truth = {"glasses": torch.tensor([1, 1, 0, 0, 0]), "hair_style": torch.tensor([0, 1, 2, 3, 4])}
    kept = attributes_kept({"glasses": glasses_logits, "hair_style": hair_logits}, truth)
    assert kept == {"glasses_kept": 0.5, "glasses_not_added": 0.6667, "hair_style_kept": 0.6, "glasses_wearers": 2}
    nobody = attributes_kept({"glasses": glasses_logits, "hair_style": hair_logits},
                             {"glasses": torch.zeros(5, dtype=torch.long), "hair_style": truth["hair_style"]})
    assert nobody["glasses_kept"] is None and nobody["glasses_wearers"] == 0


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """The pretraining command itself at a tiny budget (32 px; 45 s: at 30 s G sometimes ended no nearer the photos
    than a random G), without the autoencoder reference. One torch
    thread, restored afterwards: the run's small ops are no slower so, and a busy second core cannot stall them."""
    from fstrain.world.pretrain import main
    out = tmp_path_factory.mktemp("world")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main([str(out), "--budget-min", "0.75", "--size", "32", "--reference-autoencoder", "none"])
    finally:
        torch.set_num_threads(threads)
    return out, json.loads((out / "instruments.json").read_text())


def _table(report, prefix):
    return next(v for k, v in report["tables"].items() if k.startswith(prefix))


def test_tiny_pretraining_instruments_beat_their_random_rows_on_heldout_identities(tiny_world):
    _, report = tiny_world
    ids = _table(report, "Identity nets")
    for net in ("identity.pth (training-loss net, IResNet)", "eval_identity.pth (evaluation net, IR-SE)"):
        assert ids[f"{net}: trained"]["verification_accuracy"] > ids[f"{net}: random weights"]["verification_accuracy"]
    assert 0.35 < ids["chance (random embeddings)"]["verification_accuracy"] < 0.65
    attrs = _table(report, "Attribute reader")
    for domain in ("photo", "cartoon", "impasto"):
        trained, random = attrs[f"trained / {domain}"], attrs[f"random / {domain}"]
        for key in ("painted_skin_error", "painted_hair_error", "face_shape_error"):
            assert trained[key] < random[key], (domain, key, trained[key], random[key])
    features = _table(report, "Evaluation feature net")["trained"]
    assert min(v for k, v in features.items() if k.startswith("photo_vs_") and k != "photo_vs_photo") \
        > features["photo_vs_photo"] and features["nearest_style_over_photo"] > 1
    g = _table(report, "Base generator")
    assert g["trained G"]["fid"] < g["random G (same architecture)"]["fid"]
    encoders = _table(report, "E_w+ reconstruction")
    rows = ("trained E_w+", "random E_w+ (same architecture, same G)", "the photos themselves (reader's ceiling)")
    assert len({encoders[r]["glasses_wearers"] for r in rows}) == 1
    assert all(0 <= encoders[r]["hair_style_kept"] <= 1 for r in rows)
    assert {"identity", "perceptual", "generator", "encoders", "reader", "eval_identity", "eval_perceptual",
            "report"} <= set(report["stages"]) and all(s["seconds"] > 0 for s in report["stages"].values())
    scales = _table(report, "Perceptual net: mean distance")
    assert set(scales["trained trunk, calibrated heads (shipped)"]["per_domain"]) == {
        "photo", "cartoon", "anime", "fantasy", "illustration", "impasto"}


def test_tiny_pretraining_folder_loads_through_the_project_loaders_and_matches_its_manifest(tiny_world):
    out, _ = tiny_world
    _check_folder(out)


def _check_folder(folder):
    from fstrain.metrics import load_inception
    from fstrain.models.checkpoints import load_generator
    from fstrain.models.identity import load_identity
    from fstrain.models.perceptual import load_lpips
    from fstrain.models.psp import load_encoder
    from fstrain.world.pretrain import verify_manifest
    assert verify_manifest(folder) == []
    models = json.loads((folder / "models.json").read_text())
    assert set(models["models"]) == {"base_generator", "encoder_wplus", "encoder_zplus", "identity", "lpips_backbone"}
    assert set(models["evaluation"]) == {"inception_weights", "identity", "lpips_backbone"}
    eval_lpips = load_lpips(str(folder / models["evaluation"]["lpips_backbone"]["file"]), net="alex")
    g = load_generator(str(folder / models["models"]["base_generator"]["file"]))
    assert g.discriminator is not None
    assert load_encoder(str(folder / "encoder_wplus.pt")).space == "w+"
    assert load_encoder(str(folder / "encoder_zplus.pt")).space == "z+"
    assert load_identity(str(folder / "identity.pth")).kind.startswith("arcface")
    assert load_identity(str(folder / "eval_identity.pth")).kind == "irse50"
    lpips = load_lpips(str(folder / "lpips_alex_backbone.pth"), net="alex")
    x = torch.rand(2, 3, g.generator.size, g.generator.size) * 2 - 1
    assert float(lpips(x, x).abs().max()) < 1e-6 and float(lpips(x, x.flip(0)).min()) > 0
    assert float(eval_lpips(x, x.flip(0)).min()) > 0
    assert not torch.allclose(eval_lpips(x, x.flip(0)), lpips(x, x.flip(0)))      # another net, not a copy
    features = load_inception(str(folder / "eval_features.pth"))
    assert features(x).shape == (2, features.dim) and not features.random_init


def test_manifest_check_names_a_changed_file(tiny_world, tmp_path):
    import shutil
    from fstrain.world.pretrain import verify_manifest
    out, _ = tiny_world
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "identity.pth").write_bytes((copy / "identity.pth").read_bytes() + b"x")
    assert [p.split(":")[0] for p in verify_manifest(copy)] == ["identity.pth"]


def _copy_of(folder, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    return copy


def _rerun_stages(folder, stages: str, *flags: str) -> None:
    """`fstrain.world.pretrain FOLDER --stages STAGES [FLAGS]` at the tiny world's budget and size, on one thread."""
    from fstrain.world.pretrain import main
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main([str(folder), "--budget-min", "0.5", "--size", "32", "--reference-autoencoder", "none",
              "--stages", stages, *flags])
    finally:
        torch.set_num_threads(threads)


def test_rerunning_one_stage_keeps_every_other_file_and_records_both_commands(tiny_world, tmp_path, capsys):
    from fstrain.world.pretrain import main, verify_manifest
    out, _ = tiny_world
    copy = _copy_of(out, tmp_path)
    before = json.loads((copy / "manifest.json").read_text())
    _rerun_stages(copy, "eval_perceptual")
    after = json.loads((copy / "manifest.json").read_text())
    assert verify_manifest(copy) == []
    changed = {name for name, entry in after["files"].items() if entry != before["files"].get(name)}
    assert "eval_lpips_alex_backbone.pth" in changed
    assert not changed & {"generator.pt", "encoder_wplus.pt", "identity.pth", "lpips_alex_backbone.pth",
                          "eval_features.pth", "eval_identity.pth"}
    assert after["command"] == before["command"]
    assert after["reruns"][0]["command"].endswith("--stages eval_perceptual")
    assert after["reruns"][0]["stages"] == ["eval_perceptual", "report"]
    report, full_run = (json.loads((folder / "instruments.json").read_text()) for folder in (copy, out))
    assert set(report["stages"]) == set(full_run["stages"])
    # a rerun at another budget (0.5 vs the full run's 0.75 min) measures on the full run's data sizes
    assert report["plan"] == full_run["plan"] and report["budget_seconds"] == full_run["budget_seconds"] == 45
    markdown = (copy / "instruments.md").read_text()
    assert "Rerun: `python -m fstrain.world.pretrain" in markdown
    made_by = {line.split("|")[1].strip(): line.split("|")[3].strip() for line in markdown.splitlines()
               if line.startswith("| ") and line.count("|") == 5}
    assert made_by["eval_perceptual"] == "rerun 1" and made_by["identity"] == "full run"
    assert after["total_seconds"] == before["total_seconds"]      # the full run's time; the rerun has its own
    assert after["reruns"][0]["budget_seconds"] > 0
    with pytest.raises(SystemExit, match="same"):
        main([str(copy), "--size", "64", "--stages", "reader"])
    with pytest.raises(SystemExit, match="does not exist"):
        main([str(tmp_path / "empty"), "--stages", "reader"])


def test_rerunning_the_encoders_stage_continues_from_the_folders_encoder(tiny_world, tmp_path):
    """A full run deletes the generator's warm-start encoder once E_w+ is trained from it, so a rerun of the
    encoders stage starts from the folder's E_w+ (not from scratch) and records which file it started from."""
    from fstrain.world.files import WARM_START_ENCODER
    from fstrain.world.pretrain import verify_manifest
    out, _ = tiny_world
    copy = _copy_of(out, tmp_path)
    assert not (copy / WARM_START_ENCODER).exists()
    before = (copy / "encoder_wplus.pt").read_bytes()
    _rerun_stages(copy, "encoders")
    report = json.loads((copy / "instruments.json").read_text())
    assert report["stages"]["encoders"]["started_from"] == "encoder_wplus.pt"
    assert (copy / "encoder_wplus.pt").read_bytes() != before
    assert verify_manifest(copy) == []


def test_rerunning_the_generator_stage_continues_its_training_and_the_encoders_follow(tiny_world, tmp_path,
                                                                                     capsys):
    """A generator rerun takes more adversarial steps from the folder's G, D and g_ema (not a fresh G), keeps the
    first run's figures in the sidecar, and the encoders rerun with it start from the encoder trained alongside."""
    from fstrain.models.checkpoints import read_checkpoint
    from fstrain.world.files import WARM_START_ENCODER
    from fstrain.world.pretrain import main, verify_manifest
    out, _ = tiny_world
    copy = _copy_of(out, tmp_path)
    with pytest.raises(SystemExit):
        main([str(copy), "--budget-min", "0.5", "--size", "32", "--stages", "generator"])
    assert "pass --stages generator,encoders" in capsys.readouterr().err
    first = json.loads((copy / "generator.pt.json").read_text())["world_generator"]
    before = read_checkpoint(str(copy / "generator.pt"))
    _rerun_stages(copy, "generator,encoders")
    after = read_checkpoint(str(copy / "generator.pt"))
    sidecar = json.loads((copy / "generator.pt.json").read_text())["world_generator"]
    (continued,) = sidecar["continued"]
    assert continued["gan_steps"] >= 1 and continued["encoder"] == "encoder_wplus.pt"
    assert sidecar["gan_steps"] == first["gan_steps"] and sidecar["warm_steps"] == first["warm_steps"]
    assert sidecar["gan_steps_total"] == first["gan_steps"] + continued["gan_steps"] == after["args"]["iter"]
    for key in ("g", "d", "g_ema"):
        assert set(after[key]) == set(before[key])
        assert any(not torch.equal(after[key][k].float(), before[key][k].float()) for k in before[key]), key
    report = json.loads((copy / "instruments.json").read_text())
    assert report["stages"]["generator"]["continued_from"] == "generator.pt"
    assert report["stages"]["encoders"]["started_from"] == WARM_START_ENCODER
    assert not (copy / WARM_START_ENCODER).exists()
    assert verify_manifest(copy) == []


def test_a_generator_rerun_at_a_new_width_trains_a_fresh_g_and_the_encoders_follow(tiny_world, tmp_path, capsys):
    """--generator-channel-max with --stages generator,encoders replaces the folder's G/D with a fresh one of that
    width (not a continuation); the shipped files load at the new width and the manifest still verifies. Asking for
    a width without retraining G is a usage error that names the fix."""
    from fstrain.models.checkpoints import load_generator
    from fstrain.world.pretrain import main, verify_manifest
    out, _ = tiny_world
    copy = _copy_of(out, tmp_path)
    with pytest.raises(SystemExit):
        main([str(copy), "--budget-min", "0.5", "--size", "32", "--stages", "encoders", "--generator-channel-max", "8"])
    assert "add generator,encoders to --stages" in capsys.readouterr().err
    before = json.loads((copy / "generator.pt.json").read_text())["world_generator"]["settings"]["channel_max"]
    _rerun_stages(copy, "generator,encoders", "--generator-channel-max", "8")
    assert before != 8
    sidecar = json.loads((copy / "generator.pt.json").read_text())["world_generator"]
    assert sidecar["settings"]["channel_max"] == 8 and "continued" not in sidecar
    generator = load_generator(str(copy / "generator.pt"), load_discriminator=True)
    assert generator.generator.channel_max == 8 and generator.generator.channels[32] == 8
    report = json.loads((copy / "instruments.json").read_text())
    assert "continued_from" not in report["stages"]["generator"]
    assert "--generator-channel-max 8" in report["reruns"][-1]["command"]
    assert verify_manifest(copy) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
def test_asking_for_a_gpu_where_there_is_none_is_a_usage_error_that_says_what_to_do(tmp_path, capsys):
    from fstrain.world.pretrain import main
    for device, expected in (("cuda", "no CUDA device torch can use; leave --device out"),
                             ("tpu", "--device must be cpu, cuda or cuda:N; got 'tpu'")):
        with pytest.raises(SystemExit):
            main([str(tmp_path / "out"), "--device", device])
        assert expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_generator_and_encoders_stages_train_on_a_gpu(tiny_world, tmp_path):
    """--device cuda: G/D and the encoders train on the GPU, the files they write load on the CPU, the report and
    manifest are rewritten and name the GPU."""
    from fstrain.models.checkpoints import load_generator
    from fstrain.models.psp import load_encoder
    from fstrain.world.pretrain import verify_manifest
    out, _ = tiny_world
    copy = _copy_of(out, tmp_path)
    _rerun_stages(copy, "generator,encoders", "--generator-channel-max", "16", "--device", "cuda")
    generator = load_generator(str(copy / "generator.pt"), load_discriminator=True).generator
    encoder = load_encoder(str(copy / "encoder_wplus.pt"), space="w+")
    with torch.no_grad():
        images = generator.synthesis(encoder(torch.zeros(2, 3, 32, 32)))
    assert images.device.type == "cpu" and torch.isfinite(images).all()
    report = json.loads((copy / "instruments.json").read_text())
    assert "--device cuda" in report["reruns"][-1]["command"] and "GPU" in report["reruns"][-1]["machine"]
    assert verify_manifest(copy) == []


def test_calibrated_heads_keep_one_distance_scale_for_every_domain():
    """2AFC choices are scale-free, so an unconstrained fit may make one domain's people 100x nearer than
    another's (the first shipped heads did: anime people 0.003 apart, photos 1.4). The balanced fit may not."""
    from fstrain.world.perceptual import (DOMAINS, calibrate_heads, channel_differences, head_vector,
                                          make_triplets, new_lpips, parameter_scale)
    from fstrain.world.splits import TRAIN
    triplets = make_triplets(TRAIN, 120, 32, 0, parameter_scale(TRAIN, 100))
    domains = np.asarray(triplets.domain)

    def ratio(model):
        w = head_vector(model)
        d = (channel_differences(model, triplets.reference, triplets.first) @ w).numpy()
        means = [d[domains == k].mean() for k in DOMAINS]
        return max(means) / min(means)

    free, balanced = new_lpips(0), new_lpips(0)
    calibrate_heads(free, triplets, 0, steps=300, balance_weight=0.0, log=lambda m: None)
    info = calibrate_heads(balanced, triplets, 0, steps=300, log=lambda m: None)
    assert info["domain_balance"] > 0
    assert ratio(balanced) <= 3 and ratio(balanced) < ratio(free) / 5, (ratio(balanced), ratio(free))   # 2 vs 64


def test_lpips_heads_are_rescaled_to_the_target_distance_between_people():
    from fstrain.world.perceptual import TARGET_DISTANCE, new_lpips, rescale_heads
    from fstrain.world.splits import render_domain_per_identity
    data = render_domain_per_identity(HELDOUT, 12, 2, 32)
    model = new_lpips(0)
    for lin in model.lins:
        lin.model[-1].weight.data.mul_(1e-4)          # a collapsed scale, as a scale-free objective can leave it
    info = rescale_heads(model, data)
    assert info["mean_distance_before"] < 1e-2 and info["pairs"] == 6
    x, y = data.tensor()[[0, 2, 4, 6, 8, 10]], data.tensor()[[12, 14, 16, 18, 20, 22]]
    with torch.no_grad():
        distance = float(model(x, y).mean())
    assert distance == pytest.approx(TARGET_DISTANCE, rel=1e-4)


# ---------------------------------------------------------------- the committed folder (assets/world64)

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "world64"


def test_shipped_world_instruments_match_their_manifest_load_and_work_on_heldout_people():
    """The folder `make demo` installs: intact (every sha256), loadable by the project loaders, made by the
    pretraining command at 64 px, and its nets do their job on people none of them saw."""
    from fstrain.models.checkpoints import load_generator
    from fstrain.models.identity import load_identity
    from fstrain.world.identity import embed, verify
    _check_folder(ASSETS)
    manifest = json.loads((ASSETS / "manifest.json").read_text())
    assert manifest["command"].startswith("python -m fstrain.world.pretrain ") and manifest["size"] == 64
    assert sum(entry["bytes"] for entry in manifest["files"].values()) <= 30 * 2 ** 20
    photos = render_identities(HELDOUT, 8, 3, "photo", 64, pose="jitter")
    scores = verify(embed(load_identity(str(ASSETS / "identity.pth")), photos.tensor()), photos.identity_index, 0)
    assert scores["mean_positive_cosine"] > scores["mean_negative_cosine"] + 0.3, scores
    scales = _table(json.loads((ASSETS / "instruments.json").read_text()), "Perceptual net: mean distance")
    assert scales["trained trunk, calibrated heads (shipped)"]["max_over_min"] <= 3, scales
    g = load_generator(str(ASSETS / "generator.pt")).generator
    with torch.no_grad():
        faces = g([torch.randn(8, g.style_dim, generator=torch.Generator().manual_seed(0))], randomize_noise=False)[0]
    assert faces.shape == (8, 3, 64, 64) and float(faces.std(0).mean()) > 0.05      # different faces, not one blob


def test_demo_installs_the_shipped_folder_once_and_refuses_a_changed_copy(tmp_path):
    import shutil
    from cluster.demo import WorldModelsError, install_world_models
    lines: list[str] = []
    models = tmp_path / "root" / "models"
    assert install_world_models(str(models), log=lines.append)[0]
    assert (models / "generator.pt").read_bytes() == (ASSETS / "generator.pt").read_bytes()
    _check_folder(models)                                         # the copy loads as the original does
    changed, seconds = install_world_models(str(models), log=lines.append)
    assert not changed and "reusing" in lines[-1] and seconds > 60
    broken = tmp_path / "assets"
    shutil.copytree(ASSETS, broken)
    (broken / "identity.pth").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")   # an LFS pointer
    with pytest.raises(WorldModelsError, match=r"identity\.pth: sha256 .* restore the folder from git"):
        install_world_models(str(tmp_path / "other"), broken)
    assert not (tmp_path / "other").exists()
