"""fstrain.train on a tiny world (32 px random G/D, random-trunk LPIPS-Alex, tiny ArcFace, procedural style images).

Behaviour, not just "it runs": L_sem keeps G' closer to G than the baseline does, L_pair pulls G'(w+) towards S,
a run split 10+10 equals an uninterrupted 20-step run exactly, and bad inputs fail with messages naming them.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from fstrain import layout
from fstrain.config import load_config
from fstrain.data import storage
from fstrain.data.shards import ShardWriter, read_samples
from fstrain.losses import eye_band, perceptual_distance
from fstrain.models.checkpoints import load_generator
from fstrain.models.perceptual import load_lpips
from fstrain.models.stylegan2 import Generator
from fstrain.settings import PipelineConfig
from fstrain.train import DatasetError, ModelMissingError, ResumeError, publish_generator, run_finetune
from fstrain.train.checkpointing import load_checkpoint
from fstrain.train.data import ShardStream, pair_decoder, style_image_decoder
from support.tiny_models import TinyModels, make_tiny_models

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny.yaml"
SIZE = 32
STYLE = "cartoon"


# ---------------------------------------------------------------- the tiny world


def cartoon_image(seed: int, size: int = SIZE) -> bytes:
    """A flat-shaded 'cartoon face': saturated background, orange face disc, black eyes. PNG bytes."""
    rng = np.random.default_rng(seed)
    bg = tuple(int(c) for c in rng.choice([[40, 90, 220], [30, 170, 90], [200, 40, 160]]))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    cx, cy, r = size / 2 + rng.uniform(-2, 2), size / 2 + rng.uniform(-2, 2), size * rng.uniform(0.3, 0.38)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(255, 170, 60))
    for dx in (-r / 2.5, r / 2.5):
        draw.ellipse([cx + dx - 2, cy - r / 4 - 2, cx + dx + 2, cy - r / 4 + 2], fill=(0, 0, 0))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def write_models(root: Path) -> TinyModels:
    """The shared tiny random model set (fstrain.models.init) under <root>/models/, as configs/tiny.yaml expects."""
    return make_tiny_models(root / "models")


def write_style_dataset(root: Path, style: str, count: int, corrupt_keys: tuple[int, ...] = ()) -> None:
    with ShardWriter(storage.join(str(root), "datasets", style), max_samples=8) as writer:
        for i in range(count):
            png = b"this is not a png" if i in corrupt_keys else cartoon_image(i)
            writer.write({"__key__": f"{style}-{i:04d}", "png": png, "json": {"source": f"img{i}.png"}})


PAIRED_RUNS = ("behaviour", "split", "whole", "publish", "repaired")     # runs that train pc / sc+pc here


def write_pairs(root: Path, style: str, g: Generator, run_id: str, count: int = 8, seed: int = 123) -> None:
    """The run's level-3 pairs: S = a style image, w+ = a random code of the base G (broadcast over layers)."""
    with torch.no_grad():
        w = g.get_latent(torch.randn(count, g.style_dim, generator=torch.Generator().manual_seed(seed)))
    w_plus = w.unsqueeze(1).repeat(1, g.n_latent, 1).numpy().astype(np.float32)
    with ShardWriter(layout.pairs(str(root), run_id, style, 3), max_samples=8, replace_existing=True) as writer:
        for i in range(count):
            writer.write({"__key__": f"{style}-{i:04d}", "s.png": cartoon_image(1000 + i),
                          "p.png": cartoon_image(2000 + i), "w_plus.npy": w_plus[i], "json": {"level": 3}})


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train-world")
    models = write_models(root)
    write_style_dataset(root, STYLE, 24)
    for run_id in PAIRED_RUNS:
        write_pairs(root, STYLE, load_generator(models.generator).generator, run_id)
    return root



@pytest.fixture(scope="module")
def lpips_metric(world):
    return load_lpips(str(world / "models" / "lpips_alex_backbone_RANDOM.pth"), net="alex")


def tiny_config(**train_overrides) -> PipelineConfig:
    config = load_config(str(TINY_CONFIG), PipelineConfig)
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **train_overrides))


def final_generator(result: dict) -> Generator:
    return load_generator(result["generator"]).generator


@torch.no_grad()
def mean_drift(g_base: Generator, g_new: Generator, lpips_metric, n: int = 16) -> float:
    """Mean LPIPS(G(z), G'(z)) on held-out z (not the training seed's), same stored noise."""
    z = torch.randn(n, g_base.style_dim, generator=torch.Generator().manual_seed(99999))
    a, _ = g_base([z], randomize_noise=False)
    b, _ = g_new([z], randomize_noise=False)
    return perceptual_distance(lpips_metric, a, b).mean().item()


# ---------------------------------------------------------------- behaviour


BEHAVIOUR_STEPS = 20
BEHAVIOUR_LR = 0.004


@pytest.fixture(scope="module")
def baseline_run(world) -> dict:
    """G* after BEHAVIOUR_STEPS adversarial-only steps (the lambdas play no part in baseline mode)."""
    return run_finetune(tiny_config(lr=BEHAVIOUR_LR), style=STYLE, mode="baseline", root=str(world),
                        run_id="behaviour", steps=BEHAVIOUR_STEPS)


def test_semantic_constraint_keeps_styled_generator_closer_to_base(world, baseline_run, lpips_metric):
    constrained = run_finetune(tiny_config(lr=BEHAVIOUR_LR, lambda_sem=25.0), style=STYLE, mode="sc",
                               root=str(world), run_id="behaviour", steps=BEHAVIOUR_STEPS)
    base_g = load_generator(str(world / "models" / "generator.pt")).generator
    drift_baseline = mean_drift(base_g, final_generator(baseline_run), lpips_metric)
    drift_sc = mean_drift(base_g, final_generator(constrained), lpips_metric)
    # Measured here: baseline 0.134, sc 0.043 (0.006 with L_sem weighted 1000x). Same seed, data order and steps:
    # only L_sem differs.
    assert drift_baseline > 0.05
    assert drift_sc < 0.6 * drift_baseline, (drift_sc, drift_baseline)
    # ... and G' still learned the style: L_sem held it close, it did not pin it (a G' that barely moves fails).
    assert drift_sc > 0.15 * drift_baseline, (drift_sc, drift_baseline)
    # The run logged the semantic terms it optimised; the baseline did not compute them.
    assert {"sem", "sem_lpips", "sem_id", "g_adv", "d_adv"} <= set(constrained["metrics"])
    assert "sem" not in baseline_run["metrics"]


def test_eye_band_term_keeps_the_eye_band_closer_to_the_base(world, lpips_metric):
    """train.lambda_eyes: same seed, data and steps as plain SC; only the eye-band term differs."""
    plain = run_finetune(tiny_config(lr=BEHAVIOUR_LR, lambda_sem=5.0), style=STYLE, mode="sc", root=str(world),
                         run_id="eyes", steps=BEHAVIOUR_STEPS)
    eyes = run_finetune(tiny_config(lr=BEHAVIOUR_LR, lambda_sem=5.0, lambda_eyes=10.0), style=STYLE, mode="sc",
                        root=str(world), run_id="eyes-on", steps=BEHAVIOUR_STEPS)
    base_g = load_generator(str(world / "models" / "generator.pt")).generator
    z = torch.randn(16, base_g.style_dim, generator=torch.Generator().manual_seed(99999))

    @torch.no_grad()
    def band_drift(result: dict) -> float:
        a, _ = base_g([z], randomize_noise=False)
        b, _ = final_generator(result)([z], randomize_noise=False)
        return lpips_metric(eye_band(a), eye_band(b)).mean().item()

    # Measured here: 0.014 with the term, 0.161 without.
    assert band_drift(eyes) < 0.5 * band_drift(plain), (band_drift(eyes), band_drift(plain))
    assert eyes["metrics"]["sem_eyes"] > 0 and plain["metrics"]["sem_eyes"] == 0
    assert load_generator(eyes["generator"]).metadata["lambda_eyes"] == 10.0


def test_pair_supervision_pulls_renders_towards_style_images(world, baseline_run, lpips_metric):
    paired = run_finetune(tiny_config(lr=BEHAVIOUR_LR, lambda_pair=10.0), style=STYLE, mode="pc",
                          root=str(world), run_id="behaviour", steps=BEHAVIOUR_STEPS)
    decode = pair_decoder(SIZE, 8, 512)
    pairs = [decode(s) for s in read_samples(layout.pairs(str(world), "behaviour", STYLE, 3))]
    style_images = torch.stack([s for s, _ in pairs])
    w_plus = torch.stack([w for _, w in pairs])

    @torch.no_grad()
    def pair_distance(g: Generator) -> float:
        rendered, _ = g([w_plus], input_is_latent=True, randomize_noise=False)
        return perceptual_distance(lpips_metric, rendered, style_images).mean().item()

    d_baseline = pair_distance(final_generator(baseline_run))
    d_pc = pair_distance(final_generator(paired))
    # Measured here: base G ~0.19, baseline ~0.14, pc ~0.08.
    assert d_pc < 0.8 * d_baseline, (d_pc, d_baseline)
    assert "pair" in paired["metrics"]


def _state(result: dict) -> dict:
    return load_checkpoint(result["checkpoint"])


def test_resumed_run_equals_uninterrupted_run_exactly(world):
    config = tiny_config(checkpoint_every=5, sample_every=10, d_reg_every=4)
    first = run_finetune(config, style=STYLE, mode="sc+pc", root=str(world), run_id="split", steps=10)
    assert first["final_step"] == 10 and first["resumed_from"] is None
    second = run_finetune(config, style=STYLE, mode="sc+pc", root=str(world), run_id="split", steps=20)
    assert second["resumed_from"] == 10 and second["final_step"] == 20
    whole = run_finetune(config, style=STYLE, mode="sc+pc", root=str(world), run_id="whole", steps=20)

    split_state, whole_state = _state(second), _state(whole)
    for part in ("g", "g_ema", "d"):
        for key, value in whole_state[part].items():
            assert torch.equal(split_state[part][key], value), f"{part}.{key} differs after resume"
    assert split_state["data"] == whole_state["data"]
    exp_avg = whole_state["g_optim"]["state"][0]["exp_avg"]
    assert torch.equal(split_state["g_optim"]["state"][0]["exp_avg"], exp_avg)

    # The run directory shows the whole history: 20 metric lines, grids at 10 and 20, latest.json -> step 20.
    run_dir = Path(second["run_dir"])
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 21))
    assert all(r["seconds_per_step"] > 0 and "pair" in r and "sem" in r for r in lines)
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["step-000010.png", "step-000020.png"]
    assert json.loads((run_dir / "latest.json").read_text())["step"] == 20
    assert any(p.name.startswith("events.out.tfevents") for p in (run_dir / "tensorboard").iterdir())

    # Asking the finished run again does no work; asking it with another config is refused.
    again = run_finetune(config, style=STYLE, mode="sc+pc", root=str(world), run_id="split", steps=20)
    assert again["resumed_from"] == 20 and again["final_step"] == 20
    with pytest.raises(ResumeError, match="lambda_pair"):
        run_finetune(tiny_config(checkpoint_every=5, d_reg_every=4, lambda_pair=3.0), style=STYLE, mode="sc+pc",
                     root=str(world), run_id="split", steps=20)


def _assert_labelled_two_rows(grid: np.ndarray) -> None:
    """A title strip and a row-label column carrying dark text on white, beside two rows of square tiles."""
    dark = (grid.min(axis=2) < 100)
    title = dark[:16]                                                      # the title line ("step 2  cartoon ...")
    assert title.any() and not title.all(), "the title strip is blank"
    left = dark[16:, :24]                                                  # the "G(z)" / "G'(z)" column
    top_half, bottom_half = np.array_split(left, 2)
    assert top_half.any() and bottom_half.any(), "a row has no label"


def test_published_generator_is_rosinality_layout_with_metadata(world, tmp_path):
    config = tiny_config()
    calls = []
    result = run_finetune(config, style=STYLE, mode="sc+pc", root=str(world), run_id="publish", steps=2,
                          progress=lambda step, total, losses: calls.append((step, total, sorted(losses))))
    assert [(s, t) for s, t, _ in calls] == [(1, 2), (2, 2)]
    assert {"g_adv", "d_adv", "sem", "pair", "g_total"} <= set(calls[-1][2])
    raw = torch.load(result["generator"], weights_only=True)
    assert set(raw) == {"g_ema", "latent_avg"} and raw["latent_avg"].shape == (512,)
    dest = str(tmp_path / "styles" / STYLE / "generator.pt")
    publish_generator(result["run_dir"], dest)
    loaded = load_generator(dest)
    meta = loaded.metadata
    assert (meta["style"], meta["mode"], meta["steps"]) == (STYLE, "sc+pc", 2)
    assert meta["lambda_sem"] == 1.0 and meta["lambda_pair"] == 1.0 and meta["lambda_id"] == 0.1
    assert meta["lr"] == config.train.lr
    assert len(meta["base_generator_sha256"]) == 64
    # The sample grid shows G(z) over G'(z), labelled, at least 256 px wide (it was 138 x 70 px with no labels).
    grid = np.asarray(Image.open(Path(result["run_dir"]) / "samples" / "step-000002.png").convert("RGB"))
    assert grid.shape[1] >= 256
    _assert_labelled_two_rows(grid)
    # TensorBoard: the run's hyper-parameters, every loss term by name, the labelled grid.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(Path(result["run_dir"]) / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["style"].string_value == STYLE and hparams["mode"].string_value == "sc+pc"
    assert hparams["train.lambda_pair"].number_value == 1.0 and hparams["image_size"].number_value == SIZE
    assert {"loss/g_adv", "loss/d_adv", "loss/sem", "loss/pair", "loss/g_total"} <= set(events.Tags()["scalars"])
    image_tag, = events.Tags()["images"]
    assert STYLE in image_tag and events.Images(image_tag)[-1].width == grid.shape[1]
    # Provenance: the published style names what it was made from; republishing the same weights copies nothing.
    inputs = meta["inputs"]
    assert {"base_generator", "dataset", "pairs", "lpips_backbone", "identity", "styled_generator", "settings"} \
        <= set(inputs) and inputs["base_generator"] == meta["base_generator_sha256"]
    assert inputs["settings"]["steps"] == 2 and inputs["settings"]["lambda_pair"] == 1.0
    said: list[str] = []
    publish_generator(result["run_dir"], dest, log=said.append)
    assert said == [f"{dest}: already published from the same inputs; kept"]


def test_changed_pairs_restart_a_finished_run_and_republish_says_why(world, tmp_path, capsys):
    """A constrained run whose pairs were rebuilt (say from a retrained baseline) does not reuse its checkpoints."""
    config = tiny_config()
    first = run_finetune(config, style=STYLE, mode="pc", root=str(world), run_id="repaired", steps=2)
    dest = str(tmp_path / "generator.pt")
    publish_generator(first["run_dir"], dest, log=lambda line: None)
    capsys.readouterr()
    again = run_finetune(config, style=STYLE, mode="pc", root=str(world), run_id="repaired", steps=2)
    assert again["resumed_from"] == 2 and "restarted" not in capsys.readouterr().out

    g = load_generator(str(world / "models" / "generator.pt")).generator
    write_pairs(world, STYLE, g, "repaired", seed=321)     # other pairs, same names: only their content changed
    for uri in storage.list_uris(layout.pairs(str(world), "repaired", STYLE, 3), suffixes=".tar"):
        storage.write_json(layout.shard_provenance(uri), {"inputs": {"baseline_generator": "f" * 64}})
    rerun = run_finetune(config, style=STYLE, mode="pc", root=str(world), run_id="repaired", steps=2)
    assert rerun["resumed_from"] is None and rerun["final_step"] == 2
    assert f"{first['run_dir']} restarted from step 0: pairs changed (" in capsys.readouterr().out
    said: list[str] = []
    publish_generator(rerun["run_dir"], dest, log=said.append)
    assert len(said) == 1 and said[0].startswith(f"{dest} republished: pairs changed (")
    assert "fine-tuned generator changed (" in said[0]


# ---------------------------------------------------------------- data edge cases and clear failures


def test_stream_skips_and_counts_corrupt_samples(tmp_path):
    write_style_dataset(tmp_path, "broken", 4, corrupt_keys=(1,))
    stream = ShardStream(storage.join(str(tmp_path), "datasets", "broken"), style_image_decoder(SIZE), seed=0,
                         shuffle_buffer=1)
    images = stream.next_batch(3)
    expected = [style_image_decoder(SIZE)({"png": cartoon_image(i)}) for i in (0, 2, 3)]
    assert all(torch.equal(a, b) for a, b in zip(images, expected))
    assert stream.position.skipped == 1 and stream.position.offset == 4
    stream.next()          # wraps into epoch 1
    assert stream.position.epoch == 1


def test_run_with_a_corrupt_sample_finishes_and_reports_it(world):
    write_style_dataset(world, "corrupt", 6, corrupt_keys=(2,))
    result = run_finetune(tiny_config(), style="corrupt", mode="baseline", root=str(world), run_id="c", steps=3)
    assert result["final_step"] == 3
    assert result["skipped_samples"]["style"] >= 1


def test_all_corrupt_dataset_is_an_error(tmp_path):
    write_style_dataset(tmp_path, "garbage", 3, corrupt_keys=(0, 1, 2))
    stream = ShardStream(storage.join(str(tmp_path), "datasets", "garbage"), style_image_decoder(SIZE), seed=0)
    with pytest.raises(DatasetError, match=r"no readable sample .*3 corrupt samples skipped"):
        stream.next()


def test_style_images_are_decoded_upright_and_centre_cropped_like_every_other_input():
    """The training stream reads through fstrain.data.images: a phone photo's EXIF rotation is applied and a
    non-square image gives its centred square (it was read sideways and stretched)."""
    upright = np.zeros((SIZE + 16, SIZE, 3), np.uint8)          # tall: green bands around a red-over-blue square
    upright[:, :] = (0, 200, 0)
    upright[8:8 + SIZE // 2] = (220, 30, 30)
    upright[8 + SIZE // 2:8 + SIZE] = (30, 30, 220)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)   # as the camera wrote it
    exif = Image.Exif()
    exif[0x0112] = 6                                             # "rotate 90 degrees clockwise to display"
    buffer = io.BytesIO()
    stored.save(buffer, format="PNG", exif=exif)
    decoded = style_image_decoder(SIZE)({"__key__": "phone", "png": buffer.getvalue()})
    expected = torch.from_numpy(upright[8:8 + SIZE].copy()).permute(2, 0, 1).float().div(127.5).sub(1.0)
    assert torch.equal(decoded, expected)


def test_a_stale_sha256_pin_stops_training_naming_the_key_and_the_file(world):
    config = load_config(str(TINY_CONFIG), PipelineConfig)
    config = dataclasses.replace(config, models=dataclasses.replace(config.models, sha256={"base_generator": "0" * 64}))
    with pytest.raises(ModelMissingError, match=r"^models\.base_generator: .*generator\.pt: sha256 is [0-9a-f]{64}, "
                                                r"config pins 0{64}"):
        run_finetune(config, style=STYLE, mode="baseline", root=str(world), run_id="pin", steps=1)
    assert not storage.exists(layout.mode_run(str(world), "pin", STYLE, "baseline"))   # refused before any work


def test_missing_and_empty_datasets_name_the_prefix(world):
    with pytest.raises(DatasetError, match=r"no shard-\*\.tar under .*datasets/nosuchstyle"):
        run_finetune(tiny_config(), style="nosuchstyle", mode="baseline", root=str(world), run_id="x", steps=1)
    (world / "datasets" / "emptystyle").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"datasets/emptystyle"):
        run_finetune(tiny_config(), style="emptystyle", mode="baseline", root=str(world), run_id="x", steps=1)
    with pytest.raises(DatasetError, match=r"runs/x/cartoon/pairs/level1.*fstrain.pairs .*--run-id x"):
        run_finetune(tiny_config(pair_level=1), style=STYLE, mode="pc", root=str(world), run_id="x", steps=1)
    # A style's own level (train.pair_level_by_style) wins over train.pair_level, for that style only.
    per_style = tiny_config(pair_level=3, pair_level_by_style={STYLE: 2, "anime": 1})
    assert [per_style.train.level_for(s) for s in (STYLE, "anime", "impasto")] == [2, 1, 3]
    with pytest.raises(DatasetError, match=r"runs/x/cartoon/pairs/level2"):
        run_finetune(per_style, style=STYLE, mode="pc", root=str(world), run_id="x", steps=1)


def test_a_styles_own_learning_rate_drives_its_optimisers(world):
    """train.lr_by_style: that style's G and D optimisers run at its lr (D's scaled for lazy R1), others at train.lr,
    and the published generator's metadata says which."""
    from fstrain.losses import lazy_regularization_ratio
    from fstrain.train.loop import FineTuneRun

    config = tiny_config(lr_by_style={STYLE: 0.0005, "anime": 0.01})
    assert [config.train.lr_for(s) for s in (STYLE, "anime", "impasto")] == [0.0005, 0.01, config.train.lr]
    run = FineTuneRun(config, style=STYLE, mode="baseline", root=str(world), run_id="lr")
    ratio = lazy_regularization_ratio(config.train.d_reg_every)
    assert [g["lr"] for g in run.g_optim.param_groups] == [0.0005]
    assert [g["lr"] for g in run.d_optim.param_groups] == [pytest.approx(0.0005 * ratio)]
    result = run_finetune(config, style=STYLE, mode="baseline", root=str(world), run_id="lr", steps=1)
    assert load_generator(result["generator"]).metadata["lr"] == 0.0005


def test_missing_model_names_config_key_and_path(world):
    config = load_config(str(TINY_CONFIG), PipelineConfig)
    config = dataclasses.replace(config, models=dataclasses.replace(config.models, base_generator="models/nope.pt"))
    with pytest.raises(ModelMissingError, match=r"models.base_generator.*models/nope.pt"):
        run_finetune(config, style=STYLE, mode="baseline", root=str(world), run_id="x", steps=1)


# ---------------------------------------------------------------- CLI and S3


def test_cli_runs_and_reports_errors(world):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "fstrain.train", str(TINY_CONFIG), "--style", STYLE, "--mode", "baseline",
           "--root", str(world), "--steps", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["final_step"] == 2 and result["run_id"].startswith("tiny-")
    assert Path(result["generator"]).is_file()

    bad = subprocess.run(cmd[:5] + ["nosuchstyle"] + cmd[6:], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=300)
    assert bad.returncode == 2 and "datasets/nosuchstyle" in bad.stderr and "Traceback" not in bad.stderr


def test_run_on_s3_root_resumes(world, s3_bucket):
    root = f"s3://{s3_bucket}/pipeline"
    for path in sorted((world / "models").iterdir()):
        storage.upload_file(str(path), storage.join(root, "models", path.name))
    for path in sorted((world / "datasets" / STYLE).iterdir()):
        storage.upload_file(str(path), storage.join(root, "datasets", STYLE, path.name))
    config = tiny_config(checkpoint_every=1, sample_every=2)
    first = run_finetune(config, style=STYLE, mode="baseline", root=root, run_id="s3", steps=2)
    second = run_finetune(config, style=STYLE, mode="baseline", root=root, run_id="s3", steps=3)
    assert second["resumed_from"] == 2 and second["checkpoint"].startswith("s3://")
    run_dir = first["run_dir"]
    metrics = storage.read_text(storage.join(run_dir, "metrics.jsonl")).splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [1, 2, 3]
    assert storage.exists(storage.join(run_dir, "samples", "step-000002.png"))
    assert storage.list_uris(storage.join(run_dir, "tensorboard"))
    assert load_generator(second["generator"]).metadata["steps"] == 3


def test_fine_tune_settings_hold_what_a_mode_learns_from_with_per_style_values_resolved():
    from fstrain.train.loop import fine_tune_settings
    config = tiny_config(lr_by_style={STYLE: 0.0005}, pair_level_by_style={STYLE: 1}, lambda_eyes=1.0)
    both = fine_tune_settings(config, STYLE, "sc+pc")
    assert both["train.lr"] == 0.0005 and both["train.pair_level"] == 1 and both["train.lambda_eyes"] == 1.0
    assert fine_tune_settings(config, "anime", "sc+pc")["train.lr"] == config.train.lr
    assert not {"train.steps", "train.checkpoint_every", "train.lr_by_style"} & set(both)
    assert both["data.batch_size"] == config.data.batch_size
    baseline = fine_tune_settings(config, STYLE, "baseline")          # L_adv only: no lambda reruns it
    assert not any(k.startswith(("train.lambda", "train.pair_level")) for k in baseline)
    assert "train.lambda_pair" not in fine_tune_settings(config, STYLE, "sc")
    assert "train.lambda_sem" not in fine_tune_settings(config, STYLE, "pc")
