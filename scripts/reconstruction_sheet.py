"""Judge base-G candidates by eye: each model folder's reconstruction of the same photos, side by side.

    python scripts/reconstruction_sheet.py OUT.png --photos demo-out/inputs/photos \
        --folder assets/world64 --folder /tmp/wide [--refine-steps 200]

Columns: the photo, then per folder (a `fstrain.world.pretrain` output) G(E_w+(photo)) and G(refined code), the
code refined as the demo refines it (fstrain.stylize.refine: the folder's G and training perceptual net,
`--refine-steps` Adam steps from E_w+'s code). Rows: the photos (*.png, sorted by name). Rendered from stored noise.
The instrument report's E_w+ columns read the same reconstructions with the attribute reader; this sheet is for the
eye (glasses rims and curls are a pixel or two at 64 px, where a reader's verdict and a person's can differ).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    import torch
    from PIL import Image

    from fstrain.models.checkpoints import load_generator
    from fstrain.models.hub import lpips_at
    from fstrain.models.psp import load_encoder
    from fstrain.stylize.images import image_grid, pil_to_tensor, to_uint8
    from fstrain.stylize.refine import CodeRefiner, RefineSettings
    from fstrain.world.files import FILES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="the sheet (PNG)")
    parser.add_argument("--photos", required=True, help="folder of aligned photos (*.png) at the folders' G size")
    parser.add_argument("--folder", action="append", required=True, help="a model folder (repeat to compare)")
    parser.add_argument("--refine-steps", type=int, default=RefineSettings().steps)
    parser.add_argument("--scale", type=int, default=2, help="nearest-neighbour enlargement of every cell")
    args = parser.parse_args()

    paths = sorted(Path(args.photos).glob("*.png"))
    if not paths:
        raise SystemExit(f"error: no *.png under --photos {args.photos}")
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    photos = torch.cat([pil_to_tensor(Image.open(p)) for p in paths])
    columns, labels = [photos], ["photo"]
    for folder in map(Path, args.folder):
        name = folder.name
        generator = load_generator(str(folder / FILES["generator"]), load_discriminator=False,
                                   expected_size=photos.shape[-1], size_setting="--photos' size").generator.eval()
        encoder = load_encoder(str(folder / FILES["encoder_wplus"]), space="w+").eval()
        with torch.no_grad():
            codes = encoder(photos)
            columns.append(generator.synthesis(codes, randomize_noise=False))
        labels.append(f"{name} E_w+")
        if args.refine_steps > 0:
            # the G already loaded above (load_base_models would read generator.pt a second time)
            refiner = CodeRefiner(generator, lpips_at(str(folder / FILES["lpips_backbone"]), "alex"),
                                  RefineSettings(steps=args.refine_steps))
            refined = refiner(photos, codes)
            with torch.no_grad():
                columns.append(generator.synthesis(refined, randomize_noise=False))
            labels.append(f"{name} refined")
    cells = [to_uint8(column) for column in columns]
    rows = [[cells[c][r].repeat(args.scale, 0).repeat(args.scale, 1) for c in range(len(cells))]
            for r in range(len(paths))]
    image_grid(rows, column_labels=labels).save(args.out)
    print(f"wrote {args.out}: {len(paths)} photos x {len(args.folder)} folders")
    return 0


if __name__ == "__main__":
    sys.exit(main())
