"""The method study as one Ray job: Table 4's rows per style and seed, Toonify layer swaps, pair levels, Table 3,
all measured on held-out world identities against the world's ground-truth renders.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python -m cluster.study configs/study.yaml --root s3://bucket/fstrain --out s3://bucket/fstrain/study
    python -m cluster.study CONFIG --root URI --out URI [--seeds 0,1,2] [--styles a,b] [--quick]

Per seed s (run id `<name>-s<s>-<hash of the seed's pipeline config>`) and style, each cell a Ray task with the
style's resources (cluster section of the pipeline config), started as soon as what it needs is done, so every
fine-tune runs in parallel:
    baseline        G* = fine-tune(G), L_adv only            cluster.train's baseline stage
    pairs           pseudo-pairs from G*                      cluster.train's pairs stage (all study levels)
    sc / pc / sc+pc G' from the same base G, data and seed   cluster.train's styled stage, one per mode
    sc+pc@L         SC&PC on level-L pairs (the pair-level table), run id `<seed run id>-level<L>`
    evaluate        every row + Toonify swaps + base G on held-out identities (fstrain.study.evaluation)
Each cell leaves `study-cell.json` in its folder (fstrain.layout's folders); a rerun skips a cell whose marker
exists and whose inputs are unchanged: the markers it consumed, and the sha256 of every model file it reads (a
retrained encoder or G makes the cells that read it stale; fine-tunes then restart, as cluster.train's do). An
edited pipeline config gets other run ids, so it never resumes a fine-tune of another config.
The report (`<out>/study.md`, `study.json`, figures) is written by fstrain.study.report at the end.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import ray

from cluster.pipeline import ProgressBoard, format_duration, progress_line
from cluster.train import (baseline_stage, connect_ray, pair_levels, pairs_stage, ray_target, stage_inputs,
                           stage_models, styled_stage, style_resources)
from fstrain import layout
from fstrain.config import ConfigError, load_config
from fstrain.data import storage
from fstrain.settings import PipelineConfig
from fstrain.study.settings import ROW_MODES, StudyConfig, load_study_config, quick_variant

CELL_MARKER = "study-cell.json"


# ---------------------------------------------------------------- the cells


@dataclass
class CellContext:
    """What a cluster.train stage function reads from its context (cluster.pipeline.StageContext's fields).
    Progress goes to the board under the cell's key (`s0/cartoon/sc`), so seeds and modes keep separate lines."""
    style: str
    stage: str
    root: str
    run_id: str
    attempt: int
    previous: dict[str, dict]
    work_uri: str
    cell: str = ""
    _board: Any = field(default=None, repr=False)

    def report(self, step: int, total: int, loss: float | None = None) -> None:
        if self._board is not None:
            self._board.report.remote(self.cell, self.stage, int(step), int(total),
                                      None if loss is None else float(loss))

    def resumed(self, step: int) -> None:
        if self._board is not None:
            ray.get(self._board.resumed.remote(self.cell, self.stage, int(step)))


@dataclass
class Cell:
    """One task of the study's DAG."""
    key: str                                  # "s0/cartoon/sc+pc@1"
    seed: int
    style: str
    stage: str                                # stage name the stage function sees ("baseline", "pc", ...)
    run_id: str
    folder: str                               # where its outputs and marker live
    fn: Callable[[CellContext], dict]
    needs: list[str] = field(default_factory=list)
    fingerprint: str = ""                     # settings that, changed, make a finished cell stale
    status: str = "pending"                   # pending | ok | skipped | failed | not run
    record: dict = field(default_factory=dict)
    error: str | None = None


@ray.remote
def _run_cell(fn: Callable, ctx_fields: dict, board: Any, marker_fields: dict) -> dict:
    """Body of every cell task: run the stage function, write the marker beside its outputs."""
    attempt = ray.get(board.start.remote(ctx_fields["cell"], ctx_fields["stage"],
                                         ray.get_runtime_context().get_node_id(), os.getpid()))
    ctx = CellContext(attempt=attempt, _board=board, **ctx_fields)
    started = time.time()
    output = fn(ctx) or {}
    record = {"output": output, "run_s": time.time() - started, "finished_at": time.time(), **marker_fields}
    storage.write_json(storage.join(ctx.work_uri, CELL_MARKER), record)
    return record


def study_folder(root: str, run_id: str, style: str) -> str:
    """Where a seed's evaluation of one style lives: `runs/<run>/<style>/study/` (marker, grid strips)."""
    return storage.join(layout.style_run(root, run_id, style), "study")


def copy_pairs(source_prefix: str, dest_prefix: str) -> int:
    """Copy one level's pair shards (and provenance records) into another run; identical files already there are
    kept, others replaced (rebuilt pairs must not leave the variant training on the old ones)."""
    copied = 0
    for uri in storage.list_uris(source_prefix):
        name = uri[len(source_prefix):].lstrip("/")
        dest = storage.join(dest_prefix, name)
        data = storage.read_bytes(uri)
        if not storage.exists(dest) or storage.read_bytes(dest) != data:
            storage.write_bytes(dest, data)
            copied += 1
    return copied


def level_variant_stage(config: PipelineConfig, level: int, source_run_id: str):
    """SC&PC on level-`level` pairs in its own run: the seed run's pairs of that level are copied in first."""
    styled = styled_stage(config)

    def sc_pc_on_level(ctx) -> dict:
        source = ctx.previous["pairs"]["outputs"][str(level)]
        copied = copy_pairs(source, layout.pairs(ctx.root, ctx.run_id, ctx.style, level))
        output = styled(ctx)
        return {**output, "pair_level": level, "pairs_source_run": source_run_id, "pairs_copied": copied}
    return sc_pc_on_level


def evaluate_stage(study: StudyConfig, config: PipelineConfig, seed: int, level_runs: dict[int, str],
                   default_level: int):
    """The evaluation cell of one seed and style (fstrain.study.evaluation)."""
    def evaluate(ctx) -> dict:
        return evaluate_seed_style(study, config, seed=seed, style=ctx.style, root=ctx.root, run_id=ctx.run_id,
                                   level_runs=level_runs, default_level=default_level, folder=ctx.work_uri,
                                   progress=lambda m: print(f"[{ctx.style} s{seed}] {m}", flush=True))
    return evaluate


def evaluate_seed_style(study: StudyConfig, config: PipelineConfig, *, seed: int, style: str, root: str, run_id: str,
                        level_runs: dict[int, str], default_level: int, folder: str,
                        progress: Callable[[str], None] = lambda m: None) -> dict:
    import torch

    from fstrain.models.hub import ModelHub
    from fstrain.study.evaluation import TestSet, evaluate_rows, parameter_count, render_test_images
    from fstrain.study.instruments import load_instruments
    from fstrain.stylize.layer_swap import DIRECTIONS, layer_swap, swap_resolutions
    from fstrain.train import resources

    device = torch.device("cuda" if torch.cuda.is_available() and config.cluster.gpus_per_style > 0 else "cpu")
    hub = ModelHub(config.models, root)
    base = resources.load_base_generator(config.models, root, expected_size=config.data.image_size)
    base = base.loaded.generator.to(device).eval()
    encoder = hub.encoder("encoder_wplus", device)
    instruments = load_instruments(study.evaluation, config, root, device)
    test = TestSet.of_study(study, style, base.size)
    progress(f"rendering {test.identities} held-out identities (photo + {style}) and "
             f"{test.fid_reference_identities} FID reference renders")
    images = render_test_images(test)

    def final(run: str, mode: str) -> str:
        return layout.final_generator(layout.mode_run(root, run, style, mode))

    def loader(uri: str):
        return lambda: hub.generator_at(uri, load_discriminator=False).generator

    rows: dict[str, Callable] = {mode: loader(final(run_id, mode)) for mode in ROW_MODES}
    for level, level_run in sorted(level_runs.items()):
        rows[f"sc+pc@{level}"] = loader(final(level_run, "sc+pc"))
    baseline_uri = final(run_id, "baseline")
    valid = swap_resolutions(base.size)
    for resolution in [r for r in study.swap_resolutions if r in valid]:
        for direction in DIRECTIONS:
            rows[f"toonify:{direction}@{resolution}"] = (
                lambda d=direction, r=resolution: layer_swap(base, loader(baseline_uri)(), r, d))
    measured = evaluate_rows(rows, base=base, encoder=encoder, images=images, instruments=instruments,
                             lambda_id=study.evaluation.semantic_lambda_id,
                             semantic_samples=study.evaluation.semantic_samples, seed=seed,
                             batch_size=study.evaluation.batch_size, device=device,
                             strips_uri=storage.join(folder, "strips"), grid_identities=study.grid_identities,
                             progress=progress)
    measured["rows"][f"sc+pc@{default_level}"] = dict(measured["rows"]["sc+pc"], same_as="sc+pc")
    first = test.first_identity
    return {"seed": seed, "style": style, "run_id": run_id, "test_set": dataclasses.asdict(test),
            "test_identities": f"fstrain.world.splits.HELDOUT {first}..{first + test.identities - 1}, "
                               f"view {test.view}",
            "fid_reference": f"HELDOUT {first + test.identities}.."
                             f"{first + test.identities + test.fid_reference_identities - 1} in {style}",
            "instruments": instruments.describe(), "encoder_parameters": parameter_count(encoder),
            "default_pair_level": default_level, "swap_resolutions_valid": valid,
            "generators": {name: final(run_id, name) for name in ROW_MODES}, **measured}


# ---------------------------------------------------------------- building the DAG


def seed_run_id(study: StudyConfig, seed: int, config: PipelineConfig) -> str:
    """`<study name>-s<seed>-<hash>`: the hash is of the seed's pipeline config (step counts, loss weights, model
    URIs; not the root), so a study rerun with an edited config trains afresh instead of reusing other results."""
    from fstrain.config import config_to_dict
    settings = config_to_dict(config)
    settings.pop("root", None)
    return f"{study.name}-s{seed}-{_fingerprint(settings)[:8]}"


def seed_config(pipeline: PipelineConfig, study: StudyConfig, seed: int, root: str, *, quick: bool) -> PipelineConfig:
    """The pipeline config of one seed: its train.seed, the study's step counts and every pair level it needs."""
    train = dataclasses.replace(pipeline.train, seed=seed, steps=study.steps or pipeline.train.steps)
    if quick:
        train = dataclasses.replace(train, checkpoint_every=min(train.checkpoint_every, train.steps),
                                    sample_every=min(train.sample_every, train.steps))
    levels = sorted(set(pair_levels(pipeline)) | set(study.pair_levels) | set(study.default_pair_level.values()))
    pairs = dataclasses.replace(pipeline.pairs, levels=levels)
    if quick:
        pairs = dataclasses.replace(pairs, optimise_steps=study.quick.pair_optimise_steps)
    cluster = dataclasses.replace(pipeline.cluster, baseline_steps=study.baseline_steps or pipeline.cluster.baseline_steps)
    return dataclasses.replace(pipeline, train=train, pairs=pairs, cluster=cluster, root=root)


def instrument_identities(study: StudyConfig, pipeline: PipelineConfig, root: str) -> dict[str, str]:
    """config key -> sha256 of each evaluation net the study will use; a missing file is a ConfigError now, not
    after hours of training. Part of the evaluation cells' fingerprint: new instruments re-evaluate every cell."""
    from fstrain.study.instruments import resolve_instruments
    try:
        resolved = resolve_instruments(study.evaluation, pipeline, root)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    out = {}
    for key, uri in resolved.uris().items():
        if not storage.exists(uri):
            raise ConfigError(f"{key}: {uri} does not exist; train the world's instruments (python -m "
                              f"fstrain.world.pretrain {storage.join(root, 'models')}), give another URI, or 'none'")
        out[key] = hashlib.sha256(storage.read_bytes(uri)).hexdigest()
    return out


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def models_needed(study: StudyConfig, pipeline: PipelineConfig, root: str, quick: bool) -> list[str]:
    """Every `models.<key>` some cell reads: E_w+ (evaluation), the fine-tunes' nets (SC&PC reads every one a
    fine-tune may) and the pair levels' nets."""
    config = seed_config(pipeline, study, (study.seeds or [0])[0], root, quick=quick)
    return sorted({"encoder_wplus", *stage_models(config, "sc+pc"), *stage_models(config, "pairs")})


def build_cells(study: StudyConfig, pipeline: PipelineConfig, *, root: str, styles: list[str],
                quick: bool) -> dict[str, Cell]:
    from fstrain.config import config_to_dict

    cells: dict[str, Cell] = {}
    instruments = instrument_identities(study, pipeline, root)
    # A training cell's fingerprint is the sha256 of each model file its stage reads (cluster.train's stage inputs,
    # through the model hub): replacing a file in place makes the cells that read it stale. Hashed once here.
    first = seed_config(pipeline, study, (study.seeds or [0])[0], root, quick=quick)
    hashes = stage_inputs(first, models_needed(study, pipeline, root, quick))(root, "", "")

    def models_read(config: PipelineConfig, stage: str) -> str:
        return _fingerprint({key: hashes[key] for key in stage_models(config, stage)})

    def add(cell: Cell) -> None:
        cells[cell.key] = cell

    for seed in study.seeds:
        base_config = seed_config(pipeline, study, seed, root, quick=quick)
        run_id = seed_run_id(study, seed, base_config)
        for style in styles:
            default_level = study.default_pair_level.get(style, pipeline.train.level_for(style))
            # Every cell of this style names its level in pair_level alone, so the level variants below can set it.
            config = dataclasses.replace(base_config, train=dataclasses.replace(
                base_config.train, pair_level=default_level, pair_level_by_style={}))
            prefix = f"s{seed}/{style}"

            def mode_folder(run: str, mode: str) -> str:
                return layout.mode_run(root, run, style, mode)

            add(Cell(f"{prefix}/baseline", seed, style, "baseline", run_id, mode_folder(run_id, "baseline"),
                     baseline_stage(config), fingerprint=models_read(config, "baseline")))
            add(Cell(f"{prefix}/pairs", seed, style, "pairs", run_id, layout.pairs(root, run_id, style),
                     pairs_stage(config), needs=[f"{prefix}/baseline"], fingerprint=models_read(config, "pairs")))
            for mode in ("sc", "pc", "sc+pc"):
                mode_config = dataclasses.replace(config, cluster=dataclasses.replace(config.cluster,
                                                                                      constrained_mode=mode))
                add(Cell(f"{prefix}/{mode}", seed, style, mode, run_id, mode_folder(run_id, mode),
                         styled_stage(mode_config), needs=[] if mode == "sc" else [f"{prefix}/pairs"],
                         fingerprint=models_read(config, mode)))
            level_runs = {}
            for level in sorted(set(study.pair_levels) - {default_level}):
                level_run = f"{run_id}-level{level}"
                level_runs[level] = level_run
                level_config = dataclasses.replace(config, train=dataclasses.replace(config.train, pair_level=level))
                add(Cell(f"{prefix}/sc+pc@{level}", seed, style, "sc+pc", level_run,
                         mode_folder(level_run, "sc+pc"), level_variant_stage(level_config, level, run_id),
                         needs=[f"{prefix}/pairs"], fingerprint=models_read(config, "sc+pc")))
            trained = [k for k in cells if k.startswith(prefix + "/")]
            add(Cell(f"{prefix}/evaluate", seed, style, "evaluate", run_id, study_folder(root, run_id, style),
                     evaluate_stage(study, config, seed, level_runs, default_level), needs=trained,
                     fingerprint=_fingerprint({k: v for k, v in config_to_dict(study).items()
                                               if k not in ("seeds", "styles")}, seed, style, instruments)))
    return cells


# ---------------------------------------------------------------- running it


def _inputs_of(cell: Cell, cells: dict[str, Cell]) -> dict[str, float]:
    """What a cell consumed: each needed cell's finish time (a rerun of a needed cell makes this cell stale)."""
    return {key: cells[key].record.get("finished_at") for key in cell.needs}


def _done_record(cell: Cell, cells: dict[str, Cell]) -> dict | None:
    marker = storage.join(cell.folder, CELL_MARKER)
    if not storage.exists(marker):
        return None
    record = storage.read_json(marker)
    if record.get("inputs") != _inputs_of(cell, cells) or record.get("fingerprint", "") != cell.fingerprint:
        return None
    return record


def _error_text(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[-1] if text else ''}"


def run_cells(cells: dict[str, Cell], *, root: str, resources: dict[str, Any], max_retries: int,
              progress_interval_s: float, log: Callable[[str], None] = print) -> None:
    """Submit every cell whose needs are met; skip finished ones; a failed cell leaves its dependents 'not run'."""
    if not ray.is_initialized():
        ray.init()
    board = ProgressBoard.remote()
    pending: dict[Any, str] = {}
    submitted_at: dict[str, float] = {}
    try:
        while True:
            progressed = True
            while progressed:
                progressed = False
                for cell in cells.values():
                    if cell.status != "pending" or cell.key in pending.values():
                        continue
                    states = [cells[k].status for k in cell.needs]
                    if any(s in ("failed", "not run") for s in states):
                        cell.status, cell.error = "not run", "a cell it needs failed"
                        progressed = True
                        continue
                    if not all(s in ("ok", "skipped") for s in states):
                        continue
                    done = _done_record(cell, cells)
                    if done is not None:
                        cell.status, cell.record = "skipped", done
                        log(f"[{cell.key}] already done; skipping")
                        progressed = True
                        continue
                    previous = {cells[k].stage: cells[k].record.get("output", {}) for k in cell.needs
                                if cells[k].run_id == cell.run_id or cells[k].stage == "pairs"}
                    ctx_fields = {"style": cell.style, "stage": cell.stage, "root": root, "run_id": cell.run_id,
                                  "previous": previous, "work_uri": cell.folder, "cell": cell.key}
                    marker_fields = {"inputs": _inputs_of(cell, cells), "fingerprint": cell.fingerprint,
                                     "cell": cell.key}
                    ref = _run_cell.options(max_retries=max_retries, retry_exceptions=False, name=cell.key,
                                            **resources).remote(cell.fn, ctx_fields, board, marker_fields)
                    pending[ref] = cell.key
                    submitted_at[cell.key] = time.time()
            if not pending:
                return
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=progress_interval_s)
            for ref in ready:
                cell = cells[pending.pop(ref)]
                try:
                    cell.record = ray.get(ref)
                    cell.status = "ok"
                    log(f"[{cell.key}] done in {format_duration(time.time() - submitted_at[cell.key])}")
                except Exception as exc:   # the cell raised, or its worker died more than max_retries times
                    cell.status, cell.error = "failed", _error_text(exc)
                    log(f"[{cell.key}] FAILED: {cell.error}")
                    print(f"[{cell.key}] traceback:\n{exc}", file=sys.stderr, flush=True)
            if not ready:
                try:
                    current = ray.get(board.snapshot.remote(), timeout=30)["current"]
                    for key in sorted(pending.values()):
                        log(progress_line(key, current.get(key), cells[key].stage))
                except Exception:   # progress is best effort
                    traceback.print_exc(file=sys.stderr)
    finally:
        ray.kill(board)


def run_study(study: StudyConfig, pipeline: PipelineConfig, *, root: str, out: str, styles: list[str],
              quick: bool, command: str = "", log: Callable[[str], None] = print) -> dict:
    """Train and evaluate every cell, then write the report; returns the report's JSON record."""
    from fstrain.study.report import git_commit, write_report

    started, commit = time.time(), git_commit()
    cells = build_cells(study, pipeline, root=root, styles=styles, quick=quick)
    log(f"study {study.name}: {len(study.seeds)} seed(s) x {len(styles)} style(s), {len(cells)} cells under {root}")
    run_cells(cells, root=root, resources=style_resources(pipeline), max_retries=pipeline.cluster.max_retries,
              progress_interval_s=pipeline.cluster.progress_interval_s, log=log)
    cell_summary = {key: {"status": c.status, "error": c.error, "run_s": c.record.get("run_s"),
                          "run_id": c.run_id, "folder": c.folder} for key, c in cells.items()}
    evaluations = [c.record["output"] for c in cells.values() if c.stage == "evaluate" and c.record.get("output")]
    record = write_report(out, study=study, evaluations=evaluations, cells=cell_summary, root=root, quick=quick,
                          wall_s=time.time() - started, pipeline=pipeline, command=command,
                          commit=commit)
    failed = [k for k, c in cells.items() if c.status in ("failed", "not run")]
    log(f"report: {storage.join(out, 'study.md')} ({len(evaluations)} evaluated seed/style cells"
        f"{', ' + str(len(failed)) + ' cells failed or not run' if failed else ''}; "
        f"wall {format_duration(time.time() - started)})")
    return record


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from fstrain.cli import add_debug_flag

    parser = argparse.ArgumentParser(prog="python -m cluster.study", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="study YAML, e.g. configs/study.yaml")
    parser.add_argument("--root", required=True, help="storage root holding models/ and datasets/ (dir or s3://)")
    parser.add_argument("--out", required=True, help="where the report goes (dir or s3:// prefix)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the config's)")
    parser.add_argument("--styles", help="comma-separated subset of the styles")
    parser.add_argument("--quick", action="store_true",
                        help="one seed, the config's quick sizes (few steps, few identities); own run ids")
    parser.add_argument("--local", action="store_true",
                        help="start a Ray on this machine; without it the study runs on $RAY_ADDRESS (set by `ray job "
                             "submit`) and refuses to start when none is given")
    add_debug_flag(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from fstrain import preflight
    from fstrain.cli import UsageError

    args = parse_args(argv)
    try:
        study = load_study_config(args.config)
        if args.seeds:
            try:
                seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
            except ValueError:
                raise ConfigError(f"--seeds must be comma-separated integers, e.g. 0,1,2; got {args.seeds!r}") from None
            study = dataclasses.replace(study, seeds=seeds)
        if args.quick:
            study = quick_variant(study)
        pipeline = load_config(study.pipeline, PipelineConfig)   # choices and ranges checked by the schema
        styles = study.styles or pipeline.styles
        if args.styles:
            styles = [s.strip() for s in args.styles.split(",") if s.strip()]
        unknown = sorted(set(styles) - set(pipeline.styles))
        if unknown:
            raise ConfigError(f"{args.config}: styles {unknown} are not in the pipeline's styles {pipeline.styles}")
        args.root, args.out = layout.absolute_root(args.root), layout.absolute_root(args.out)
        # Preflight: storage, the models every cell reads, the Ray cluster named; before any cell is scheduled.
        preflight.storage_usable(args.root, "--root", write=True)
        preflight.storage_usable(args.out, "--out", write=True)
        instrument_identities(study, pipeline, args.root)
        preflight.models_exist(pipeline, args.root, models_needed(study, pipeline, args.root, args.quick),
                               study.pipeline)
        target = ray_target(args.local)         # as cluster.train: never a silent local Ray in place of a cluster
    except (ConfigError, UsageError, storage.StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"study of {', '.join(styles)} under {args.root} on {target}; report: {args.out}", flush=True)
    connect_ray(args.local)
    command = " ".join(["python -m cluster.study", *(argv if argv is not None else sys.argv[1:])])
    record = run_study(study, pipeline, root=args.root, out=args.out, styles=styles, quick=args.quick,
                       command=command)
    return 0 if record["complete"] else 1


if __name__ == "__main__":
    from fstrain.cli import run_command

    sys.exit(run_command(main))
