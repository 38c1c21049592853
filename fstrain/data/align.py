"""Face alignment from five landmarks (eye centres, nose tip, mouth corners).

* `ffhq_align`: the FFHQ/dlib crop recipe driven by 5 points (as facexlib does): the quad centred a little
  below the eyes, sized by max(2·|eye-to-eye|, 1.8·|eye-to-mouth|), mapped onto the output square with one
  affine transform. Synthetic aligned portraits (`fstrain.data.synthetic`) are placed exactly this way, so
  aligning an unaligned rendering reproduces the aligned one.
* `ffhq_align_68`: the original FFHQ script (NVlabs ffhq-dataset, `recreate_aligned_images`) step for step from
  dlib's 68 landmarks: quad from eye centres and mouth corners, shrink for large faces, crop with a border,
  reflect-pad with the blur / median blend, quad transform at 4x, Lanczos resize. Its quad is `ffhq_quad` of the
  five points `landmarks68_to_5` takes from the 68, so both paths crop the same square from the same face.
* `similarity_align`: least-squares similarity onto the FFHQ 5-point template scaled to the output size
  (what arcface's norm_crop does with its own template).
* `paste_back`: a processed aligned face warped back into the full photo through the inverse crop transform,
  blended with a feathered mask.

Coordinates are continuous pixels: pixel (i, j) covers [i, i+1) x [j, j+1). Transforms are 3x3 matrices
mapping source-image coordinates to output coordinates; `transform_points` applies one to landmarks.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageFilter

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


# dlib / iBUG 300-W 68-point indices. "Left" is the image's left (the subject's right eye).
LM68_EYE_LEFT = slice(36, 42)
LM68_EYE_RIGHT = slice(42, 48)
LM68_NOSE_TIP = 30
LM68_MOUTH_LEFT = 48
LM68_MOUTH_RIGHT = 54


def landmarks68_to_5(landmarks68) -> np.ndarray:
    """The five points the FFHQ recipe uses, from 68: eye centres (mean of each eye's six points), nose tip,
    outer mouth corners. Same order as SCRFD's keypoints."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    if lm.shape != (68, 2) or not np.all(np.isfinite(lm)):
        raise ValueError(f"expected 68 finite (x, y) landmarks (dlib / iBUG 300-W order), got shape {lm.shape}")
    return np.stack([lm[LM68_EYE_LEFT].mean(0), lm[LM68_EYE_RIGHT].mean(0), lm[LM68_NOSE_TIP],
                     lm[LM68_MOUTH_LEFT], lm[LM68_MOUTH_RIGHT]])


def ffhq_align_68(image: Image.Image, landmarks68, output_size: int = 1024, supersample: int = 4,
                  enable_padding: bool = True) -> tuple[Image.Image, np.ndarray]:
    """FFHQ's own alignment from 68 landmarks (continuous pixel coordinates). Returns (aligned image, 3x3
    source->output transform); the transform is exactly `ffhq_transform(landmarks68_to_5(lm), output_size)`.

    The original works in dlib's integer pixel-centre coordinates and adds 0.5 before the quad transform; ours are
    already continuous, so that offset is folded into the landmarks. FFHQ transforms at 4096 for a 1024 output:
    `supersample` keeps that ratio for any size."""
    from scipy.ndimage import gaussian_filter

    lm5 = landmarks68_to_5(landmarks68)
    transform = ffhq_transform(lm5, output_size)
    quad = ffhq_quad(lm5)
    qsize = float(np.hypot(*(quad[3] - quad[0])))      # the quad's side (2|x| in the original)
    img = image.convert("RGB")

    # Shrink: box-filter very large faces first so the quad transform never skips pixels.
    shrink = int(math.floor(qsize / output_size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(img.size[0] / shrink)), int(np.rint(img.size[1] / shrink)))
        quad = quad * (np.array(rsize, dtype=np.float64) / np.array(img.size, dtype=np.float64))
        qsize /= shrink
        img = img.resize(rsize, Image.Resampling.LANCZOS)

    # Crop: the quad's bounding box plus a border of 10% of its side, clipped to the image.
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (int(math.floor(quad[:, 0].min())), int(math.floor(quad[:, 1].min())),
            int(math.ceil(quad[:, 0].max())), int(math.ceil(quad[:, 1].max())))
    crop = (max(crop[0] - border, 0), max(crop[1] - border, 0),
            min(crop[2] + border, img.size[0]), min(crop[3] + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad = quad - np.array(crop[:2], dtype=np.float64)

    # Pad: where the quad leaves the image, reflect it, blur the reflection and fade it to the median colour.
    pad = (int(math.floor(quad[:, 0].min())), int(math.floor(quad[:, 1].min())),
           int(math.ceil(quad[:, 0].max())), int(math.ceil(quad[:, 1].max())))
    pad = (max(-pad[0] + border, 0), max(-pad[1] + border, 0),
           max(pad[2] - img.size[0] + border, 0), max(pad[3] - img.size[1] + border, 0))
    if enable_padding and max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        arr = np.asarray(img, dtype=np.float32)
        widths = ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0))
        # np.pad's reflect cannot add more than the image size at once; "symmetric" repeats instead.
        fits = max(pad[1], pad[3]) < arr.shape[0] and max(pad[0], pad[2]) < arr.shape[1]
        arr = np.pad(arr, widths, mode="reflect" if fits else "symmetric")
        h, w, _ = arr.shape
        y, x, _ = np.ogrid[:h, :w, :1]
        mask = np.maximum(1.0 - np.minimum(np.float32(x) / pad[0], np.float32(w - 1 - x) / pad[2]),
                          1.0 - np.minimum(np.float32(y) / pad[1], np.float32(h - 1 - y) / pad[3]))
        blur = qsize * 0.02
        arr += (gaussian_filter(arr, [blur, blur, 0]) - arr) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
        img = Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)), "RGB")
        quad = quad + np.array(pad[:2], dtype=np.float64)

    # Transform: the quad onto a square `supersample` times the output, then an antialiased resize.
    transform_size = output_size * max(1, int(supersample))
    img = img.transform((transform_size, transform_size), Image.Transform.QUAD, tuple(quad.flatten()),
                        Image.Resampling.BILINEAR)
    if output_size < transform_size:
        img = img.resize((output_size, output_size), Image.Resampling.LANCZOS)
    return img, transform


def feather_mask(size: int, feather: float = 0.1) -> np.ndarray:
    """(size, size) float mask: 1 inside, a smooth ramp to 0 over `feather` x size at every edge."""
    ramp = max(1.0, feather * size)
    centres = np.arange(size, dtype=np.float64) + 0.5
    edge = np.minimum(centres, size - centres) / ramp          # distance to the nearest edge, in ramps
    one_d = np.clip(edge, 0.0, 1.0)
    one_d = one_d * one_d * (3.0 - 2.0 * one_d)               # smoothstep: no visible seam at the ramp's ends
    return np.minimum.outer(one_d, one_d)


def paste_back(photo: Image.Image, face: Image.Image, transform: np.ndarray, crop_size: int,
               feather: float = 0.1) -> Image.Image:
    """Warp `face` back into `photo` at the photo's full resolution and blend it in with a feathered mask.

    `transform` is the source->crop matrix of an aligned crop of side `crop_size` made from `photo` (as
    `ffhq_align` / `ffhq_align_68` return); `face` is that crop after processing, at any square size (a
    stylized face at the generator's resolution). Returns a new RGB image the size of `photo`."""
    photo = photo.convert("RGB")
    face = face.convert("RGB")
    m = np.asarray(transform, dtype=np.float64)
    if m.shape == (2, 3):
        m = np.vstack([m, [0.0, 0.0, 1.0]])
    side = face.size[0]
    photo_to_face = np.diag([side / crop_size, side / crop_size, 1.0]) @ m
    # Only the region the face covers is resampled: the face square's bounding box in the photo.
    corners = transform_points(np.linalg.inv(photo_to_face), [[0, 0], [side, 0], [0, side], [side, side]])
    left = max(0, int(math.floor(corners[:, 0].min())))
    top = max(0, int(math.floor(corners[:, 1].min())))
    right = min(photo.size[0], int(math.ceil(corners[:, 0].max())))
    bottom = min(photo.size[1], int(math.ceil(corners[:, 1].max())))
    if right <= left or bottom <= top:
        return photo.copy()
    region_to_face = photo_to_face @ np.array([[1.0, 0.0, left], [0.0, 1.0, top], [0.0, 0.0, 1.0]])
    coeffs = tuple(region_to_face[:2].ravel())
    size = (right - left, bottom - top)
    # PIL's AFFINE data maps output (region) pixels to input (face) pixels: region_to_face is that map.
    warped = face.transform(size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BICUBIC)
    mask = Image.fromarray(np.uint8(np.rint(feather_mask(side, feather) * 255)), "L")
    warped_mask = mask.transform(size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)
    out = photo.copy()
    region = out.crop((left, top, right, bottom))
    out.paste(Image.composite(warped, region, warped_mask), (left, top))
    return out
