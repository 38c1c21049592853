"""Pseudo-pairs on tiny random models (CPU): level 2 lowers L_sem, shards round-trip and re-render P exactly,
reruns resume per shard, stale shards (another G*, dataset or setting) are rebuilt and say why, and missing inputs
give clear errors."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from support.portraits import style_images

from fstrain import layout, provenance
from fstrain.data import shards, storage
from fstrain.models.checkpoints import load_generator, save_generator
from fstrain.pairs import (PairsError, load_pair_models, make_pairs, pairs_for_batch, read_pairs,
                           run_baseline_generator)
from fstrain.pairs.levels import embed_level1, optimise_level2
from fstrain.settings import PairsConfig, PipelineConfig
from fstrain.stylize.images import LABEL_STRIP, decode_png, from_uint8, to_uint8

SIZE = 32
STYLE = "cartoon"
RUN = "r1"



@pytest.fixture(scope="module")
def baseline_uri(tiny_models, tmp_path_factory) -> str:
    """G*: the shared tiny base generator with nudged conv weights (a stand-in for the baseline fine-tune)."""
    base = load_generator(tiny_models.generator, load_discriminator=False)
    star = base.generator
    with torch.no_grad():
        rng = torch.Generator().manual_seed(1)
        for name, param in star.named_parameters():
            if "conv.weight" in name:
                param.add_(0.3 * param.std() * torch.randn(param.shape, generator=rng))
    uri = str(tmp_path_factory.mktemp("baseline") / "baseline.pt")
    return save_generator(uri, star, base.latent_avg, {"note": "test G*: perturbed tiny base generator"})


def pipeline_config(tiny_models, **pairs) -> PipelineConfig:
    settings = {"levels": [1, 2, 3], "optimise_steps": 3, "lr": 0.05, "batch_size": 2, **pairs}
    return PipelineConfig(models=tiny_models.models_config(), pairs=PairsConfig(**settings))


def cartoon_pictures(n: int, seed: int) -> list[np.ndarray]:
    """Synthetic cartoon portraits at 48 px (so the pipeline has to resize them to the generator's 32 px)."""
    return [portrait.array() for portrait in style_images("cartoon", n, size=48, seed=seed)]


def write_dataset(root: str, counts: list[int]) -> list[str]:
    """A style dataset of len(counts) shards in the ingest layout (png + json per sample); returns the keys."""
    keys = []
    prefix = layout.dataset(root, STYLE)
    with shards.ShardWriter(prefix, max_samples=counts[0], replace_existing=True) as writer:
        index = 0
        for shard_count in counts:
            for picture in cartoon_pictures(shard_count, seed=len(keys)):
                key = f"img{index:04d}"
                buffer = io.BytesIO()
                Image.fromarray(picture).save(buffer, format="PNG")
                writer.write({"__key__": key, "png": buffer.getvalue(), "json": {"source": f"{key}.png"}})
                keys.append(key)
                index += 1
    return keys


@pytest.fixture(scope="module")
def pair_models(tiny_models, baseline_uri):
    config = pipeline_config(tiny_models)
    return load_pair_models(config, root="/nonexistent-root", levels=[1, 2, 3], baseline_generator_uri=baseline_uri)


def test_level2_reaches_lower_semantic_loss_than_level1(pair_models):
    images = from_uint8(np.stack([np.asarray(Image.fromarray(p).resize((SIZE, SIZE))) for p in cartoon_pictures(3, 5)]))
    z1, _ = embed_level1(pair_models.encoder_zplus, pair_models.base_generator, images)
    result = optimise_level2(pair_models.generator_star, z1, images, pair_models.semantic_loss, steps=12, lr=0.05)
    star = pair_models.generator_star

    def l_sem(z_plus: torch.Tensor) -> torch.Tensor:   # recomputed independently of the optimiser's bookkeeping
        with torch.no_grad():
            return pair_models.semantic_loss(star.synthesis(star.get_latent(z_plus)), images)

    level1, level2 = l_sem(z1), l_sem(result.z_plus)
    assert torch.allclose(level1, result.loss_initial, atol=1e-5)
    assert torch.allclose(level2, result.loss_final, atol=1e-5)
    assert torch.all(level2 < level1), (level1, level2)
    assert float(level2.mean()) < 0.9 * float(level1.mean())
    # G* is left untouched: no gradients requested or accumulated.
    assert all(p.grad is None for p in star.parameters())


def test_pairs_for_batch_levels_and_codes(pair_models):
    pixels = np.stack([np.asarray(Image.fromarray(p).resize((SIZE, SIZE))) for p in cartoon_pictures(2, 9)])
    # 8 steps: on these tiny random nets Adam's first step overshoots (L_sem 0.18 -> 0.31 for "a") before it descends.
    made = pairs_for_batch(pair_models, ["a", "b"], pixels, [1, 2, 3], style=STYLE, optimise_steps=8, lr=0.05)
    assert sorted(made) == [1, 2, 3]
    base = pair_models.base_generator
    for level, samples in made.items():
        assert [s.key for s in samples] == ["a", "b"]
        for sample in samples:
            assert sample.meta["level"] == level and sample.meta["source_key"] == sample.key
            assert sample.w_plus.shape == (base.n_latent, base.style_dim) and sample.w_plus.dtype == np.float32
            assert (sample.z_plus is None) == (level == 3)
            assert np.array_equal(sample.style_image, pixels[[s.key for s in samples].index(sample.key)])
    # Level 1: w1+ is the base mapping of z1+, layer by layer.
    z1 = torch.from_numpy(np.stack([s.z_plus for s in made[1]]))
    w1 = torch.from_numpy(np.stack([s.w_plus for s in made[1]]))
    assert torch.allclose(base.get_latent(z1), w1, atol=1e-5)
    # Level 2: L_sem(G*(z+), S) recomputed here at the stored z2+ and at z1+ is what the metadata records, and
    # the optimisation lowered it for every sample by a clear margin (keeping the best iterate alone cannot).
    star = pair_models.generator_star
    z2 = torch.from_numpy(np.stack([s.z_plus for s in made[2]]))
    with torch.no_grad():
        def l_sem(z_plus: torch.Tensor) -> torch.Tensor:
            rendered = star.synthesis(star.get_latent(z_plus), randomize_noise=False)
            return pair_models.semantic_loss(rendered, from_uint8(pixels))
        initial, final = l_sem(z1), l_sem(z2)
    assert torch.allclose(initial, torch.tensor([s.meta["l_sem_initial"] for s in made[2]]), atol=1e-5)
    assert torch.allclose(final, torch.tensor([s.meta["l_sem_final"] for s in made[2]]), atol=1e-5)
    assert torch.all(final < 0.9 * initial), (initial, final)   # measured: 0.18 -> 0.13, 0.20 -> 0.12


@pytest.mark.parametrize("root_kind", ["local", "s3"])
def test_make_pairs_shards_round_trip_and_rerender_exactly(root_kind, request, tiny_models, baseline_uri, pair_models):
    root = request.getfixturevalue("local_root" if root_kind == "local" else "s3_root")
    keys = write_dataset(root, [3, 2])
    config = pipeline_config(tiny_models)
    progress = []
    summary = make_pairs(config, style=STYLE, root=root, run_id=RUN, baseline_generator_uri=baseline_uri,
                         progress=lambda done, total, info: progress.append((done, total)))
    assert progress == [(1, 2), (2, 2)]
    assert summary["shards_written"] == 2 and summary["shards_skipped"] == 0
    assert summary["samples"] == {"1": 5, "2": 5, "3": 5}
    assert summary["l_sem_final_mean"] < summary["l_sem_initial_mean"]

    base = pair_models.base_generator
    for level in (1, 2, 3):
        prefix = layout.pairs(root, RUN, STYLE, level)
        assert prefix == storage.join(root, "runs", RUN, STYLE, "pairs", f"level{level}")   # scoped to the run
        assert [storage.basename(u) for u in shards.list_shards(prefix)] == ["shard-000000.tar", "shard-000001.tar"]
        samples = list(read_pairs(prefix))
        assert [s.key for s in samples] == keys
        for sample in samples:
            assert sample.meta["level"] == level and sample.meta["style"] == STYLE
            assert set(sample.meta["generators"]) >= {"base_generator"}
            assert (sample.z_plus is None) == (level == 3)
            if sample.z_plus is not None:   # the stored w+ is the base mapping of the stored z+
                w_from_z = base.get_latent(torch.from_numpy(sample.z_plus)[None])[0]
                assert torch.allclose(w_from_z, torch.from_numpy(sample.w_plus), atol=1e-5)
        # Re-render P from the stored w+ with the base G and its stored noise: exactly the same 8-bit pixels.
        stored = np.stack([s.pseudo_photo for s in samples])
        with torch.no_grad():
            rerendered = np.stack([to_uint8(base.synthesis(torch.from_numpy(s.w_plus)[None]))[0] for s in samples])
            batched = to_uint8(base.synthesis(torch.from_numpy(np.stack([s.w_plus for s in samples]))))
        assert np.array_equal(rerendered, stored)
        # In a batch (as training renders) grouped convs round differently: at most one 8-bit level apart.
        assert np.abs(batched.astype(int) - stored.astype(int)).max() <= 1
        # S is the dataset image at the generator's resolution.
        assert stored.shape == (5, SIZE, SIZE, 3) and samples[0].style_image.shape == (SIZE, SIZE, 3)

    sheet = decode_png(storage.read_bytes(summary["contact_sheet"]))
    # rows S | P1 | P2 | P3 under a header strip that names the columns
    assert sheet.shape == (LABEL_STRIP + 5 * (SIZE + 2) + 2, 4 * (SIZE + 2) + 2, 3)
    assert storage.read_json(layout.pairs_summary(root, RUN, STYLE))["samples"] == summary["samples"]

    # A rerun that reuses every shard keeps the summary's figures (it once overwrote them with zeros and None).
    rerun = make_pairs(config, style=STYLE, root=root, run_id=RUN, baseline_generator_uri=baseline_uri)
    assert (rerun["shards_written"], rerun["shards_skipped"]) == (0, 2)
    kept = ("samples", "l_sem_initial_mean", "l_sem_final_mean", "skipped_samples", "sha256")
    assert {k: rerun[k] for k in kept} == {k: summary[k] for k in kept}
    assert storage.read_json(layout.pairs_summary(root, RUN, STYLE))["l_sem_final_mean"] == \
        pytest.approx(summary["l_sem_final_mean"])


def test_make_pairs_resumes_per_shard(local_root, tiny_models, pair_models):
    write_dataset(local_root, [2, 2])
    config = pipeline_config(tiny_models, levels=[1, 3])
    first = make_pairs(config, style=STYLE, root=local_root, run_id=RUN, models=pair_models)
    assert first["shards_written"] == 2
    level1 = layout.pairs(local_root, RUN, STYLE, 1)
    kept = storage.read_bytes(storage.join(level1, "shard-000000.tar"))
    storage.delete(storage.join(level1, "shard-000001.tar"))      # as if the job died before this shard

    second = make_pairs(config, style=STYLE, root=local_root, run_id=RUN, models=pair_models)
    assert (second["shards_written"], second["shards_skipped"]) == (1, 1)
    assert second["samples_written"] == {"1": 2, "3": 0}           # only the missing level of the missing shard
    assert second["samples"] == first["samples"] == {"1": 4, "3": 4}   # the summary describes every shard
    assert storage.read_bytes(storage.join(level1, "shard-000000.tar")) == kept
    assert len(list(read_pairs(level1))) == 4

    third = make_pairs(config, style=STYLE, root=local_root, run_id=RUN, models=pair_models)
    assert (third["shards_written"], third["shards_skipped"]) == (0, 2)
    assert third["samples"] == first["samples"] and third["samples_written"] == {"1": 0, "3": 0}
    assert storage.read_json(layout.pairs_summary(local_root, RUN, STYLE))["samples"] == {"1": 4, "3": 4}


def test_missing_inputs_are_clear_errors(local_root, tiny_models, baseline_uri):
    config = pipeline_config(tiny_models)
    with pytest.raises(PairsError, match=r"datasets/cartoon: no dataset shards .* fstrain.ingest"):
        make_pairs(config, style=STYLE, root=local_root, run_id=RUN, baseline_generator_uri=baseline_uri)
    with pytest.raises(PairsError, match="level 2 optimises against the baseline fine-tune G"):
        load_pair_models(config, root=local_root, levels=[2], baseline_generator_uri=None)
    with pytest.raises(PairsError, match="subset of 1,2,3"):
        make_pairs(config, style=STYLE, root=local_root, run_id=RUN, levels="1,4")


def test_cli_writes_levels_1_and_3(local_root, tiny_models, tmp_path, capsys):
    import json

    from fstrain.cli import run_command
    from fstrain.pairs.__main__ import main

    write_dataset(local_root, [2])
    config_path = tmp_path / "pairs.yaml"
    t = tiny_models
    config_path.write_text(
        "models:\n"
        f"  base_generator: {t.generator}\n  encoder_wplus: {t.encoder_wplus}\n"
        f"  encoder_zplus: {t.encoder_zplus}\n  identity: {t.identity}\n"
        f"  lpips_backbone: {t.lpips_backbone}\n  lpips_net: {t.lpips_net}\n"
        "pairs:\n  batch_size: 2\n")
    run = ["--style", STYLE, "--root", local_root, "--run-id", RUN]
    assert main([str(config_path), *run, "--levels", "1,3"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["samples"] == {"1": 2, "3": 2}
    assert f"pairs {STYLE} images paired: 2image" in captured.err, captured.err    # the per-image progress bar
    assert storage.exists(layout.pairs_contact_sheet(local_root, RUN, STYLE))
    # Level 2 when the run has no baseline G*: a clear message and a non-zero exit, nothing written.
    assert run_command(main, [str(config_path), *run, "--levels", "2"]) == 2     # usage error, fstrain.cli
    err = capsys.readouterr().err
    assert f"run {RUN!r} has no baseline G*" in err and "train the baseline first" in err
    assert not storage.exists(layout.pairs(local_root, RUN, STYLE, 2))


def test_corrupt_style_image_is_reported_by_name_and_the_rest_paired(local_root, tiny_models, pair_models):
    prefix = layout.dataset(local_root, STYLE)
    good = cartoon_pictures(2, seed=3)
    with shards.ShardWriter(prefix, max_samples=10) as writer:
        for i, picture in enumerate(good):
            buffer = io.BytesIO()
            Image.fromarray(picture).save(buffer, format="PNG")
            writer.write({"__key__": f"good{i}", "png": buffer.getvalue(), "json": {}})
        writer.write({"__key__": "broken", "png": b"\x89PNG truncated", "json": {}})
    summary = make_pairs(pipeline_config(tiny_models, levels=[1, 3]), style=STYLE, root=local_root, run_id=RUN,
                         models=pair_models)
    assert summary["samples"] == {"1": 2, "3": 2}
    assert [(s["key"], s["shard"].endswith("shard-000000.tar")) for s in summary["skipped_samples"]] == \
        [("broken", True)]
    assert [s.key for s in read_pairs(layout.pairs(local_root, RUN, STYLE, 3))] == ["good0", "good1"]
    rerun = make_pairs(pipeline_config(tiny_models, levels=[1, 3]), style=STYLE, root=local_root, run_id=RUN,
                       models=pair_models)
    assert rerun["shards_skipped"] == 1 and rerun["skipped_samples"] == summary["skipped_samples"]


def _retrain(star_uri: str, seed: int) -> str:
    """Overwrite G* with a differently nudged copy (as retraining the baseline would); returns its sha256."""
    loaded = load_generator(star_uri, load_discriminator=False)
    with torch.no_grad():
        rng = torch.Generator().manual_seed(seed)
        for name, param in loaded.generator.named_parameters():
            if "conv.weight" in name:
                param.add_(0.1 * param.std() * torch.randn(param.shape, generator=rng))
    save_generator(star_uri, loaded.generator, loaded.latent_avg, {"note": f"retrained G*, seed {seed}"})
    return provenance.sha256_uri(star_uri)


def test_retrained_baseline_rebuilds_its_pairs_and_says_why(local_root, tiny_models, baseline_uri):
    write_dataset(local_root, [2])
    config = pipeline_config(tiny_models, levels=[1, 2])
    star = run_baseline_generator(local_root, RUN, STYLE)           # the run's own G*, found without --baseline
    storage.write_bytes(star, storage.read_bytes(baseline_uri))
    old_sha = provenance.sha256_uri(star)
    lines: list[str] = []
    first = make_pairs(config, style=STYLE, root=local_root, run_id=RUN, log=lines.append)
    assert first["samples"] == {"1": 2, "2": 2} and lines == [] and first["rebuilt"] == []
    level2 = storage.join(layout.pairs(local_root, RUN, STYLE, 2), "shard-000000.tar")
    record = storage.read_json(layout.shard_provenance(level2))["inputs"]
    assert record["baseline_generator"] == old_sha and record["settings"]["optimise_steps"] == 3
    assert record["dataset_shard"] == provenance.sha256_uri(
        storage.join(layout.dataset(local_root, STYLE), "shard-000000.tar"))

    # Unchanged inputs: everything reused, nothing decoded, nothing logged.
    kept = storage.read_bytes(level2)
    again = make_pairs(config, style=STYLE, root=local_root, run_id=RUN, log=lines.append)
    assert (again["shards_written"], again["shards_skipped"], lines) == (0, 1, [])
    assert again["sha256"] == first["sha256"]

    # Retrain the baseline: level 2 (made from G*) is rebuilt and the log says why; level 1 (not from G*) is kept.
    new_sha = _retrain(star, seed=5)
    level1 = storage.join(layout.pairs(local_root, RUN, STYLE, 1), "shard-000000.tar")
    level1_bytes = storage.read_bytes(level1)
    rebuilt = make_pairs(config, style=STYLE, root=local_root, run_id=RUN, log=lines.append)
    assert lines == [f"pairs for {STYLE} rebuilt: baseline generator changed ({old_sha[:8]}… → {new_sha[:8]}…) "
                     f"[level2/shard-000000.tar]"]
    assert rebuilt["samples_written"] == {"1": 0, "2": 2} and rebuilt["samples"] == {"1": 2, "2": 2}
    assert rebuilt["rebuilt"] == [lines[0][len("pairs for cartoon rebuilt: "):]]
    assert storage.read_bytes(level2) != kept and storage.read_bytes(level1) == level1_bytes
    assert storage.read_json(layout.shard_provenance(level2))["inputs"]["baseline_generator"] == new_sha
    assert rebuilt["sha256"]["level2"] != first["sha256"]["level2"]
    assert rebuilt["sha256"]["level1"] == first["sha256"]["level1"]

    # A changed setting of level 2 and a changed dataset are named too; a vanished dataset shard's pairs go.
    lines.clear()
    make_pairs(pipeline_config(tiny_models, levels=[1, 2], optimise_steps=4), style=STYLE, root=local_root,
               run_id=RUN, log=lines.append)
    assert lines == [f"pairs for {STYLE} rebuilt: settings.optimise_steps changed (3 → 4) [level2/shard-000000.tar]"]
    write_dataset(local_root, [1, 1])
    lines.clear()
    make_pairs(config, style=STYLE, root=local_root, run_id=RUN, log=lines.append)
    assert len(lines) == 2 and all(line.startswith(f"pairs for {STYLE} rebuilt: dataset shard changed (")
                                   for line in lines)
    assert lines[0].endswith(") [level1/shard-000000.tar]")
    assert lines[1].endswith("; settings.optimise_steps changed (4 → 3) [level2/shard-000000.tar]")
    write_dataset(local_root, [2])
    lines.clear()
    shrunk = make_pairs(config, style=STYLE, root=local_root, run_id=RUN, log=lines.append)
    assert [storage.basename(u) for u in shrunk["removed"]] == ["shard-000001.tar", "shard-000001.tar"]
    assert [storage.basename(u) for u in shards.list_shards(layout.pairs(local_root, RUN, STYLE, 1))] == \
        ["shard-000000.tar"]


def test_pairs_of_another_run_are_never_reused(local_root, tiny_models, pair_models):
    """Pairs belong to the run whose G* made them: a second run builds its own instead of finding the first's."""
    write_dataset(local_root, [2])
    config = pipeline_config(tiny_models, levels=[1])
    make_pairs(config, style=STYLE, root=local_root, run_id="first", models=pair_models)
    second = make_pairs(config, style=STYLE, root=local_root, run_id="second", models=pair_models)
    assert second["shards_written"] == 1
    assert second["outputs"]["1"] == layout.pairs(local_root, "second", STYLE, 1)
