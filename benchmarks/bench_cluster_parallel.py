"""Wall time of N styles through cluster.pipeline in parallel vs one style after another; prints a table.

    python benchmarks/bench_cluster_parallel.py                                  # tiny built-in stages, local Ray
    python benchmarks/bench_cluster_parallel.py --stages bench_cluster_parallel:training_stages \
        --stages-arg configs/tiny_five_styles.yaml               # the real four stages of cluster.train
    python benchmarks/bench_cluster_parallel.py --stages pkg.mod:factory --stages-arg ARG \
        --num-gpus 1 --num-cpus 1 --root s3://bucket/bench

`--stages` names a factory `factory(arg: str | None, root: str) -> list[cluster.pipeline.Stage]`. Runs on RAY_ADDRESS when set (e.g. inside `ray job submit`), else a local Ray with
`--local-cpus`. Each mode uses its own run id, so nothing is skipped as already done.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.pipeline import Stage, StageContext, run_styles  # noqa: E402
from fstrain.data import storage  # noqa: E402

STYLES = ["cartoon", "anime", "fantasy", "illustration", "impasto"]


class TinyStage:
    """`steps` steps of a little CPU work plus a wait (standing in for a GPU step), checkpointing to storage."""

    def __init__(self, steps: int, step_s: float) -> None:
        self.steps, self.step_s = steps, step_s

    def __call__(self, ctx: StageContext) -> dict:
        checkpoint = storage.join(ctx.work_uri, "checkpoint.json")
        step, acc = 0, 0
        if storage.exists(checkpoint):
            state = storage.read_json(checkpoint)
            step, acc = state["step"], state["acc"]
            ctx.resumed(step)
        while step < self.steps:
            step += 1
            acc = sum(i * i for i in range(20_000)) % 997 + acc
            time.sleep(self.step_s)
            storage.write_json(checkpoint, {"step": step, "acc": acc})
            ctx.report(step, self.steps, loss=1.0 / step)
        return {"acc": acc, "metrics": {"steps": self.steps}}


def tiny_stages(arg: str | None, root: str) -> list[Stage]:
    steps = int(arg) if arg else 10
    return [Stage("baseline", TinyStage(steps, 0.1)), Stage("pairs", TinyStage(steps // 2, 0.1)),
            Stage("styled", TinyStage(steps, 0.1))]


def training_stages(config_path: str | None, root: str) -> list[Stage]:
    """cluster.train's stages (baseline -> pairs -> styled -> publish) for the config, on `root`; when `root` has no
    models yet, the demo's tiny models and style datasets are written there first."""
    import dataclasses

    from cluster.demo import prepare_world
    from cluster.train import style_stages
    from fstrain.config import load_config
    from fstrain.settings import PipelineConfig

    config = load_config(config_path or "configs/tiny_five_styles.yaml", PipelineConfig)
    if not storage.exists(storage.join(root, config.models.base_generator)):
        prepare_world(root, images_per_style=16, log=lambda line: None)
    return style_stages(dataclasses.replace(config, root=root))


def load_factory(dotted: str):
    module, _, name = dotted.partition(":")
    if not name:
        raise SystemExit(f"--stages must look like package.module:factory, got {dotted!r}")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default=f"{Path(__file__).stem}:tiny_stages")
    parser.add_argument("--stages-arg", default=None, help="passed to the factory (tiny_stages: steps per stage)")
    parser.add_argument("--styles", default=",".join(STYLES))
    parser.add_argument("--num-cpus", type=float, default=1.0, help="per style")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="per style")
    parser.add_argument("--local-cpus", type=int, default=os.cpu_count() or 2, help="local Ray when none is up")
    parser.add_argument("--root", default=None, help="storage root (default: a temp dir)")
    args = parser.parse_args(argv)

    import ray
    if "RAY_ADDRESS" in os.environ:
        ray.init()
    else:
        ray.init(num_cpus=args.local_cpus, include_dashboard=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                                                          str(Path(__file__).parents[1])])}})
    styles = args.styles.split(",")
    root = args.root or tempfile.mkdtemp(prefix="bench-cluster-")
    stages = load_factory(args.stages)(args.stages_arg, root)
    resources = {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus}
    quiet = lambda line: None  # noqa: E731  (the table below is the output)
    tag = uuid.uuid4().hex[:6]

    # Warm-up (untimed): Ray's first tasks start worker processes and import torch; neither mode should pay it.
    run_styles(styles[:min(len(styles), int(ray.cluster_resources().get("CPU", 1)))], stages, root=root,
               run_id=f"bench-warm-{tag}", resources_per_style=resources, log=quiet)
    t0 = time.perf_counter()
    parallel = run_styles(styles, stages, root=root, run_id=f"bench-par-{tag}", resources_per_style=resources,
                          log=quiet)
    parallel_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sequential_ok = True
    for style in styles:
        one = run_styles([style], stages, root=root, run_id=f"bench-seq-{tag}", resources_per_style=resources,
                         log=quiet)
        sequential_ok &= one.ok
    sequential_s = time.perf_counter() - t0

    resources_text = ", ".join(f"{k}={v:g}" for k, v in resources.items())
    cluster = ", ".join(f"{k}={v:g}" for k, v in sorted(ray.cluster_resources().items()) if k in ("CPU", "GPU"))
    print(f"\n{len(styles)} styles x {len(stages)} stages ({args.stages}), per style: {resources_text}; "
          f"cluster: {cluster}")
    print(f"{'mode':<12}{'wall s':>10}{'speed-up':>10}  status")
    print(f"{'sequential':<12}{sequential_s:>10.1f}{1.0:>10.2f}  {'ok' if sequential_ok else 'FAILED'}")
    print(f"{'parallel':<12}{parallel_s:>10.1f}{sequential_s / parallel_s:>10.2f}  "
          f"{'ok' if parallel.ok else 'FAILED'}")
    ray.shutdown()
    return 0 if parallel.ok and sequential_ok else 1


if __name__ == "__main__":
    sys.exit(main())
