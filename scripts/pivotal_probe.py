"""Can per-photo pivotal tuning carry what the base G's W+ cannot (curls, buns, glasses rims) into the styles?

    python scripts/pivotal_probe.py --root demo-out --out OUT [--identities 24] [--steps 1500] [--lr 0.002] \\
        [--alphas 1 2]

Pivotal tuning (Roich et al., PTI) fine-tunes a copy of the base G's synthesis weights on one photo around its
code w (the demo's code: E_w+ then the configured refinement), until G_tuned(w) draws the photo. The weight change
delta = G_tuned - G is then added to every style's G' (G' + alpha * delta), as HyperStyle moves its predicted
offsets onto fine-tuned generators. Measured on the first --identities photos of the validation block
(configs/study_validation.yaml, never the study's test block) with the study's evaluation nets: each style's output
against the world's render of the person in that style, alpha 0 being the demo as it is; and the base G's
reconstruction (G(w) and G_tuned(w)) against the photo. The loss is the refinement's (eye-band weighted L1 +
the training perceptual net). Writes OUT/pivotal.json, OUT/pivotal.md and OUT/<style>.jpg (photo, truth, then each
alpha's output; first 12 identities) and OUT/base.jpg (photo, G(w), G_tuned(w)).
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


def main() -> int:
    import numpy as np
    import torch
    from PIL import Image

    from fstrain import layout
    from fstrain.study.evaluation import TestSet, ground_truth_fidelity, render_test_images
    from fstrain.stylize.images import to_uint8
    from fstrain.stylize.pivotal import DeltaRenderer, PivotalSettings, PivotalTuner
    from fstrain.stylize.refine import CodeRefiner, encode_in_batches, settings_from_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser, root_help="a root `make demo` wrote (models, published styles)",
                     styles=["cartoon", "anime", "fantasy", "illustration", "impasto"])
    parser.add_argument("--identities", type=int, default=24, help="the first N validation identities")
    parser.add_argument("--steps", type=int, default=1500, help="tuning steps per photo")
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--batch-size", type=int, default=25)
    args = parser.parse_args()

    setup = load_setup(args)
    root, study, hub, base, out = setup.root, setup.study, setup.hub, setup.base, setup.out
    instruments, device = setup.instruments, setup.device
    lpips = hub.lpips(device)
    photos = render_test_images(TestSet.of_study(study, args.styles[0], base.size)).photos[:args.identities]
    refine = settings_from_config(setup.config.stylize)
    codes = encode_in_batches(setup.encoder, photos, args.batch_size,
                              CodeRefiner(base, lpips, refine) if refine.steps else None)

    started = time.perf_counter()
    tuner = PivotalTuner(base, lpips, PivotalSettings(steps=args.steps, lr=args.lr))
    deltas = []
    for i in range(photos.shape[0]):      # one at a time, for the progress line (a face's delta is its own anyway)
        deltas += tuner(photos[i:i + 1], codes[i:i + 1])
        print(f"tuned {i + 1}/{photos.shape[0]}", file=sys.stderr, flush=True)
    seconds_per_face = round((time.perf_counter() - started) / photos.shape[0], 1)

    def render_each(generator, alpha: float) -> torch.Tensor:
        """Face i by generator + alpha * delta_i (alpha 0: the generator as it is, batched)."""
        if not alpha:
            with torch.no_grad():
                return generator.synthesis(codes)
        return DeltaRenderer(generator).render(codes, [{name: alpha * d for name, d in delta.items()}
                                                       for delta in deltas])

    def measured(outputs, truths):
        row = ground_truth_fidelity(outputs, truths, instruments, args.batch_size, device)
        per_attribute = row.get("gt_attribute_per_attribute") or {}
        row.update({name: per_attribute.get(name) for name in PER_ATTRIBUTE})
        return {k: row.get(k) for k in SHOWN}

    alphas = [0.0, *args.alphas]
    label = {a: "demo codes, G'" if a == 0 else f"G' + {a:g} delta" for a in alphas}
    reconstructions = {"G(w)": render_each(base, 0.0), "G_tuned(w)": render_each(base, 1.0)}
    results = {"validation": setup.validation_facts(), "identities": photos.shape[0],
               "tuning": {"steps": args.steps, "lr": args.lr, "seconds_per_face": seconds_per_face},
               "refinement": refine.describe(), "instruments": [i["label"] for i in instruments.describe()],
               "rows": {"base G reconstruction (vs photo)": {name: measured(images, photos)
                                                            for name, images in reconstructions.items()}}}
    strips = [photos[:12], *(images[:12] for images in reconstructions.values())]
    Image.fromarray(np.concatenate([np.concatenate(list(to_uint8(s)), axis=1) for s in strips])).save(
        out / "base.jpg", quality=92)
    for style in args.styles:
        g = hub.generator_at(layout.published_generator(root, style), load_discriminator=False).generator.eval()
        truths = render_test_images(TestSet.of_study(study, style, base.size)).truths[:args.identities]
        outputs = {label[a]: render_each(g, a) for a in alphas}
        results["rows"][style] = {name: measured(images, truths) for name, images in outputs.items()}
        strips = [photos[:12], truths[:12], *(images[:12] for images in outputs.values())]
        Image.fromarray(np.concatenate([np.concatenate(list(to_uint8(s)), axis=1) for s in strips])).save(
            out / f"{style}.jpg", quality=92)
    (out / "pivotal.json").write_text(json.dumps(results, indent=1))
    lines = markdown_table(("rendered by", "codes / weights"), results["rows"], SHOWN)
    lines += ["", f"{photos.shape[0]} validation identities; tuning {args.steps} steps at lr {args.lr}: "
                  f"{seconds_per_face} s per face on this machine"]
    (out / "pivotal.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
