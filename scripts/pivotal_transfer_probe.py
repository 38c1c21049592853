"""Other ways to carry a photo's pivotal tuning into the styles, against the adopted one (G' + delta).

    python scripts/pivotal_transfer_probe.py --root demo-out --out OUT [--identities 24] \\
        [--transfer channel-scale semantic] [--semantic-steps 60] [--semantic-lr 0.003] \\
        [--semantic-adversarial-weights 1 0]

The adopted stage (fstrain/stylize/pivotal.py; --steps at lr 0.006, 500 by default here, the demo's 1000) tunes the
base G's weights on the photo at the face's code w and adds the change delta to each style's G'. Two alternatives,
each measured on the first --identities validation photos (configs/study_validation.yaml, never the study's test
block) with the study's evaluation nets, beside G' alone and G' + delta:

- `channel-scale` (HyperStyle's parameterisation): tune one multiplicative offset per (output, input) channel of
  every synthesis convolution, W_G * (1 + r), instead of every weight; the style renders with W_G' * (1 + r). Fewer
  degrees of freedom, relative to each G's own weights.
- `semantic`: start at G' + delta and tune each style's own copy per face with the fine-tune's loss at the face's
  pivot: a * softplus(-D'(x)) + lambda_sem * L_sem(G_tuned(w), x), x = (G' + delta')(w), D' the style's fine-tuned
  discriminator (the run's last checkpoint; <root>/runs/<run-id>/<style>/sc+pc), L_sem the training config's
  (LPIPS + lambda_id ID + lambda_eyes eye band, the training perceptual and identity nets), one row for each a of
  --semantic-adversarial-weights (1 = the fine-tune's balance; 0 = L_sem alone, no D').

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

def is_convolution(name: str, weight) -> bool:
    """A modulated convolution's (1, out, in, k, k) kernel: where HyperStyle puts its per-channel offsets."""
    return name.endswith("conv.weight") and weight.dim() == 5


def main() -> int:
    import copy

    import numpy as np
    import torch
    from PIL import Image
    from torch.nn.utils import parametrize

    from fstrain import layout
    from fstrain.losses import SemanticLoss, generator_adversarial_loss
    from fstrain.study.evaluation import TestSet, ground_truth_fidelity, render_test_images
    from fstrain.stylize.images import to_uint8
    from fstrain.stylize.pivotal import DeltaRenderer, PivotalSettings, PivotalTuner
    from fstrain.stylize.refine import CodeRefiner, RefineSettings, encode_in_batches, settings_from_config

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
    parser.add_argument("--semantic-adversarial-weights", type=float, nargs="+", default=[1.0],
                        help="the weights of D''s term in the semantic transfer, a row each (0: L_sem alone)")
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

    class ChannelScale(torch.nn.Module):
        """W = W_G * (1 + r): a parametrised kernel whose trainable original is r, one offset per (out, in) channel."""
        def __init__(self, weight):
            super().__init__()
            self.register_buffer("base", weight.detach().clone())

        def forward(self, r):
            return self.base * (1 + r)

        def right_inverse(self, weight):
            return torch.zeros(1, weight.shape[1], weight.shape[2], 1, 1, dtype=weight.dtype)

    def owner(generator, name: str):
        return generator.get_submodule(name.rsplit(".", 1)[0])

    def tune_channel_scales(image, w_plus) -> dict:
        """One face's offsets r ({kernel name: (1, out, in, 1, 1)}), tuned with PivotalTuner's loss and optimiser."""
        tuned = copy.deepcopy(base)
        names = [n for n, w in tuned.named_parameters() if is_convolution(n, w)]
        for name in names:
            parametrize.register_parametrization(owner(tuned, name), "weight", ChannelScale(owner(tuned, name).weight),
                                                 unsafe=True)
        loss_of = CodeRefiner(tuned, lpips, RefineSettings(lpips_weight=1.0, anchor_weight=0.0)).per_face_loss
        offsets = {name: owner(tuned, name).parametrizations.weight.original for name in names}
        for r in offsets.values():
            r.requires_grad_(True)
        optimiser = torch.optim.Adam(list(offsets.values()), lr=args.lr)
        with torch.enable_grad():
            for _ in range(args.steps):
                loss = loss_of(w_plus, image, w_plus).sum()
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
        return {name: r.detach().clone() for name, r in offsets.items()}

    def tune_semantic(g, d, semantic, delta, w_plus, target, adversarial_weight: float) -> dict:
        """One face's change of G', started at its base-G delta, tuned with the fine-tune's loss at the pivot."""
        tuned = copy.deepcopy(g).requires_grad_(False)
        original = dict(g.named_parameters())
        params = {n: p for n, p in tuned.named_parameters() if n in delta}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(original[n] + delta[n])
        for p in params.values():
            p.requires_grad_(True)
        optimiser = torch.optim.Adam(list(params.values()), lr=args.semantic_lr)
        with torch.enable_grad():
            for _ in range(args.semantic_steps):
                x = tuned.synthesis(w_plus, randomize_noise=False)
                loss = setup.config.train.lambda_sem * semantic(target, x)
                if adversarial_weight:
                    loss = loss + adversarial_weight * generator_adversarial_loss(d(x))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
        return {n: (p - original[n]).detach() for n, p in params.items()}

    seconds = {}
    started = time.perf_counter()
    deltas = PivotalTuner(base, lpips, PivotalSettings(steps=args.steps, lr=args.lr))(photos, codes)
    seconds["delta"] = (time.perf_counter() - started) / len(deltas)
    targets = DeltaRenderer(base).render(codes, deltas)

    scales = []
    if "channel-scale" in args.transfer:
        started = time.perf_counter()
        scales = [tune_channel_scales(photos[i:i + 1], codes[i:i + 1]) for i in range(photos.shape[0])]
        seconds["channel-scale"] = (time.perf_counter() - started) / len(scales)

    def scaled_deltas(generator) -> list[dict]:
        """Each face's channel offsets as an additive change of this generator's own kernels: W * r."""
        weights = dict(generator.named_parameters())
        return [{n: weights[n].detach() * r for n, r in face.items()} for face in scales]

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
    semantic = None
    if "semantic" in args.transfer:
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
        if semantic is not None:
            started = time.perf_counter()
            checkpoint = sorted(Path(layout.mode_run(root, args.run_id, style, "sc+pc"), "checkpoints").glob("*.pt"))[-1]
            d = hub.generator_at(str(checkpoint)).discriminator.eval().requires_grad_(False)
            for weight in args.semantic_adversarial_weights:
                tuned = [tune_semantic(g, d, semantic, delta, codes[i:i + 1], targets[i:i + 1], weight)
                         for i, delta in enumerate(deltas)]
                label = "G' + semantic delta'" + ("" if weight == 1 else f", D' weight {weight:g}")
                outputs[label] = DeltaRenderer(g).render(codes, tuned)
            semantic_seconds += (time.perf_counter() - started) / len(deltas)
        results["rows"][style] = {name: measured(images, truths) for name, images in outputs.items()}
        strip_sheet([photos, truths, *outputs.values()], out / f"{style}.jpg")
        print(f"{style} measured", file=sys.stderr, flush=True)
    if semantic is not None:
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
