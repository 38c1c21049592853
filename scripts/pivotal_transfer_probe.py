"""Other ways to carry a photo's pivotal tuning into the styles, against the adopted one (G' + delta).

    python scripts/pivotal_transfer_probe.py --root demo-out --out OUT [--identities 24] \\
        [--transfer channel-scale semantic] [--semantic-steps 60] [--semantic-lr 0.003]

The adopted stage (fstrain/stylize/pivotal.py, the demo's 500 steps at lr 0.006) tunes the base G's weights on the
photo at the face's code w and adds the change delta to each style's G'. Two alternatives, each measured on the
first --identities validation photos (configs/study_validation.yaml, never the study's test block) with the study's
evaluation nets, beside G' alone and G' + delta:

- `channel-scale` (HyperStyle's parameterisation): tune one multiplicative offset per (output, input) channel of
  every synthesis convolution, W_G * (1 + r), instead of every weight; the style renders with W_G' * (1 + r). Fewer
  degrees of freedom, relative to each G's own weights.
- `semantic`: start at G' + delta and tune each style's own copy per face with the fine-tune's loss at the face's
  pivot: softplus(-D'(x)) + lambda_sem * L_sem(G_tuned(w), x), x = (G' + delta')(w), D' the style's fine-tuned
  discriminator (the run's last checkpoint; <root>/runs/<run-id>/<style>/sc+pc), L_sem the training config's
  (LPIPS + lambda_id ID + lambda_eyes eye band, the training perceptual and identity nets).

Writes OUT/transfer.json, OUT/transfer.md (the table, seconds per face) and OUT/<style>.jpg (photo, truth, G',
G' + delta, then each alternative; first 12 identities).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from refine_probe import PER_ATTRIBUTE, SHOWN  # noqa: E402 - scripts/, beside this file
from validation_probe import add_common_flags, load_setup, markdown_table  # noqa: E402

MAPPING_PREFIX = "style."


def is_convolution(name: str, weight) -> bool:
    """A modulated convolution's (1, out, in, k, k) kernel: where HyperStyle puts its per-channel offsets."""
    return name.endswith("conv.weight") and weight.dim() == 5


def main() -> int:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from torch.func import functional_call

    from fstrain import layout
    from fstrain.losses import SemanticLoss, face_weight_map, perceptual_distance
    from fstrain.study.evaluation import TestSet, ground_truth_fidelity, render_test_images
    from fstrain.stylize.images import to_uint8
    from fstrain.stylize.pivotal import DeltaRenderer, PivotalSettings, PivotalTuner
    from fstrain.stylize.refine import FEATURE_WEIGHT, CodeRefiner, encode_in_batches, settings_from_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser, root_help="a root `make demo` wrote (models, published styles, runs/<run-id>)",
                     styles=["cartoon", "anime", "fantasy", "illustration", "impasto"])
    parser.add_argument("--identities", type=int, default=24)
    parser.add_argument("--transfer", nargs="+", choices=["channel-scale", "semantic"],
                        default=["channel-scale", "semantic"])
    parser.add_argument("--steps", type=int, default=500, help="tuning steps on the base G (delta and channel-scale)")
    parser.add_argument("--lr", type=float, default=0.006)
    parser.add_argument("--semantic-steps", type=int, default=60)
    parser.add_argument("--semantic-lr", type=float, default=0.003)
    parser.add_argument("--run-id", default="demo", help="the run whose SC&PC checkpoints hold each style's D'")
    parser.add_argument("--batch-size", type=int, default=25)
    args = parser.parse_args()

    setup = load_setup(args)
    root, study, hub, base, out = setup.root, setup.study, setup.hub, setup.base, setup.out
    lpips = hub.lpips(setup.device)
    photos = render_test_images(TestSet.of_study(study, args.styles[0], base.size)).photos[:args.identities]
    refine = settings_from_config(setup.config.stylize)
    codes = encode_in_batches(setup.encoder, photos, args.batch_size,
                              CodeRefiner(base, lpips, refine) if refine.steps else None)

    class Synthesis(torch.nn.Module):
        """g.synthesis as a module, so functional_call can render it with substituted weights."""
        def __init__(self, generator):
            super().__init__()
            self.g = generator

        def forward(self, w_plus):
            return self.g.synthesis(w_plus, randomize_noise=False)

    def synthesis_weights(generator) -> dict:
        return {n: p.detach() for n, p in generator.named_parameters() if not n.startswith(MAPPING_PREFIX)}

    seconds = {}
    started = time.perf_counter()
    deltas = PivotalTuner(base, lpips, PivotalSettings(steps=args.steps, lr=args.lr))(photos, codes)
    seconds["delta"] = (time.perf_counter() - started) / len(deltas)
    targets = DeltaRenderer(base).render(codes, deltas)

    scales = []
    if "channel-scale" in args.transfer:
        started = time.perf_counter()
        weights, call = synthesis_weights(base), Synthesis(base)
        pixel_weight = face_weight_map(base.size, FEATURE_WEIGHT)
        for i in range(photos.shape[0]):
            r = {n: torch.zeros(1, w.shape[1], w.shape[2], 1, 1, requires_grad=True)
                 for n, w in weights.items() if is_convolution(n, w)}
            optimiser = torch.optim.Adam(list(r.values()), lr=args.lr)
            for _ in range(args.steps):     # the refiner's loss, as PivotalTuner's: eye-band weighted L1 + LPIPS
                x = functional_call(call, {"g." + n: w * (1 + r[n]) if n in r else w for n, w in weights.items()},
                                    (codes[i:i + 1],))
                loss = ((x - photos[i:i + 1]).abs() * pixel_weight).mean() + \
                    perceptual_distance(lpips, x, photos[i:i + 1]).sum()
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
            scales.append({n: t.detach() for n, t in r.items()})
        seconds["channel-scale"] = (time.perf_counter() - started) / len(scales)

    def scaled_deltas(generator) -> list[dict]:
        """Each face's channel offsets as an additive change of this generator's own weights: W * r."""
        weights = synthesis_weights(generator)
        return [{n: weights[n] * r for n, r in face.items()} for face in scales]

    def measured(outputs, truths):
        row = ground_truth_fidelity(outputs, truths, setup.instruments, args.batch_size, setup.device)
        per_attribute = row.get("gt_attribute_per_attribute") or {}
        row.update({name: per_attribute.get(name) for name in PER_ATTRIBUTE})
        return {k: row.get(k) for k in SHOWN}

    def strip_sheet(strips, path):
        Image.fromarray(np.concatenate([np.concatenate(list(to_uint8(s[:12])), axis=1) for s in strips])).save(
            path, quality=92)

    results = {"validation": setup.validation_facts(), "identities": photos.shape[0], "args": vars(args),
               "rows": {"base G reconstruction (vs photo)": {"G(w)": measured(base.synthesis(codes), photos),
                                                             "G + delta": measured(targets, photos)}}}
    if scales:
        results["rows"]["base G reconstruction (vs photo)"]["G channel-scaled"] = measured(
            DeltaRenderer(base).render(codes, scaled_deltas(base)), photos)
    tc = setup.config.train
    semantic = SemanticLoss(lpips, hub.identity(setup.device), tc.lambda_id, lambda_eyes=tc.lambda_eyes)
    semantic_seconds = 0.0
    for style in args.styles:
        g = hub.generator_at(layout.published_generator(root, style), load_discriminator=False).generator.eval()
        truths = render_test_images(TestSet.of_study(study, style, base.size)).truths[:args.identities]
        with torch.no_grad():
            outputs = {"G'": g.synthesis(codes), "G' + delta": DeltaRenderer(g).render(codes, deltas)}
        if scales:
            outputs["G' channel-scaled"] = DeltaRenderer(g).render(codes, scaled_deltas(g))
        if "semantic" in args.transfer:
            started = time.perf_counter()
            checkpoint = sorted(Path(layout.mode_run(root, args.run_id, style, "sc+pc"), "checkpoints").glob("*.pt"))[-1]
            d = hub.generator_at(str(checkpoint)).discriminator.eval().requires_grad_(False)
            weights, call = synthesis_weights(g.requires_grad_(False)), Synthesis(g)
            tuned = []
            for i, delta in enumerate(deltas):
                change = {n: delta[n].clone().requires_grad_(True) for n in delta}
                optimiser = torch.optim.Adam(list(change.values()), lr=args.semantic_lr)
                for _ in range(args.semantic_steps):
                    x = functional_call(call, {"g." + n: w + change[n] for n, w in weights.items()},
                                        (codes[i:i + 1],))
                    loss = F.softplus(-d(x)).mean() + tc.lambda_sem * semantic(targets[i:i + 1], x)
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                tuned.append({n: t.detach() for n, t in change.items()})
            semantic_seconds += (time.perf_counter() - started) / len(deltas)
            outputs["G' + semantic delta'"] = DeltaRenderer(g).render(codes, tuned)
        results["rows"][style] = {name: measured(images, truths) for name, images in outputs.items()}
        strip_sheet([photos, truths, *outputs.values()], out / f"{style}.jpg")
        print(f"{style} measured", file=sys.stderr, flush=True)
    if "semantic" in args.transfer:
        seconds["semantic (all styles)"] = semantic_seconds
    results["seconds_per_face"] = {k: round(v, 1) for k, v in seconds.items()}
    (out / "transfer.json").write_text(json.dumps(results, indent=1))
    lines = markdown_table(("rendered by", "weights"), results["rows"], SHOWN)
    lines += ["", f"{photos.shape[0]} validation identities; seconds per face on this machine: "
                  + ", ".join(f"{k} {v}" for k, v in results["seconds_per_face"].items())]
    (out / "transfer.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
