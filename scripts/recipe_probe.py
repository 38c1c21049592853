"""Choose the fine-tune recipe on VALIDATION identities, never on the study's test block.

    python scripts/recipe_probe.py --root demo-out --out OUT --styles cartoon anime \\
        --recipe "1/1:lambda_sem=1,lambda_pair=1" --recipe "10/10:lambda_sem=10,lambda_pair=10"

Each recipe overrides `train.*` keys of the pipeline config (default configs/demo_five_styles.yaml) and fine-tunes
G' (sc+pc) per style from the pseudo-pairs a `make demo` root already holds (runs/demo/<style>/pairs: they come from
the baseline G*, which no sc+pc setting changes), so recipes differ only in what they set. Every G' is measured as
the study measures it (fstrain.study.evaluation) on the validation block of configs/study_validation.yaml (held-out
identities 5000..5099, FID reference 5100..5199), next to the un-tuned base G. Writes OUT/probe.json, OUT/probe.md
(the table) and OUT/<style>.png (photo, truth, base G and each recipe's G' on the first 12 identities).
One seed per cell: read differences smaller than the study's seed spread as noise.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from validation_probe import add_common_flags, load_setup, markdown_table  # noqa: E402 - scripts/, beside this file

SHOWN = ("gt_perceptual", "gt_attribute", "retrieval_top1", "fid", "diversity", "semantic", "perceptual")


def parse_recipe(text: str, train) -> tuple[str, dict]:
    """'name:key=value,key=value' -> (name, {key: value typed as the TrainConfig field})."""
    name, _, body = text.partition(":")
    overrides = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if not hasattr(train, key):
            raise SystemExit(f"--recipe {text!r}: train has no key {key!r}")
        overrides[key] = type(getattr(train, key))(value)
    return name, overrides


def main() -> int:
    import numpy as np
    from PIL import Image

    from cluster.demo import RUN_ID as DEMO_RUN_ID
    from fstrain import layout
    from fstrain.study.evaluation import TestSet, evaluate_rows, render_test_images
    from fstrain.train.loop import run_finetune

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser, root_help="a root `make demo` wrote (models, datasets, runs/demo pairs)",
                     styles=["cartoon"])
    parser.add_argument("--recipe", action="append", required=True, help="name:key=value,... (train.* keys)")
    args = parser.parse_args()

    setup = load_setup(args)
    root, config, study, hub, base, out = setup.root, setup.config, setup.study, setup.hub, setup.base, setup.out
    recipes = [parse_recipe(r, config.train) for r in args.recipe]
    results: dict = {"validation": setup.validation_facts(), "config": args.config, "recipes": dict(recipes),
                     "styles": {}}
    for style in args.styles:
        generators = {}
        seconds = {}
        for name, overrides in recipes:
            run_id = f"probe-{name.replace('/', '-')}"
            shutil.rmtree(layout.style_run(root, run_id, style), ignore_errors=True)
            shutil.copytree(layout.pairs(root, DEMO_RUN_ID, style), layout.pairs(root, run_id, style))
            recipe_config = dataclasses.replace(config, train=dataclasses.replace(config.train, **overrides))
            started = time.perf_counter()
            generators[name] = run_finetune(recipe_config, style=style, mode="sc+pc", root=root,
                                            run_id=run_id)["generator"]
            seconds[name] = round(time.perf_counter() - started, 1)
        images = render_test_images(TestSet.of_study(study, style, base.size))
        rows = {name: (lambda uri=uri: hub.generator_at(uri, load_discriminator=False).generator)
                for name, uri in generators.items()}
        measured = evaluate_rows(rows, base=base, encoder=setup.encoder, images=images,
                                 instruments=setup.instruments,
                                 lambda_id=study.evaluation.semantic_lambda_id,
                                 semantic_samples=study.evaluation.semantic_samples, seed=0,
                                 batch_size=study.evaluation.batch_size, device=setup.device,
                                 strips_uri=str(out / "strips" / style), grid_identities=12)
        results["styles"][style] = {name: {k: row.get(k) for k in SHOWN + ("gt_attribute_per_attribute",)}
                                    | {"train_seconds": seconds.get(name)}
                                    for name, row in measured["rows"].items()}
        strips = [np.asarray(Image.open(measured["strips"][k]).convert("RGB"))
                  for k in ["photo", "ground truth", "base G", *generators]]
        Image.fromarray(np.concatenate(strips)).save(out / f"{style}.png")
    (out / "probe.json").write_text(json.dumps(results, indent=1))
    lines = markdown_table(("style", "generator"), results["styles"], SHOWN)
    (out / "probe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
