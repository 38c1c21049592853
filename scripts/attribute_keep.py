"""Does a fine-tuned G' keep what the base G drew? The attribute reader on G(z) and G'(z), same z.

    python scripts/attribute_keep.py --root demo-out [--run demo] [--samples 400] [--out OUT.md] \
        [--also-run probe-eyes1 ...]

For `--samples` fixed random z (seed 0), the evaluation attribute reader (<root>/models, fstrain.study.instruments)
reads glasses and hair style on the base G's render and on each style's (the config's styles) published SC&PC G' and
baseline G* render of the same z (stored noise); `--also-run` adds the SC&PC G' of other runs under the root (a
recipe probe's, e.g.), for the styles where that run has one. Per generator: of the samples with glasses on G(z), the
fraction with glasses on the fine-tune's render (kept); of those without, the fraction with (added); their balance,
agreement = (kept + 1 - added) / 2 (0.5 = no better than drawing glasses at random; a G' that draws them on everyone
keeps all and agrees 0.5); and the fraction whose hair style class is the same. The reader was trained on true
renders of all six domains; on blurry fine-tune outputs its readings are themselves uncertain, so read the table as a
trend, not as accuracy.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    import torch

    from fstrain import layout
    from fstrain.config import load_config
    from fstrain.data import storage
    from fstrain.models.hub import ModelHub
    from fstrain.models.latents import broadcast_w
    from fstrain.settings import PipelineConfig
    from fstrain.study.evaluation import render_codes
    from fstrain.study.instruments import load_attribute_reader
    from fstrain.world.report import attributes_kept

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="a root `make demo` wrote")
    parser.add_argument("--run", default="demo", help="run id whose baseline G* is measured too")
    parser.add_argument("--config", default=str(REPO / "configs/demo_five_styles.yaml"))
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--out", default=None, help="also write the table to this markdown file")
    parser.add_argument("--also-run", action="append", default=[], help="another run id whose SC&PC G' to measure")
    args = parser.parse_args()

    torch.set_num_threads(2)
    root = layout.absolute_root(args.root)
    config = load_config(args.config, PipelineConfig)
    device = torch.device("cpu")
    hub = ModelHub(config.models, root)
    try:
        reader = load_attribute_reader(config, root, device)
    except FileNotFoundError as missing:
        raise SystemExit(str(missing))
    base = hub.generator(load_discriminator=False).generator.eval()
    z = torch.randn(args.samples, base.style_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        codes = broadcast_w(base.get_latent(z), base.n_latent)

    def read(g):
        images = render_codes(g, codes, 50, device)
        with torch.no_grad():
            return reader(images)

    on_base = read(base)
    glasses, hair = on_base["glasses"].argmax(1) == 1, on_base["hair_style"].argmax(1)
    base_reading = {"glasses": glasses.long(), "hair_style": hair}      # what each fine-tune is held against
    from fstrain.data.synthetic.params import HAIR_STYLES
    from fstrain.world.splits import HELDOUT, render_identities

    photos = render_identities(HELDOUT, args.samples, 1, "photo", base.size, first_view=1000).tensor()
    with torch.no_grad():
        photo_hair = torch.cat([reader(photos[i:i + 50])["hair_style"].argmax(1) for i in range(0, len(photos), 50)])

    def histogram(classes):
        counts = torch.bincount(classes, minlength=len(HAIR_STYLES)).tolist()
        return ", ".join(f"{name} {count}" for name, count in zip(HAIR_STYLES, counts))

    lines = [f"{args.samples} random z (seed 0); base G: glasses on {int(glasses.sum())} "
             f"({float(glasses.float().mean()):.0%})", "",
             f"hair styles as the reader reads them: base G(z) {histogram(hair)}; {args.samples} held-out photos "
             f"{histogram(photo_hair)}", "",
             "| style | generator | glasses kept | glasses added | glasses agreement | hair style same |",
             "|---|---|---|---|---|---|"]
    for style in config.styles:
        generators = [("SC&PC G' (published)", layout.published_generator(root, style)),
                      ("baseline G*", layout.final_generator(layout.mode_run(root, args.run, style, "baseline")))]
        generators += [(f"SC&PC G' ({run})", uri) for run in args.also_run
                       if storage.exists(uri := layout.final_generator(layout.mode_run(root, run, style, "sc+pc")))]
        for label, uri in generators:
            g = hub.generator_at(uri, load_discriminator=False).generator.eval()
            same = attributes_kept(read(g), base_reading)
            kept, added = same["glasses_kept"], 1 - same["glasses_not_added"]
            lines.append(f"| {style} | {label} | {kept:.2f} | {added:.2f} | {(kept + 1 - added) / 2:.2f} | "
                         f"{same['hair_style_kept']:.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
