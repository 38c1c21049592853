"""cluster.study: Toonify layer swap, and the quick study end to end on a local Ray with tiny random models."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from fstrain.data import storage
from fstrain.models.checkpoints import load_generator
from fstrain.stylize.layer_swap import DIRECTIONS, key_resolution, layer_swap, swap_resolutions

REPO = Path(__file__).resolve().parents[1]


def test_layer_swap_takes_low_and_high_layers_from_the_named_models(tiny_models):
    base = load_generator(tiny_models.generator, load_discriminator=False).generator
    styled = load_generator(tiny_models.generator, load_discriminator=False).generator
    with torch.no_grad():
        for p in styled.parameters():
            p.add_(1.0)
    assert swap_resolutions(32) == [4, 8, 16]
    for direction in DIRECTIONS:
        swapped = layer_swap(base, styled, 8, direction)
        low, high = (base, styled) if direction == "structure_from_base" else (styled, base)
        for key, value in swapped.state_dict().items():
            resolution = key_resolution(key)
            expected = base if resolution is None else low if resolution <= 8 else high
            assert torch.equal(value, expected.state_dict()[key]), (direction, key)
    # Both halves are used: the swap differs from either source.
    w = base.get_latent(torch.randn(2, base.style_dim, generator=torch.Generator().manual_seed(0)))
    w_plus = w.unsqueeze(1).repeat(1, base.n_latent, 1)
    images = {name: g.synthesis(w_plus, randomize_noise=False) for name, g in
              (("base", base), ("styled", styled), ("swap", layer_swap(base, styled, 8, "structure_from_base")))}
    assert not torch.allclose(images["swap"], images["base"]) and not torch.allclose(images["swap"], images["styled"])
    with pytest.raises(ValueError, match="direction"):
        layer_swap(base, styled, 8, "sideways")
    with pytest.raises(ValueError, match="swap resolution 32"):
        layer_swap(base, styled, 32, "structure_from_base")


def _random_evaluation_nets(models: Path) -> None:
    """A RANDOM world image reader (FID features + attribute heads), a RANDOM evaluation identity net and a RANDOM
    evaluation LPIPS, listed in models.json's `evaluation` section as fstrain.world.pretrain lists its evaluation
    nets."""
    import shutil
    from fstrain.models.reader import ImageReader, save_reader

    heads = {"hair_style": 6, "glasses": 2, "bangs": 2, "eye_colour": 6, "face_shape": 3, "painted_skin": 3,
             "painted_hair": 3, "domain": 6}
    torch.manual_seed(0)
    save_reader(str(models / "eval_features.pth"), ImageReader((8, 16), heads, input_size=32))
    shutil.copy(models / "identity.pth", models / "eval_identity.pth")
    shutil.copy(models / "lpips_alex_backbone_RANDOM.pth", models / "eval_lpips.pth")
    for name in ("eval_features.pth", "eval_identity.pth", "eval_lpips.pth"):
        (models / f"{name}.json").write_text(json.dumps({"random_init": True}))
    manifest = json.loads((models / "models.json").read_text())
    manifest["evaluation"] = {"inception_weights": {"file": "eval_features.pth"},
                              "identity": {"file": "eval_identity.pth", "kind": "arcface"},
                              "lpips_backbone": {"file": "eval_lpips.pth", "net": "alex"}}
    (models / "models.json").write_text(json.dumps(manifest))


def _study_config(tmp_path: Path, root: str) -> Path:
    config = yaml.safe_load((REPO / "configs" / "study.yaml").read_text())
    config["pipeline"] = str(REPO / "configs" / "tiny_five_styles.yaml")
    config["quick"]["pipeline"] = ""
    config["pair_levels"] = [1, 3]
    config["swap_resolutions"] = [8]
    config["evaluation"]["batch_size"] = 8
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_quick_study_trains_every_row_evaluates_against_ground_truth_and_reruns_nothing(ray_local, tmp_path, capsys):
    from cluster.demo import prepare_world
    from cluster.study import main
    from fstrain.models.perceptual import load_lpips
    from fstrain.models.psp import load_encoder
    from fstrain.study.evaluation import TestSet, render_test_images, stylize_all, _mean_lpips

    root, out = str(tmp_path / "root"), str(tmp_path / "report")
    prepare_world(root, images_per_style=8, styles=("cartoon",))
    config = _study_config(tmp_path, root)
    _random_evaluation_nets(tmp_path / "root" / "models")

    assert main([str(config), "--root", root, "--out", out, "--quick", "--styles", "cartoon"]) == 0
    capsys.readouterr()
    record = json.loads(Path(out, "study.json").read_text())

    # Structure: every Table 4 row, both Toonify directions, the pair levels and the base G, all measured.
    rows = record["aggregate"]["cartoon"]
    expected = {"baseline", "sc", "pc", "sc+pc", "sc+pc@1", "sc+pc@3", "base G",
                "toonify:structure_from_base@8", "toonify:structure_from_style@8"}
    assert set(rows) == expected
    for row in expected:
        for metric in ("fid", "perceptual", "gt_perceptual", "gt_features", "gt_identity", "gt_attribute",
                       "retrieval_top1", "diversity"):
            assert rows[row][metric]["n"] == 1 and np.isfinite(rows[row][metric]["mean"]), (row, metric)
    assert record["complete"] and record["quick"] and record["seeds"] == [0]
    assert record["default_pair_level"] == {"cartoon": 3}
    instruments = {i["role"]: i for i in record["instruments"]}
    assert {role: i["status"] for role, i in instruments.items()} == {
        "FID feature net": "RANDOM", "perceptual net": "RANDOM", "identity net": "RANDOM", "attribute reader": "RANDOM"}
    assert instruments["identity net"]["uri"].endswith("eval_identity.pth")       # "auto" took models.json's
    assert instruments["attribute reader"]["uri"].endswith("eval_features.pth")
    md = Path(out, "study.md").read_text()
    assert "QUICK RUN" in md and "WARNING: at least one instrument has RANDOM weights" in md
    assert "one seed: no claim" in json.dumps(record["paper_ordering"]) and "Only 1 seed" in md
    for figure in record["figures"]:
        assert Path(out, f"{figure}.png").exists()
    grid = record["grids"]["cartoon"]
    assert grid["columns"] == ["photo", "ground truth", "baseline", "sc", "pc", "sc+pc",
                               "toonify:structure_from_base@8", "toonify:structure_from_style@8"]
    with Image.open(grid["uri"]) as image:
        assert image.width > image.height          # 3 identities x 8 columns
    assert record["table3"]["cartoon"]["ours"]["training_s"]["mean"] > 0

    # Every number came from a real run: recompute GT perceptual distance and perceptual distance of +SC&PC
    # from the saved generator, the W+ encoder and the held-out renders.
    evaluation = record["evaluations"][0]
    generator = load_generator(evaluation["generators"]["sc+pc"], load_discriminator=False).generator
    encoder = load_encoder(str(Path(root, "models", "encoder_wplus.pt")), space="w+")
    lpips = load_lpips(str(Path(root, "models", "lpips_alex_backbone_RANDOM.pth")), net="alex")
    images = render_test_images(TestSet(**evaluation["test_set"]))
    outputs, _ = stylize_all(encoder, generator, images.photos, 8, torch.device("cpu"))
    assert _mean_lpips(lpips, outputs, images.truths, 8, "cpu") == pytest.approx(
        rows["sc+pc"]["gt_perceptual"]["mean"], rel=1e-5)
    assert _mean_lpips(lpips, images.photos, outputs, 8, "cpu") == pytest.approx(
        rows["sc+pc"]["perceptual"]["mean"], rel=1e-5)
    # The level-1 variant is its own fine-tune on other pairs, so it measures differently from +SC&PC (level 3).
    assert rows["sc+pc@1"]["gt_perceptual"]["mean"] != rows["sc+pc"]["gt_perceptual"]["mean"]
    assert rows["sc+pc@3"]["gt_perceptual"]["mean"] == rows["sc+pc"]["gt_perceptual"]["mean"]

    # A rerun skips every finished cell and reports the same numbers.
    assert main([str(config), "--root", root, "--out", out, "--quick", "--styles", "cartoon"]) == 0
    rerun_log = capsys.readouterr().out
    assert "done in" not in rerun_log.replace("already done", "")
    assert rerun_log.count("already done; skipping") == len(record["cells"])
    again = json.loads(Path(out, "study.json").read_text())
    assert again["aggregate"] == record["aggregate"]

    # A model file replaced in place makes the cells that read it stale, and only those; an edited pipeline config
    # trains under another run id instead of resuming the old config's fine-tunes.
    import dataclasses
    from cluster.study import CELL_MARKER, build_cells, seed_config, seed_run_id
    from fstrain.config import load_config
    from fstrain.settings import PipelineConfig
    from fstrain.study.settings import load_study_config, quick_variant
    study = quick_variant(load_study_config(str(config)))
    pipeline = load_config(study.pipeline, PipelineConfig)

    def stale_cells() -> set[str]:
        cells = build_cells(study, pipeline, root=root, styles=["cartoon"], quick=True)
        return {key for key, cell in cells.items()
                if storage.read_json(storage.join(cell.folder, CELL_MARKER))["fingerprint"] != cell.fingerprint}

    assert stale_cells() == set()
    identity = Path(root, "models", "identity.pth")     # read by L_sem's fine-tunes and by level-2 pairs
    original = identity.read_bytes()
    identity.write_bytes(original + b"retrained")
    try:   # not the baseline, not +PC (its pairs' rebuild reaches it through the pairs cell's finish time)
        assert stale_cells() == {"s0/cartoon/pairs", "s0/cartoon/sc", "s0/cartoon/sc+pc", "s0/cartoon/sc+pc@1"}
    finally:
        identity.write_bytes(original)
    edited = dataclasses.replace(pipeline, train=dataclasses.replace(pipeline.train, lambda_sem=2.0))
    assert seed_run_id(study, 0, seed_config(edited, study, 0, root, quick=True)) != \
        seed_run_id(study, 0, seed_config(pipeline, study, 0, root, quick=True))

    # A study that asks for no pair-level table makes no pair-level claim; the commit given at the start is kept.
    import dataclasses
    from fstrain.config import load_config
    from fstrain.settings import PipelineConfig
    from fstrain.study.report import write_report
    from fstrain.study.settings import load_study_config, quick_variant
    study = dataclasses.replace(quick_variant(load_study_config(str(config))), pair_levels=[])
    no_levels = write_report(str(tmp_path / "no-levels"), study=study, evaluations=record["evaluations"],
                             cells=record["cells"], root=root, quick=True, wall_s=1.0,
                             pipeline=load_config(study.pipeline, PipelineConfig), commit="c0ffee")
    assert no_levels["best_pair_level"] == {} and no_levels["commit"] == "c0ffee"
    assert "Pair level" not in Path(tmp_path, "no-levels", "study.md").read_text()


def test_auto_instruments_are_the_listed_evaluation_nets_else_the_pipelines_labelled(tiny_models, tmp_path):
    import dataclasses
    import shutil
    from fstrain.config import load_config
    from fstrain.settings import PipelineConfig
    from fstrain.study.instruments import resolve_instruments
    from fstrain.study.settings import StudyEvaluationConfig

    root = tmp_path / "root"
    shutil.copytree(tiny_models.root, root / "models")
    pipeline = load_config(str(REPO / "configs" / "tiny_five_styles.yaml"), PipelineConfig)
    auto = StudyEvaluationConfig()
    fallback = resolve_instruments(auto, pipeline, str(root))
    assert fallback.feature_net is None and fallback.attribute_reader is None     # tiny config: no FID weights
    assert fallback.identity == str(root / "models" / "identity.pth") and not fallback.identity_dedicated
    assert fallback.lpips.endswith("lpips_alex_backbone_RANDOM.pth") and not fallback.lpips_dedicated
    _random_evaluation_nets(root / "models")
    listed = resolve_instruments(auto, pipeline, str(root))
    assert listed.feature_net == listed.attribute_reader == str(root / "models" / "eval_features.pth")
    assert listed.identity == str(root / "models" / "eval_identity.pth") and listed.identity_dedicated
    assert listed.lpips == str(root / "models" / "eval_lpips.pth") and listed.lpips_dedicated
    chosen = resolve_instruments(dataclasses.replace(auto, identity="none", feature_net="models/x.pth"), pipeline,
                                 str(root))
    assert chosen.identity is None and chosen.feature_net == str(root / "models" / "x.pth")


def test_attribute_reader_alone_is_the_listed_evaluation_reader_or_a_clear_error(tiny_models, tmp_path):
    import shutil
    from fstrain.config import load_config
    from fstrain.settings import PipelineConfig
    from fstrain.study.instruments import load_attribute_reader

    root = tmp_path / "root"
    shutil.copytree(tiny_models.root, root / "models")
    pipeline = load_config(str(REPO / "configs" / "tiny_five_styles.yaml"), PipelineConfig)
    with pytest.raises(FileNotFoundError, match=f"{root}/models has no evaluation attribute reader"):
        load_attribute_reader(pipeline, str(root), torch.device("cpu"))
    _random_evaluation_nets(root / "models")
    reader = load_attribute_reader(pipeline, str(root), torch.device("cpu"))
    assert reader.random_init and reader.kinds["glasses"] == "categorical"
    read = reader(torch.zeros(3, 3, 32, 32))
    assert read["glasses"].shape == (3, 2) and read["hair_style"].shape == (3, 6)


def test_cli_reports_config_errors_without_a_traceback(tmp_path, capsys):
    from cluster.study import main
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipeline: nowhere.yaml\n")
    assert main([str(bad), "--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "nowhere.yaml does not exist" in capsys.readouterr().err
    assert main([str(REPO / "configs" / "study.yaml"), "--root", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--styles", "watercolour"]) == 2
    assert "watercolour" in capsys.readouterr().err
    assert main([str(REPO / "configs" / "study.yaml"), "--root", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--seeds", "a,b"]) == 2
    assert "--seeds" in capsys.readouterr().err
    err = _study_cli_error(tmp_path, capsys, "  identity: models/eval_identity.pth\n")
    assert "evaluation.identity" in err and "does not exist" in err and "Traceback" not in err


def _study_cli_error(root, capsys, evaluation: str) -> str:
    """cluster.study on the tiny pipeline with this `evaluation:` block, over `root`: exit status 2, its stderr."""
    from cluster.study import main
    study = root / "study.yaml"
    study.write_text(f"pipeline: {REPO / 'configs' / 'tiny_five_styles.yaml'}\nevaluation:\n{evaluation}")
    assert main([str(study), "--root", str(root), "--out", str(root / "o")]) == 2
    return capsys.readouterr().err


def test_cli_names_a_missing_model_that_only_some_cells_read(tiny_models, tmp_path, capsys):
    """The identity net is read by L_sem's fine-tunes and level-2 pairs, not by the baseline: it is still checked
    before any cell is scheduled, with a message naming the key, not found hours in (or as a traceback)."""
    import shutil
    shutil.copytree(tiny_models.root, tmp_path / "models")
    (tmp_path / "models" / "identity.pth").unlink()
    err = _study_cli_error(tmp_path, capsys, "  feature_net: none\n  identity: none\n"
                                             "  lpips_backbone: models/lpips_alex_backbone_RANDOM.pth\n"
                                             "  attribute_reader: none\n")
    assert "models.identity" in err and "does not exist" in err and "Traceback" not in err


def test_ground_truth_fidelity_reads_the_evaluation_feature_net_zero_for_the_truth_itself():
    """gt_features: 1 - cos of the shipped evaluation feature net's features; 0 when the output is the truth,
    larger for another person than for the same person in another view."""
    from fstrain.metrics import load_inception
    from fstrain.models.perceptual import load_lpips
    from fstrain.study.evaluation import ground_truth_fidelity
    from fstrain.study.instruments import Instruments
    from fstrain.world.splits import HELDOUT, render_identities

    assets = REPO / "assets" / "world64"
    instruments = Instruments(extractor=load_inception(str(assets / "eval_features.pth")),
                              lpips=load_lpips(str(assets / "lpips_alex_backbone.pth"), net="alex"),
                              identity=None, attributes=None)
    truths = render_identities(HELDOUT, 12, 1, "anime", 64, first_view=1000).tensor()
    same_people = render_identities(HELDOUT, 12, 1, "anime", 64, first_view=1001).tensor()
    cpu = torch.device("cpu")
    itself = ground_truth_fidelity(truths, truths, instruments, 6, cpu)
    other_view = ground_truth_fidelity(same_people, truths, instruments, 6, cpu)
    other_people = ground_truth_fidelity(same_people.roll(1, 0), truths, instruments, 6, cpu)
    assert itself["gt_features"] == pytest.approx(0.0, abs=1e-5)
    assert itself["gt_perceptual"] == pytest.approx(0.0, abs=1e-5)
    assert 0 < other_view["gt_features"] < other_people["gt_features"], (other_view, other_people)
    assert itself["gt_identity"] is None and itself["gt_attribute"] is None       # nets not given: not measured
    # diversity: the truths are as varied as themselves; one picture for everyone (a collapsed G') reads 0.
    assert itself["diversity"] == pytest.approx(1.0)
    collapsed = ground_truth_fidelity(truths[:1].expand_as(truths).clone(), truths, instruments, 6, cpu)
    assert collapsed["diversity"] == pytest.approx(0.0, abs=1e-6)
    assert 0.5 < other_people["diversity"] < 2.0          # the same people in another view: about as varied


def test_mean_pairwise_distance_is_one_minus_cosine_over_distinct_pairs():
    from fstrain.study.evaluation import diversity_ratio, mean_pairwise_distance

    assert mean_pairwise_distance(torch.eye(3)) == pytest.approx(1.0)              # orthogonal: cos 0 for each pair
    pair = torch.tensor([[1.0, 0.0], [1.0, 1.0]])                                  # one pair, cos 45 degrees
    assert mean_pairwise_distance(pair) == pytest.approx(1 - 2 ** -0.5)
    assert diversity_ratio(pair, torch.eye(2)) == pytest.approx(1 - 2 ** -0.5)
    with pytest.raises(ValueError, match="at least 2"):
        mean_pairwise_distance(torch.ones(1, 4))


def test_one_feature_pass_per_image_set_gives_the_same_fid_and_gt_features_as_separate_passes():
    """measure_generator extracts the outputs' features once for FID and gt_features, and evaluate_rows the truths'
    once for every row: the figures must equal those of separate, independent passes over the right images."""
    from fstrain.metrics import FeatureStatistics, extract_features, frechet_distance_between, load_inception
    from fstrain.models.checkpoints import load_generator
    from fstrain.models.perceptual import load_lpips
    from fstrain.models.psp import load_encoder
    from fstrain.study.evaluation import (TestImages, feature_statistics, ground_truth_fidelity, image_features,
                                          measure_generator, stylize_all)
    from fstrain.study.instruments import Instruments
    from fstrain.world.splits import HELDOUT, render_identities

    assets = REPO / "assets" / "world64"
    extractor = load_inception(str(assets / "eval_features.pth"))
    instruments = Instruments(extractor=extractor, lpips=load_lpips(str(assets / "lpips_alex_backbone.pth"),
                                                                    net="alex"), identity=None, attributes=None)
    g = load_generator(str(assets / "generator.pt")).generator.eval()
    encoder = load_encoder(str(assets / "encoder_wplus.pt"), space="w+")
    photos = render_identities(HELDOUT, 10, 1, "photo", 64, first_view=1000).tensor()
    truths = render_identities(HELDOUT, 10, 1, "cartoon", 64, first_view=1000).tensor()
    reference = render_identities(HELDOUT, 10, 1, "cartoon", 64, first_identity=10, first_view=1000).tensor()
    images = TestImages(photos, truths, reference, [str(i) for i in range(10)])
    cpu = torch.device("cpu")
    reference_stats = feature_statistics(image_features(extractor, reference, 4, cpu))
    row, outputs = measure_generator(g, base=g, encoder=encoder, images=images, instruments=instruments,
                                     reference_stats=reference_stats, lambda_id=0.1, semantic_samples=2, seed=0,
                                     batch_size=4, device=cpu, is_base=True,
                                     truth_features=image_features(extractor, truths, 4, cpu))
    assert torch.equal(outputs, stylize_all(encoder, g, photos, 4, cpu)[0])
    separate = FeatureStatistics(extractor.dim)
    for i in range(0, 10, 3):
        separate.update(extract_features(extractor, outputs[i:i + 3]))
    reference_separate = FeatureStatistics(extractor.dim).update(extract_features(extractor, reference))
    assert row["fid"] == pytest.approx(frechet_distance_between(separate, reference_separate), rel=1e-6)
    assert row["gt_features"] == pytest.approx(ground_truth_fidelity(outputs, truths, instruments, 3,
                                                                     cpu)["gt_features"], rel=1e-6)
    assert row["gt_features"] > 0.01      # outputs are not the truths: a swapped feature set would read 0
