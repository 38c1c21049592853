"""A tiny ONNX face detector with SCRFD's exact output signature and weights set by hand.

No real detector weights exist on this machine, so tests and benchmarks use this model through the real insightface
code path (`insightface.model_zoo.get_model` -> `SCRFD.detect`: letterboxing, anchor decoding, thresholding, NMS).
It measures something real in the image: bright blobs (faces lit against a darker background), so colour and
grayscale photos alike go through the same detector.

Graph (input "input.1", (1, 3, H, W) RGB scaled as (p - 127.5) / 128, exactly what SCRFD feeds):
1. "face" probability per pixel: a sigmoid of the luma (Rec. 601) above a threshold;
2. per stride s in (8, 16, 32): average-pool to cells of s px, then one fixed 7x7 convolution computes the
   blob's local moments around every cell (mass, centroid offset, second moments, mass on the window's rim);
3. score = sigmoid gates "centroid falls in this cell" x "the blob fits inside the window (rim empty)" x
   "the blob is big enough for this stride"; box = centroid +- 2 sigma (a uniform ellipse has sigma = a / 2),
   minus the pooling variance (1/12 cell^2); keypoints = the centroid plus a fixed face-template offset scaled
   by the box half sizes.
Outputs, like det_10g.onnx (non-batched, 2 anchors per cell, anchor 1 never fires):
scores (HW*2, 1) for strides 8, 16, 32; then bbox distances (HW*2, 4); then keypoints (HW*2, 10), in stride units.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

STRIDES = (8, 16, 32)
WINDOW = 7                    # cells per side of the moment window
# Keypoints relative to the blob centre, in units of the box half-width / half-height (eyes, nose, mouth corners).
# Matches the faces drawn by tests/support/batch_inputs.py (blob = face oval).
FACE_TEMPLATE = ((-0.36, -0.14), (0.36, -0.14), (0.0, 0.18), (-0.27, 0.45), (0.27, 0.45))


class TinySkinBlobDetector(nn.Module):
    def __init__(self, min_cells: float = 2.5, rim_max: float = 0.35, gate: float = 20.0,
                 luma_threshold: float = 150.0, template=FACE_TEMPLATE):
        super().__init__()
        self.luma_threshold = luma_threshold
        self.min_cells = min_cells
        self.rim_max = rim_max
        self.gate = gate
        r = WINDOW // 2
        v, u = torch.meshgrid(torch.arange(-r, r + 1.0), torch.arange(-r, r + 1.0), indexing="ij")
        rim = ((u.abs() == r) | (v.abs() == r)).float()
        # Moment kernels: mass, x, y, x^2, y^2, rim mass.
        kernels = torch.stack([torch.ones_like(u), u, v, u * u, v * v, rim]).unsqueeze(1)
        self.register_buffer("moments", kernels)
        self.register_buffer("template", torch.tensor(template, dtype=torch.float32))  # (5, 2)

    def face_mask(self, x: torch.Tensor) -> torch.Tensor:
        rgb = x * 128.0 + 127.5
        luma = 0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]
        return torch.sigmoid((luma - self.luma_threshold) / 6.0)

    def head(self, mask: torch.Tensor, stride: int):
        cells = F.avg_pool2d(mask, stride, stride)
        m = F.conv2d(cells, self.moments, padding=WINDOW // 2)
        mass = m[:, 0:1].clamp_min(1e-3)
        cx, cy = m[:, 1:2] / mass, m[:, 2:3] / mass
        var_x = (m[:, 3:4] / mass - cx * cx - 1.0 / 12).clamp_min(1e-2)
        var_y = (m[:, 4:5] / mass - cy * cy - 1.0 / 12).clamp_min(1e-2)
        half_w, half_h = 2.0 * var_x.sqrt(), 2.0 * var_y.sqrt()
        k = self.gate
        score = torch.sigmoid(k * (0.55 - cx.abs())) * torch.sigmoid(k * (0.55 - cy.abs())) \
            * torch.sigmoid(k * (self.rim_max - m[:, 5:6])) * torch.sigmoid(k * (m[:, 0:1] - self.min_cells))
        # Offsets from the anchor (the cell's top-left corner) to the centroid, in stride units.
        ox, oy = cx + 0.5, cy + 0.5
        bbox = torch.cat([half_w - ox, half_h - oy, ox + half_w, oy + half_h], 1)
        kps = [t for i in range(5) for t in (ox + self.template[i, 0] * half_w, oy + self.template[i, 1] * half_h)]
        kps = torch.cat(kps, 1)
        return score, bbox, kps

    @staticmethod
    def flatten_two_anchors(t: torch.Tensor, fire_second: bool = False) -> torch.Tensor:
        """(1, C, H, W) -> (H*W*2, C), anchors interleaved per cell as SCRFD lays them out."""
        c = t.shape[1]
        per_cell = t[0].permute(1, 2, 0).reshape(-1, 1, c)
        second = per_cell if fire_second else torch.zeros_like(per_cell)
        return torch.cat([per_cell, second], 1).reshape(-1, c)

    def forward(self, x: torch.Tensor):
        mask = self.face_mask(x)
        scores, boxes, kpss = [], [], []
        for stride in STRIDES:
            score, bbox, kps = self.head(mask, stride)
            scores.append(self.flatten_two_anchors(score))
            boxes.append(self.flatten_two_anchors(bbox, fire_second=True))
            kpss.append(self.flatten_two_anchors(kps, fire_second=True))
        return (*scores, *boxes, *kpss)


def export_tiny_detector(folder: str | Path, **kwargs) -> Path:
    """Write `<folder>/det_10g.onnx` (the file name buffalo_l uses) and return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "det_10g.onnx"
    model = TinySkinBlobDetector(**kwargs).eval()
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in STRIDES]
    dynamic = {"input.1": {2: "height", 3: "width"}, **{n: {0: "anchors_" + n.split("_")[1]} for n in names}}
    torch.onnx.export(model, (torch.zeros(1, 3, 64, 64),), str(path), input_names=["input.1"], output_names=names,
                      dynamic_axes=dynamic, opset_version=17, dynamo=False)
    return path
