"""Is a world G/D pair short of data or of capacity? D's mean logit on photos it trained on, on photos of people it
never saw, and on G's samples.

    python scripts/discriminator_gap_probe.py assets/world64 /tmp/longer_g [--identities 500]

Columns: `train_seen` (the first identities of the TRAIN photos G/D trained on, same views), `train_unseen` (TRAIN
identities far past the ones drawn, same views), `heldout` (HELDOUT identities), `g_ema_fake` (g_ema at z ~ N(0, I),
seeded, stored noise). A D that memorises its training photos scores `train_seen` above `train_unseen`/`heldout` by a growing
margin (ADA's overfitting signal); a G that is short of capacity leaves `g_ema_fake` ever further below every real
column while that margin stays flat. Figures are D's raw logits (D in eval mode), comparable between folders only as
gaps.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

UNSEEN_FIRST_IDENTITY = 50_000     # far past any identity count fstrain.world.generator draws from TRAIN


def main() -> int:
    import torch

    from fstrain.data import storage
    from fstrain.models.hub import generator_at
    from fstrain.world.files import FILES
    from fstrain.world.splits import HELDOUT, TRAIN, render_identities

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="+", help="a fstrain.world.pretrain output (its generator.pt keeps d)")
    parser.add_argument("--identities", type=int, default=500, help="identities per real column (2 views each)")
    parser.add_argument("--samples", type=int, default=1000, help="G samples")
    args = parser.parse_args()

    torch.set_num_threads(min(torch.get_num_threads(), 2))
    reals: dict[str, torch.Tensor] = {}
    print("| folder | train_seen | train_unseen | heldout | g_ema_fake | seen - heldout | heldout - fake |")
    print("|---|---|---|---|---|---|---|")
    for folder in args.folder:
        loaded = generator_at(storage.join(folder.rstrip("/"), FILES["generator"]))     # g_ema and d
        g_ema, d = loaded.generator, loaded.discriminator
        if d is None:
            raise SystemExit(f"{folder}/{FILES['generator']} keeps no discriminator 'd': nothing to probe")
        if not reals:     # every folder is scored on the same photos (same size: the world's G files are one size)
            def photos(identity_set, first: int = 0) -> torch.Tensor:
                return render_identities(identity_set, args.identities, 2, "photo", g_ema.size,
                                         first_identity=first).tensor()
            reals = {"train_seen": photos(TRAIN), "train_unseen": photos(TRAIN, UNSEEN_FIRST_IDENTITY),
                     "heldout": photos(HELDOUT)}
        with torch.no_grad():
            rng = torch.Generator().manual_seed(0)
            fakes = torch.cat([g_ema([torch.randn(100, g_ema.style_dim, generator=rng)], randomize_noise=False)[0]
                               for _ in range(max(args.samples // 100, 1))])
            logit = {name: d(x).mean().item() for name, x in {**reals, "g_ema_fake": fakes}.items()}
        print(f"| {folder} | " + " | ".join(f"{logit[k]:+.3f}" for k in (*reals, "g_ema_fake"))
              + f" | {logit['train_seen'] - logit['heldout']:+.3f} | {logit['heldout'] - logit['g_ema_fake']:+.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
