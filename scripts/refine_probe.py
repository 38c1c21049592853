"""Does refining the encoder's codes (stylize.refine_*) bring the person closer? Measured on VALIDATION identities.

    python scripts/refine_probe.py --root demo-out --out OUT [--styles cartoon anime ...] \\
        --setting "encoder:steps=0" --setting "200:steps=200" --setting "500:steps=500,lr=0.02,anchor_weight=0.01"

For each setting (fstrain.stylize.refine.RefineSettings keys; steps=0 = the encoder's codes as they are) the
photos of the validation block of configs/study_validation.yaml (held-out identities 5000..5099, never the
study's test block) are encoded once, refined against the root's base G, and rendered by every style's published
G' (<root>/styles/<style>/generator.pt). Each output is measured against the world's render of the same person in
the style with the study's evaluation nets (fstrain.study.evaluation.ground_truth_fidelity; none of them is the
perceptual net the refinement optimises), and the base G's reconstruction against the photo itself. Writes
OUT/refine.json, OUT/refine.md (the table, seconds per face on this machine) and OUT/<style>.jpg (photo, truth,
then each setting's output, first 12 identities). `glasses` / `hair_style`: the fraction of identities where the
evaluation reader reads the output's attribute differently from the truth's.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from validation_probe import add_common_flags, load_setup, markdown_table  # noqa: E402 - scripts/, beside this file

SHOWN = ("gt_perceptual", "gt_attribute", "glasses", "hair_style", "gt_identity", "retrieval_top1")
PER_ATTRIBUTE = ("glasses", "hair_style")    # the reader's disagreement with the truth's reading, per attribute


def parse_setting(text: str):
    """'name:key=value,...' -> (name, RefineSettings)."""
    import dataclasses

    from fstrain.stylize.refine import RefineSettings

    name, _, body = text.partition(":")
    fields = {f.name: f.type for f in dataclasses.fields(RefineSettings)}
    values = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"--setting {text!r}: no key {key!r}; keys: {sorted(fields)}")
        values[key] = (int if key == "steps" else float)(value)
    return name, RefineSettings(**values)


def main() -> int:
    import numpy as np
    from PIL import Image

    from fstrain import layout
    from fstrain.study.evaluation import TestSet, ground_truth_fidelity, render_codes, render_test_images
    from fstrain.stylize.images import to_uint8
    from fstrain.stylize.refine import CodeRefiner, encode_in_batches

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser, root_help="a root `make demo` wrote (models, published styles)",
                     styles=["cartoon", "anime", "fantasy", "illustration", "impasto"])
    parser.add_argument("--setting", action="append", required=True, help="name:key=value,... (RefineSettings)")
    parser.add_argument("--batch-size", type=int, default=25)
    args = parser.parse_args()

    setup = load_setup(args)
    root, study, hub, base, out = setup.root, setup.study, setup.hub, setup.base, setup.out
    encoder, instruments, device = setup.encoder, setup.instruments, setup.device
    settings = [parse_setting(s) for s in args.setting]
    lpips = hub.lpips(device)
    photos = render_test_images(TestSet.of_study(study, args.styles[0], base.size)).photos

    codes, seconds = {}, {}
    for name, setting in settings:
        started = time.perf_counter()
        refiner = CodeRefiner(base, lpips, setting) if setting.steps else None
        codes[name] = encode_in_batches(encoder, photos, args.batch_size, refiner)
        seconds[name] = round((time.perf_counter() - started) / photos.shape[0], 3)
        print(f"{name}: {seconds[name]} s per face", file=sys.stderr)

    def render(g, w_plus):
        return render_codes(g, w_plus, args.batch_size, device)

    def measured(outputs, truths):
        row = ground_truth_fidelity(outputs, truths, instruments, args.batch_size, device)
        per_attribute = row.get("gt_attribute_per_attribute") or {}
        row.update({name: per_attribute.get(name) for name in PER_ATTRIBUTE})
        return {k: row.get(k) for k in SHOWN}

    results = {"validation": setup.validation_facts(),
               "settings": {name: s.describe() for name, s in settings}, "seconds_per_face": seconds,
               "instruments": [i["label"] for i in instruments.describe()],
               "rows": {"base G reconstruction (vs photo)": {name: measured(render(base, w), photos)
                                                            for name, w in codes.items()}}}
    for style in args.styles:
        g = hub.generator_at(layout.published_generator(root, style), load_discriminator=False).generator.eval()
        truths = render_test_images(TestSet.of_study(study, style, base.size)).truths
        outputs = {name: render(g, w) for name, w in codes.items()}
        results["rows"][style] = {name: measured(images, truths) for name, images in outputs.items()}
        strips = [photos[:12], truths[:12], *(images[:12] for images in outputs.values())]
        sheet = np.concatenate([np.concatenate(list(to_uint8(s)), axis=1) for s in strips])
        Image.fromarray(sheet).save(out / f"{style}.jpg", quality=92)
    (out / "refine.json").write_text(json.dumps(results, indent=1))
    lines = markdown_table(("rendered by", "codes"), results["rows"], SHOWN)
    lines.append("")
    lines.append("seconds per face (refinement, this machine): "
                 + ", ".join(f"{name} {s}" for name, s in seconds.items()))
    (out / "refine.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
