"""Batch-stylize a folder of photos in object storage with Ray Data.

    python -m batch.stylize --input URI --output URI --styles cartoon,anime [--root URI] [--config YAML]
        [--mode general|multimodal|reference] [--layer K] [--samples N] [--reference ID] [--aligned]
        [--format png|jpg|webp] [--job-id ID] [--detector-root URI] [--min-actors N] [--max-actors N] ...

Run it locally (starts a Ray instance) or on a cluster with `ray job submit -- python -m batch.stylize ...`.
Pipeline: list the input prefix (driver) -> PrepareFaces (CPU) -> StylizeActor pool (GPU, autoscaling between
--min-actors and --max-actors) -> EncodeUpload (CPU) -> `<out>/manifest.jsonl` + gallery. See batch/stages.py.
Every listed input ends as exactly one manifest line (ok or error); rerunning with the same --job-id skips inputs
already ok. Exit status: 0 when every input is ok, 3 when some inputs are errors (listed in the manifest).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any

from batch import manifest
from batch.faces import DETECTOR_CHOICES
from batch.stages import (FACE_CHOICES, IMAGE_EXTENSIONS, MODES, OUTPUT_FORMATS, EncodeUpload, JobSpec, PrepareFaces,
                          StylizeActor, photo_key)
from fstrain import layout, preflight
from fstrain.cli import EXIT_ITEM_ERRORS, add_debug_flag
from fstrain.data import storage

EXIT_SOME_ERRORS = EXIT_ITEM_ERRORS   # 3 under fstrain.cli's rule: finished, with per-item errors in the manifest
# Non-secret settings forwarded to workers started by a local Ray instance (credentials stay in the AWS chain).
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_MAX_ATTEMPTS", "CUDA_HOME",
                 "FSTRAIN_MODEL_CACHE")


# ----------------------------------------------------------------------------------------------- input listing
def list_inputs(input_uri: str) -> list[dict[str, str]]:
    """Image files under the prefix as {"key", "uri"}; key = the path relative to the prefix, extension kept.

    Relative paths of one listing are distinct, so keys are too; batch/names.py turns a key into output names.
    """
    uris = storage.list_uris(input_uri, suffixes=IMAGE_EXTENSIONS)
    base = input_uri.rstrip("/") + "/"
    return [{"key": uri[len(base):] if uri.startswith(base) else storage.basename(uri), "uri": uri} for uri in uris]


# ------------------------------------------------------------------------------------------------ job set-up
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m batch.stylize", description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="folder or s3:// prefix of photos (listed recursively)")
    parser.add_argument("--output", required=True, help="folder or s3:// prefix for results")
    parser.add_argument("--styles", required=True, help="comma-separated style names")
    parser.add_argument("--root", default=None, help="pipeline root holding styles/<style>/generator.pt and references/")
    parser.add_argument("--config", default=None, help="pipeline YAML (models.encoder_wplus, stylize defaults)")
    parser.add_argument("--encoder", default=None, help="W+ encoder URI (overrides the config)")
    parser.add_argument("--identity", default=None,
                        help="identity net URI scoring each output against its input (default: the config's "
                             "models.identity; none without a config)")
    parser.add_argument("--generator", action="append", default=[], metavar="STYLE=URI",
                        help="use this G' for STYLE instead of <root>/styles/<style>/generator.pt")
    parser.add_argument("--mode", choices=MODES, default="general")
    parser.add_argument("--layer", type=int, default=None, help="mixing layer k (multimodal/reference)")
    parser.add_argument("--samples", type=int, default=None, help="multimodal samples per photo and style")
    parser.add_argument("--psi", type=float, default=None, help="multimodal truncation")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--reference", default=None, help="stored reference code id (reference mode)")
    parser.add_argument("--refine-steps", type=int, default=None,
                        help="refine each face's W+ code against the base G for N steps before rendering (default: "
                             "the config's stylize.refine_steps; 0 = the encoder's codes; needs --config for "
                             "models.base_generator and models.lpips_backbone)")
    parser.add_argument("--pivotal-steps", type=int, default=None,
                        help="tune a copy of the base G on each face for N steps and render every style by G' + "
                             "that weight change (default: the config's stylize.pivotal_steps; 0 = G' as it is; "
                             "needs --config like --refine-steps)")
    parser.add_argument("--aligned", action="store_true", help="inputs are already aligned face crops")
    parser.add_argument("--format", dest="image_format", choices=sorted(OUTPUT_FORMATS), default="png")
    parser.add_argument("--job-id", default=None, help="names <out>/_jobs/<id>/; reuse it to resume")
    parser.add_argument("--detector", choices=DETECTOR_CHOICES, default="auto",
                        help="face detector: scrfd (insightface det_10g.onnx under --detector-root), dlib (HOG + "
                             "68 landmarks, installed with the package), auto: scrfd when its file is there, else dlib")
    parser.add_argument("--detector-root", default=None, help="folder/prefix with insightface det_10g.onnx")
    parser.add_argument("--det-size", type=int, default=640)
    parser.add_argument("--det-max-side", type=int, default=1280,
                        help="photos are downscaled to this long side for detection (the crop uses full resolution)")
    parser.add_argument("--faces", choices=FACE_CHOICES, default="largest",
                        help="largest: one output per photo; all: every face, keys <key>__face<i>")
    parser.add_argument("--paste-back", action="store_true",
                        help="also write each stylized face warped back into the full photo (<out>/<style>/pasted/)")
    parser.add_argument("--min-input-side", type=int, default=64)
    parser.add_argument("--min-face-side", type=int, default=24)
    parser.add_argument("--max-pixels", type=int, default=8192 * 8192)
    parser.add_argument("--batch-size", type=int, default=8, help="faces per GPU batch")
    parser.add_argument("--cpu-batch-size", type=int, default=8)
    parser.add_argument("--min-actors", type=int, default=1)
    parser.add_argument("--max-actors", type=int, default=4)
    parser.add_argument("--cpu-actors", type=int, default=2, help="max PrepareFaces actors (one detector each)")
    parser.add_argument("--gpus-per-actor", type=float, default=None,
                        help="default: 1 when the cluster has GPUs, else the actor asks for --cpus-per-actor")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--actor-retries", type=int, default=3, help="restarts of a crashed stylize actor")
    parser.add_argument("--retry-errors", action="store_true",
                        help="on a rerun, also reprocess inputs that failed decode/detect (e.g. after fixing them); "
                             "transient errors (read, stylize, upload) are always retried")
    parser.add_argument("--gallery-rows", type=int, default=24)
    parser.add_argument("--truth", default=None,
                        help="folder of ground-truth pictures <style>/<input's relative path> (e.g. renders of the "
                             "same identity in each style); the gallery shows them and sorts by the error")
    parser.add_argument("--ray-address", default=None, help="default: $RAY_ADDRESS, else a local instance")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray instance")
    add_debug_flag(parser)
    return parser.parse_args(argv)


def build_spec(args: argparse.Namespace) -> JobSpec:
    """Validate everything that can be checked before Ray starts; errors name the file and what to do."""
    from fstrain.models.hub import resolve_uri
    from fstrain.settings import StylizeConfig

    styles = [s.strip() for s in args.styles.split(",") if s.strip()]
    if not styles:
        raise SystemExit("--styles: give at least one style name")
    config = None
    if args.config:
        from fstrain.config import load_config
        from fstrain.settings import PipelineConfig

        config = load_config(args.config, PipelineConfig)
    defaults = config.stylize if config else StylizeConfig()
    root = args.root or ""
    # --encoder is a path as the user typed it; the config's model URIs are relative to the root.
    encoder = args.encoder or (resolve_uri(config.models.encoder_wplus, root) if config else None)
    if not encoder:
        raise SystemExit("no W+ encoder: pass --config (models.encoder_wplus) or --encoder URI")
    overrides = dict(item.split("=", 1) for item in args.generator)
    if not root and set(styles) - set(overrides):
        raise SystemExit("--root is needed to find <root>/styles/<style>/generator.pt (or pass --generator "
                         "STYLE=URI for every style)")
    generators = {s: overrides.get(s) or layout.published_generator(root, s) for s in styles}
    if not storage.exists(encoder):
        raise SystemExit(f"{encoder}: W+ encoder not found; fix models.encoder_wplus or pass the right URI")
    preflight.published_generators_exist(root, styles, overrides)      # names the URI, with a did-you-mean
    if args.mode == "reference":
        if not args.reference:
            raise SystemExit("--mode reference needs --reference ID (a code stored under <root>/references/)")
        from fstrain.stylize import ReferenceStore

        store = ReferenceStore(root)
        for style in styles:
            if not store.exists(style, args.reference):
                raise SystemExit(f"{store.uri(style, args.reference)}: no stored reference code; invert it first "
                                 f"with `python -m fstrain.stylize ... --reference IMAGE --reference-id "
                                 f"{args.reference}`")
    detector_root, detector = "", "dlib"
    if not args.aligned:
        from batch.faces import DetectorMissingError, default_model_root, resolve_detector_kind

        detector_root = args.detector_root or default_model_root()
        # an explicit --detector-root means SCRFD was asked for: its absence is an error, not a fallback
        kind = "scrfd" if args.detector == "auto" and args.detector_root else args.detector
        try:
            detector = resolve_detector_kind(kind, detector_root)
        except DetectorMissingError as exc:
            raise SystemExit(str(exc)) from None
    base_fields = _base_model_fields(args, config, defaults, root)
    size, provenance = _model_facts(encoder, generators, base_fields)
    return JobSpec(input=args.input, output=args.output, job_id=manifest.check_job_id(args.job_id),
                   styles=styles, generator_uris=generators, encoder_uri=encoder,
                   encoder_sha256=(config.models.sha256.get("encoder_wplus") if config else None),
                   **_identity_fields(args, config, root), **base_fields,
                   mode=args.mode, layer=defaults.mix_layer if args.layer is None else args.layer,
                   samples=defaults.samples if args.samples is None else args.samples,
                   psi=defaults.truncation if args.psi is None else args.psi,
                   seed=defaults.seed if args.seed is None else args.seed, reference_id=args.reference,
                   root=root, aligned=args.aligned, detector=detector, detector_root=detector_root,
                   det_size=args.det_size, det_max_side=args.det_max_side, faces=args.faces,
                   paste_back=args.paste_back,
                   min_input_side=args.min_input_side, min_face_side=args.min_face_side,
                   max_pixels=args.max_pixels, image_format=args.image_format, size=size, provenance=provenance)


def _model_facts(encoder: str, generators: dict[str, str],
                 base_fields: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """(output size, provenance): the sha256 of the encoder and of each style's G' (fetched once per machine, as
    the workers do) and, when refining or tuning pivots, their settings with the base G's and perceptual net's sha256;
    the size read off the first G' state dict, memory-mapped, without building a network (other formats, e.g.
    NVIDIA pickles, are loaded through the model hub)."""
    import torch

    from fstrain.models.checkpoints import infer_generator_architecture
    from fstrain.models.registry import fetch, sha256_file

    paths = {style: fetch(uri) for style, uri in generators.items()}
    provenance = {"encoder": sha256_file(fetch(encoder)),
                  "generators": {style: sha256_file(path) for style, path in paths.items()}}
    if base_fields:      # refinement and/or pivotal tuning (_base_model_fields)
        base_models = {"base_generator": sha256_file(fetch(base_fields["base_generator_uri"],
                                                           base_fields["base_generator_sha256"])),
                       "lpips": sha256_file(fetch(base_fields["lpips_uri"], base_fields["lpips_sha256"]))}
        if base_fields["base_generator_which"] != "g_ema":   # g and g_ema share one file, so one sha256
            base_models["base_generator_which"] = base_fields["base_generator_which"]
        for key in ("refine", "pivotal"):
            if base_fields.get(key):
                provenance[key] = {**base_fields[key], **base_models}
    first_style = next(iter(generators))
    try:
        checkpoint = torch.load(str(paths[first_style]), map_location="cpu", weights_only=True, mmap=True)
        state = checkpoint if "conv1.conv.weight" in checkpoint else checkpoint.get("g_ema") or checkpoint.get("g")
        size = int(infer_generator_architecture(state, generators[first_style])["size"])
    except Exception:  # noqa: BLE001 - not a plain rosinality torch file: let the hub detect and load it
        from fstrain.models.hub import generator_at

        size = int(generator_at(generators[first_style], load_discriminator=False).generator.size)
    return size, provenance


def _identity_fields(args: argparse.Namespace, config, root: str) -> dict[str, Any]:
    """The identity net that scores outputs (fidelity in the manifest): --identity, else the config's."""
    from fstrain.models.hub import resolve_uri

    uri = args.identity or (resolve_uri(config.models.identity, root) if config else "")
    if not uri:
        return {}
    if not storage.exists(uri):
        if args.identity:
            raise SystemExit(f"{uri}: identity net not found; fix --identity")
        print(f"[batch] {uri} (models.identity) not found: outputs are not scored for identity", file=sys.stderr)
        return {}
    return {"identity_uri": uri, "identity_kind": config.models.identity_kind if config else "auto",
            "identity_sha256": config.models.sha256.get("identity") if config and not args.identity else None}


def _base_model_fields(args: argparse.Namespace, config, defaults, root: str) -> dict[str, Any]:
    """JobSpec fields of what renders the base G per face, code refinement (fstrain.stylize.refine) and pivotal
    tuning (fstrain.stylize.pivotal): their settings, the base G and the perceptual net from the config; {} when
    neither is asked for."""
    from fstrain.models.hub import resolve_uri
    from fstrain.stylize.pivotal import pivotal_settings_from_config
    from fstrain.stylize.refine import settings_from_config

    refine = settings_from_config(defaults, args.refine_steps)
    pivotal = pivotal_settings_from_config(defaults, args.pivotal_steps)
    asked = [f"{flag} {steps}" for flag, steps in (("--refine-steps", refine.steps), ("--pivotal-steps", pivotal.steps))
             if steps]
    if not asked:
        return {}
    undo = " and ".join(f"{flag.split()[0]} 0" for flag in asked)
    if config is None:
        raise SystemExit(f"{', '.join(asked)}: this renders the base G and measures LPIPS; pass --config with "
                         f"models.base_generator and models.lpips_backbone (or {undo})")
    fields = {"base_generator_uri": resolve_uri(config.models.base_generator, root),
              "lpips_uri": resolve_uri(config.models.lpips_backbone, root)}
    for key, uri in (("base_generator", fields["base_generator_uri"]), ("lpips_backbone", fields["lpips_uri"])):
        if not storage.exists(uri):
            raise SystemExit(f"{uri}: models.{key} not found, needed for {', '.join(asked)} (stylize.refine_steps / "
                             f"pivotal_steps); fix models.{key} in {args.config} or pass {undo}")
    return {"refine": refine.describe() if refine.steps else {},
            "pivotal": pivotal.describe() if pivotal.steps else {}, **fields, "lpips_net": config.models.lpips_net,
            "base_generator_sha256": config.models.sha256.get("base_generator"),
            "base_generator_which": config.models.base_generator_which,
            "lpips_sha256": config.models.sha256.get("lpips_backbone")}


def default_job_id(args: argparse.Namespace) -> str:
    import hashlib

    text = json.dumps([args.input, args.output, args.styles, args.mode, args.layer, args.samples, args.reference])
    return "job-" + hashlib.sha256(text.encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------------- Ray
def init_ray(args: argparse.Namespace):
    import ray

    if ray.is_initialized():
        return ray
    address = args.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, runtime_env={"env_vars": env})
    return ray


def actor_resources(args: argparse.Namespace, ray) -> dict[str, float]:
    gpus = args.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return {"num_gpus": gpus} if gpus > 0 else {"num_cpus": args.cpus_per_actor}


@dataclass(frozen=True)
class Stages:
    """The three stage classes a job runs (tests pass subclasses that inject faults, e.g. a crashing actor)."""
    prepare: type = PrepareFaces
    stylize: type = StylizeActor
    upload: type = EncodeUpload


def run_pipeline(spec: JobSpec, items: list[dict[str, str]], args: argparse.Namespace, ray,
                 stages: Stages = Stages()) -> list[dict]:
    """Run the three stages over `items`; returns one record dict per item."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = sys.stderr.isatty()
    n_blocks = max(1, min(len(items), (len(items) + args.cpu_batch_size - 1) // args.cpu_batch_size))
    ds = ray.data.from_items(items, override_num_blocks=n_blocks)
    cpu_pool = ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, args.cpu_actors))
    gpu_pool = ray.data.ActorPoolStrategy(min_size=max(1, args.min_actors),
                                          max_size=max(args.min_actors, args.max_actors))
    ds = ds.map_batches(stages.prepare, fn_constructor_args=(spec,), batch_size=args.cpu_batch_size,
                        batch_format="numpy", compute=cpu_pool, num_cpus=1)
    with warnings.catch_warnings():
        # Ray Data deprecates ray_remote_args, but restart limits have no named parameter yet; its default is
        # unlimited restarts, which would loop forever on an actor that always crashes.
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ds.map_batches(stages.stylize, fn_constructor_args=(spec,), batch_size=args.batch_size,
                            batch_format="numpy", compute=gpu_pool, max_restarts=args.actor_retries,
                            max_task_retries=args.actor_retries, **actor_resources(args, ray),
                            # each actor would log the kernel routing line; the driver prints it once instead
                            runtime_env={"env_vars": {"KERNELS_ROUTE_LOG": "quiet"}})
    ds = ds.map_batches(stages.upload, fn_constructor_args=(spec,), batch_size=args.cpu_batch_size,
                        batch_format="numpy", compute=cpu_pool, num_cpus=1)
    rows = []
    for batch in ds.iter_batches(batch_size=256, batch_format="numpy"):
        rows += [json.loads(text) for text in batch["record"]]
    return rows


# ---------------------------------------------------------------------------------------------------- main
def stage_totals(records: list[manifest.Record]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for record in records:
        for stage, seconds in record.timings.items():
            totals[stage] = totals.get(stage, 0.0) + float(seconds)
    return totals


def keep_previous(record: manifest.Record, retry_errors: bool, provenance: dict[str, Any]) -> bool:
    """Whether a rerun reuses an earlier record: ok when made with these very models; errors caused by the input
    itself unless asked to retry them. Transient errors are always retried."""
    if record.status == manifest.OK:
        return record.provenance == provenance
    return not retry_errors and not record.transient


def stale_reasons(records: list[manifest.Record], provenance: dict[str, Any]) -> list[str]:
    """Why ok records of an earlier run are recomputed, one line per changed model (for the log)."""
    counts: dict[str, int] = {}
    for record in records:
        if record.status != manifest.OK or record.provenance == provenance:
            continue
        if not record.provenance:
            counts["no model provenance recorded (made by an earlier version)"] = \
                counts.get("no model provenance recorded (made by an earlier version)", 0) + 1
            continue
        old_gens, new_gens = record.provenance.get("generators", {}), provenance.get("generators", {})
        changed = [f"generator of {style!r} changed ({str(old_gens.get(style))[:8]}… → {str(sha)[:8]}…)"
                   for style, sha in new_gens.items() if old_gens.get(style) != sha]
        if record.provenance.get("encoder") != provenance.get("encoder"):
            changed.append(f"W+ encoder changed ({str(record.provenance.get('encoder'))[:8]}… → "
                           f"{str(provenance.get('encoder'))[:8]}…)")
        if record.provenance.get("refine") != provenance.get("refine"):
            changed.append("code refinement changed (stylize.refine_*, base G or perceptual net)")
        if record.provenance.get("pivotal") != provenance.get("pivotal"):
            changed.append("pivotal tuning changed (stylize.pivotal_*, base G or perceptual net)")
        for reason in changed:
            counts[reason] = counts.get(reason, 0) + 1
    return [f"{reason}: {n} ok record(s) recomputed" for reason, n in sorted(counts.items())]


def run_job(args: argparse.Namespace, stages: Stages = Stages()) -> dict[str, Any]:
    args.job_id = args.job_id or default_job_id(args)
    spec = build_spec(args)
    start = time.perf_counter()
    items = list_inputs(spec.input)
    if not items:
        raise SystemExit(f"{spec.input}: no images ({', '.join(IMAGE_EXTENSIONS)}) found under this prefix")
    previous = manifest.read_job_records(spec.output, spec.job_id)
    listed = {item["key"] for item in items}
    # records per input (one, or one per face with --faces all); an input is carried when all of them are
    by_input: dict[str, list[manifest.Record]] = {}
    for record_key, record in previous.items():
        if photo_key(record_key) in listed or record_key in listed:
            by_input.setdefault(record_key if record_key in listed else photo_key(record_key), []).append(record)
    carried = {k: rs for k, rs in by_input.items()
               if all(keep_previous(r, args.retry_errors, spec.provenance) for r in rs)}
    for reason in stale_reasons([r for rs in by_input.values() for r in rs], spec.provenance):
        print(f"[batch] {reason}", file=sys.stderr)
    todo = [item for item in items if item["key"] not in carried]
    spec.thumbnail_keys = [item["key"] for item in items[:args.gallery_rows] if item["key"] not in carried]
    print(f"[batch] job {spec.job_id}: {len(items)} inputs, {len(carried)} already done (skipped), "
          f"{len(todo)} to process; styles {spec.styles}, mode {spec.mode}", file=sys.stderr)
    if not spec.aligned:
        from batch.faces import describe_detector

        print(f"[batch] face detector: {describe_detector(spec)}", file=sys.stderr)

    new_records: dict[str, manifest.Record] = {}
    if todo:
        import ray as ray_module

        started_here = not ray_module.is_initialized()
        ray = init_ray(args)
        try:
            for row in run_pipeline(spec, todo, args, ray, stages):
                record = manifest.Record.from_json(row)
                new_records[record.key] = manifest.prefer(new_records.get(record.key), record)
        finally:
            if started_here:
                ray.shutdown()
    # Nothing lost: an item the pipeline did not return (it should not happen) still gets a line.
    returned = {photo_key(key) for key in new_records} | set(new_records)
    for item in todo:
        if item["key"] not in returned:
            new_records[item["key"]] = manifest.error_record(
                item["key"], item["uri"], "pipeline", "no result came back from the pipeline",
                "rerun with the same --job-id", spec.job_id)
    for line in sorted({line for r in new_records.values() for line in r.worker.get("kernels", [])}):
        print(f"[batch] kernels (stylize workers): {line}", file=sys.stderr)
    new_by_input: dict[str, list[manifest.Record]] = {}
    for key, record in new_records.items():
        new_by_input.setdefault(key if key in listed else photo_key(key), []).append(record)
    records = [r for item in items for r in (carried.get(item["key"]) or new_by_input[item["key"]])]
    elapsed = time.perf_counter() - start
    skipped = sum(len(carried[item["key"]]) for item in items if item["key"] in carried)
    processed = sum(len(new_by_input[item["key"]]) for item in todo)   # records whose stages ran in this run
    summary = manifest.summarize(records, skipped=skipped, processed=processed, elapsed_s=elapsed,
                                 job_id=spec.job_id,
                                 stage_seconds=stage_totals(list(new_records.values())))
    manifest.write_manifest(spec.output, spec.job_id, records, summary)
    from batch.gallery import write_gallery

    spec.thumbnail_keys = [item["key"] for item in items[:args.gallery_rows]]  # incl. thumbnails of earlier runs
    write_gallery(spec, records, remade={item["key"] for item in todo}, truth=args.truth)
    return summary


def preflight_checks(args: argparse.Namespace) -> None:
    """Flags, the input, the output and the Ray address, before a photo is read or a task scheduled (exit 2)."""
    from fstrain.config import check_value
    from fstrain.settings import AtLeast1, Count, Fraction

    for flag, value, allowed in (("--layer", args.layer, Count), ("--samples", args.samples, AtLeast1),
                                 ("--psi", args.psi, Fraction), ("--seed", args.seed, Count),
                                 ("--refine-steps", args.refine_steps, Count),
                                 ("--pivotal-steps", args.pivotal_steps, Count),
                                 ("--batch-size", args.batch_size, AtLeast1),
                                 ("--cpu-batch-size", args.cpu_batch_size, AtLeast1),
                                 ("--min-actors", args.min_actors, AtLeast1), ("--max-actors", args.max_actors, AtLeast1),
                                 ("--cpu-actors", args.cpu_actors, AtLeast1), ("--actor-retries", args.actor_retries, Count),
                                 ("--gallery-rows", args.gallery_rows, Count)):
        if value is not None:
            check_value(value, allowed, flag)
    preflight.input_exists(args.input, "--input")
    preflight.storage_usable(args.output, "--output", write=True)
    if args.ray_address:
        preflight.ray_reachable(args.ray_address, "--ray-address")
    elif os.environ.get("RAY_ADDRESS"):
        preflight.ray_reachable(os.environ["RAY_ADDRESS"], "RAY_ADDRESS")


def main(argv: list[str] | None = None, stages: Stages = Stages()) -> int:
    args = parse_args(argv)
    preflight_checks(args)
    summary = run_job(args, stages)
    print(json.dumps(summary))
    return 0 if summary["error"] == 0 else EXIT_SOME_ERRORS


def console() -> int:
    """The `fstrain-batch` console script (same flags as `python -m batch.stylize`)."""
    from fstrain.cli import run_command

    return run_command(main)


if __name__ == "__main__":
    sys.exit(console())
