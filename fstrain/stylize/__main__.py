"""Stylize one aligned face or a folder of them and write a grid per style.

    python -m fstrain.stylize CONFIG INPUT --root URI --styles cartoon,anime --out DIR
        [--generator STYLE=URI ...] [--layer K] [--psi PSI] [--samples N] [--seed S]
        [--reference IMAGE] [--reference-id ID] [--refine-steps N] [--pivotal-steps N] [--device cpu|cuda]

Inputs must be aligned face crops (batch.stylize detects and aligns photos). Each style's G' is
`<root>/styles/<style>/generator.pt` unless `--generator STYLE=URI` says otherwise. Grid rows are inputs; columns:
input | general | multimodal x N | reference (when a reference is given). A reference image is inverted once per
style and stored under `<root>/references/<style>/<id>.npz` (id = content hash, or `--reference-id`); a later run
with the same image or `--reference-id` alone reuses the stored code. With `stylize.refine_steps` (or
`--refine-steps`) > 0 each face's encoder code is refined against the base G first (fstrain.stylize.refine); with
`stylize.pivotal_steps` (or `--pivotal-steps`) > 0 each face is rendered by G' + its own pivotal weight change
(fstrain.stylize.pivotal).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

from fstrain import layout
from fstrain.cli import UsageError, add_debug_flag
from fstrain.data import storage
from fstrain.stylize.images import image_grid, pil_to_tensor, png_bytes, to_uint8
from fstrain.stylize.modes import Stylizer
from fstrain.stylize.reference import (ReferenceStore, generator_fingerprint, invert_reference,
                                       reference_id)

from fstrain.data.images import IMAGE_SUFFIXES, ImageDecodeError, decode_image


def load_stylizer(config, *, root: str, styles: list[str], generator_uris: dict[str, str] | None = None,
                  device: str | torch.device = "cpu", refine_steps: int | None = None,
                  pivotal_steps: int | None = None) -> Stylizer:
    """The W+ encoder from the config and each style's G' (published location unless overridden); with refinement
    or pivotal tuning (`refine_steps` / `pivotal_steps`, default the config's stylize.*_steps) also the base G and the
    perceptual net."""
    from fstrain.models.hub import ModelHub, generator_at
    from fstrain.stylize.pivotal import tuner_from_config
    from fstrain.stylize.refine import refiner_from_config

    encoder = ModelHub(config.models, root).encoder("encoder_wplus")
    refiner = refiner_from_config(config, root, device, steps=refine_steps)
    tuner = tuner_from_config(config, root, device, steps=pivotal_steps, refiner=refiner)
    generators, latent_avgs = {}, {}
    for style in styles:
        uri = (generator_uris or {}).get(style) or layout.published_generator(root, style)
        loaded = generator_at(uri, load_discriminator=False)
        generators[style] = loaded.generator.to(device)
        latent_avgs[style] = loaded.latent_avg.to(device)
    return Stylizer(encoder.to(device), generators, latent_avgs, refiner, tuner)


def list_inputs(path: str) -> list[str]:
    if storage.is_s3(path) or Path(path).is_dir():
        uris = storage.list_uris(path, suffixes=IMAGE_SUFFIXES)
        if not uris:
            raise SystemExit(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
        return uris
    if not storage.exists(path):
        raise SystemExit(f"{path}: no such image or folder")
    return [path]


def read_image(uri: str) -> tuple[Image.Image, bytes]:
    """Upright RGB image (EXIF orientation, alpha, 16-bit, CMYK... as everywhere) and the file's bytes."""
    data = storage.read_bytes(uri)
    try:
        return decode_image(data, uri), data
    except ImageDecodeError as exc:
        raise SystemExit(f"{exc}; use a JPEG/PNG/WebP image") from None


def generator_overrides(items: list[str]) -> dict[str, str]:
    """`--generator STYLE=URI` flags as {style: URI}."""
    bad = [item for item in items if "=" not in item or not item.split("=", 1)[0] or not item.split("=", 1)[1]]
    if bad:
        raise UsageError(f"--generator {bad[0]}: give STYLE=URI, e.g. --generator cartoon=runs/x/generator.pt")
    return dict(item.split("=", 1) for item in items)


def preflight_checks(config, args, styles: list[str], overrides: dict[str, str], base_steps: int) -> None:
    """The input, every style's G', the encoder (the base G and LPIPS when `base_steps` of refinement or pivotal
    tuning are asked for, LPIPS for a new reference) and the output, before any work."""
    from fstrain import preflight

    if not styles:
        raise UsageError("--styles: give at least one style name, e.g. --styles cartoon")
    preflight.input_exists(args.input, "INPUT")
    if args.reference:
        preflight.input_exists(args.reference, "--reference")
    needed = ["encoder_wplus"] + (["base_generator"] if base_steps else []) \
        + (["lpips_backbone"] if args.reference or base_steps else [])
    preflight.models_exist(config, args.root, needed, args.config)
    preflight.published_generators_exist(args.root, styles, overrides)
    preflight.storage_usable(args.out, "--out", write=True)


def main(argv: list[str] | None = None) -> int:
    from fstrain.config import check_value, load_config
    from fstrain.settings import AtLeast1, Count, Fraction, PipelineConfig

    parser = argparse.ArgumentParser(prog="python -m fstrain.stylize", description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("input", help="an aligned face image or a folder/prefix of them")
    parser.add_argument("--root", required=True, help="pipeline root (local dir or s3://bucket/prefix)")
    parser.add_argument("--styles", required=True, help="comma-separated style names")
    parser.add_argument("--out", required=True, help="output folder or URI for <style>_grid.png")
    parser.add_argument("--generator", action="append", default=[], metavar="STYLE=URI",
                        help="use this G' for STYLE instead of <root>/styles/<style>/generator.pt")
    parser.add_argument("--layer", type=int, default=None, help="mixing layer k (default: config stylize.mix_layer)")
    parser.add_argument("--psi", type=float, default=None, help="truncation (default: config stylize.truncation)")
    parser.add_argument("--samples", type=int, default=None, help="multimodal samples per face")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--reference", default=None, help="reference image to invert (or reuse) per style")
    parser.add_argument("--reference-id", default=None, help="name of the stored reference code")
    parser.add_argument("--refine-steps", type=int, default=None,
                        help="refine each face's code against the base G for N steps (default: config "
                             "stylize.refine_steps; 0 = the encoder's codes)")
    parser.add_argument("--pivotal-steps", type=int, default=None,
                        help="tune a copy of the base G on each face for N steps and render by G' + that change "
                             "(default: config stylize.pivotal_steps; 0 = G' as it is)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_debug_flag(parser)
    args = parser.parse_args(argv)

    config = load_config(args.config, PipelineConfig)
    cfg = config.stylize
    # Flags are checked like the config keys they override, then inputs, models and the output, before any work.
    k = cfg.mix_layer if args.layer is None else check_value(args.layer, Count, "--layer")
    psi = cfg.truncation if args.psi is None else check_value(args.psi, Fraction, "--psi")
    n = cfg.samples if args.samples is None else check_value(args.samples, AtLeast1, "--samples")
    seed = cfg.seed if args.seed is None else check_value(args.seed, Count, "--seed")
    refine_steps = cfg.refine_steps if args.refine_steps is None else check_value(args.refine_steps, Count,
                                                                                 "--refine-steps")
    pivotal_steps = cfg.pivotal_steps if args.pivotal_steps is None else check_value(args.pivotal_steps, Count,
                                                                                    "--pivotal-steps")
    styles = [s for s in args.styles.split(",") if s]
    overrides = generator_overrides(args.generator)
    preflight_checks(config, args, styles, overrides, refine_steps + pivotal_steps)

    stylizer = load_stylizer(config, root=args.root, styles=styles, generator_uris=overrides, device=args.device,
                             refine_steps=refine_steps, pivotal_steps=pivotal_steps)
    size = next(iter(stylizer.generators.values())).size
    inputs = list_inputs(args.input)
    from tqdm import tqdm   # on stderr; TQDM_DISABLE=1 silences it

    faces = torch.cat([pil_to_tensor(read_image(uri)[0], size)
                       for uri in tqdm(inputs, desc="read faces", unit="image", leave=False)]).to(args.device)
    w_plus = stylizer.encode(faces)
    pivots = stylizer.pivots(faces, w_plus)

    reference_tensor, ref_id = None, args.reference_id
    if args.reference:
        ref_image, ref_bytes = read_image(args.reference)
        reference_tensor = pil_to_tensor(ref_image, size).to(args.device)
        ref_id = ref_id or reference_id(ref_bytes)
    store = ReferenceStore(args.root)
    lpips = None

    for style in tqdm(styles, desc=f"stylize {len(inputs)} faces", unit="style"):
        row_cells = [to_uint8(faces), to_uint8(stylizer.general(w_plus, style, pivots))]
        multimodal = stylizer.multimodal(w_plus, style, k, psi, n, seed, pivots)
        row_cells += [to_uint8(multimodal[:, i]) for i in range(n)]
        if ref_id:
            generator = stylizer.generator(style)

            def invert(generator=generator):
                nonlocal lpips
                if reference_tensor is None:
                    raise SystemExit(f"{store.uri(style, ref_id)}: no stored code for this G'; pass --reference "
                                     f"IMAGE to invert it")
                if lpips is None:
                    from fstrain.models.hub import ModelHub
                    lpips = ModelHub(config.models, args.root).lpips(args.device)
                print(f"[{style}] inverting reference {ref_id} ({cfg.reference_steps} steps)", file=sys.stderr)
                return invert_reference(generator, reference_tensor, lpips, cfg.reference_steps, cfg.reference_lr,
                                        cfg.reference_noise_reg, w_init=stylizer.latent_avg(style), seed=seed)

            code, reused = store.get_or_invert(style, ref_id, invert, generator_fingerprint(generator))
            print(f"[{style}] reference {ref_id}: {'reused stored code' if reused else 'inverted and stored'} "
                  f"({store.uri(style, ref_id)})", file=sys.stderr)
            row_cells.append(to_uint8(stylizer.reference(w_plus, style, code, k, pivots)))
        grid = [[column[i] for column in row_cells] for i in range(len(inputs))]
        out_uri = storage.join(args.out, f"{style}_grid.png")
        labels = ["input", "general", *(f"multi {i + 1}" for i in range(n)), *(["reference"] if ref_id else [])]
        storage.write_bytes(out_uri, png_bytes(image_grid(grid, column_labels=labels)))
        print(f"[{style}] wrote {out_uri} ({len(inputs)} inputs; columns: input | general | multimodal x {n}"
              f"{' | reference' if ref_id else ''})")
    return 0


if __name__ == "__main__":
    from fstrain.cli import run_command

    sys.exit(run_command(main))
