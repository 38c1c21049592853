"""python -m fstrain.data.synthetic OUT --domain D --count N --size S --seed K [--unaligned] [--faces F]
[--contact-sheet]: write OUT/<id>.png + OUT/<id>.json (or one contact sheet PNG)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .params import DOMAINS, identity_rng, sample_identity
from .render import contact_sheet, generate, render_photo_scene


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fstrain.data.synthetic", description=__doc__)
    parser.add_argument("out", help="output folder (or, with --contact-sheet, a .png path or a folder)")
    parser.add_argument("--domain", choices=DOMAINS, default="photo")
    parser.add_argument("--count", type=int, default=16, help="images (identities) to write")
    parser.add_argument("--size", type=int, default=256, help="aligned image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed: identity k of a seed is one person")
    parser.add_argument("--start", type=int, default=0, help="first identity index")
    parser.add_argument("--unaligned", action="store_true", help="rotated, off-centre faces on a 1.5x canvas")
    parser.add_argument("--faces", type=int, default=1, help="faces per image (>1 implies --unaligned scenes)")
    parser.add_argument("--contact-sheet", action="store_true",
                        help="write one sheet: rows = --count identities, columns = photo + five styles")
    args = parser.parse_args(argv)
    if args.count < 1 or args.size < 16 or args.faces < 1:
        parser.error("--count and --faces must be >= 1 and --size >= 16")
    out = Path(args.out)
    started = time.perf_counter()
    if args.contact_sheet:
        path = out if out.suffix.lower() == ".png" else out / f"contact_sheet_seed{args.seed}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        contact_sheet(args.count, args.size, args.seed).save(path)
        print(f"wrote {path}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    if args.faces > 1:
        for k in range(args.start, args.start + args.count):
            people = [sample_identity(identity_rng(args.seed, k * args.faces + j), f"s{args.seed}-{k * args.faces + j:06d}")
                      for j in range(args.faces)]
            image, meta = render_photo_scene(people, args.size, seed=int(np.random.SeedSequence([args.seed, k])
                                                                             .generate_state(1)[0]),
                                             domain=args.domain)
            key = meta["key"] = f"scene-s{args.seed}-{k:06d}"
            _save(out, key, image, meta)
            written += 1
    else:
        for key, image, meta in generate(args.domain, args.count, args.size, args.seed, not args.unaligned,
                                         args.start):
            _save(out, key, image, meta)
            written += 1
    elapsed = time.perf_counter() - started
    print(f"wrote {written} {args.domain} images to {out} ({written / elapsed:.1f} images/s)")
    return 0


def _save(out: Path, key: str, image, meta: dict) -> None:
    image.save(out / f"{key}.png")
    (out / f"{key}.json").write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    sys.exit(main())
