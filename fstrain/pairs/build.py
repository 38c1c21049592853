"""Build the pseudo-pair shards of one style in one run: `make_pairs(config, style=..., root=..., run_id=...)`.

Input:  the style dataset `<root>/datasets/<style>/shard-*.tar` (keys `png`/`jpg`, `json`), and for level 2 the
        run's baseline fine-tune G* (`<root>/runs/<run>/<style>/baseline/final/generator.pt` unless given).
Output: `<root>/runs/<run>/<style>/pairs/level{1,2,3}/shard-*.tar`, one output shard per input shard with the same
        name, each written in one atomic write, with `shard-*.provenance.json` beside it: the sha256 of the dataset
        shard and of every network that made it, and the settings that shaped it. A rerun reuses a shard only when
        that record equals what the inputs give now; otherwise it rebuilds the shard and logs why
        (`pairs for cartoon rebuilt: baseline generator changed (3fa2… → 91bc…)`).
        Also `pairs/contact_sheet.png` (rows S | P1 | P2 | P3) and `pairs/summary.json` (fstrain.layout).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from fstrain import layout, provenance
from fstrain.data import shards, storage
from fstrain.data.images import decode_pixels
from fstrain.pairs import levels as lv
from fstrain.pairs.records import FORMAT_VERSION, NOISE_SOURCE, PairSample, decode_pair, encode_pair
from fstrain.stylize.images import from_uint8, image_grid, png_bytes, to_uint8

ALL_LEVELS = (1, 2, 3)
CONTACT_SHEET_ROWS = 8
Progress = Callable[[int, int, dict], None]     # (shards done, shards total, info)


class PairsError(RuntimeError):
    """Pseudo-pairs cannot be built (missing dataset, missing model, bad arguments); the message says what to do."""


# ---------------------------------------------------------------- what each level is made from

# The networks each level's samples depend on (the identity net only when lambda_id != 0).
LEVEL_NETWORKS = {1: ("base_generator", "encoder_zplus"),
                  2: ("base_generator", "encoder_zplus", "baseline_generator", "lpips_backbone", "identity"),
                  3: ("base_generator", "encoder_wplus")}


def run_baseline_generator(root: str, run_id: str, style: str) -> str:
    """The run's baseline G*: its final g_ema (fstrain.train writes it)."""
    return layout.final_generator(layout.mode_run(root, run_id, style, "baseline"))


def level_settings(config, level: int) -> dict:
    """The settings that shape one level's samples (part of its provenance)."""
    settings = {"format_version": FORMAT_VERSION, "noise": NOISE_SOURCE}
    if level == 2:
        settings.update(optimise_steps=config.pairs.optimise_steps, lr=config.pairs.lr,
                        lambda_id=config.train.lambda_id, lpips_net=config.models.lpips_net)
        if config.train.lambda_eyes:   # only when on, so pairs made before the term existed stay current
            settings["lambda_eyes"] = config.train.lambda_eyes
    return settings


def level_provenance(config, level: int, hashes: dict[str, str], dataset_shard_sha256: str) -> dict:
    """The provenance record of one output shard: dataset shard, networks and settings, by name."""
    names = [n for n in LEVEL_NETWORKS[level] if n != "identity" or config.train.lambda_id]
    return {"dataset_shard": dataset_shard_sha256, **{n: hashes[n] for n in names},
            "settings": level_settings(config, level)}


def level_networks(config, levels: Iterable[int], *, configured_only: bool = False) -> list[str]:
    """The networks the chosen levels read (the identity net only when lambda_id != 0); `configured_only` leaves out
    the run's G*, which is a run output, not a `models.*` key."""
    needed = {n for lvl in levels for n in LEVEL_NETWORKS[lvl] if n != "identity" or config.train.lambda_id}
    return sorted(needed - ({"baseline_generator"} if configured_only else set()))


def network_hashes(config, *, root: str, levels: Sequence[int], baseline_generator_uri: str | None) -> dict[str, str]:
    """sha256 of every network file the chosen levels need, through the model hub (fetched once per machine, pins
    verified)."""
    from fstrain.models.hub import ModelHub, file_sha256
    from fstrain.models.registry import ChecksumError, MissingWeightsError

    hub = ModelHub(config.models, root)
    hashes = {}
    for name in level_networks(config, levels):
        try:
            hashes[name] = file_sha256(_require_baseline(baseline_generator_uri)) if name == "baseline_generator" \
                else hub.sha256(name)
        except (MissingWeightsError, ChecksumError) as exc:
            raise PairsError(f"the baseline G*: {exc}" if name == "baseline_generator" else str(exc)) from exc
    return hashes


def _require_baseline(uri: str | None) -> str:
    if not uri:
        raise PairsError("level 2 optimises against the baseline fine-tune G*: pass baseline_generator_uri "
                         "(CLI: --baseline URI, or --run-id to use the run's baseline), or drop level 2")
    return uri


def parse_levels(levels: Iterable[int] | str | None) -> list[int]:
    if levels is None:
        return list(ALL_LEVELS)
    if isinstance(levels, str):
        try:
            levels = [int(part) for part in levels.split(",") if part.strip()]
        except ValueError:
            raise PairsError(f"levels must be a comma-separated list drawn from 1,2,3; got {levels!r}") from None
    chosen = sorted(set(int(level) for level in levels))
    if not chosen or any(level not in ALL_LEVELS for level in chosen):
        raise PairsError(f"levels must be a non-empty subset of 1,2,3; got {chosen}")
    return chosen


# ---------------------------------------------------------------- models


@dataclass
class PairModels:
    """Everything pseudo-pairs need, on one device. `generator_star`/`semantic_loss` only for level 2."""
    base_generator: torch.nn.Module
    encoder_zplus: torch.nn.Module | None
    encoder_wplus: torch.nn.Module | None
    generator_star: torch.nn.Module | None = None
    semantic_loss: lv.PerSampleLoss | None = None
    hashes: dict[str, str] = field(default_factory=dict)    # model name -> sha256 of its file

    @property
    def device(self) -> torch.device:
        return self.base_generator.input.input.device


def load_pair_models(config, *, root: str, levels: Sequence[int], baseline_generator_uri: str | None,
                     device: str | torch.device = "cpu") -> PairModels:
    """Load only the networks the chosen levels need, verifying sha256 pins from `config.models.sha256`."""
    from fstrain.losses import SemanticLoss
    from fstrain.models.hub import ModelHub, file_sha256, generator_at

    hub = ModelHub(config.models, root)
    hashes: dict[str, str] = {}

    def hashed(name: str, module: torch.nn.Module) -> torch.nn.Module:
        hashes[name] = hub.sha256(name)  # the hub fetched and verified the file already; this reads the cache
        return module.to(device).eval()

    base = hub.generator(load_discriminator=False, expected_size=config.data.image_size)
    models = PairModels(base_generator=hashed("base_generator", base.generator), encoder_zplus=None,
                        encoder_wplus=None, hashes=hashes)
    if 1 in levels or 2 in levels:
        models.encoder_zplus = hashed("encoder_zplus", hub.encoder("encoder_zplus"))
    if 3 in levels:
        models.encoder_wplus = hashed("encoder_wplus", hub.encoder("encoder_wplus"))
    if 2 in levels:
        _require_baseline(baseline_generator_uri)
        star = generator_at(baseline_generator_uri, load_discriminator=False)  # a run output: not under models.*
        hashes["baseline_generator"] = file_sha256(baseline_generator_uri)
        models.generator_star = star.generator.to(device).eval()
        lpips = hashed("lpips_backbone", hub.lpips())
        identity = hashed("identity", hub.identity()) if config.train.lambda_id else None
        models.semantic_loss = SemanticLoss(lpips, identity, lambda_id=config.train.lambda_id, reduction="none",
                                            lambda_eyes=config.train.lambda_eyes)
    return models


# ---------------------------------------------------------------- one batch


def pairs_for_batch(models: PairModels, keys: Sequence[str], style_pixels: np.ndarray, levels: Sequence[int], *,
                    style: str, optimise_steps: int, lr: float) -> dict[int, list[PairSample]]:
    """All requested levels for one batch of style images (uint8 (N, H, W, 3) at the generator's size)."""
    base = models.base_generator
    images = from_uint8(style_pixels).to(models.device)
    common = {"style": style, "noise": NOISE_SOURCE, "generators": dict(models.hashes)}
    out: dict[int, list[PairSample]] = {}

    def samples(level: int, w_plus: torch.Tensor, z_plus: torch.Tensor | None, extra: list[dict]) -> list[PairSample]:
        photos = to_uint8(lv.render_pseudo_photos(base, w_plus))
        w_np = w_plus.detach().cpu().numpy().astype(np.float32)
        z_np = z_plus.detach().cpu().numpy().astype(np.float32) if z_plus is not None else None
        return [PairSample(key=key, style_image=style_pixels[i], pseudo_photo=photos[i], w_plus=w_np[i],
                           z_plus=None if z_np is None else z_np[i],
                           meta={**common, "level": level, "source_key": key, **extra[i]})
                for i, key in enumerate(keys)]

    no_extra = [{} for _ in keys]
    if 1 in levels or 2 in levels:
        z1, w1 = lv.embed_level1(models.encoder_zplus, base, images)
        if 1 in levels:
            out[1] = samples(1, w1, z1, no_extra)
        if 2 in levels:
            result = lv.optimise_level2(models.generator_star, z1, images, models.semantic_loss,
                                        steps=optimise_steps, lr=lr)
            with torch.no_grad():
                w2 = base.get_latent(result.z_plus)
            extra = [{"l_sem_initial": float(a), "l_sem_final": float(b), "optimise_steps": optimise_steps,
                      "lr": lr} for a, b in zip(result.loss_initial.tolist(), result.loss_final.tolist())]
            out[2] = samples(2, w2, result.z_plus, extra)
    if 3 in levels:
        w3 = lv.refine_level3(models.encoder_wplus, base, images)
        out[3] = samples(3, w3, None, no_extra)
    return out


# ---------------------------------------------------------------- shard I/O


def shard_index(name: str) -> int:
    match = re.fullmatch(r"shard-(\d+)\.tar", name)
    if match is None:
        raise PairsError(f"{name}: not a shard-NNNNNN.tar name; dataset shards come from fstrain.ingest")
    return int(match.group(1))


def write_pair_shard(prefix_uri: str, name: str, samples: Sequence[PairSample]) -> str:
    """Write `samples` as the one shard `<prefix>/<name>` (same index as its input shard).

    ShardWriter builds the tar locally and uploads it in one atomic write, so the shard's existence means it is
    complete. An empty sample list writes nothing (the input shard is then retried on the next run).
    """
    with shards.ShardWriter(prefix_uri, max_samples=max(1, len(samples)), start_index=shard_index(name)) as writer:
        for sample in samples:
            writer.write(encode_pair(sample))
    written = writer.shards
    expected = storage.join(prefix_uri, name)
    if written and written != [expected]:
        raise PairsError(f"{prefix_uri}: expected to write {expected}, wrote {written}")
    return expected


def read_pairs(prefix_or_urls: str | Sequence[str], **read_kwargs) -> Iterable[PairSample]:
    """Stream `PairSample`s from pair shards (a level prefix or shard URIs); kwargs go to `shards.read_samples`."""
    source = prefix_or_urls if isinstance(prefix_or_urls, str) else ", ".join(prefix_or_urls)
    for record in shards.read_samples(prefix_or_urls, **read_kwargs):
        yield decode_pair(record, source=source)


def _decode_style_image(record: dict, size: int) -> np.ndarray:
    data = next((record[k] for k in ("png", "jpg", "jpeg", "webp") if k in record), None)
    if data is None:
        raise ValueError(f"no image field (png/jpg) in sample; keys: {sorted(record)}")
    return decode_pixels(data, str(record.get("__key__", "?")), size)


def _batches(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# ---------------------------------------------------------------- the whole style


def make_pairs(config, *, style: str, root: str, run_id: str, levels: Iterable[int] | str | None = None,
               baseline_generator_uri: str | None = None, progress: Progress | None = None,
               device: str | torch.device | None = None, models: PairModels | None = None,
               log: Callable[[str], None] = print, images_done: Callable[[int], None] | None = None) -> dict:
    """Build (or finish, or rebuild) the pair shards of `style` in run `run_id` for `levels`; returns a summary
    dict (also saved as JSON).

    Level 2 uses `baseline_generator_uri`, by default the run's own baseline G*. Per shard and level: an output
    whose provenance record matches the current inputs is reused; a missing one is built; a stale one is rebuilt
    and `log` says why; an output whose dataset shard is gone is deleted. A shard whose levels are all reusable is
    not even decoded. `models` may be passed pre-loaded (tests, or a caller that builds pairs for several runs);
    their recorded hashes then stand for the files. `images_done(n)` is called after each batch of n style images
    is paired (a shard of a thousand level-2 optimisations takes a while; `progress` only ticks per shard). Summary counts (`samples`, `l_sem_initial_mean`/
    `l_sem_final_mean`, `skipped_samples`) describe every output shard, reused or written (a reused shard's
    figures come from its provenance record), so a rerun that reuses everything keeps the same summary;
    `samples_written` counts this call's work. Style images that do not decode are listed in `skipped_samples`
    with shard, key and reason; `rebuilt` holds the logged reasons.
    """
    chosen = parse_levels(levels if levels is not None else config.pairs.levels)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dataset = layout.dataset(root, style)
    inputs = shards.list_shards(dataset)
    if not inputs:
        raise PairsError(f"{dataset}: no dataset shards for style {style!r}; ingest the style "
                         f"images first (python -m fstrain.ingest SRC {root} --style {style} --size N)")
    if baseline_generator_uri is None and 2 in chosen:
        baseline_generator_uri = run_baseline_generator(root, run_id, style)
        if models is None and not storage.exists(baseline_generator_uri):
            raise PairsError(f"{baseline_generator_uri}: run {run_id!r} has no baseline G* for {style!r}; level 2 "
                             f"needs it: train the baseline first (mode baseline, same run id), pass --baseline "
                             f"URI, or drop level 2")
    hashes = dict(models.hashes) if models is not None else \
        network_hashes(config, root=root, levels=chosen, baseline_generator_uri=baseline_generator_uri)

    todo, stale = [], {}
    for shard_uri in inputs:
        name = storage.basename(shard_uri)
        dataset_sha = provenance.sha256_uri(shard_uri)
        missing, records = [], {}
        for lvl in chosen:
            records[lvl] = level_provenance(config, lvl, hashes, dataset_sha)
            output = storage.join(layout.pairs(root, run_id, style, lvl), name)
            if not storage.exists(output):
                missing.append(lvl)
                continue
            reasons = provenance.changes(provenance.read_record(layout.shard_provenance(output)), records[lvl])
            if reasons:
                missing.append(lvl)
                stale.setdefault("; ".join(reasons), []).append(f"level{lvl}/{name}")
        todo.append((shard_uri, name, missing, records))
    for reason, where in stale.items():
        log(f"pairs for {style} rebuilt: {reason} [{', '.join(where)}]")
    removed = _remove_orphans(root, run_id, style, chosen, {name for _, name, _, _ in todo})
    for uri in removed:
        log(f"pairs for {style}: removed {uri} (its dataset shard is gone)")

    summary = {"style": style, "run_id": run_id, "levels": chosen, "shards": len(inputs), "shards_written": 0,
               "shards_skipped": 0, "samples": {str(lvl): 0 for lvl in chosen},
               "samples_written": {str(lvl): 0 for lvl in chosen}, "skipped_samples": [],
               "l_sem_initial_mean": None, "l_sem_final_mean": None,
               "rebuilt": [f"{reason} [{', '.join(where)}]" for reason, where in stale.items()], "removed": removed,
               "inputs": dict(hashes),
               "outputs": {str(lvl): layout.pairs(root, run_id, style, lvl) for lvl in chosen}}
    if any(missing for _, _, missing, _ in todo) and models is None:
        models = load_pair_models(config, root=root, levels=chosen, baseline_generator_uri=baseline_generator_uri,
                                  device=device)

    l_sem_initial: list[float] = []
    l_sem_final: list[float] = []
    started = time.time()
    for index, (shard_uri, name, missing, records) in enumerate(todo):
        for lvl in chosen:
            if lvl not in missing:     # reused: its figures come from the record written with it
                _add_recorded(summary, lvl, layout.shard_provenance(
                    storage.join(layout.pairs(root, run_id, style, lvl), name)), l_sem_initial, l_sem_final)
        if not missing:
            summary["shards_skipped"] += 1
        else:
            size = models.base_generator.size
            keys, pixels = [], []
            for record in shards.read_samples(shard_uri):
                key = str(record.get("__key__", "?"))
                try:
                    pixels.append(_decode_style_image(record, size))
                    keys.append(key)
                except Exception as exc:   # one bad image must not lose the shard: skip it and say which
                    summary["skipped_samples"].append({"shard": shard_uri, "key": key, "reason": str(exc)})
            skipped_here = [s for s in summary["skipped_samples"] if s["shard"] == shard_uri]
            per_level: dict[int, list[PairSample]] = {lvl: [] for lvl in missing}
            for batch in _batches(list(range(len(keys))), config.pairs.batch_size):
                made = pairs_for_batch(models, [keys[i] for i in batch], np.stack([pixels[i] for i in batch]),
                                       missing, style=style, optimise_steps=config.pairs.optimise_steps,
                                       lr=config.pairs.lr)
                for lvl, samples in made.items():
                    per_level[lvl].extend(samples)
                if images_done is not None:
                    images_done(len(batch))
            for lvl, samples in per_level.items():
                # The shard first, then its record: a crash in between leaves a shard without (or with an older)
                # record, which the next run rebuilds.
                written = write_pair_shard(layout.pairs(root, run_id, style, lvl), name, samples)
                figures = {"l_sem_initial": [s.meta["l_sem_initial"] for s in samples],
                           "l_sem_final": [s.meta["l_sem_final"] for s in samples]} if lvl == 2 else {}
                provenance.write_record(layout.shard_provenance(written), records[lvl], level=lvl, samples=len(samples),
                                        skipped_samples=skipped_here, **figures)
                summary["samples"][str(lvl)] += len(samples)
                summary["samples_written"][str(lvl)] += len(samples)
                if lvl == 2:
                    l_sem_initial += figures["l_sem_initial"]
                    l_sem_final += figures["l_sem_final"]
            summary["shards_written"] += 1
        if progress is not None:
            progress(index + 1, len(todo), {"shard": name, "levels_written": missing,
                                            "elapsed_s": round(time.time() - started, 1),
                                            "l_sem_final_mean": float(np.mean(l_sem_final)) if l_sem_final else None})

    if l_sem_initial:
        summary["l_sem_initial_mean"] = float(np.mean(l_sem_initial))
        summary["l_sem_final_mean"] = float(np.mean(l_sem_final))
    # The pairs' identity for the stages that consume them: what every output shard was made from.
    summary["sha256"] = {f"level{lvl}": provenance.sha256_json({name: records[lvl] for _, name, _, records in todo})
                         for lvl in chosen}
    summary["contact_sheet"] = write_contact_sheet(root, run_id, style, chosen)
    storage.write_json(layout.pairs_summary(root, run_id, style), summary)
    return summary


def _add_recorded(summary: dict, level: int, record_uri: str, l_sem_initial: list, l_sem_final: list) -> None:
    """Add a reused output shard's recorded figures (samples, undecodable images, level-2 L_sem) to the summary."""
    try:
        record = storage.read_json(record_uri)
    except (ValueError, storage.StorageError):
        return          # unreadable records make the shard stale, so this is not reached for a reused one
    summary["samples"][str(level)] += int(record.get("samples", 0))
    known = {(s["shard"], s["key"]) for s in summary["skipped_samples"]}
    summary["skipped_samples"] += [s for s in record.get("skipped_samples", []) if (s["shard"], s["key"]) not in known]
    if level == 2:
        l_sem_initial += record.get("l_sem_initial", [])
        l_sem_final += record.get("l_sem_final", [])


def _remove_orphans(root: str, run_id: str, style: str, levels: Sequence[int], names: set[str]) -> list[str]:
    """Delete output shards (and records) whose dataset shard no longer exists; returns the deleted shard URIs."""
    removed = []
    for lvl in levels:
        for uri in shards.list_shards(layout.pairs(root, run_id, style, lvl)):
            if storage.basename(uri) not in names:
                storage.delete(layout.shard_provenance(uri))
                storage.delete(uri)
                removed.append(uri)
    return removed


def write_contact_sheet(root: str, run_id: str, style: str, levels: Sequence[int],
                        rows: int = CONTACT_SHEET_ROWS) -> str:
    """Contact sheet of the first `rows` pairs of each level: one row per style image, columns S | P1 | P2 | P3."""
    by_level: dict[int, dict[str, PairSample]] = {}
    order: list[str] = []
    style_images: dict[str, np.ndarray] = {}
    for lvl in levels:
        level_shards = shards.list_shards(layout.pairs(root, run_id, style, lvl))
        if not level_shards:
            continue
        by_level[lvl] = {}
        for sample in read_pairs(level_shards):   # streamed: stops after `rows` samples
            if len(by_level[lvl]) >= rows:
                break
            by_level[lvl][sample.key] = sample
            style_images.setdefault(sample.key, sample.style_image)
            if sample.key not in order:
                order.append(sample.key)
    order = order[:rows]
    if not order:
        raise PairsError(f"{layout.pairs(root, run_id, style)}: no pair samples to show; the dataset shards were "
                         f"empty")
    grid = [[style_images[key]] + [by_level.get(lvl, {}).get(key).pseudo_photo
                                   if key in by_level.get(lvl, {}) else None for lvl in ALL_LEVELS]
            for key in order]
    uri = layout.pairs_contact_sheet(root, run_id, style)
    labels = ["S"] + [f"P{lvl}" for lvl in ALL_LEVELS]
    storage.write_bytes(uri, png_bytes(image_grid(grid, column_labels=labels)))
    return uri
