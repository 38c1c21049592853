"""Face alignment from five landmarks (eye centres, nose tip, mouth corners).

* `ffhq_align`: the FFHQ/dlib crop recipe driven by 5 points (as facexlib does): the quad centred a little
  below the eyes, sized by max(2·|eye-to-eye|, 1.8·|eye-to-mouth|), mapped onto the output square with one
  affine transform. Synthetic aligned portraits (`fstrain.data.synthetic`) are placed exactly this way, so
  aligning an unaligned rendering reproduces the aligned one.
* `similarity_align`: least-squares similarity onto the FFHQ 5-point template scaled to the output size
  (what arcface's norm_crop does with its own template).

Coordinates are continuous pixels: pixel (i, j) covers [i, i+1) x [j, j+1). Transforms are 3x3 matrices
mapping source-image coordinates to output coordinates; `transform_points` applies one to landmarks.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

# FFHQ-512 5-point template: left eye, right eye, nose tip, left and right mouth corner.
FFHQ_TEMPLATE_512 = np.array([[192.98138, 239.94708], [318.90277, 240.19366], [256.63416, 314.01935],
                              [201.26117, 371.41043], [313.08905, 371.15118]])


def ffhq_template(output_size: int) -> np.ndarray:
    return FFHQ_TEMPLATE_512 * (output_size / 512.0)


def _check_landmarks(landmarks5) -> np.ndarray:
    lm = np.asarray(landmarks5, dtype=np.float64)
    if lm.shape != (5, 2) or not np.all(np.isfinite(lm)):
        raise ValueError(f"expected 5 finite (x, y) landmarks (eyes, nose tip, mouth corners), got shape {lm.shape}")
    if np.hypot(*(lm[1] - lm[0])) < 1e-6:
        raise ValueError("degenerate landmarks: both eye centres are at the same point")
    return lm


def ffhq_quad(landmarks5) -> np.ndarray:
    """(4, 2) quad corners (top-left, bottom-left, bottom-right, top-right) of the FFHQ crop."""
    lm = _check_landmarks(landmarks5)
    eye_avg = (lm[0] + lm[1]) * 0.5
    eye_to_eye = lm[1] - lm[0]
    eye_to_mouth = (lm[3] + lm[4]) * 0.5 - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * np.array([-1.0, 1.0])
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * np.array([-1.0, 1.0])
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def ffhq_transform(landmarks5, output_size: int) -> np.ndarray:
    """3x3 source -> output matrix of the FFHQ crop."""
    quad = ffhq_quad(landmarks5)
    origin, x2, y2 = quad[0], quad[3] - quad[0], quad[1] - quad[0]
    out_to_src = np.array([[x2[0] / output_size, y2[0] / output_size, origin[0]],
                           [x2[1] / output_size, y2[1] / output_size, origin[1]],
                           [0.0, 0.0, 1.0]])
    return np.linalg.inv(out_to_src)


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 least-squares similarity (rotation, uniform scale, translation) taking src points to dst."""
    src, dst = np.asarray(src, dtype=np.float64), np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    fix = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        fix[1, 1] = -1.0      # no reflections
    rot = u @ fix @ vt
    scale = np.trace(np.diag(sig) @ fix) / s.var(0).sum()
    m = np.eye(3)
    m[:2, :2] = scale * rot
    m[:2, 2] = mu_d - scale * rot @ mu_s
    return m


def similarity_transform(landmarks5, output_size: int) -> np.ndarray:
    return umeyama_similarity(_check_landmarks(landmarks5), ffhq_template(output_size))


def transform_points(transform: np.ndarray, points) -> np.ndarray:
    """Apply a 3x3 (or 2x3) affine transform to (N, 2) points."""
    m = np.asarray(transform, dtype=np.float64)
    pts = np.asarray(points, dtype=np.float64)
    return pts @ m[:2, :2].T + m[:2, 2]


def warp(image: Image.Image, transform: np.ndarray, output_size: int, pad_mode: str = "reflect") -> Image.Image:
    """Resample `image` through the source->output `transform` into an output_size square.

    Large reductions first shrink the source by an integer box filter (as the FFHQ script does), so the
    bicubic sampling never skips pixels; parts of the crop outside the source are filled by reflecting the
    image (pad_mode="reflect") or left black ("constant")."""
    if pad_mode not in ("reflect", "constant"):
        raise ValueError(f"pad_mode must be 'reflect' or 'constant', got {pad_mode!r}")
    image = image.convert("RGB")
    m = np.asarray(transform, dtype=np.float64)
    if m.shape == (2, 3):
        m = np.vstack([m, [0.0, 0.0, 1.0]])
    source_per_output = 1.0 / math.sqrt(abs(np.linalg.det(m[:2, :2])))
    shrink = int(math.floor(source_per_output * 0.5))
    if shrink > 1:
        image = image.reduce(shrink)
        m = m @ np.diag([shrink, shrink, 1.0])   # output <- shrunk source
    out_to_src = np.linalg.inv(m)
    if pad_mode == "reflect":
        corners = transform_points(out_to_src, [[0, 0], [output_size, 0], [0, output_size],
                                                [output_size, output_size]])
        w, h = image.size
        margin = 4
        left = int(max(0, math.ceil(-corners[:, 0].min()) + margin))
        top = int(max(0, math.ceil(-corners[:, 1].min()) + margin))
        right = int(max(0, math.ceil(corners[:, 0].max() - w) + margin))
        bottom = int(max(0, math.ceil(corners[:, 1].max() - h) + margin))
        if left or top or right or bottom:
            arr = np.asarray(image)
            pads = ((top, bottom), (left, right), (0, 0))
            # np.pad's reflect cannot pad more than the image size at once; "symmetric" repeats instead.
            arr = np.pad(arr, pads, mode="reflect" if max(top, bottom) < h and max(left, right) < w else "symmetric")
            image = Image.fromarray(arr)
            out_to_src = np.array([[1, 0, left], [0, 1, top], [0, 0, 1.0]]) @ out_to_src
    coeffs = tuple(out_to_src[:2].ravel())
    return image.transform((output_size, output_size), Image.AFFINE, coeffs, resample=Image.BICUBIC)


def ffhq_align(image: Image.Image, landmarks5, output_size: int = 1024,
               pad_mode: str = "reflect") -> tuple[Image.Image, np.ndarray]:
    """FFHQ-style aligned crop. Returns (aligned image, 3x3 source->output transform)."""
    transform = ffhq_transform(landmarks5, output_size)
    return warp(image, transform, output_size, pad_mode), transform


def similarity_align(image: Image.Image, landmarks5, output_size: int = 1024,
                     pad_mode: str = "reflect") -> tuple[Image.Image, np.ndarray]:
    """Least-squares similarity onto the FFHQ template. Returns (aligned image, 3x3 source->output)."""
    transform = similarity_transform(landmarks5, output_size)
    return warp(image, transform, output_size, pad_mode), transform
