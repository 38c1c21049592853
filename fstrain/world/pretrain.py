"""Train every instrument the method needs on the synthetic world's images only, and report how good each is.

    python -m fstrain.world.pretrain OUT [--budget-min 60] [--size 64] [--seed 0] [--reference-autoencoder DIR]
                                         [--stages perceptual,eval_perceptual] [--generator-channel-max 16]
                                         [--device cpu|cuda]

OUT receives the files `fstrain.models.init` writes, under the same models.json keys, so every config that points
at a models folder works unchanged (lpips_net: alex):

    generator.pt (+ .json)             base StyleGAN2 G and D, rosinality layout (fstrain.world.generator)
    encoder_wplus.pt, encoder_zplus.pt pSp W+ / Z+ encoders trained against that G (fstrain.world.encoders)
    identity.pth                       arcface_torch IResNet trained with an ArcFace margin (the L_ID role)
    lpips_alex_backbone.pth (+ .json)  AlexNet trunk trained on all six domains, with LPIPS heads calibrated on
                                       the world's 2AFC triplets inside the file (the LPIPS role)
and the *evaluation* instruments, trained on other identities, with other seeds (and mostly other architectures):
    eval_lpips_alex_backbone.pth       a second perceptual net, EVAL identities, another seed (GT perceptual)
    eval_features.pth (+ .json)        image reader: FID features (set evaluate.inception_weights to it) and the
                                       attribute reader's heads
    eval_identity.pth                  pSp IR-SE identity net (evaluation identity similarity)
    instruments.json / .md             the validation report on held-out identities (fstrain.world.report)
    models.json                        every file with its sha256

Identities: TRAIN / EVAL / HELDOUT of `fstrain.world.splits`. Each stage gets a share of the budget (unused time
passes on to later stages) and prints its time. Rendering and data sizes shrink with the budget, so a tiny budget
gives a quick end-to-end run (tests). The 32 px autoencoder warm start (fstrain.world.autoencoder, the demo's
base model before assets/world64) is trained too (or read from --reference-autoencoder) as the FID reference G
must beat. G and the encoders are stored in float16 before the report, so the report measures the shipped files;
the generator's warm-start encoder is deleted once the encoders stage has started from it.

--stages retrains only the named stages inside an OUT that a full run wrote (same --size and --seed; each stage
gets its share of --budget-min, while data sizes and the report's held-out sets stay the full run's, so the report
compares with it), then rewrites the report, models.json and manifest; the manifest keeps the full
run's command and lists every rerun's, so the folder still says exactly how each file was made. A rerun of
`generator` continues the folder's G/D with more adversarial steps, and one of `encoders` continues its E_w+
(from the encoder trained alongside G when a generator rerun left one); `generator` needs `encoders` with it.
--generator-channel-max N sets G/D's width (fstrain.world.generator's default: 16); with --stages generator,encoders
it trains a fresh G/D of that width in place of the folder's (a new width cannot continue the old weights).
--device cuda trains the generator and encoders stages on a GPU (the data and random draws stay on the CPU, so a
seed draws the same batches); every other stage and the report run on the CPU.

!! World instruments, not real ones: they know the synthetic world only. Real runs use FFHQ StyleGAN2, pSp,
!! ArcFace, LPIPS (ImageNet) and Inception weights through the same config keys (README, "Real checkpoints").
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from fstrain.models.registry import save_json, save_torch
from fstrain.world.files import FILES, WARM_START_ENCODER

WARNING = ("WORLD instruments from fstrain.world.pretrain: trained on synthetic portraits only, not on real faces "
           "(not FFHQ / ArcFace / ImageNet)")
Log = Callable[[str], None]

# Share of the total budget per stage (the remaining time is re-split over the remaining stages as they run).
# G gets the most: its samples are what the demo shows, and on CPU it is the furthest from done (a 0.42 share of
# 50 min left it at twice the FID that 25 more minutes of adversarial steps reached).
# The report measures for 50-200 s at 64 px.
SHARES = {"identity": 0.05, "perceptual": 0.05, "generator": 0.55, "encoders": 0.09, "reader": 0.12,
          "eval_identity": 0.04, "eval_perceptual": 0.04, "report": 0.06}
STAGES = tuple(SHARES)


@dataclasses.dataclass
class Plan:
    """Data sizes for a budget: full size at >= 60 minutes, shrinking linearly (with floors) below."""
    budget_s: float
    size: int
    seed: int
    identity_ids: int = 1000
    identity_views: int = 6
    perceptual_ids: int = 1000
    perceptual_views: int = 4
    triplets: int = 1200
    heldout_triplets: int = 600
    reader_ids: int = 4000          # 1500 overfitted (4000 steps were ~50 passes, hair style 84 % in impasto);
                                    # 3000 reached 91.6 %
    reader_views: int = 4
    eval_identity_ids: int = 1000
    eval_identity_views: int = 6
    verify_ids: int = 300
    verify_views: int = 4
    reader_val_ids: int = 200       # per domain: +-3 % on an accuracy near 90 %
    fid_samples: int = 1000
    encoder_photos: int = 300

    @classmethod
    def for_budget(cls, budget_s: float, size: int, seed: int) -> "Plan":
        plan = cls(budget_s, size, seed)
        f = min(1.0, budget_s / 3600.0)
        floors = {"identity_ids": 40, "perceptual_ids": 40, "triplets": 60, "heldout_triplets": 60,
                  "reader_ids": 60, "eval_identity_ids": 40, "verify_ids": 40, "reader_val_ids": 12,
                  "fid_samples": 300, "encoder_photos": 32}
        for name, floor in floors.items():
            setattr(plan, name, max(floor, int(getattr(plan, name) * f)))
        return plan


class Stages:
    """Splits the budget across stages as they run and records each one's time."""

    def __init__(self, budget_s: float, log: Log, only: tuple[str, ...] = STAGES):
        # A partial rerun (`only`) gives each of its stages the share it has in a full run of this budget.
        self.budget_s = budget_s * sum(SHARES[k] for k in only)
        self.started = time.perf_counter()
        self.log = log
        self.remaining = {k: SHARES[k] for k in only}
        self.records: dict[str, dict[str, Any]] = {}

    def budget(self, stage: str) -> float:
        left = max(self.budget_s - (time.perf_counter() - self.started), 1.0)
        share = self.remaining[stage] / sum(self.remaining.values())
        return left * share

    def run(self, stage: str, fn: Callable[[float], dict[str, Any]]) -> dict[str, Any]:
        budget = self.budget(stage)
        self.log(f"[{stage}] budget {budget:.0f} s")
        t0 = time.perf_counter()
        info = fn(budget)
        seconds = round(time.perf_counter() - t0, 1)
        self.remaining.pop(stage)
        info = dict(info)
        if "seconds" in info:
            info["training_seconds"] = info.pop("seconds")
        self.records[stage] = {"seconds": seconds, "budget_seconds": round(budget, 1), **info}
        self.log(f"[{stage}] done in {seconds} s (budget {budget:.0f} s)")
        return info

    def total(self) -> float:
        return round(time.perf_counter() - self.started, 1)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _half_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp16 for weights; BatchNorm statistics and integer buffers stay as they are."""
    return {k: v.half() if v.is_floating_point() and not k.endswith(("running_mean", "running_var")) else v
            for k, v in state.items()}


# Float16 halves the folder (the issue's 30 MB for shipping it): the generator's g/d/g_ema and the encoders' weights.
# Every loader copies into float32 modules, so the report below already measures the rounded weights.
HALVED_FILES = {"generator": ("generator",), "encoders": ("encoder_wplus", "encoder_zplus")}   # stage -> files


def halve_checkpoint(path: Path) -> None:
    """Rewrite a rosinality training checkpoint ({"g", "d", "g_ema", ...}) or a pSp checkpoint ({"state_dict",
    ...}) with float16 weights; latent_avg, opts and args stay as they are."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("g", "d", "g_ema", "state_dict"):
        if isinstance(checkpoint.get(key), dict):
            checkpoint[key] = _half_state(checkpoint[key])
    save_torch(checkpoint, str(path))


def save_identity_half(path: Path, net: nn.Module) -> None:
    backbone = getattr(net, "backbone", net)
    save_torch(_half_state({k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}), str(path))


# ---------------------------------------------------------------- stages


def stage_identity(out: Path, plan: Plan, budget: float, log: Log, *, arch: str, identity_set, seed: int,
                   file: str, n_ids: int, views: int) -> dict[str, Any]:
    from fstrain.world.identity import IdentityNetSettings, train_identity_net
    from fstrain.world.splits import render_identities
    t0 = time.perf_counter()
    data = render_identities(identity_set, n_ids, views, "photo", plan.size, pose="jitter")
    render_s = time.perf_counter() - t0
    log(f"  rendered {len(data)} {identity_set.name} photos ({n_ids} identities x {views} views) in {render_s:.0f} s")
    settings = IdentityNetSettings(arch=arch, identities=n_ids, views=views)
    if arch == "irse":     # the evaluation net: another architecture, narrower embedding
        settings = dataclasses.replace(settings, channels=(16, 32, 48, 96), embedding=96)
    net, info = train_identity_net(data, settings, seed, max(budget - render_s - 2, 5), log, name=file)
    save_identity_half(out / file, net)
    return {**info, "render_seconds": round(render_s, 1), "identity_set": identity_set.name}


def stage_perceptual(out: Path, plan: Plan, budget: float, log: Log, *, identity_set, seed: int,
                     file: str) -> dict[str, Any]:
    """An LPIPS trunk + domain-balanced calibrated heads on `identity_set` (TRAIN: the training-loss net; EVAL:
    the evaluation net that grades GT perceptual distances, so no fine-tune is graded by its own loss)."""
    from fstrain.world.perceptual import (PerceptualSettings, calibrate_heads, make_triplets, parameter_scale,
                                          rescale_heads, save_perceptual, train_trunk)
    from fstrain.world.splits import TRAIN, render_domain_per_identity
    t0 = time.perf_counter()
    data = render_domain_per_identity(identity_set, plan.perceptual_ids, plan.perceptual_views, plan.size)
    triplets = make_triplets(identity_set, plan.triplets, plan.size, seed, parameter_scale(TRAIN))
    render_s = time.perf_counter() - t0
    log(f"  rendered {len(data)} {identity_set.name} images (six domains) and {plan.triplets} 2AFC triplets in "
        f"{render_s:.0f} s")
    model, info = train_trunk(data, PerceptualSettings(), seed + 100, max(budget - render_s - 5, 5), log)
    info["calibration"] = calibrate_heads(model, triplets, seed, log=log)
    info["scale"] = rescale_heads(model, data)
    log(f"  heads scaled x{info['scale']['factor']:.3g}: different people of one domain now "
        f"{info['scale']['target']} apart on average (was {info['scale']['mean_distance_before']:.3g})")
    save_perceptual(str(out / file), model,
                    {"warning": WARNING, "seed": seed + 100,
                     "heads": "calibrated on world 2AFC triplets, one distance scale for all six domains",
                     "trunk_trained_on": f"{identity_set.name} identities, six domains"})
    return {**info, "render_seconds": round(render_s, 1), "identity_set": identity_set.name}


def stage_reader(out: Path, plan: Plan, budget: float, log: Log) -> dict[str, Any]:
    from fstrain.models.reader import save_reader
    from fstrain.world.reader import ReaderSettings, train_reader
    from fstrain.world.splits import EVAL, render_mixed_domains
    t0 = time.perf_counter()
    data = render_mixed_domains(EVAL, plan.reader_ids, plan.reader_views, plan.size, seed=plan.seed + 200)
    render_s = time.perf_counter() - t0
    log(f"  rendered {len(data)} EVAL images (six domains) in {render_s:.0f} s")
    net, info = train_reader(data, ReaderSettings(), plan.seed + 200, max(budget - render_s - 2, 5), log)
    save_reader(str(out / FILES["eval_features"]), net, half=True)
    save_json({"format": "fstrain image reader", "random_init": False, "warning": WARNING, "seed": plan.seed + 200,
               "trained_on": "EVAL identities, six domains", "heads": sorted(net.heads)},
              str(out / FILES["eval_features"]) + ".json")
    return {**info, "render_seconds": round(render_s, 1)}


def stage_generator(out: Path, plan: Plan, budget: float, log: Log, rerun: bool,
                    channel_max: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """A fresh G/D (a full run, or a rerun given `channel_max`: a new width cannot continue the old weights), or
    more adversarial steps on the folder's G/D (a rerun without it), as a rerun of the encoders continues E_w+."""
    from fstrain.world.generator import GeneratorSettings, continue_generator, train_generator
    if rerun and channel_max is None:
        return {"source": "fstrain.world.generator (continued)",
                **continue_generator(out, seed=plan.seed, budget_s=budget, log=log, device=device)}
    settings = GeneratorSettings() if channel_max is None else GeneratorSettings(channel_max=channel_max)
    return {"source": "fstrain.world.generator", **train_generator(out, size=plan.size, seed=plan.seed,
                                                                   budget_s=budget, log=log, settings=settings,
                                                                   device=device)}


def stage_encoders(out: Path, plan: Plan, budget: float, log: Log, device: str = "cpu") -> dict[str, Any]:
    from fstrain.world.encoders import train_encoders
    # E_w+ starts from the generator's warm-start encoder in a full run; a rerun of this stage, after the run has
    # deleted that file, continues from the folder's own E_w+ (train_encoders' "auto" warm start).
    return {"source": "fstrain.world.encoders",
            **train_encoders(out, generator_path=str(out / FILES["generator"]),
                             identity_path=str(out / FILES["identity"]),
                             lpips_backbone_path=str(out / FILES["lpips_backbone"]), size=plan.size, seed=plan.seed,
                             budget_s=budget, log=log, device=device)}


def reference_autoencoder(path: str | None, log: Log) -> tuple[str | None, dict[str, Any]]:
    """The demo's current 32 px autoencoder G: read from `path`, or trained now with its default settings."""
    if path == "none":
        return None, {"note": "skipped (--reference-autoencoder none)"}
    if path:
        return str(Path(path) / "generator.pt"), {"source": path}
    from fstrain.world.autoencoder import PretrainSettings, pretrain_models
    tmp = tempfile.mkdtemp(prefix="world-ae-reference-")
    t0 = time.perf_counter()
    pretrain_models(tmp, PretrainSettings(), log=lambda line: log("  [reference autoencoder] " + line))
    return str(Path(tmp) / "generator.pt"), {"source": "trained now with PretrainSettings() defaults",
                                             "seconds": round(time.perf_counter() - t0, 1)}


# ---------------------------------------------------------------- the report stage


def randomized(module: nn.Module, seed: int) -> nn.Module:
    """A copy of `module` with every layer re-initialised from `seed` (the same architecture, random weights)."""
    copy_ = copy.deepcopy(module)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in copy_.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
            elif isinstance(getattr(m, "weight", None), nn.Parameter) and hasattr(m, "lr_mul"):
                m.weight.data.normal_().div_(m.lr_mul)      # rosinality Equal* layers: N(0, 1) / lr_mul
                if isinstance(getattr(m, "bias", None), nn.Parameter):
                    m.bias.data.zero_()
    return copy_.eval()


def random_generator(g: nn.Module, seed: int) -> nn.Module:
    from fstrain.models.stylegan2 import Generator
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Generator(g.size, g.style_dim, g.n_mlp, channel_multiplier=g.channel_multiplier,
                         blur_kernel=g.blur_kernel, lr_mlp=g.lr_mlp, channel_max=g.channel_max).eval()


def stage_report(out: Path, plan: Plan, budget: float, log: Log, reference: str | None) -> dict[str, Any]:
    from fstrain.metrics import load_inception
    from fstrain.models.checkpoints import load_generator
    from fstrain.models.identity import load_identity
    from fstrain.models.perceptual import load_lpips
    from fstrain.models.psp import load_encoder
    from fstrain.world import report as R
    from fstrain.world.identity import embed, verify
    from fstrain.world.perceptual import (domain_scales, make_triplets, new_lpips, parameter_scale, pixel_l2,
                                          pixel_two_afc, same_person_two_afc, two_afc)
    from fstrain.world.reader import attribute_scores, new_reader, read_attributes, ReaderSettings, validation_set
    from fstrain.world.reading import batch_targets, index_targets
    from fstrain.world.splits import HELDOUT, TRAIN, render_domain_per_identity, render_identities

    tables: dict[str, Any] = {}
    t0 = time.perf_counter()
    photos = render_identities(HELDOUT, plan.verify_ids, plan.verify_views, "photo", plan.size, first_view=1000)
    fid_photos = render_identities(HELDOUT, plan.fid_samples, 1, "photo", plan.size, first_identity=plan.verify_ids,
                                   first_view=2000)
    fid_photos_b = render_identities(HELDOUT, plan.fid_samples, 1, "photo", plan.size,
                                     first_identity=plan.verify_ids + plan.fid_samples, first_view=2000)
    domains_val = validation_set(HELDOUT, plan.reader_val_ids, plan.size)
    triplets = make_triplets(HELDOUT, plan.heldout_triplets, plan.size, plan.seed + 1, parameter_scale(TRAIN))
    people = render_domain_per_identity(HELDOUT, plan.heldout_triplets + 6, 2, plan.size,
                                        first_identity=plan.verify_ids + 2 * plan.fid_samples)
    log(f"  rendered held-out validation sets in {time.perf_counter() - t0:.0f} s")

    # Evaluation feature net + attribute reader
    extractor = load_inception(str(out / FILES["eval_features"]))
    random_reader = new_reader(ReaderSettings(), plan.size, plan.seed + 9200).eval()
    from fstrain.models.reader import ReaderFeatures
    random_extractor = ReaderFeatures(random_reader, random_init=True)
    styles = {d: x for d, x in R.split_domains(domains_val).items() if d != "photo"}
    tables["Evaluation feature net: FID between held-out sets (photo vs photo small, photo vs style large)"] = {
        "trained": R.domain_fids(extractor, fid_photos.tensor(), fid_photos_b.tensor(), styles),
        "random weights": R.domain_fids(random_extractor, fid_photos.tensor(), fid_photos_b.tensor(), styles)}
    reader = extractor.reader
    scores, random_scores = attribute_scores(reader, domains_val), attribute_scores(random_reader, domains_val)
    tables["Attribute reader (held-out identities; accuracy, errors as fraction of range)"] = {
        **{f"trained / {d}": s for d, s in scores.items()}, **{f"random / {d}": s for d, s in random_scores.items()}}

    # Identity nets
    identity = load_identity(str(out / FILES["identity"]))
    eval_identity = load_identity(str(out / FILES["eval_identity"]))
    x = photos.tensor()
    rows = {}
    for name, net in (("identity.pth (training-loss net, IResNet)", identity),
                      ("eval_identity.pth (evaluation net, IR-SE)", eval_identity)):
        rows[f"{name}: trained"] = verify(embed(net, x), photos.identity_index, plan.seed)
        rows[f"{name}: random weights"] = verify(embed(randomized(net, plan.seed + 9300), x), photos.identity_index,
                                                 plan.seed)
    rows["chance (random embeddings)"] = verify(torch.randn(len(x), 128, generator=torch.Generator().manual_seed(0)),
                                                photos.identity_index, plan.seed)
    tables["Identity nets: 1:1 verification on held-out photo pairs"] = rows

    # Perceptual nets
    lpips = load_lpips(str(out / FILES["lpips_backbone"]), net="alex")
    uniform = copy.deepcopy(lpips)
    for lin in uniform.lins:
        nn.init.ones_(lin.model[-1].weight)
    random_lpips = new_lpips(plan.seed + 9400)
    perceptual_rows = {"trained trunk, calibrated heads (shipped)": lpips,
                       "trained trunk, uniform heads": uniform}
    if (out / FILES["eval_lpips_backbone"]).is_file():
        perceptual_rows["evaluation net (eval_lpips_alex_backbone.pth)"] = load_lpips(
            str(out / FILES["eval_lpips_backbone"]), net="alex")
    perceptual_rows["random trunk, uniform heads"] = random_lpips
    tables["Perceptual net: 2AFC agreement with the world's parameter distance (held-out triplets)"] = {
        **{name: two_afc(net, triplets) for name, net in perceptual_rows.items()}, "pixel L2": pixel_two_afc(triplets)}
    tables["Perceptual net: same person in another view nearer than another person (held-out, same domain)"] = {
        **{name: same_person_two_afc(net, people) for name, net in perceptual_rows.items()},
        "pixel L2": same_person_two_afc(pixel_l2, people)}
    tables["Perceptual net: mean distance between different people, per domain (held-out; one scale wanted)"] = {
        **{name: domain_scales(net, people) for name, net in perceptual_rows.items()},
        "pixel L2": domain_scales(pixel_l2, people)}

    # Generator
    loaded = load_generator(str(out / FILES["generator"]))
    g = loaded.generator.eval()
    reference_stats = R.statistics(extractor, fid_photos.tensor())
    samples = R.generator_samples(g, plan.fid_samples, plan.seed)
    R.sample_grid(samples[:64]).save(out / "generator_samples_grid.png")
    g_rows = {"trained G": {"fid": R.fid(extractor, samples, reference_stats), "samples": plan.fid_samples},
              "random G (same architecture)": {"fid": R.fid(extractor, R.generator_samples(
                  random_generator(g, plan.seed + 9500), plan.fid_samples, plan.seed), reference_stats),
                  "samples": plan.fid_samples},
              "held-out photos (other identities)": {"fid": R.fid(extractor, fid_photos_b.tensor(), reference_stats),
                                                     "samples": plan.fid_samples}}
    if reference:
        ae = load_generator(reference).generator.eval()
        g_rows["32 px autoencoder warm start (reference)"] = {
            "fid": R.fid(extractor, R.generator_samples(ae, plan.fid_samples, plan.seed), reference_stats),
            "samples": plan.fid_samples}
    tables["Base generator G: in-world FID against held-out photos (evaluation feature net)"] = g_rows

    # Encoders
    encoder = load_encoder(str(out / FILES["encoder_wplus"]), space="w+")
    enc_photos = x[:plan.encoder_photos]
    truth = index_targets(batch_targets(photos), torch.arange(len(enc_photos)))
    tables["E_w+ reconstruction of held-out photos (LPIPS: world perceptual net; identity: evaluation net)"] = {
        "trained E_w+": R.encoder_scores(encoder, g, enc_photos, lpips, eval_identity, reader, truth),
        "random E_w+ (same architecture, same G)": R.encoder_scores(randomized(encoder, plan.seed + 9600), g,
                                                                     enc_photos, lpips, eval_identity, reader, truth),
        "the photos themselves (reader's ceiling)": R.attributes_kept(read_attributes(reader, enc_photos), truth)}
    return {"tables": tables}


def checks(tables: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's Done-when lines, evaluated on the report's figures."""
    out = []
    g = next(v for k, v in tables.items() if k.startswith("Base generator"))
    if "32 px autoencoder warm start (reference)" in g:
        ours, ref = g["trained G"]["fid"], g["32 px autoencoder warm start (reference)"]["fid"]
        out.append({"what": "G in-world FID <= 1/3 of the 32 px autoencoder's", "met": ours <= ref / 3,
                    "measured": f"{ours} vs {ref} (ratio {ours / max(ref, 1e-9):.3f})"})
    ids = next(v for k, v in tables.items() if k.startswith("Identity nets"))
    trained = ids["identity.pth (training-loss net, IResNet): trained"]
    random = ids["identity.pth (training-loss net, IResNet): random weights"]
    out.append({"what": "identity net 1:1 verification >= 98% on held-out photo pairs",
                "met": trained["verification_accuracy"] >= 0.98,
                "measured": f"{trained['verification_accuracy']:.4f} (TAR@FAR=1e-3 {trained['tar_at_far_1e-3']:.4f}; "
                            f"random weights {random['verification_accuracy']:.4f}, chance "
                            f"{ids['chance (random embeddings)']['verification_accuracy']:.4f})"})
    attrs = next(v for k, v in tables.items() if k.startswith("Attribute reader"))
    worst: dict[str, tuple[float, str]] = {}
    for row, scores in attrs.items():
        if not row.startswith("trained / "):
            continue
        domain = row[len("trained / "):]
        for key in ("glasses_accuracy", "hair_style_accuracy"):
            if key not in worst or scores[key] < worst[key][0]:
                worst[key] = (scores[key], domain)
        for key in ("skin_error", "hair_error", "painted_skin_error", "painted_hair_error"):
            if key in scores and (key not in worst or scores[key] > worst[key][0]):
                worst[key] = (scores[key], domain)
    for key in ("glasses_accuracy", "hair_style_accuracy"):
        out.append({"what": f"attribute reader {key} >= 0.95 in every domain", "met": worst[key][0] >= 0.95,
                    "measured": f"worst {worst[key][0]:.4f} ({worst[key][1]})"})
    for key in ("skin_error", "hair_error", "painted_skin_error", "painted_hair_error"):
        if key in worst:
            out.append({"what": f"attribute reader {key} <= 0.10 of the colour range in every domain scored",
                        "met": worst[key][0] <= 0.10, "measured": f"worst {worst[key][0]:.4f} ({worst[key][1]})"})
    scales = next((v for k, v in tables.items() if k.startswith("Perceptual net: mean distance")), None)
    if scales:
        shipped = scales["trained trunk, calibrated heads (shipped)"]
        out.append({"what": "perceptual net: different people equally far apart in every domain (max / min <= 3)",
                    "met": shipped["max_over_min"] <= 3,
                    "measured": f"max / min {shipped['max_over_min']} ({shipped['per_domain']})"})
    enc = next(v for k, v in tables.items() if k.startswith("E_w+"))
    sim = enc["trained E_w+"]["identity_cosine_mean"]
    out.append({"what": "E_w+ reconstruction identity similarity (evaluation identity net) >= 0.7 mean",
                "met": sim >= 0.7, "measured": f"{sim:.4f} (random encoder "
                                              f"{enc['random E_w+ (same architecture, same G)']['identity_cosine_mean']:.4f})"})
    return out


# ---------------------------------------------------------------- the whole command


def pretrain_world(out: str | Path, budget_min: float = 60.0, size: int = 64, seed: int = 0,
                   reference: str | None = None, command: str = "", log: Log = print,
                   only: tuple[str, ...] | None = None,
                   generator_channel_max: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """Every stage (or, with `only`, just those stages in a folder a full run wrote), then the report.
    `generator_channel_max` sets G/D's width (default: fstrain.world.generator.GeneratorSettings'); in a rerun
    of the generator stage it trains a fresh G/D at that width instead of continuing the folder's. `device` runs
    the generator and encoders stages there (e.g. "cuda"); the other stages and the report run on the CPU."""
    from fstrain.world.splits import EVAL, TRAIN
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    previous = _previous_report(out, size, seed) if only else None
    plan = _full_run_plan(previous) if previous else Plan.for_budget(budget_min * 60, size, seed)
    wanted = tuple(k for k in STAGES if only is None or k in only or k == "report")
    stages = Stages(budget_min * 60, log, wanted)
    log(WARNING)
    log(f"plan: {json.dumps(dataclasses.asdict(plan))}; stages: {', '.join(wanted)}")
    steps: dict[str, Callable[[float], dict[str, Any]]] = {
        "identity": lambda b: stage_identity(out, plan, b, log, arch="iresnet", identity_set=TRAIN, seed=seed + 1,
                                             file=FILES["identity"], n_ids=plan.identity_ids,
                                             views=plan.identity_views),
        "perceptual": lambda b: stage_perceptual(out, plan, b, log, identity_set=TRAIN, seed=seed,
                                                 file=FILES["lpips_backbone"]),
        "generator": lambda b: stage_generator(out, plan, b, log, rerun=previous is not None,
                                               channel_max=generator_channel_max, device=device),
        "encoders": lambda b: stage_encoders(out, plan, b, log, device=device),
        "reader": lambda b: stage_reader(out, plan, b, log),
        "eval_identity": lambda b: stage_identity(out, plan, b, log, arch="irse", identity_set=EVAL, seed=seed + 300,
                                                  file=FILES["eval_identity"], n_ids=plan.eval_identity_ids,
                                                  views=plan.eval_identity_views),
        "eval_perceptual": lambda b: stage_perceptual(out, plan, b, log, identity_set=EVAL, seed=seed + 400,
                                                      file=FILES["eval_lpips_backbone"]),
    }
    for stage in wanted:
        if stage in steps:
            stages.run(stage, steps[stage])
    for stage, keys in HALVED_FILES.items():
        if stage in wanted:
            for key in keys:
                halve_checkpoint(out / FILES[key])
    if "encoders" in wanted:
        (out / WARM_START_ENCODER).unlink(missing_ok=True)    # consumed: the encoders stage started E_w+ from it
    reference_info: dict[str, Any] = {}

    def report_stage(budget: float) -> dict[str, Any]:
        ref_path, info = reference_autoencoder(reference, log)
        reference_info.update(info)
        return stage_report(out, plan, budget, log, ref_path)

    tables = stages.run("report", report_stage).pop("tables")
    stages.records["report"].pop("tables", None)
    stages.records["report"]["note"] = f"incl. reference autoencoder: {reference_info}"
    for name, record in stages.records.items():
        record.setdefault("note", record.get("source", ""))
    reruns = []
    if previous is not None:
        # The stages this call did not run keep the full run's records; the command stays the full run's.
        # (reports before the "made by" column marked kept stages "(full run)", wrongly after a rerun of them)
        kept = {k: {**v, "note": re.sub(r"( \(full run\))+$", "", v.get("note") or "")}
                for k, v in previous["stages"].items() if k not in stages.records}
        stages.records = {k: stages.records.get(k, kept.get(k)) for k in STAGES
                          if k in stages.records or k in kept}
        reruns = previous.get("reruns", []) + [{"command": command, "stages": list(wanted),
                                                "seconds": stages.total(), "budget_seconds": stages.budget_s,
                                                "machine": machine()}]
        command, budget_min = previous["command"], previous["budget_seconds"] / 60
    report = {"warning": WARNING, "command": command, "seed": seed, "size": size,
              "budget_seconds": budget_min * 60,
              # the full run's own time; each rerun records its time in `reruns`
              "total_seconds": previous["total_seconds"] if previous else stages.total(),
              "machine": previous["machine"] if previous else machine(), "plan": dataclasses.asdict(plan),
              "stages": stages.records, "tables": tables, "checks": checks(tables), "notes": NOTES,
              **({"reruns": reruns} if reruns else {})}
    from fstrain.world.report import write_report
    write_report(out, report)
    write_models_json(out, plan, command, reruns)
    write_manifest(out, report)
    log(f"total {stages.total()} s (budget {stages.budget_s:.0f} s); report: {out / 'instruments.md'}")
    for stage, record in stages.records.items():
        log(f"  {stage:14s} {record['seconds']:8.1f} s")
    for check in report["checks"]:
        log(f"  [{'met' if check['met'] else 'MISSED'}] {check['what']}: {check['measured']}")
    return report


NOTES = [
    "Random-weights rows use the same architecture re-initialised from a fixed seed. Random conv nets already "
    "separate world identities by colour, so the identity nets' random rows sit well above 50 %; the 'chance' row "
    "(random embeddings) is the 50 % line.",
    "LPIPS heads are CALIBRATED (non-negative 1x1 weights fitted by logistic regression on 2AFC triplets labelled "
    "by parameter distance, plus a penalty that keeps every domain's mean distance on one scale), stored in the "
    "trunk file under lpips_lin.* keys.",
    "The evaluation nets (eval_features.pth, eval_identity.pth, eval_lpips_alex_backbone.pth) are trained on EVAL "
    "identities with other seeds than the training-loss nets (identity.pth, lpips_alex_backbone.pth: TRAIN "
    "identities); the feature net and the identity net also have other architectures.",
    "Colour errors are mean absolute per-channel errors divided by the channel's range over the held-out images "
    "of that domain. Identity skin colour is not scored in fantasy, identity hair colour not in anime/fantasy: "
    "those domains re-colour them per view (painted colours are scored everywhere).",
]


def _previous_report(out: Path, size: int, seed: int) -> dict[str, Any]:
    """The full run's report that a partial rerun (--stages) extends; it must exist and match --size / --seed."""
    path = out / "instruments.json"
    if not path.is_file():
        raise SystemExit(f"error: --stages reruns stages inside a folder a full run wrote; {path} does not exist "
                         f"(run without --stages first)")
    previous = json.loads(path.read_text())
    if (previous.get("size"), previous.get("seed")) != (size, seed):
        raise SystemExit(f"error: {out} was made with --size {previous.get('size')} --seed {previous.get('seed')}; "
                         f"a rerun must use the same (got --size {size} --seed {seed})")
    return previous


def _full_run_plan(previous: dict[str, Any]) -> Plan:
    """A rerun's data sizes: the full run's, so its report measures on the same held-out sets as the full run's (FID
    and the other figures move with the sample counts) and the folder's plan stays one plan; --budget-min sets only
    the rerun's time. Fields a report predates take what the full run's budget gives them."""
    plan = Plan.for_budget(previous["budget_seconds"], previous["size"], previous["seed"])
    known = {f.name for f in dataclasses.fields(Plan)}
    return dataclasses.replace(plan, **{k: v for k, v in previous.get("plan", {}).items() if k in known})


def machine() -> str:
    import os
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{os.cpu_count()}-core {platform.machine()} CPU, shared, torch threads {torch.get_num_threads()}, " \
           f"Python {sys.version.split()[0]}, torch {torch.__version__}{gpu}"


def write_models_json(out: Path, plan: Plan, command: str, reruns: list[dict] | None = None) -> dict[str, Any]:
    def entry(key: str, **extra: Any) -> dict[str, Any]:
        return {"file": FILES[key], "sha256": sha256_of(out / FILES[key]), **extra}   # file: relative to this folder
    manifest = {"random_init": False, "warning": WARNING, "command": command,
                **({"reruns": [r["command"] for r in reruns]} if reruns else {}),
                "args": {"size": plan.size, "seed": plan.seed, "budget_seconds": plan.budget_s, "lpips_net": "alex"},
                "models": {"base_generator": entry("generator"),
                           "encoder_wplus": entry("encoder_wplus", space="w+"),
                           "encoder_zplus": entry("encoder_zplus", space="z+"),
                           "identity": entry("identity", kind="arcface"),
                           "lpips_backbone": entry("lpips_backbone", net="alex")},
                "evaluation": {"inception_weights": entry("eval_features", role="FID features (evaluate."
                                                          "inception_weights) and attribute reader"),
                               "identity": entry("eval_identity", kind="irse50"),
                               **({"lpips_backbone": entry("eval_lpips_backbone", net="alex")}
                                  if (out / FILES["eval_lpips_backbone"]).is_file() else {})}}
    (out / "models.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


MANIFEST = "manifest.json"


def write_manifest(out: Path, report: dict[str, Any]) -> dict[str, Any]:
    """What produced this folder and the sha256 of every file in it (all but the manifest itself)."""
    files = {p.name: {"sha256": sha256_of(p), "bytes": p.stat().st_size}
             for p in sorted(out.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {"warning": WARNING, "command": report["command"], "seed": report["seed"], "size": report["size"],
                "machine": report["machine"], "total_seconds": report["total_seconds"],
                "budget_seconds": report["budget_seconds"], "report": "instruments.json / instruments.md",
                **({"reruns": report["reruns"]} if report.get("reruns") else {}),
                "checks": report["checks"], "files": files}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def verify_manifest(folder: str | Path) -> list[str]:
    """Files whose sha256 differs from the manifest, or that are missing (empty list: the folder is intact)."""
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    problems = []
    for name, entry in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif sha256_of(path) != entry["sha256"]:
            problems.append(f"{name}: sha256 {sha256_of(path)[:12]}... != manifest {entry['sha256'][:12]}...")
    return problems


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fstrain.world.pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="output folder")
    parser.add_argument("--budget-min", type=float, default=60.0, help="total time budget in minutes (default 60)")
    parser.add_argument("--size", type=int, default=64, help="image / generator size in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", default=None,
                        help=f"comma-separated stages to retrain inside OUT (a folder a full run wrote), then the "
                             f"report; 'generator' and 'encoders' continue training the folder's models, the others "
                             f"start afresh; one of: {', '.join(k for k in STAGES if k != 'report')}")
    parser.add_argument("--reference-autoencoder", default=None,
                        help="folder with the 32 px autoencoder's generator.pt for the FID comparison; 'none' to "
                             "skip it; default: train it now with fstrain.world.autoencoder's defaults")
    parser.add_argument("--generator-channel-max", type=int, default=None,
                        help="G/D feature channels per layer (default: fstrain.world.generator's 16); with "
                             "--stages generator,encoders a fresh G/D of this width replaces the folder's")
    parser.add_argument("--device", default="cpu",
                        help="where the generator and encoders stages train: cpu (default) or cuda[:N]; the other "
                             "stages and the report run on the CPU")
    a = parser.parse_args(argv)
    if a.budget_min <= 0:
        parser.error(f"--budget-min must be positive; got {a.budget_min}")
    if a.size < 16 or a.size & (a.size - 1):
        parser.error(f"--size must be a power of two >= 16; got {a.size}")
    if a.generator_channel_max is not None and a.generator_channel_max < 1:
        parser.error(f"--generator-channel-max must be a positive channel count; got {a.generator_channel_max}")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", a.device):
        parser.error(f"--device must be cpu, cuda or cuda:N; got {a.device!r}")
    if a.device != "cpu" and not torch.cuda.is_available():
        parser.error(f"--device {a.device}: this machine has no CUDA device torch can use; leave --device out to "
                     f"train on the CPU, or run where a GPU is")
    only = None
    if a.stages is not None:
        only = tuple(x.strip() for x in a.stages.split(",") if x.strip())
        unknown = [x for x in only if x not in STAGES]
        if unknown or not only:
            parser.error(f"--stages: unknown stage(s) {unknown or a.stages!r}; choose from {', '.join(STAGES)}")
        if "generator" in only and "encoders" not in only:
            parser.error("--stages: the encoders are trained against G, so a generator rerun needs them too; "
                         "pass --stages generator,encoders")
    if a.generator_channel_max is not None and only is not None and "generator" not in only:
        parser.error(f"--generator-channel-max {a.generator_channel_max} changes G, but --stages {a.stages} does "
                     f"not retrain it; add generator,encoders to --stages")
    command = "python -m fstrain.world.pretrain " + " ".join(argv if argv is not None else sys.argv[1:])
    pretrain_world(a.out, a.budget_min, a.size, a.seed, a.reference_autoencoder, command, only=only,
                   generator_channel_max=a.generator_channel_max, device=a.device)


if __name__ == "__main__":
    main()
