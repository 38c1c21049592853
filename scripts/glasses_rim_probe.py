"""Which glasses survive? Held-out wearers split by the colour of their rims, through the demo's path.

    python scripts/glasses_rim_probe.py --root demo-out [--per-colour 40] [--pivotal-per-colour 10] \
        [--pivotal-steps N] [--sheet-rows 3] [--out-dir DIR]

The world draws glasses rims in one of three colours (fstrain.data.synthetic.params: near-black, brown, silver-grey,
each jittered). Taken: the first `--per-colour` wearers of each colour and as many non-wearers among held-out
identities from `--first-identity` on (default 5000: the study's validation block, configs/study_validation.yaml,
where settings are chosen; index order, view 1000; nobody picked by eye). Each photo x and its twin x0 (the same
person and view rendered without glasses) go through the demo's path:
  - G(E_w+(x)) and G(refined code), the code refined as the demo refines it (stylize.refine_*),
  - each style's published SC&PC G' at the refined code, and
  - for the first `--pivotal-per-colour` faces of each group, G' + the face's pivotal delta (stylize.pivotal_*):
    what the demo's batch job renders.

Two readings per renderer and rim colour:
  - **reader**: the share of wearers the evaluation attribute reader (<root>/models) reads as wearing glasses (and of
    non-wearers, as wearing them: added). Trained on true renders of all six domains; on blurry outputs uncertain.
  - **rim structure**: how much of the rims' own fine pattern reaches the output, per face: the regression
    coefficient of the output's change on the photo's change, both high-passed,
        sum over R of <h(out(x) - out(x0)), h(x - x0)>  /  sum over R of |h(x - x0)|^2,    h(d) = d - box5(d),
    R the pixels the glasses change in the photo, grown by one pixel. x and x0 get codes (and pivotal deltas) of
    their own, so their outputs differ around the eyes anyway; that difference is not shaped like the rims and
    averages out of the projection. The high-pass leaves out the glasses' low-frequency trace, a darker or paler
    band across the eyes: without it (a 3x3 blur instead) the same projection scores 0.8-1.0 on outputs whose rims
    are gone by eye. 1 = the rims as sharp and strong as in the photo; 0 = no rim pattern. It needs no reader.
The sheet (`--sheet-rows` wearers per colour: photo, G(refined), the five styles at the refined code, then the five
with pivotal tuning) is for the eye.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RIM_BASES = {"dark": (30, 30, 34), "brown": (120, 70, 40), "silver": (150, 150, 160)}   # params.py's three draws
CHANGED = 0.1       # summed |x - x0| over RGB in [-1, 1] above which a pixel belongs to the glasses


def rim_colour(rgb) -> str:
    return min(RIM_BASES, key=lambda name: sum((a - b) ** 2 for a, b in zip(rgb, RIM_BASES[name])))


def main() -> int:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from fstrain import layout
    from fstrain.config import load_config
    from fstrain.data.synthetic import render
    from fstrain.models.hub import ModelHub
    from fstrain.settings import PipelineConfig
    from fstrain.study.evaluation import render_codes
    from fstrain.study.instruments import load_attribute_reader
    from fstrain.stylize.images import image_grid, to_uint8
    from fstrain.stylize.pivotal import DeltaRenderer, tuner_from_config
    from fstrain.stylize.refine import encode_in_batches, refiner_from_config
    from fstrain.world.reader import read_attributes
    from fstrain.world.splits import HELDOUT, to_tensor, view_of

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="a root `make demo` wrote")
    parser.add_argument("--config", default=str(REPO / "configs/demo_five_styles.yaml"))
    parser.add_argument("--first-identity", type=int, default=5000)
    parser.add_argument("--per-colour", type=int, default=40)
    parser.add_argument("--pivotal-per-colour", type=int, default=10)
    parser.add_argument("--pivotal-steps", type=int, default=None,
                        help="tuning steps per face (default: the config's stylize.pivotal_steps)")
    parser.add_argument("--sheet-rows", type=int, default=3, help="wearers per colour on the sheet")
    parser.add_argument("--out-dir", default=None, help="write glasses_rims.md and glasses_rims.png here")
    args = parser.parse_args()
    if not 0 < args.pivotal_per_colour <= args.per_colour:
        raise SystemExit(f"--pivotal-per-colour must be in 1..--per-colour ({args.per_colour}); "
                         f"got {args.pivotal_per_colour}")
    if args.pivotal_steps is not None and args.pivotal_steps < 1:
        raise SystemExit(f"--pivotal-steps must be at least 1; got {args.pivotal_steps}")
    if args.sheet_rows > args.pivotal_per_colour:
        raise SystemExit(f"--sheet-rows {args.sheet_rows} > --pivotal-per-colour {args.pivotal_per_colour}: the "
                         f"sheet shows pivotal-tuned faces")

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
    encoder = hub.encoder("encoder_wplus", device)
    refiner = refiner_from_config(config, root, device)
    tuner = tuner_from_config(config, root, device, steps=args.pivotal_steps, refiner=refiner)
    if refiner is None or tuner is None:
        raise SystemExit(f"{args.config} asks for no refinement or no pivotal tuning: this probe measures the demo's")
    styles = {style: hub.generator_at(layout.published_generator(root, style), load_discriminator=False)
              .generator.eval() for style in config.styles}

    groups: dict[str, list[int]] = {name: [] for name in (*RIM_BASES, "none")}
    index = args.first_identity
    while any(len(members) < args.per_colour for members in groups.values()):
        identity = HELDOUT.identity(index)
        group = rim_colour(identity.glasses_colour) if identity.glasses else "none"
        if len(groups[group]) < args.per_colour:
            groups[group].append(index)
        index += 1
    labels = [name for name, members in groups.items() for _ in members]
    photos, twins = [], []
    for k in (k for members in groups.values() for k in members):
        identity, view = HELDOUT.identity(k), view_of(HELDOUT, k, 1000)
        photos.append(np.asarray(render(identity, view, "photo", base.size)[0].convert("RGB")))
        twins.append(np.asarray(render(dataclasses.replace(identity, glasses=False), view, "photo",
                                       base.size)[0].convert("RGB")))
    photos, twins = to_tensor(np.stack(photos)), to_tensor(np.stack(twins))
    tuned = [i for group in groups for i in [j for j, name in enumerate(labels) if name == group]
             [:args.pivotal_per_colour]]
    # groups put the wearers first, so the wearers are a prefix of the faces and of `tuned`: only they need a twin
    # (a non-wearer's twin is itself)
    wearers = len(labels) - len(groups["none"])

    def renderings(images: torch.Tensor, tuned: list[int]) -> list[tuple[str, torch.Tensor, list[int]]]:
        """(label, outputs, which faces) for every renderer of the demo's path, as the module docstring lists."""
        started = time.perf_counter()
        everyone = list(range(len(images)))
        e_codes = encode_in_batches(encoder, images, 64)
        refined = encode_in_batches(encoder, images, 64, refiner)
        out = [("photo", images, everyone), ("G(E_w+(x))", render_codes(base, e_codes, 64, device), everyone),
               ("G(refined)", render_codes(base, refined, 64, device), everyone)]
        out += [(f"{style} SC&PC G'(refined)", render_codes(g, refined, 64, device), everyone)
                for style, g in styles.items()]
        deltas = tuner(images[tuned], refined[tuned])
        with torch.no_grad():
            out.append(("base G + pivotal delta (the tuned G)",
                        DeltaRenderer(base).render(refined[tuned], deltas).clamp(-1, 1), tuned))
            out += [(f"{style} SC&PC G' + pivotal delta", DeltaRenderer(g).render(refined[tuned], deltas).clamp(-1, 1),
                     tuned) for style, g in styles.items()]
        print(f"rendered {len(images)} faces through the demo's path in {time.perf_counter() - started:.0f} s",
              flush=True)
        return out

    with_glasses = renderings(photos, tuned)
    without = renderings(twins[:wearers], [i for i in tuned if i < wearers])

    def high_pass(difference: torch.Tensor) -> torch.Tensor:
        return difference - F.avg_pool2d(difference, 5, stride=1, padding=2, count_include_pad=False)

    changed = ((photos - twins).abs().sum(1, keepdim=True) > CHANGED).float()
    region = F.max_pool2d(changed, 3, stride=1, padding=1)            # grown by one pixel
    rim_pattern = high_pass(photos - twins) * region
    photo_change = (photos - twins).abs().mul(region).sum((1, 2, 3)) / region.sum((1, 2, 3)).clamp(min=1)

    def rim_structure(outputs: torch.Tensor, twin_outputs: torch.Tensor, faces: list[int]) -> torch.Tensor:
        pattern = rim_pattern[faces]
        return (high_pass(outputs - twin_outputs) * pattern).sum((1, 2, 3)) / \
            pattern.pow(2).sum((1, 2, 3)).clamp(min=1e-6)

    colours = list(RIM_BASES)
    head = (f"held-out identities from {args.first_identity} on, view 1000: the first {args.per_colour} wearers per "
            f"rim colour and {args.per_colour} non-wearers ({args.pivotal_per_colour} of each group for the pivotal "
            f"rows, {tuner.settings.steps} tuning steps at lr {tuner.settings.lr}). Photos' own glasses change, "
            f"mean |x - x0| over R: " +
            ", ".join(f"{c} {float(photo_change[[i for i, n in enumerate(labels) if n == c]].mean()):.3f}"
                      for c in colours) + " (RGB in [-1, 1])")
    table = [head, "",
             "| rendered by | " + " | ".join(f"{c}: reader / rim structure" for c in colours) +
             " | non-wearers: reader |",
             "|---|" + "---|" * (len(colours) + 1)]
    for (label, outputs, faces), (_, twin_outputs, _) in zip(with_glasses, without):
        with torch.no_grad():
            read = read_attributes(reader, outputs, 64)["glasses"].argmax(1) == 1
        paired = len(twin_outputs)           # the wearers, first among `faces`
        kept = rim_structure(outputs[:paired], twin_outputs, faces[:paired])
        group_of = [labels[i] for i in faces]
        cells = []
        for group in (*colours, "none"):
            rows = [r for r, name in enumerate(group_of) if name == group]
            share = f"{float(read[rows].float().mean()):.2f}"
            cells.append(share if group == "none" else f"{share} / {float(kept[rows].mean()):.2f}")
        table.append(f"| {label} | " + " | ".join(cells) + " |")
    text = "\n".join(table)
    print(text, flush=True)

    outputs = {label: images for label, images, _ in with_glasses}
    sheet_rows = []
    for row, i in enumerate(tuned):
        if labels[i] != "none" and row % args.pivotal_per_colour < args.sheet_rows:
            cells = [photos[i], outputs["G(refined)"][i]] + \
                    [outputs[f"{s} SC&PC G'(refined)"][i] for s in styles] + \
                    [outputs[f"{s} SC&PC G' + pivotal delta"][row] for s in styles]
            sheet_rows.append(list(to_uint8(torch.stack(cells))))
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "glasses_rims.md").write_text(text + "\n")
        image_grid(sheet_rows, pad=1).save(out / "glasses_rims.png")
        print(f"wrote {out / 'glasses_rims.md'} and {out / 'glasses_rims.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
