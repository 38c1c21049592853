"""Build the pseudo-pair shards of one style: `make_pairs(config, style=..., root=..., ...)`.

Input:  the style dataset `<root>/datasets/<style>/shard-*.tar` (keys `png`/`jpg`, `json`).
Output: `<root>/pairs/<style>/level{1,2,3}/shard-*.tar`, one output shard per input shard with the same name,
        each written in one atomic write, so an existing output shard is a finished one and a rerun skips it;
        `<root>/pairs/<style>/contact_sheet.png` (rows S | P1 | P2 | P3) and `summary.json`.
"""
from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from fstrain.data import shards, storage
from fstrain.pairs import levels as lv
from fstrain.pairs.records import NOISE_SOURCE, PairSample, decode_pair, encode_pair
from fstrain.settings import resolve_model_uri
from fstrain.stylize.images import from_uint8, image_grid, png_bytes, to_uint8

ALL_LEVELS = (1, 2, 3)
CONTACT_SHEET_ROWS = 8
Progress = Callable[[int, int, dict], None]     # (shards done, shards total, info)


class PairsError(RuntimeError):
    """Pseudo-pairs cannot be built (missing dataset, missing model, bad arguments); the message says what to do."""


# ---------------------------------------------------------------- layout


def pairs_prefix(root: str, style: str, level: int | None = None) -> str:
    prefix = storage.join(root, "pairs", style)
    return prefix if level is None else storage.join(prefix, f"level{level}")


def dataset_prefix(root: str, style: str) -> str:
    return storage.join(root, "datasets", style)


def baseline_generator_uri(root: str, run_id: str, style: str) -> str:
    """The baseline run's final g_ema: `<root>/runs/<run>/<style>/baseline/final/generator.pt` (fstrain.train)."""
    from fstrain.train.checkpointing import final_generator_uri
    return final_generator_uri(storage.join(root, "runs", run_id, style, "baseline"))


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
    from fstrain.models.checkpoints import load_generator
    from fstrain.models.registry import fetch, sha256_file

    models_cfg = config.models
    hashes: dict[str, str] = {}

    def local(name: str, uri: str, relative_to_root: bool = True) -> str:
        path = fetch(resolve_model_uri(uri, root) if relative_to_root else uri, models_cfg.sha256.get(name))
        hashes[name] = sha256_file(path)
        return str(path)

    base = load_generator(local("base_generator", models_cfg.base_generator), load_discriminator=False)
    models = PairModels(base_generator=base.generator.to(device).eval(), encoder_zplus=None, encoder_wplus=None,
                        hashes=hashes)
    if 1 in levels or 2 in levels:
        from fstrain.models.psp import load_encoder
        models.encoder_zplus = load_encoder(local("encoder_zplus", models_cfg.encoder_zplus)).to(device).eval()
    if 3 in levels:
        from fstrain.models.psp import load_encoder
        models.encoder_wplus = load_encoder(local("encoder_wplus", models_cfg.encoder_wplus)).to(device).eval()
    if 2 in levels:
        if not baseline_generator_uri:
            raise PairsError("level 2 optimises against the baseline fine-tune G*: pass baseline_generator_uri "
                             "(CLI: --baseline URI, or --run-id to use the run's baseline), or drop level 2")
        from fstrain.models.identity import load_identity
        from fstrain.models.perceptual import load_lpips
        star = load_generator(local("baseline_generator", baseline_generator_uri, relative_to_root=False),
                              load_discriminator=False)
        models.generator_star = star.generator.to(device).eval()
        lpips = load_lpips(local("lpips_backbone", models_cfg.lpips_backbone), net=models_cfg.lpips_net).to(device)
        identity = None
        if config.train.lambda_id:
            identity = load_identity(local("identity", models_cfg.identity), kind=models_cfg.identity_kind).to(device)
        models.semantic_loss = SemanticLoss(lpips, identity, lambda_id=config.train.lambda_id, reduction="none")
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
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.LANCZOS)
        return np.asarray(image).copy()


def _batches(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# ---------------------------------------------------------------- the whole style


def make_pairs(config, *, style: str, root: str, levels: Iterable[int] | str | None = None,
               baseline_generator_uri: str | None = None, progress: Progress | None = None,
               device: str | torch.device | None = None, models: PairModels | None = None) -> dict:
    """Build (or finish) the pair shards of `style` for `levels`; returns a summary dict (also saved as JSON).

    Resumable per shard: output shards that exist are skipped; a shard whose levels all exist is not even read.
    `models` may be passed pre-loaded (tests, or a caller that builds pairs for several datasets).
    Summary counts (`samples`, `l_sem_initial_mean`/`l_sem_final_mean`) cover the shards written by this call;
    style images that do not decode are listed in `skipped_samples` with shard, key and reason.
    """
    chosen = parse_levels(levels if levels is not None else config.pairs.levels)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    inputs = shards.list_shards(dataset_prefix(root, style))
    if not inputs:
        raise PairsError(f"{dataset_prefix(root, style)}: no dataset shards for style {style!r}; ingest the style "
                         f"images first (python -m fstrain.ingest SRC {root} --style {style} --size N)")

    todo = []
    for shard_uri in inputs:
        name = shard_uri.rstrip("/").rsplit("/", 1)[-1]
        missing = [lvl for lvl in chosen if not storage.exists(storage.join(pairs_prefix(root, style, lvl), name))]
        todo.append((shard_uri, name, missing))

    summary = {"style": style, "levels": chosen, "shards": len(inputs), "shards_written": 0, "shards_skipped": 0,
               "samples": {str(lvl): 0 for lvl in chosen}, "skipped_samples": [], "l_sem_initial_mean": None,
               "l_sem_final_mean": None, "outputs": {str(lvl): pairs_prefix(root, style, lvl) for lvl in chosen}}
    if any(missing for _, _, missing in todo) and models is None:
        models = load_pair_models(config, root=root, levels=chosen, baseline_generator_uri=baseline_generator_uri,
                                  device=device)

    l_sem_initial: list[float] = []
    l_sem_final: list[float] = []
    started = time.time()
    for index, (shard_uri, name, missing) in enumerate(todo):
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
            per_level: dict[int, list[PairSample]] = {lvl: [] for lvl in missing}
            for batch in _batches(list(range(len(keys))), config.pairs.batch_size):
                made = pairs_for_batch(models, [keys[i] for i in batch], np.stack([pixels[i] for i in batch]),
                                       missing, style=style, optimise_steps=config.pairs.optimise_steps,
                                       lr=config.pairs.lr)
                for lvl, samples in made.items():
                    per_level[lvl].extend(samples)
            for lvl, samples in per_level.items():
                write_pair_shard(pairs_prefix(root, style, lvl), name, samples)
                summary["samples"][str(lvl)] += len(samples)
                if lvl == 2:
                    l_sem_initial += [s.meta["l_sem_initial"] for s in samples]
                    l_sem_final += [s.meta["l_sem_final"] for s in samples]
            summary["shards_written"] += 1
        if progress is not None:
            progress(index + 1, len(todo), {"shard": name, "levels_written": missing,
                                            "elapsed_s": round(time.time() - started, 1),
                                            "l_sem_final_mean": float(np.mean(l_sem_final)) if l_sem_final else None})

    if l_sem_initial:
        summary["l_sem_initial_mean"] = float(np.mean(l_sem_initial))
        summary["l_sem_final_mean"] = float(np.mean(l_sem_final))
    summary["contact_sheet"] = write_contact_sheet(root, style, chosen)
    storage.write_json(storage.join(pairs_prefix(root, style), "summary.json"), summary)
    return summary


def write_contact_sheet(root: str, style: str, levels: Sequence[int], rows: int = CONTACT_SHEET_ROWS) -> str:
    """Contact sheet of the first `rows` pairs of each level: one row per style image, columns S | P1 | P2 | P3."""
    by_level: dict[int, dict[str, PairSample]] = {}
    order: list[str] = []
    style_images: dict[str, np.ndarray] = {}
    for lvl in levels:
        level_shards = shards.list_shards(pairs_prefix(root, style, lvl))
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
        raise PairsError(f"{pairs_prefix(root, style)}: no pair samples to show; the dataset shards were empty")
    grid = [[style_images[key]] + [by_level.get(lvl, {}).get(key).pseudo_photo
                                   if key in by_level.get(lvl, {}) else None for lvl in ALL_LEVELS]
            for key in order]
    uri = storage.join(pairs_prefix(root, style), "contact_sheet.png")
    labels = ["S"] + [f"P{lvl}" for lvl in ALL_LEVELS]
    storage.write_bytes(uri, png_bytes(image_grid(grid, column_labels=labels)))
    return uri
