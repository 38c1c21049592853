"""One Ray job trains every style at once.

    ray job submit --address http://HEAD:8265 --working-dir . -- python -m cluster.train configs/five_styles.yaml
    python -m cluster.train CONFIG [--root URI] [--styles a,b,...] [--run-id ID] [--local]   # --local: Ray here

For every style, in parallel, the paper's DAG (folders from fstrain.layout; each holds its stage's stage.json):
    baseline   G* = fine-tune(G), adversarial loss only          <root>/runs/<run>/<style>/baseline/
    pairs      (S, P1..P3, codes) from E_z+, G*, E_w+            <root>/runs/<run>/<style>/pairs/level{1,2,3}/
    styled     G' = fine-tune(G) with L_sem and/or L_pair        <root>/runs/<run>/<style>/<constrained mode>/
    publish    G'.g_ema in rosinality layout                     <root>/styles/<style>/generator.pt
Each stage is a Ray task with the style's resources (`cluster.gpus_per_style`, `cluster.cpus_per_style`); a stage
whose worker dies is retried and resumes from its checkpoint in storage; a resubmitted job with the same run id
skips finished stages whose inputs are unchanged: each stage's marker records the sha256 of the configured models it
reads (through fstrain.models.hub) and of the earlier stages' products. A replaced base generator retrains the
baseline G* (log: `[cartoon] baseline rerun: base generator changed (3fa2… → 91bc…)`), which rebuilds the pairs
(`pairs for cartoon rebuilt: baseline generator changed …`) and reruns styled and publish; the pairs and the
published style are rebuilt only where their recorded sha256 inputs differ. The scheduling itself lives in
cluster.pipeline.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
from typing import Any, Callable, Sequence

from cluster.pipeline import Stage, StageContext, StageInputs, Summary, run_styles
from fstrain import layout, preflight, provenance
from fstrain.cli import EXIT_USAGE, UsageError, add_debug_flag, run_command
from fstrain.config import ConfigError, load_config
from fstrain.data import storage
from fstrain.settings import PipelineConfig

STAGES = ("baseline", "pairs", "styled", "publish")


def stage_inputs(config: PipelineConfig, keys: Sequence[str],
                 settings: Callable[[str], dict[str, Any]] | None = None) -> StageInputs:
    """What a stage is made from besides earlier stages' products: the sha256 of the configured models
    (`models.<key>`) it reads, through the model hub (fetched once per machine, `models.sha256` pins verified), and
    `settings(style)`, the config values that shape its output. The driver compares them with the stage's marker, so
    an edited config reruns the stages it shapes (and says which keys changed) instead of reusing stale outputs."""
    def inputs(root: str, run_id: str, style: str) -> dict[str, Any]:
        from fstrain.models.hub import ModelHub
        hub = ModelHub(config.models, root)
        return {**{key: hub.sha256(key) for key in keys}, **(settings(style) if settings else {})}
    return inputs


def fine_tune_stage_settings(config: PipelineConfig, mode: str, steps: int) -> Callable[[str], dict[str, Any]]:
    """A fine-tune stage's settings: what its mode learns from (fstrain.train.loop.fine_tune_settings) and its step
    count, apart, so that more steps continue the run and any other change restarts it."""
    def settings(style: str) -> dict[str, Any]:
        from fstrain.train.loop import fine_tune_settings
        return {"settings": fine_tune_settings(config, style, mode), "steps": steps}
    return settings


def pairs_stage_settings(config: PipelineConfig) -> Callable[[str], dict[str, Any]]:
    """The pairs stage's settings: each level's sample settings (its shards record the same, shard by shard)."""
    def settings(style: str) -> dict[str, Any]:
        from fstrain.pairs.build import level_settings
        return {"settings": {f"level {level}.{key}": value for level in pair_levels(config)
                             for key, value in level_settings(config, level).items()}}
    return settings


def pair_levels(config: PipelineConfig) -> list[int]:
    """The levels the pairs stage builds: the configured ones and those the constrained fine-tunes train on."""
    return sorted(set(config.pairs.levels) | {config.train.pair_level} | set(config.train.pair_level_by_style.values()))


def stage_models(config: PipelineConfig, stage: str) -> list[str]:
    """The `models.*` keys a stage reads: "pairs" the configured pair levels' networks, a fine-tune mode
    ("baseline", "sc", "pc", "sc+pc") its G and loss nets. A stage's done-marker records their sha256."""
    if stage == "pairs":
        from fstrain.pairs.build import level_networks
        return level_networks(config, pair_levels(config), configured_only=True)
    return fine_tune_models(config, stage)


def fine_tune_models(config: PipelineConfig, mode: str) -> list[str]:
    """The `models.*` keys a fine-tune of `mode` reads: G, and the loss nets its terms use."""
    from fstrain.train.resources import mode_terms
    use_sem, use_pair = mode_terms(mode)
    keys = ["base_generator"] + (["lpips_backbone"] if use_sem or use_pair else [])
    return keys + (["identity"] if use_sem and config.train.lambda_id > 0 else [])

def _report_losses(ctx: StageContext):
    """A run_finetune progress callback that forwards (step, total, total loss) to the job's progress board."""
    def report(step: int, total: int, losses: dict[str, float]) -> None:
        ctx.report(step, total, losses.get("g_total"))
    return report


def _quiet_step_bars() -> None:
    """Inside a Ray task the driver prints one progress line per style; per-step tqdm bars would flood the log."""
    os.environ["TQDM_DISABLE"] = "1"


def _fine_tune(config: PipelineConfig, ctx: StageContext, *, mode: str, steps: int | None) -> dict[str, Any]:
    from fstrain.train import run_finetune
    from fstrain.train.checkpointing import latest_checkpoint

    _quiet_step_bars()
    # Record a resume before training, so the progress board shows it while the stage runs.
    found = latest_checkpoint(layout.mode_run(ctx.root, ctx.run_id, ctx.style, mode))
    if found is not None:
        ctx.resumed(found[0])
    # The driver reran this stage because its inputs or settings changed: checkpoints of another config start over.
    result = run_finetune(config, style=ctx.style, mode=mode, root=ctx.root, run_id=ctx.run_id, steps=steps,
                          progress=_report_losses(ctx), restart_on_config_change=True)
    return {"mode": mode, "generator": result["generator"], "final_step": result["final_step"],
            "sha256": {"generator": provenance.sha256_uri(result["generator"])},
            "resumed_from": result["resumed_from"], "skipped_samples": result.get("skipped_samples"),
            "metrics": result.get("metrics") or {}}


def baseline_stage(config: PipelineConfig):
    def baseline(ctx: StageContext) -> dict[str, Any]:
        steps = config.cluster.baseline_steps or None
        return _fine_tune(config, ctx, mode="baseline", steps=steps)
    return baseline


def pairs_stage(config: PipelineConfig):
    def pairs(ctx: StageContext) -> dict[str, Any]:
        from fstrain.pairs import make_pairs

        _quiet_step_bars()
        def report(done: int, total: int, info: dict) -> None:
            ctx.report(done, total, info.get("l_sem_final_mean") if isinstance(info, dict) else None)

        return make_pairs(config, style=ctx.style, root=ctx.root, run_id=ctx.run_id, levels=pair_levels(config),
                          baseline_generator_uri=ctx.previous["baseline"]["generator"], progress=report,
                          log=lambda line: print(f"[{ctx.style}] {line}", flush=True))
    return pairs


def styled_stage(config: PipelineConfig):
    def styled(ctx: StageContext) -> dict[str, Any]:
        return _fine_tune(config, ctx, mode=config.cluster.constrained_mode, steps=None)
    return styled


def publish_stage(config: PipelineConfig):
    def publish(ctx: StageContext) -> dict[str, Any]:
        from fstrain.train.checkpointing import publish_generator

        mode = config.cluster.constrained_mode
        dest = publish_generator(layout.mode_run(ctx.root, ctx.run_id, ctx.style, mode),
                                 layout.published_generator(ctx.root, ctx.style),
                                 log=lambda line: print(f"[{ctx.style}] {line}", flush=True))
        return {"published_uri": dest, "sha256": {"generator": provenance.sha256_uri(dest)},
                "metrics": ctx.previous["styled"].get("metrics", {})}
    return publish


def style_stages(config: PipelineConfig) -> list[Stage]:
    """The four stages of one style, each marking its done-ness in the folder of its outputs with the models it
    read; publish only copies files, so it asks for one CPU and no GPU."""
    mode = config.cluster.constrained_mode
    baseline_steps = config.cluster.baseline_steps or config.train.steps
    return [Stage("baseline", baseline_stage(config),
                  folder=lambda root, run_id, style: layout.mode_run(root, run_id, style, "baseline"),
                  inputs=stage_inputs(config, stage_models(config, "baseline"),
                                      fine_tune_stage_settings(config, "baseline", baseline_steps))),
            Stage("pairs", pairs_stage(config), folder=layout.pairs,
                  inputs=stage_inputs(config, stage_models(config, "pairs"), pairs_stage_settings(config))),
            Stage("styled", styled_stage(config),
                  folder=lambda root, run_id, style: layout.mode_run(root, run_id, style, mode),
                  inputs=stage_inputs(config, stage_models(config, mode),
                                      fine_tune_stage_settings(config, mode, config.train.steps))),
            Stage("publish", publish_stage(config), resources={"num_cpus": 1, "num_gpus": 0},
                  folder=lambda root, run_id, style: layout.published_style(root, style))]


def style_resources(config: PipelineConfig) -> dict[str, Any]:
    return {"num_gpus": config.cluster.gpus_per_style, "num_cpus": config.cluster.cpus_per_style}


def train_styles(config: PipelineConfig, *, root: str, run_id: str, styles: list[str] | None = None,
                 stages: list[Stage] | None = None, log=None) -> Summary:
    """Run every style's DAG in parallel on the current Ray (a local one is started when none is up)."""
    styles = list(styles or config.styles)
    config = dataclasses.replace(config, root=root)
    kwargs = {} if log is None else {"log": log}
    return run_styles(styles, stages or style_stages(config), root=root, run_id=run_id,
                      resources_per_style=style_resources(config), max_retries=config.cluster.max_retries,
                      progress_interval_s=config.cluster.progress_interval_s, **kwargs)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cluster.train", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="pipeline YAML (local path or s3:// URI), e.g. configs/five_styles.yaml")
    parser.add_argument("--root", help="storage root (local dir or s3://bucket/prefix); default: the config's root")
    parser.add_argument("--styles", help="comma-separated subset of the config's styles")
    parser.add_argument("--run-id", help="default: <config name>-<hash of the config>, so a resubmission resumes")
    parser.add_argument("--local", action="store_true",
                        help="start a Ray on this machine; without it the job runs on $RAY_ADDRESS (set by `ray job "
                             "submit`) and refuses to start when none is given")
    add_debug_flag(parser)
    return parser.parse_args(argv)


def ray_target(local: bool) -> str:
    """Where the DAG will run, said before anything is scheduled: never a silent local Ray in place of a cluster."""
    import ray

    address = os.environ.get("RAY_ADDRESS", "")
    if local:
        return "a local Ray on this machine (--local)"
    if address:
        preflight.ray_reachable(address, "RAY_ADDRESS")
        return f"the Ray cluster at {address} (RAY_ADDRESS)"
    if ray.is_initialized():                       # a caller that connected itself (tests, notebooks)
        return f"the connected Ray at {ray.get_runtime_context().gcs_address}"
    raise UsageError("no Ray cluster given: submit with `ray job submit --address http://HEAD:8265 ... -- python -m "
                     "cluster.train ...`,\nor set RAY_ADDRESS, or pass --local to start a Ray on this machine")


def connect_ray(local: bool) -> None:
    """Start the local Ray that --local asked for; otherwise the first Ray call joins RAY_ADDRESS (or the caller's)."""
    if local:
        import ray

        ray.init(address="local")


def main(argv: list[str] | None = None) -> int:
    from fstrain.train.__main__ import default_run_id

    args = parse_args(argv)
    try:
        config = load_config(args.config, PipelineConfig)   # choices and ranges (fstrain.settings) checked here
        root = args.root or config.root
        if not root:
            raise ConfigError(f"{args.config}: no storage root: set `root:` in the config or pass --root URI")
        styles = [s.strip() for s in args.styles.split(",") if s.strip()] if args.styles else config.styles
        unknown = sorted(set(styles) - set(config.styles))
        if unknown:
            close = difflib.get_close_matches(unknown[0], config.styles, n=1)
            raise ConfigError(f"{args.config}: styles {unknown} are not in the config's styles {config.styles}"
                              f"{f' (did you mean {close[0]!r}?)' if close else ''}")
        # Preflight: storage, every style's dataset, the models the DAG reads, the Ray cluster; before any task.
        preflight.storage_usable(root, "--root", write=True)
        for style in styles:
            preflight.dataset_exists(root, style, flag="--styles")
        keys = {"base_generator", "lpips_backbone", *stage_models(config, "pairs")}
        preflight.models_exist(config, root, sorted(keys), args.config)
        run_id = args.run_id or default_run_id(args.config)
        target = ray_target(args.local)
    except (ConfigError, UsageError, storage.StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"training styles {', '.join(styles)} as run {run_id} under {root} on {target}", flush=True)
    connect_ray(args.local)
    summary = train_styles(config, root=root, run_id=run_id, styles=styles)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(run_command(main))
