"""LPIPS through the `lpips` package, with the backbone weights taken from a configured file.

`lpips.LPIPS(pnet_rand=True)` builds the VGG16/AlexNet trunk without torchvision's download; we then load the
trunk from a torchvision-format state dict (`features.N.weight`, as `torch.save(torchvision.models.vgg16(
weights="IMAGENET1K_V1").state_dict())` writes it) and the calibrated linear layers (shipped inside the `lpips`
package, or a file you name), both with weights_only=True and strict key checks. A missing backbone file is an
error, never a download or a random trunk. A trunk file may carry its own calibrated heads under
`lpips_lin.lin<i>.model.1.weight` keys (the synthetic world's perceptual net does); they are used unless
`lpips_linear_weights` names another file.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from fstrain.models.registry import (MissingWeightsError, WeightsMismatchError, check_state_dict, load_torch,
                                     save_json, save_torch)

NETS = ("vgg", "alex")
EMBEDDED_HEADS_PREFIX = "lpips_lin."   # calibrated linear heads stored inside a trunk file
TORCHVISION_BUILDERS = {"vgg": "vgg16", "alex": "alexnet"}
HOW_TO_GET_BACKBONE = ("Create it once on a machine with internet access: python -c \"import torch, torchvision; "
                       "torch.save(torchvision.models.{builder}(weights='IMAGENET1K_V1').state_dict(), "
                       "'{name}')\", then copy it to that URI (or set models.lpips_backbone in the config). "
                       "For tests only, `python -m fstrain.models.init` writes a RANDOM backbone.")


def _lpips_module():
    import lpips  # deferred: the import prints nothing but pulls in torchvision
    return lpips


def _packaged_linear_weights(net: str) -> Path:
    return Path(_lpips_module().__file__).parent / "weights" / "v0.1" / f"{net}.pth"


def trunk_key_map(model: nn.Module) -> dict[str, str]:
    """lpips key (`net.sliceK.N.weight`) -> torchvision key (`features.N.weight`).

    lpips slices the torchvision `features` Sequential and keeps each layer's original index as its name.
    """
    mapping = {}
    for key in model.net.state_dict():
        slice_name, index, param = key.split(".")
        mapping[f"net.{slice_name}.{index}.{param}"] = f"features.{index}.{param}"
    return mapping


def _check_net(net: str) -> None:
    if net not in NETS:
        raise ValueError(f"LPIPS net must be one of {NETS}; got {net!r}")


def load_lpips(backbone_weights_uri: str | None, net: str = "vgg", lpips_linear_weights: str | None = None,
               sha256: str | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """A frozen, eval-mode `lpips.LPIPS` whose trunk comes from `backbone_weights_uri` (torchvision format).

    Inputs to the returned module are images in [-1, 1]; it returns (N, 1, 1, 1) distances.
    """
    _check_net(net)
    builder = TORCHVISION_BUILDERS[net]
    if not backbone_weights_uri:
        raise MissingWeightsError(f"LPIPS-{net} needs backbone weights and none are configured. "
                                  + HOW_TO_GET_BACKBONE.format(builder=builder, name=f"{builder}.pth"))
    try:
        backbone = load_torch(backbone_weights_uri, sha256)
    except MissingWeightsError as exc:
        raise MissingWeightsError(f"{backbone_weights_uri}: LPIPS-{net} backbone weights not found. "
                                  + HOW_TO_GET_BACKBONE.format(builder=builder, name=f"{builder}.pth")) from exc
    if not isinstance(backbone, Mapping):
        raise WeightsMismatchError(f"{backbone_weights_uri}: expected a torchvision {builder} state dict, got "
                                   f"{type(backbone).__name__}")

    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
        warnings.simplefilter("ignore", UserWarning)
        model = _lpips_module().LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)

    # Trunk: every features.* key of the torchvision file must exist; classifier.* (unused by LPIPS) may.
    mapping = trunk_key_map(model)
    features = {k: v for k, v in backbone.items() if not k.startswith(("classifier.", EMBEDDED_HEADS_PREFIX))}
    embedded = {k[len(EMBEDDED_HEADS_PREFIX):]: v for k, v in backbone.items() if k.startswith(EMBEDDED_HEADS_PREFIX)}
    reverse = {tv: lp for lp, tv in mapping.items()}
    unknown = [k for k in features if k not in reverse]
    if unknown:
        raise WeightsMismatchError(f"{backbone_weights_uri}: unexpected keys for a torchvision {builder} state "
                                   f"dict: {unknown[:6]} (is this the other LPIPS net?)")
    check_state_dict(model.net, {reverse[k][len("net."):]: v for k, v in features.items()}, backbone_weights_uri,
                     f"LPIPS {net} trunk (torchvision 'features.N.*' keys)")

    # Linear calibration layers (lin0..lin4.model.1.weight).
    if embedded and not lpips_linear_weights:
        lin_uri, linear = f"{backbone_weights_uri} ({EMBEDDED_HEADS_PREFIX}* keys)", embedded
    else:
        lin_uri = lpips_linear_weights or str(_packaged_linear_weights(net))
        linear = load_torch(lin_uri)
    lins = nn.ModuleDict({f"lin{i}": lin for i, lin in enumerate(model.lins)})
    check_state_dict(lins, dict(linear), lin_uri, f"LPIPS {net} linear layers")
    broken = [k for k, v in linear.items() if not torch.isfinite(v.float()).all()]
    if broken:
        raise WeightsMismatchError(f"{lin_uri}: non-finite values in {broken}; LPIPS would be NaN. Recreate the "
                                   f"file (python -m fstrain.world.pretrain writes float32 heads)")

    return model.to(device).eval().requires_grad_(False)


def random_backbone_state(net: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A RANDOMLY initialised torchvision-format backbone state dict (tests and demos only)."""
    _check_net(net)
    import torchvision
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(torchvision.models, TORCHVISION_BUILDERS[net])(weights=None)
    return {k: v.contiguous() for k, v in model.state_dict().items() if k.startswith("features.")}


def save_random_backbone_weights(uri: str | os.PathLike, net: str = "alex", seed: int = 0) -> dict[str, Any]:
    """Write RANDOM LPIPS backbone weights (torchvision format) for tests/demos; returns their metadata.

    LPIPS distances computed with them are not perceptual. A `<uri>.json` sidecar says `"random_init": true`.
    """
    uri = str(uri)
    save_torch(random_backbone_state(net, seed), uri)
    metadata = {"format": f"torchvision-{TORCHVISION_BUILDERS[net]}-features", "net": net, "random_init": True,
                "seed": seed, "warning": "RANDOM weights: for tests and demos only, not a perceptual metric"}
    save_json(metadata, uri + ".json")
    return metadata
