"""Convert a generator file into the rosinality layout once, so later loads are plain torch.load(weights_only=True).

    python -m fstrain.models.convert network-snapshot.pkl stylegan2-ffhq.pt [--which g_ema|g] [--no-discriminator]

Reads anything `fstrain.models.checkpoints.load_generator` reads (NVIDIA stylegan2-ada-pytorch `.pkl` without
running its code, rosinality training checkpoints, generator-only files) and writes `{"g_ema", "latent_avg"[, "d"]}`
plus the `<out>.json` sidecar (architecture, source format, NVIDIA facts such as conv_clamp). IN and OUT may be
local paths or s3:// URIs. A bad input ends with one line naming the file and exit status 2.
"""
from __future__ import annotations

import argparse
import sys

from fstrain.models.checkpoints import WHICH, load_generator, save_generator
from fstrain.models.registry import WeightsMismatchError, sha256_file


def convert(source: str, target: str, which: str = "g_ema", discriminator: bool = True) -> dict:
    """Load `source` strictly and write it to `target` in the rosinality layout; returns the metadata written."""
    loaded = load_generator(source, which=which, load_discriminator=discriminator)
    metadata = {**loaded.metadata, "converted_from": source}
    metadata["source_format"] = metadata.pop("format", "rosinality-stylegan2")  # the output is rosinality
    if "://" not in source:
        metadata["converted_from_sha256"] = sha256_file(source)
    save_generator(target, loaded.generator, loaded.latent_avg, metadata,
                   discriminator=loaded.discriminator if discriminator else None)
    return {**metadata, "architecture": loaded.generator.architecture(),
            "discriminator": loaded.discriminator is not None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fstrain.models.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="input .pkl / .pt (path or s3:// URI)")
    parser.add_argument("target", help="output .pt (path or s3:// URI)")
    parser.add_argument("--which", choices=WHICH, default="g_ema",
                        help="generator to export: g_ema (moving average, default) or g")
    parser.add_argument("--no-discriminator", action="store_true", help="leave the discriminator out")
    args = parser.parse_args(argv)
    try:
        info = convert(args.source, args.target, args.which, not args.no_discriminator)
    except (WeightsMismatchError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    arch = info["architecture"]
    print(f"{args.target}: {arch['size']} px generator (style_dim {arch['style_dim']}, {arch['n_mlp']} mapping "
          f"layers, channel_multiplier {arch['channel_multiplier']}), "
          f"{'with' if info['discriminator'] else 'without'} discriminator, from {info['source_format']}")
    for note in info.get("notes", []):
        print(f"note: {note}")
    if "discriminator_skipped" in info:
        print(f"note: discriminator not converted: {info['discriminator_skipped']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
