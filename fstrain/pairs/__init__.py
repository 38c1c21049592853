"""Pseudo-paired data (three levels) for one style: `make_pairs(...)`, the pair-shard format, and its reader.

Level 1 embeds S with the Z+ encoder, level 2 optimises that z+ against the baseline fine-tune G* under L_sem,
level 3 encodes S with the W+ encoder; every level's pseudo photo is P = G(w+) by the base G (see `levels`).
"""
from fstrain.pairs.build import (PairModels, PairsError, load_pair_models, make_pairs, pairs_for_batch,  # noqa: F401
                                 read_pairs, run_baseline_generator, write_contact_sheet, write_pair_shard)
from fstrain.pairs.records import PairSample, decode_pair, encode_pair  # noqa: F401
