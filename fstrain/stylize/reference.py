"""Reference-guided stylization: invert a reference image into G''s V space and keep the code for reuse.

Inversion (UI2I's "V space"): V = right-singular vectors of G''s concatenated modulation weights
(`fstrain.models.latents.modulation_basis`); one code v (1, D) per reference, w = v @ V repeated over every layer,
optimised with Adam under LPIPS(G'(w), reference) + noise_reg * noise regularisation, the noise maps optimised
alongside (and re-normalised after each step) so v does not have to explain the noise.
The stored code is (v, w); reference mode uses w only (layers >= k), rendered with G''s stored noise, so the
reported LPIPS values are measured that way too.

Codes live at `<root>/references/<style>/<id>.npz` (`ReferenceStore`); the id is a content hash of the
reference image unless the user names it.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fstrain import layout
from fstrain.data import storage
from fstrain.losses import perceptual_distance
from fstrain.models.latents import broadcast_w, modulation_basis, modulation_weight_matrix, v_to_w, w_to_v
from fstrain.stylize.images import to_uint8

FORMAT_VERSION = 1


@dataclass
class ReferenceCode:
    """A reference image's code for one style generator: v (N, D) in V space and w = v @ V (N, D)."""
    v: torch.Tensor
    w: torch.Tensor
    meta: dict = field(default_factory=dict)


# ---------------------------------------------------------------- inversion


def noise_regularization(noises: list[torch.Tensor]) -> torch.Tensor:
    """Penalise spatial autocorrelation of noise maps at every scale down to 8 px (StyleGAN2 projector).

    For each map: squared mean of its product with itself shifted by one pixel along x and along y, then the same
    after 2x2 average pooling, until the map is 8 px. Keeps optimised noise looking like white noise, so it
    cannot absorb image content.
    """
    total = noises[0].new_zeros(())
    for noise in noises:
        while True:
            total = total + (noise * torch.roll(noise, 1, dims=3)).mean().pow(2) \
                + (noise * torch.roll(noise, 1, dims=2)).mean().pow(2)
            if noise.shape[-1] <= 8:
                break
            noise = F.avg_pool2d(noise, 2)
    return total


def _normalize_noises(noises: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for noise in noises:
            noise.sub_(noise.mean()).div_(noise.std() + 1e-8)


def _learning_rate(step_fraction: float, base_lr: float, rampdown: float = 0.25, rampup: float = 0.05) -> float:
    """Cosine ramp-down over the last `rampdown` of the run, linear ramp-up over the first `rampup`."""
    ramp = min(1.0, (1.0 - step_fraction) / rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    ramp = ramp * min(1.0, step_fraction / rampup)
    return base_lr * ramp


def invert_reference(generator: nn.Module, image: torch.Tensor, lpips: Callable[[torch.Tensor, torch.Tensor],
                     torch.Tensor], steps: int = 1000, lr: float = 0.1, noise_reg: float = 1e5, *,
                     w_init: torch.Tensor | None = None, seed: int = 0,
                     progress: Callable[[int, int, float], None] | None = None) -> ReferenceCode:
    """Invert reference image(s) (N, 3, H, W) in [-1, 1] into G''s V space; returns v, w of shape (N, D).

    `w_init` (D,) or (1, D): starting w (default: G''s mean w from 4096 mapped z, fixed seed). Each image is
    optimised independently (the loss is a sum over the batch and Adam is element-wise).
    """
    if steps < 1:
        raise ValueError(f"reference inversion needs steps >= 1; got {steps}")
    device = generator.input.input.device
    target = image.to(device, torch.float32)
    if target.ndim == 3:
        target = target.unsqueeze(0)
    batch = target.shape[0]
    basis = modulation_basis(generator).to(device)
    if w_init is None:
        w_init = generator.mean_latent(4096, generator=torch.Generator(device="cpu").manual_seed(seed))
    w_init = w_init.reshape(1, -1).to(device, torch.float32)

    # Only v and the noise maps are optimised; G' stays as it was (flags restored at the end).
    grad_flags = [p.requires_grad for p in generator.parameters()]
    generator.requires_grad_(False)
    v = w_to_v(w_init, basis).repeat(batch, 1).clone().requires_grad_(True)
    rng = torch.Generator(device="cpu").manual_seed(seed)
    noises = [n.requires_grad_(True) for n in generator.noise_from(rng, batch, device)]
    optimizer = torch.optim.Adam([v, *noises], lr=lr)

    def lpips_with_stored_noise(codes: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            rendered = generator.synthesis(broadcast_w(v_to_w(codes, basis), generator.n_latent))
            return perceptual_distance(lpips, rendered, target)

    lpips_initial = lpips_with_stored_noise(v.detach())
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step / steps, lr)
        rendered = generator.synthesis(broadcast_w(v_to_w(v, basis), generator.n_latent), noise=noises)
        distance = perceptual_distance(lpips, rendered, target)
        loss = distance.sum() + noise_reg * noise_regularization(noises)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _normalize_noises(noises)
        if progress is not None:
            progress(step + 1, steps, float(distance.detach().mean()))

    for param, flag in zip(generator.parameters(), grad_flags):
        param.requires_grad_(flag)
    v_final = v.detach()
    lpips_final = lpips_with_stored_noise(v_final)
    meta = {"steps": steps, "lr": lr, "noise_reg": noise_reg, "seed": seed,
            "lpips_initial": lpips_initial.tolist(), "lpips_final": lpips_final.tolist(),
            "generator_fingerprint": generator_fingerprint(generator)}
    return ReferenceCode(v=v_final, w=v_to_w(v_final, basis), meta=meta)


def generator_fingerprint(generator: nn.Module) -> str:
    """Short hash of the modulation weights: tells whether a stored code was inverted for this G'."""
    matrix = modulation_weight_matrix(generator).to(torch.float32).numpy()
    return hashlib.sha256(matrix.tobytes()).hexdigest()[:16]


def reference_id(image: bytes | np.ndarray | torch.Tensor) -> str:
    """Content id of a reference: sha256 of its file bytes, or of its 8-bit pixels (16 hex chars)."""
    if isinstance(image, torch.Tensor):
        image = to_uint8(image)
    if isinstance(image, np.ndarray):
        image = np.ascontiguousarray(image, dtype=np.uint8)
        data = repr(image.shape).encode() + image.tobytes()
    else:
        data = bytes(image)
    return hashlib.sha256(data).hexdigest()[:16]


# ---------------------------------------------------------------- storage


class ReferenceStore:
    """Reference codes under `<root>/references/<style>/<id>.npz` (arrays v, w and a JSON `meta`)."""

    def __init__(self, root: str):
        self.root = root

    def uri(self, style: str, ref_id: str) -> str:
        if not ref_id or "/" in ref_id or ref_id.startswith("."):
            raise ValueError(f"reference id {ref_id!r} must be a non-empty name without '/' or a leading '.'")
        return layout.reference(self.root, style, ref_id)

    def exists(self, style: str, ref_id: str) -> bool:
        return storage.exists(self.uri(style, ref_id))

    def save(self, style: str, ref_id: str, code: ReferenceCode) -> str:
        uri = self.uri(style, ref_id)
        meta = {**code.meta, "style": style, "id": ref_id, "format_version": FORMAT_VERSION}
        buffer = io.BytesIO()
        np.savez(buffer, v=code.v.detach().cpu().numpy().astype(np.float32),
                 w=code.w.detach().cpu().numpy().astype(np.float32), meta=np.array(json.dumps(meta)))
        storage.write_bytes(uri, buffer.getvalue())
        return uri

    def load(self, style: str, ref_id: str) -> ReferenceCode:
        uri = self.uri(style, ref_id)
        try:
            data = storage.read_bytes(uri)
        except storage.NotFoundError:
            raise storage.NotFoundError(
                uri, f"no stored reference code {ref_id!r} for style {style!r}; invert the reference image first "
                     f"(python -m fstrain.stylize ... --reference IMAGE) or check the id") from None
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                v, w, meta = arrays["v"], arrays["w"], json.loads(str(arrays["meta"]))
        except (KeyError, ValueError, OSError) as exc:
            raise ValueError(f"{uri}: not a reference code file (expected npz with v, w, meta): {exc}") from exc
        return ReferenceCode(v=torch.from_numpy(v), w=torch.from_numpy(w), meta=meta)

    def get_or_invert(self, style: str, ref_id: str, invert: Callable[[], ReferenceCode],
                      fingerprint: str | None = None) -> tuple[ReferenceCode, bool]:
        """The stored code for (style, id) if there is one for this generator, else `invert()` and store it.

        Returns (code, reused). A stored code whose `generator_fingerprint` differs from `fingerprint` was
        inverted for another G' (the style was retrained): it is inverted again and replaced.
        """
        if self.exists(style, ref_id):
            code = self.load(style, ref_id)
            if fingerprint is None or code.meta.get("generator_fingerprint") == fingerprint:
                return code, True
        code = invert()
        self.save(style, ref_id, code)
        return code, False
