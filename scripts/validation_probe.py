"""What the validation probes (recipe_probe.py, refine_probe.py) share: their common flags, and the models and
evaluation instruments they load from a `make demo` root, measured on the validation block of
configs/study_validation.yaml (never the study's test block)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def add_common_flags(parser: argparse.ArgumentParser, *, root_help: str, styles: list[str]) -> None:
    parser.add_argument("--root", required=True, help=root_help)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default=str(REPO / "configs/demo_five_styles.yaml"))
    parser.add_argument("--validation", default=str(REPO / "configs/study_validation.yaml"))
    parser.add_argument("--styles", nargs="+", default=styles)


@dataclass
class ProbeSetup:
    root: str
    config: Any          # fstrain.settings.PipelineConfig
    study: Any           # fstrain.study.settings.StudyConfig: its test block is the validation block
    hub: Any             # fstrain.models.hub.ModelHub
    base: Any            # the base G (g_ema), eval mode
    encoder: Any         # E_w+
    instruments: Any     # fstrain.study.instruments.Instruments (the evaluation nets)
    device: Any
    out: Path

    def validation_facts(self) -> dict:
        return {"first_identity": self.study.first_test_identity, "identities": self.study.test_identities,
                "fid_reference": self.study.fid_reference_identities, "view": self.study.test_view}


def load_setup(args: argparse.Namespace) -> ProbeSetup:
    import torch

    from fstrain import layout
    from fstrain.config import load_config
    from fstrain.models.hub import ModelHub
    from fstrain.settings import PipelineConfig
    from fstrain.study.instruments import load_instruments
    from fstrain.study.settings import load_study_config

    torch.set_num_threads(2)
    root = layout.absolute_root(args.root)
    config = load_config(args.config, PipelineConfig)
    study = load_study_config(args.validation)
    device = torch.device("cpu")
    hub = ModelHub(config.models, root)
    base = hub.generator(load_discriminator=False, expected_size=config.data.image_size).generator.eval()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return ProbeSetup(root=root, config=config, study=study, hub=hub, base=base,
                      encoder=hub.encoder("encoder_wplus", device),
                      instruments=load_instruments(study.evaluation, config, root, device), device=device, out=out)


def markdown_table(headers: tuple[str, str], groups: dict[str, dict[str, dict]], shown: tuple[str, ...]) -> list[str]:
    """A probe's table: one line per (group, row name) with the `shown` figures to 3 decimals ("-" = not measured)."""
    lines = [f"| {headers[0]} | {headers[1]} | " + " | ".join(shown) + " |", "|---" * (len(shown) + 2) + "|"]
    for group, rows in groups.items():
        for name, row in rows.items():
            lines.append(f"| {group} | {name} | " + " | ".join("-" if row[k] is None else f"{row[k]:.3f}"
                                                             for k in shown) + " |")
    return lines
