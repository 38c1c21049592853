"""A tiny ONNX face detector with SCRFD's exact output signature and weights set by hand, for synthetic photos.

No real detector weights exist on this machine, so tests and benchmarks use this model through the real insightface
code path (`insightface.model_zoo.get_model` -> `SCRFD.detect`: letterboxing, anchor decoding, thresholding, NMS).
It finds the faces of the synthetic portrait world's `photo` renders (`fstrain.data.synthetic`): skin-coloured
blobs that stand out from the picture's backdrop, without the clothes below them.

Graph (input "input.1", (1, 3, H, W) RGB scaled as (p - 127.5) / 128, exactly what SCRFD feeds):
1. skin: every renderer skin tone lies near one ramp from (255, 226, 204) to (86, 56, 40), jittered per channel;
   in chromaticity a = (r - g) / sum, b = (g - b) / sum that is a wedge 0.1 a < b < 1.4 a, 0.045 < a + b < 0.33
   (dark skins' jitter needs the wide wedge). A pixel is skin inside the wedge and above luma 35 (3x3 blurred).
2. not backdrop: the renderer's backdrop is a smooth two-colour gradient (plus bokeh / window light) that reaches
   the picture's edges, and warm backdrops fall inside the skin wedge. Pixels whose colour is within a distance of
   any edge cell's colour (top row and side columns, 8 px cells) are dropped.
3. no body: the shoulders/clothes run off the bottom of every portrait and are often skin-coloured. Skin that is
   thick (survives a 3-cell erosion on a 4 px grid: the neck does not) and reaches the picture's edge is grown
   back by geodesic dilation and removed, which cuts the body off at the neck.
4. per stride s in (8, 16, 32): cell statistics (skin fraction, mean chroma and log-luma of the skin in the cell),
   then for every anchor a 7x7-cell window whose cells count only when their colour matches the anchor's own
   3x3-cell colour (|chroma| < 0.04, |log luma| < 0.4: hair, clothes and backdrop of other colours drop out);
   moments of that window give mass, centroid and spread.
5. score = sigmoid gates "centroid in this cell" x "window rim empty" x "enough mass" x "no skin touching the
   picture's edge in the window" x "box not wider than 1.2x its height"; box = centroid +- 2 sigma scaled by
   (1.266, 1.166) and shifted up 0.054 half-heights, the medians measured against the renderer's face box;
   keypoints = box centre + a fixed upright template in box half-sizes (measured medians). The keypoints do not
   follow the eyes/mouth or the face's rotation: alignment from them is only roughly right.
Outputs, like det_10g.onnx (non-batched, 2 anchors per cell, anchor 1 never fires):
scores (HW*2, 1) for strides 8, 16, 32; then bbox distances (HW*2, 4); then keypoints (HW*2, 10), in stride units.

Measured (benchmarks/bench_detector.py: 300 unaligned `photo` renders per size, seed 11, det size 160, ~10 ms per
photo on CPU): the top face's IoU with the renderer's face box is > 0.5 for 98.7% / 99.0% / 98.7% of renders at
sizes 64 / 96 / 128 (mean IoU 0.80); the previous bright-oval detector managed 3.3% / 1.3% / 2.7% (mean IoU 0.10).
Two-face scenes: 97.7% of faces found, the largest first in 39 of 40 scenes whose true face areas differ >= 1.8x.
No detection on 200 faceless backdrops (the oval detector fired on 110). Template keypoints are on average 0.22 eye
distances from the true landmarks. Grayscale photos carry no skin colour: no face is found in them.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

STRIDES = (8, 16, 32)
WINDOW = 7                    # cells per side of the moment window
BODY_GRID = 4                 # px per cell of the body-removal grid (divides every stride)
# Landmarks relative to the box centre in box half-widths / half-heights (eyes, nose tip, mouth corners):
# medians over synthetic photos' true landmarks.
FACE_TEMPLATE = ((-0.37, -0.21), (0.37, -0.21), (0.0, 0.135), (-0.34, 0.38), (0.34, 0.38))


def colour_features(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB 0..255 -> (N, 3, H, W): chromaticity a = (r-g)/sum, b = (g-b)/sum, and mean luma."""
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    total = r + g + b + 1.0
    return torch.cat([(r - g) / total, (g - b) / total, total / 3], 1)


def _erode(t: torch.Tensor, radius: int, outside: float) -> torch.Tensor:
    """Min over a (2r+1) square; beyond the tensor counts as `outside`."""
    padded = F.pad(t, (radius,) * 4, value=outside)
    return -F.max_pool2d(-padded, 2 * radius + 1, 1)


class TinySkinBlobDetector(nn.Module):
    def __init__(self, min_cells: float = 2.5, rim_max: float = 0.35, gate: float = 20.0,
                 backdrop_distance: float = 0.15, same_chroma: float = 0.04, same_log_luma: float = 0.4,
                 body_radius: int = 3, body_steps: int = 12, max_aspect: float = 1.2,
                 box_scale: tuple[float, float] = (1.266, 1.166), box_shift: float = -0.054, template=FACE_TEMPLATE):
        super().__init__()
        self.min_cells, self.rim_max, self.gate = min_cells, rim_max, gate
        self.backdrop_distance, self.same_chroma, self.same_log_luma = backdrop_distance, same_chroma, same_log_luma
        self.body_radius, self.body_steps, self.max_aspect = body_radius, body_steps, max_aspect
        self.box_scale, self.box_shift = box_scale, box_shift
        r = WINDOW // 2
        v, u = torch.meshgrid(torch.arange(-r, r + 1.0), torch.arange(-r, r + 1.0), indexing="ij")
        rim = ((u.abs() == r) | (v.abs() == r)).float()
        n = WINDOW * WINDOW
        # Channel j of conv2d(x, shifts) is x moved by window offset j: every anchor sees its 49 cells as channels.
        self.register_buffer("shifts", torch.eye(n).reshape(n, 1, WINDOW, WINDOW))
        # Moments over those channels: mass, x, y, x^2, y^2, rim mass.
        self.register_buffer("moments", torch.stack([torch.ones_like(u), u, v, u * u, v * v, rim]).reshape(6, n, 1, 1))
        self.register_buffer("template", torch.tensor(template, dtype=torch.float32))  # (5, 2)

    def skin(self, x: torch.Tensor):
        """Per-pixel skin probability (backdrop colours removed), colour features, picture mask, edge skin."""
        rgb = F.avg_pool2d(x * 128.0 + 127.5, 3, 1, 1, count_include_pad=False)
        feats = colour_features(rgb)
        a, b, luma = feats[:, 0:1], feats[:, 1:2], feats[:, 2:3]
        k = 200.0
        skin = torch.sigmoid(k * (b - 0.1 * a)) * torch.sigmoid(k * (1.4 * a - b)) \
            * torch.sigmoid(k * (a + b - 0.045)) * torch.sigmoid(k * (0.33 - a - b)) * torch.sigmoid((luma - 35) / 3)
        # Distance to the nearest edge cell's colour (chroma weighs 8x, luma per 255).
        cells = colour_features(F.avg_pool2d(rgb, 8, 8))
        edge_cells = torch.cat([cells[:, :, 0, :], cells[:, :, 1:, 0], cells[:, :, 1:, -1]], 2)     # (1, 3, K)
        d = (feats.unsqueeze(-1) - edge_cells[:, :, None, None, :]).abs()
        distance = ((d[:, 0] + d[:, 1]) * 8.0 + d[:, 2] / 255.0).min(-1).values.unsqueeze(1)
        skin = skin * torch.sigmoid(60.0 * (distance - self.backdrop_distance))
        # The picture without SCRFD's letterbox padding (exact black), and skin within 3 px of its edge.
        picture = ((x * 128.0 + 127.5).sum(1, keepdim=True) > 1.0).float()
        near_edge = skin * (1.0 - _erode(picture, 3, 0.0))
        return skin, feats, picture, near_edge

    def without_body(self, skin, feats, picture, near_edge) -> list[torch.Tensor]:
        """BODY_GRID maps of skin, skin*a, skin*b, skin*luma, edge skin, minus thick skin connected to the edge."""
        g = BODY_GRID
        maps = [F.avg_pool2d(t, g, g) for t in (skin, skin * feats[:, 0:1], skin * feats[:, 1:2],
                                                  skin * feats[:, 2:3], near_edge)]
        r = self.body_radius
        inside = _erode(F.avg_pool2d(picture, g, g), 1, 1.0)
        solid = torch.maximum(maps[0], 1.0 - inside)               # beyond the picture counts as body
        core = _erode(solid, r, 1.0) * inside                        # thick skin only: necks vanish
        seed = core * (1.0 - _erode(inside, r + 1, 0.0))             # ... where it reaches the picture's edge
        for _ in range(self.body_steps):                             # grow through thick skin only
            seed = F.max_pool2d(seed, 3, 1, 1) * core
        keep = 1.0 - F.max_pool2d(seed, 2 * r + 1, 1, r)            # undo the erosion: the whole body
        return [t * keep for t in maps]

    def head(self, maps: list[torch.Tensor], stride: int):
        f = stride // BODY_GRID
        cell_m = F.avg_pool2d(maps[0], f, f)
        weight = cell_m.clamp_min(1e-4)
        cell_a = F.avg_pool2d(maps[1], f, f) / weight
        cell_b = F.avg_pool2d(maps[2], f, f) / weight
        cell_l = torch.log(F.avg_pool2d(maps[3], f, f) / weight + 1.0)
        # The colour of a face centred on this cell: skin-weighted over the 3x3 cells around it.
        centre = F.avg_pool2d(cell_m, 3, 1, 1).clamp_min(1e-4)
        ref_a, ref_b, ref_l = (F.avg_pool2d(cell_m * c, 3, 1, 1) / centre for c in (cell_a, cell_b, cell_l))
        pad = WINDOW // 2
        shifted = [F.conv2d(c, self.shifts, padding=pad) for c in (cell_m, cell_a, cell_b, cell_l)]
        same = torch.sigmoid(150.0 * (self.same_chroma - (shifted[1] - ref_a).abs() - (shifted[2] - ref_b).abs())) \
            * torch.sigmoid(20.0 * (self.same_log_luma - (shifted[3] - ref_l).abs()))
        m = F.conv2d(shifted[0] * same, self.moments)
        touch = F.conv2d(F.conv2d(F.avg_pool2d(maps[4], f, f), self.shifts, padding=pad) * same, self.moments[:1])
        mass = m[:, 0:1].clamp_min(1e-3)
        cx, cy = m[:, 1:2] / mass, m[:, 2:3] / mass
        var_x = (m[:, 3:4] / mass - cx * cx - 1.0 / 12).clamp_min(1e-2)   # minus the cells' own variance
        var_y = (m[:, 4:5] / mass - cy * cy - 1.0 / 12).clamp_min(1e-2)
        half_w = 2.0 * self.box_scale[0] * var_x.sqrt()       # a uniform ellipse has sigma = half-axis / 2
        half_h = 2.0 * self.box_scale[1] * var_y.sqrt()
        k = self.gate
        score = torch.sigmoid(k * (0.55 - cx.abs())) * torch.sigmoid(k * (0.55 - cy.abs())) \
            * torch.sigmoid(k * (self.rim_max - m[:, 5:6])) * torch.sigmoid(k * (m[:, 0:1] - self.min_cells)) \
            * torch.sigmoid(200.0 * (0.05 - touch)) * torch.sigmoid(k * (self.max_aspect * half_h - half_w) / half_h)
        # Offsets from the anchor (the cell's top-left corner) to the box centre, in stride units.
        ox, oy = cx + 0.5, cy + 0.5 + self.box_shift * half_h
        bbox = torch.cat([half_w - ox, half_h - oy, ox + half_w, oy + half_h], 1)
        kps = [t for i in range(5) for t in (ox + self.template[i, 0] * half_w, oy + self.template[i, 1] * half_h)]
        return score, bbox, torch.cat(kps, 1)

    @staticmethod
    def flatten_two_anchors(t: torch.Tensor, fire_second: bool = False) -> torch.Tensor:
        """(1, C, H, W) -> (H*W*2, C), anchors interleaved per cell as SCRFD lays them out."""
        c = t.shape[1]
        per_cell = t[0].permute(1, 2, 0).reshape(-1, 1, c)
        second = per_cell if fire_second else torch.zeros_like(per_cell)
        return torch.cat([per_cell, second], 1).reshape(-1, c)

    def forward(self, x: torch.Tensor):
        maps = self.without_body(*self.skin(x))
        scores, boxes, kpss = [], [], []
        for stride in STRIDES:
            score, bbox, kps = self.head(maps, stride)
            scores.append(self.flatten_two_anchors(score))
            boxes.append(self.flatten_two_anchors(bbox, fire_second=True))
            kpss.append(self.flatten_two_anchors(kps, fire_second=True))
        return (*scores, *boxes, *kpss)


def export_tiny_detector(folder: str | Path, **kwargs) -> Path:
    """Write `<folder>/det_10g.onnx` (the file name buffalo_l uses) and return its path."""
    import warnings

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "det_10g.onnx"
    model = TinySkinBlobDetector(**kwargs).eval()
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in STRIDES]
    dynamic = {"input.1": {2: "height", 3: "width"}, **{n: {0: "anchors_" + n.split("_")[1]} for n in names}}
    with warnings.catch_warnings():   # slices with dynamic ends are not constant-folded: expected, harmless
        warnings.filterwarnings("ignore", message="Constant folding")
        torch.onnx.export(model, (torch.zeros(1, 3, 64, 64),), str(path), input_names=["input.1"], output_names=names,
                          dynamic_axes=dynamic, opset_version=17, dynamo=False)
    return path
