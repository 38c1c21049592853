"""NVIDIA stylegan2-ada-pytorch network pickles (`.pkl`) read without running code from them, mapped onto rosinality.

What such a pickle holds (NVlabs/stylegan2-ada-pytorch `training_loop.py`, `torch_utils/persistence.py`):
`{"G", "D", "G_ema", "augment_pipe", "training_set_kwargs"}`, each network an instance of a `@persistent_class`,
pickled as `torch_utils.persistence._reconstruct_persistent_obj(meta)` where `meta` carries the *source code* of
`training/networks.py`, the class name and the module's `__dict__` (`_parameters`, `_buffers`, `_modules`, plain
attributes). NVIDIA's loader executes that source. We never do: `_SafeUnpickler` admits only the callables such a
pickle needs to rebuild tensors (`torch._utils._rebuild_tensor_v2`/`_rebuild_parameter`, storages through
`torch.load(weights_only=True)`), `collections.OrderedDict`, numpy scalars and dtypes, and turns every persistent
object into a `NetworkRecord` (class name + state). Any other global - `os.system`, `builtins.exec`, an unknown
class - stops the read with an error naming it, before anything is called.

Key-for-key mapping (G_ema by default, `which="g"` reads G; D where it is the default residual D):
    mapping.fc{i}.weight/bias        -> style.{i+1}.weight/bias          (same lr_mul convention; lr from bias_gain)
    mapping.w_avg                    -> latent_avg
    synthesis.b4.const (C,4,4)       -> input.input (1,C,4,4)
    synthesis.b4.conv1 / torgb       -> conv1 / to_rgb1
    synthesis.b{r}.conv0/conv1/torgb -> convs.{2k}/convs.{2k+1}/to_rgbs.{k}, k = log2(r) - 3
      .weight (O,I,k,k) -> .conv.weight (1,O,I,k,k);  .affine -> .conv.modulation;  .bias -> .activate.bias
      (to_rgb: .bias (3,) -> .bias (1,3,1,1));  .noise_strength () -> .noise.weight (1,);
      .noise_const (R,R) -> noises.noise_j (1,1,R,R), j = 0 for b4.conv1, 2k+1 / 2k+2 for conv0 / conv1
    D: b{size}.fromrgb -> convs.0;  b{r}.conv0/conv1/skip -> convs.j.conv1/conv2/skip;  b4.conv/fc/out ->
       final_conv / final_linear.0 / final_linear.1
No weight is flipped: ada's up-sampling layer calls conv2d_resample with flip_weight=False, which hands
conv_transpose2d the weight unflipped, exactly as rosinality does. (The flip belongs to TensorFlow-era weights:
ada's legacy.py flips `Conv0_up` when converting those.) ada's `conv_clamp` (+-256, a float16 guard) has no
rosinality counterpart; it is recorded in the metadata.
"""
from __future__ import annotations

import collections
import io
import math
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch

from fstrain.models.errors import CheckpointError, refused_message

FORMAT_NAME = "nvidia-stylegan2-ada-pkl"
NETWORK_KEYS = {"g_ema": "G_ema", "g": "G"}
_STANDARD_FILTER = torch.tensor([1.0, 3.0, 3.0, 1.0]).outer(torch.tensor([1.0, 3.0, 3.0, 1.0])) / 64


@dataclass
class NetworkRecord:
    """A persistent NVIDIA module as data: its class name and its pickled `__dict__` (never a live object)."""
    class_name: str
    state: dict[str, Any] = field(default_factory=dict)

    def child(self, name: str) -> "NetworkRecord | None":
        child = (self.state.get("_modules") or {}).get(name)
        return child if isinstance(child, NetworkRecord) else None

    def children(self) -> dict[str, "NetworkRecord"]:
        return {k: v for k, v in (self.state.get("_modules") or {}).items() if isinstance(v, NetworkRecord)}

    def attr(self, name: str, default: Any = None) -> Any:
        return self.state.get(name, default)

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Every parameter and buffer below this record, keyed like `state_dict()` (frozen layers keep their
        weights as buffers, so both count)."""
        out: dict[str, torch.Tensor] = {}
        for group in ("_parameters", "_buffers"):
            for name, value in (self.state.get(group) or {}).items():
                if isinstance(value, torch.Tensor):
                    out[prefix + name] = value.detach()
        for name, child in self.children().items():
            out.update(child.tensors(f"{prefix}{name}."))
        return out


class _PlainDict(dict):
    """dnnlib.EasyDict read as a plain dict (its attribute access is the only thing it adds)."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.update(state)


def _persistent_record(meta: Any) -> NetworkRecord:
    # NVIDIA's version executes meta["module_src"] here; we keep the class name and the state only.
    if not isinstance(meta, dict) or not isinstance(meta.get("class_name"), str):
        raise pickle.UnpicklingError("malformed persistent object (no class name)")
    state = meta.get("state")
    return NetworkRecord(meta["class_name"], dict(state) if isinstance(state, dict) else {})


def _storage_from_bytes(data: bytes) -> Any:
    # torch pickles each storage as torch.save bytes; torch's own helper loads them with weights_only=False.
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _numpy_scalar_reader() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar
    return scalar


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
    ("dnnlib.util", "EasyDict"): _PlainDict,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar_reader(),
    ("numpy._core.multiarray", "scalar"): _numpy_scalar_reader(),
}


class _SafeUnpickler(pickle.Unpickler):
    """Resolves only `_SAFE_GLOBALS` (and torch dtypes); everything else is refused before it can be called."""

    def __init__(self, file: Any, uri: str):
        super().__init__(file)
        self.uri = uri

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith("dnnlib.tflib"):
            raise CheckpointError(
                f"{self.uri}: a TensorFlow-era StyleGAN pickle (dnnlib.tflib); only PyTorch network pickles of "
                f"stylegan2-ada-pytorch are read. Use NVIDIA's PyTorch release of the network (stylegan2-ada-pytorch "
                f"pretrained .pkl) or rosinality's convert_weight.py output (.pt).")
        raise CheckpointError(refused_message(self.uri, f"{module}.{name}"))

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(f"{self.uri}: the pickle refers to external objects ({str(pid)[:60]}); expected a "
                              f"self-contained stylegan2-ada-pytorch network pickle.")


def read_network_pickle(data: bytes, uri: str) -> Any:
    """Unpickle with `_SafeUnpickler`: NVIDIA modules come back as NetworkRecords, tensors as tensors."""
    try:
        return _SafeUnpickler(io.BytesIO(data), uri).load()
    except CheckpointError:
        raise
    except (EOFError, pickle.UnpicklingError) as exc:
        if isinstance(exc, EOFError) or "truncated" in str(exc) or "EOF" in str(exc):
            raise CheckpointError(f"{uri}: the pickle is truncated ({len(data)} bytes); copy or download it "
                                  f"again.") from None
        raise CheckpointError(f"{uri}: not a readable network pickle ({exc}).") from None
    except Exception as exc:  # a malformed stream surfaces as many exception types
        raise CheckpointError(f"{uri}: not a readable network pickle ({type(exc).__name__}: "
                              f"{str(exc)[:160]}).") from None


# ---------------------------------------------------------------- structure checks


def is_network_pickle(content: Any) -> bool:
    return isinstance(content, Mapping) and any(isinstance(content.get(k), NetworkRecord) for k in ("G_ema", "G"))


def _network(content: Any, uri: str, which: str) -> NetworkRecord:
    if not is_network_pickle(content):
        found = sorted(map(str, content))[:8] if isinstance(content, Mapping) else type(content).__name__
        raise CheckpointError(f"{uri}: a pickle, but not a stylegan2-ada-pytorch network pickle (expected a dict "
                              f"with 'G_ema'/'G' networks; found {found}).")
    if which not in NETWORK_KEYS:
        raise CheckpointError(f"{uri}: which={which!r}; a network pickle offers 'g_ema' (G_ema) or 'g' (G).")
    net = content.get(NETWORK_KEYS[which])
    if not isinstance(net, NetworkRecord):
        raise CheckpointError(f"{uri}: no '{NETWORK_KEYS[which]}' network in the pickle (it has "
                              f"{sorted(k for k, v in content.items() if isinstance(v, NetworkRecord))}).")
    return net


def _refuse_stylegan3(synthesis: NetworkRecord, uri: str) -> None:
    names = synthesis.children()
    if "input" in names or any(re.fullmatch(r"L\d+_\d+_\d+", n) for n in names):
        raise CheckpointError(f"{uri}: a StyleGAN3 (alias-free) generator; its Fourier-feature input and "
                              f"non-upsampling layers have no StyleGAN2/rosinality equivalent, so it cannot be "
                              f"converted. Use a StyleGAN2 (stylegan2-ada-pytorch or stylegan3 '--cfg=stylegan2') "
                              f"pickle.")


def _unsupported(uri: str, what: str) -> CheckpointError:
    return CheckpointError(f"{uri}: {what}; only the StyleGAN2 config-f architecture (skip G, residual D, 3x3 "
                           f"convolutions, leaky ReLU, [1,3,3,1] filters, 3 colour channels) maps onto rosinality.")


def _check_filter(tensors: Mapping[str, torch.Tensor], uri: str) -> None:
    for key, value in tensors.items():
        if key.endswith("resample_filter") and not (value.shape == _STANDARD_FILTER.shape
                                                   and torch.allclose(value.float(), _STANDARD_FILTER)):
            raise _unsupported(uri, f"'{key}' is not the [1,3,3,1] filter")


# ---------------------------------------------------------------- generator


def _layer(nv: Mapping[str, torch.Tensor], src: str, dst: str, noise_index: int | None, res: int,
           state: dict[str, torch.Tensor]) -> None:
    weight = nv[f"{src}.weight"]
    state[f"{dst}.conv.weight"] = weight.unsqueeze(0)
    state[f"{dst}.conv.modulation.weight"] = nv[f"{src}.affine.weight"]
    state[f"{dst}.conv.modulation.bias"] = nv[f"{src}.affine.bias"]
    if noise_index is None:  # ToRGB
        state[f"{dst}.bias"] = nv[f"{src}.bias"].reshape(1, -1, 1, 1)
        return
    state[f"{dst}.activate.bias"] = nv[f"{src}.bias"]
    if f"{src}.noise_strength" in nv:
        state[f"{dst}.noise.weight"] = nv[f"{src}.noise_strength"].reshape(1)
        const = nv[f"{src}.noise_const"]
        state[f"noises.noise_{noise_index}"] = const.reshape(1, 1, *const.shape[-2:])
    else:  # use_noise=False: no noise is the same as a zero noise strength
        state[f"{dst}.noise.weight"] = torch.zeros(1)
        state[f"noises.noise_{noise_index}"] = torch.zeros(1, 1, res, res)


def generator_state(net: NetworkRecord, uri: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(rosinality state dict without blur kernels, constructor hints, NVIDIA facts for the metadata)."""
    mapping, synthesis = net.child("mapping"), net.child("synthesis")
    if mapping is None or synthesis is None:
        raise CheckpointError(f"{uri}: the '{net.class_name}' network has no mapping/synthesis parts; expected a "
                              f"stylegan2-ada-pytorch Generator.")
    _refuse_stylegan3(synthesis, uri)
    if net.attr("c_dim", 0) or mapping.child("embed") is not None:
        raise _unsupported(uri, f"a class-conditional generator (c_dim={net.attr('c_dim')})")
    if net.attr("img_channels", 3) != 3:
        raise _unsupported(uri, f"a {net.attr('img_channels')}-channel generator")
    if net.attr("z_dim") != net.attr("w_dim"):
        raise _unsupported(uri, f"z_dim {net.attr('z_dim')} != w_dim {net.attr('w_dim')}")

    nv = net.tensors()
    _check_filter(nv, uri)
    fcs = sorted(int(m.group(1)) for k in nv if (m := re.fullmatch(r"mapping\.fc(\d+)\.weight", k)))
    state: dict[str, torch.Tensor] = {}
    lr_mul = None
    for i in fcs:
        fc = mapping.child(f"fc{i}")
        if fc.attr("activation", "lrelu") != "lrelu":
            raise _unsupported(uri, f"mapping.fc{i} uses activation {fc.attr('activation')!r}")
        gain = float(fc.attr("bias_gain", 0.01))
        if lr_mul is not None and not math.isclose(gain, lr_mul):
            raise _unsupported(uri, "mapping layers with different learning-rate multipliers")
        lr_mul = gain
        state[f"style.{i + 1}.weight"] = nv[f"mapping.fc{i}.weight"]
        state[f"style.{i + 1}.bias"] = nv[f"mapping.fc{i}.bias"]

    resolutions = sorted(int(n[1:]) for n in synthesis.children() if re.fullmatch(r"b\d+", n))
    if not resolutions or resolutions[0] != 4:
        raise CheckpointError(f"{uri}: synthesis has no b4 block; expected a stylegan2-ada-pytorch Generator.")
    conv_clamps = set()
    for res in resolutions:
        block = synthesis.child(f"b{res}")
        if block.attr("architecture", "skip") != "skip" or block.child("torgb") is None:
            raise _unsupported(uri, f"synthesis block b{res} has architecture {block.attr('architecture')!r}")
        for name, layer in block.children().items():
            conv_clamps.add(layer.attr("conv_clamp"))
            if name.startswith("conv") and (layer.attr("activation", "lrelu") != "lrelu"
                                            or layer.attr("kernel_size", 3) != 3):
                raise _unsupported(uri, f"synthesis.b{res}.{name} is not a 3x3 leaky-ReLU layer")

    const = nv["synthesis.b4.const"]
    state["input.input"] = const.unsqueeze(0)
    _layer(nv, "synthesis.b4.conv1", "conv1", 0, 4, state)
    _layer(nv, "synthesis.b4.torgb", "to_rgb1", None, 4, state)
    for k, res in enumerate(resolutions[1:]):
        _layer(nv, f"synthesis.b{res}.conv0", f"convs.{2 * k}", 2 * k + 1, res, state)
        _layer(nv, f"synthesis.b{res}.conv1", f"convs.{2 * k + 1}", 2 * k + 2, res, state)
        _layer(nv, f"synthesis.b{res}.torgb", f"to_rgbs.{k}", None, res, state)

    facts = {"z_dim": net.attr("z_dim"), "w_dim": net.attr("w_dim"), "img_resolution": net.attr("img_resolution"),
             "conv_clamp": next(iter(conv_clamps - {None}), None), "class_name": net.class_name,
             "has_w_avg": "mapping.w_avg" in nv}
    if "mapping.w_avg" in nv:
        facts["w_avg"] = nv["mapping.w_avg"]
    return state, {"lr_mlp": lr_mul if lr_mul is not None else 0.01}, facts


# ---------------------------------------------------------------- discriminator


def discriminator_state(net: NetworkRecord, uri: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    """(rosinality D state without blur kernels, "") or (None, why it cannot map)."""
    if net.attr("c_dim", 0) or net.child("mapping") is not None:
        return None, "a class-conditional discriminator"
    if net.attr("img_channels", 3) != 3:
        return None, f"a {net.attr('img_channels')}-channel discriminator"
    nv = net.tensors()
    try:
        _check_filter(nv, uri)
    except CheckpointError:
        return None, "a discriminator with a non-[1,3,3,1] filter"
    blocks = sorted((int(n[1:]) for n in net.children() if re.fullmatch(r"b\d+", n) and n != "b4"), reverse=True)
    epilogue = net.child("b4")
    if not blocks or epilogue is None:
        return None, "no discriminator blocks"
    for res in blocks:
        if net.child(f"b{res}").attr("architecture", "resnet") != "resnet":
            return None, f"discriminator block b{res} is not residual"
    mbstd = epilogue.child("mbstd")
    if mbstd is None or mbstd.attr("num_channels", 1) != 1 or epilogue.attr("architecture", "resnet") != "resnet":
        return None, "a discriminator epilogue other than minibatch-stddev (1 channel) + conv + 2 FC"
    state: dict[str, torch.Tensor] = {
        "convs.0.0.weight": nv[f"b{blocks[0]}.fromrgb.weight"],
        "convs.0.1.bias": nv[f"b{blocks[0]}.fromrgb.bias"],
        "final_conv.0.weight": nv["b4.conv.weight"], "final_conv.1.bias": nv["b4.conv.bias"],
        "final_linear.0.weight": nv["b4.fc.weight"], "final_linear.0.bias": nv["b4.fc.bias"],
        "final_linear.1.weight": nv["b4.out.weight"], "final_linear.1.bias": nv["b4.out.bias"],
    }
    for j, res in enumerate(blocks, start=1):
        state[f"convs.{j}.conv1.0.weight"] = nv[f"b{res}.conv0.weight"]
        state[f"convs.{j}.conv1.1.bias"] = nv[f"b{res}.conv0.bias"]
        state[f"convs.{j}.conv2.1.weight"] = nv[f"b{res}.conv1.weight"]
        state[f"convs.{j}.conv2.2.bias"] = nv[f"b{res}.conv1.bias"]
        state[f"convs.{j}.skip.1.weight"] = nv[f"b{res}.skip.weight"]
    return state, ""


# ---------------------------------------------------------------- into our modules


def loaded_from_pickle(content: Any, uri: str, which: str = "g_ema", load_discriminator: bool = True,
                       map_location: str | torch.device = "cpu"):
    """A `checkpoints.LoadedGenerator` from an unpickled network pickle (see module docstring for the mapping)."""
    from fstrain.models.architecture import (MEAN_LATENT_SAMPLES, LoadedGenerator, infer_discriminator_architecture,
                                             infer_generator_architecture, load_state_strict)
    from fstrain.models.stylegan2 import Discriminator, Generator

    net = _network(content, uri, which)
    try:
        state, hints, facts = generator_state(net, uri)
    except KeyError as exc:
        raise CheckpointError(f"{uri}: the generator lacks {exc}; expected a stylegan2-ada-pytorch Generator.") \
            from None
    arch = infer_generator_architecture(state, uri, hints)
    generator = Generator(**arch)
    full = {k: v for k, v in generator.state_dict().items() if k.endswith("kernel")}  # fixed blur/upsample filters
    full.update(state)
    load_state_strict(generator, full, uri, f"generator '{NETWORK_KEYS[which]}'")
    generator = generator.to(map_location).eval()

    metadata: dict[str, Any] = {"format": FORMAT_NAME, "source_network": NETWORK_KEYS[which],
                                "nvidia": {k: v for k, v in facts.items() if k != "w_avg"}}
    if facts["conv_clamp"] is not None:
        metadata["notes"] = [f"NVIDIA clamps activations at +-{facts['conv_clamp']} (conv_clamp, a float16 guard); "
                             f"rosinality does not, so renders agree wherever activations stay inside it"]
    if "w_avg" in facts:
        latent_avg = facts["w_avg"].reshape(-1).to(map_location, torch.float32)
    else:
        rng = torch.Generator().manual_seed(0)
        latent_avg = generator.mean_latent(MEAN_LATENT_SAMPLES, generator=rng).reshape(-1)
        metadata["latent_avg_source"] = f"computed: mean_latent({MEAN_LATENT_SAMPLES}, seed=0)"

    discriminator = None
    d_net = content.get("D")
    if load_discriminator and isinstance(d_net, NetworkRecord):
        try:
            d_state, why = discriminator_state(d_net, uri)
        except KeyError as exc:
            d_state, why = None, f"the discriminator lacks {exc}"
        if d_state is None:
            metadata["discriminator_skipped"] = why
        else:
            d_arch = infer_discriminator_architecture(d_state, uri)
            discriminator = Discriminator(**d_arch)
            d_full = {k: v for k, v in discriminator.state_dict().items() if k.endswith("kernel")}
            d_full.update(d_state)
            load_state_strict(discriminator, d_full, uri, "discriminator 'D'")
            mbstd_group = d_net.child("b4").child("mbstd").attr("group_size", 4)
            if mbstd_group != discriminator.stddev_group:
                metadata["notes"] = metadata.get("notes", []) + [
                    f"NVIDIA D groups minibatch stddev by {mbstd_group}; rosinality by 4"]
            discriminator = discriminator.to(map_location).eval()
    return LoadedGenerator(generator=generator, latent_avg=latent_avg, discriminator=discriminator,
                           metadata=metadata, source=uri)
