"""Five-point alignment: the FFHQ quad recipe and the template similarity, checked against exact geometry."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fstrain.data.align import (FFHQ_TEMPLATE_512, ffhq_align, ffhq_quad, ffhq_template, similarity_align,
                                transform_points, umeyama_similarity, warp)
from fstrain.data.synthetic import identity_rng, render, render_photo_scene, sample_identity, sample_view, \
    view_rng, with_pose


def _similarity(deg: float, scale: float, shift) -> np.ndarray:
    a = np.radians(deg)
    m = np.eye(3)
    m[:2, :2] = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    m[:2, 2] = shift
    return m


def test_ffhq_quad_of_the_template_is_the_512_frame():
    quad = ffhq_quad(FFHQ_TEMPLATE_512)
    # the FFHQ recipe applied to its own template lands within 2% of the 512 canvas
    assert np.allclose(quad, [[0, 0], [0, 512], [512, 512], [512, 0]], atol=0.02 * 512)


def test_quad_recipe_is_equivariant_to_similarities():
    lm = FFHQ_TEMPLATE_512 + np.random.default_rng(0).normal(0, 4, size=(5, 2))
    m = _similarity(33.0, 0.6, [40.0, -25.0])
    assert np.allclose(ffhq_quad(transform_points(m, lm)), transform_points(m, ffhq_quad(lm)), atol=1e-9)


def test_similarity_align_maps_a_moved_template_back_onto_the_template():
    m = _similarity(-20.0, 1.7, [100.0, 30.0])
    moved = transform_points(m, ffhq_template(256))
    image = Image.new("RGB", (900, 900), (30, 60, 90))
    out, t = similarity_align(image, moved, 256)
    assert out.size == (256, 256)
    assert np.abs(transform_points(t, moved) - ffhq_template(256)).max() < 1e-6
    # least squares: a point set that is not a similarity image is fitted, not matched exactly
    noisy = moved + np.array([[3, 0], [0, 0], [0, 0], [0, 0], [0, 0]])
    t2 = umeyama_similarity(noisy, ffhq_template(256))
    residual = np.linalg.norm(transform_points(t2, noisy) - ffhq_template(256), axis=1)
    assert 0 < residual.max() < 3


def test_bad_landmarks_are_rejected_with_a_clear_message():
    image = Image.new("RGB", (64, 64))
    with pytest.raises(ValueError, match="5 finite"):
        ffhq_align(image, np.zeros((4, 2)), 32)
    with pytest.raises(ValueError, match="both eye centres"):
        ffhq_align(image, np.zeros((5, 2)), 32)
    with pytest.raises(ValueError, match="pad_mode"):
        ffhq_align(image, FFHQ_TEMPLATE_512 / 8, 32, pad_mode="wrap")


def _best_shift(a: np.ndarray, b: np.ndarray, radius: int = 3) -> tuple[tuple[int, int], float]:
    """Integer shift of b (within ±radius) that best matches a, and its mean absolute difference."""
    best = None
    r = radius
    core = a[r:-r, r:-r]
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            mad = np.abs(core - b[r + dy:a.shape[0] - r + dy, r + dx:a.shape[1] - r + dx]).mean()
            if best is None or mad < best[1]:
                best = ((dy, dx), mad)
    return best


@pytest.mark.parametrize("index,pose", [(0, (25.0, 0.7, (0.1, -0.08))), (1, (-30.0, 0.6, (-0.12, 0.1))),
                                        (2, (8.0, 0.85, (0.0, 0.05)))])
def test_ffhq_align_of_an_unaligned_photo_recovers_the_aligned_rendering(index, pose):
    size = 128
    identity = sample_identity(identity_rng(42, index), f"t{index}")
    view = sample_view(view_rng(42, index, True))
    aligned, ameta = render(identity, view, "photo", size)
    unaligned, umeta = render(identity, with_pose(view, *pose), "photo", size)
    assert unaligned.size == (192, 192)
    recovered, transform = ffhq_align(unaligned, umeta["landmarks"], size)
    # the transform maps the unaligned landmarks exactly onto the aligned ones ...
    mapped = transform_points(transform, umeta["landmarks"])
    assert np.abs(mapped - np.asarray(ameta["landmarks"])).max() < 1e-3
    # ... and the pixels agree: best integer shift is zero and the residual is small (resampling + noise)
    a = np.asarray(aligned, dtype=np.float32)
    b = np.asarray(recovered, dtype=np.float32)
    shift, mad = _best_shift(a, b)
    assert shift == (0, 0), (shift, mad)
    assert mad < 8.0
    # a deliberately wrong alignment (landmarks 3 px off) is visibly worse
    wrong, _ = ffhq_align(unaligned, np.asarray(umeta["landmarks"]) + [3.0, 0.0], size)
    assert np.abs(a - np.asarray(wrong, dtype=np.float32)).mean() > mad + 1.0


def test_faces_near_the_border_are_padded_by_reflection_not_black():
    identity = sample_identity(identity_rng(7, 0), "edge")
    view = with_pose(sample_view(view_rng(7, 0, True)), 0.0, 0.9, (0.3, 0.3), canvas=1.0)
    image, meta = render(identity, view, "photo", 96)
    out, _ = ffhq_align(image, meta["landmarks"], 96)
    arr = np.asarray(out)
    assert (arr.sum(-1) < 10).mean() < 0.01               # no black fill
    black, _ = ffhq_align(image, meta["landmarks"], 96, pad_mode="constant")
    assert (np.asarray(black).sum(-1) == 0).mean() > 0.05  # the crop does leave the canvas


def test_every_face_of_a_scene_aligns_to_its_own_landmarks():
    people = [sample_identity(identity_rng(3, k), f"s{k}") for k in range(3)]
    scene, meta = render_photo_scene(people, 160, seed=3)
    for face in meta["faces"]:
        crop, t = ffhq_align(scene, face["landmarks"], 64)
        lm = transform_points(t, face["landmarks"])
        # eyes level and on the FFHQ eye line, whatever the face's rotation in the scene
        assert abs(lm[0, 1] - lm[1, 1]) < 1e-3
        assert np.abs(lm[:2] - ffhq_template(64)[:2]).max() < 0.1 * 64
        assert np.asarray(crop)[int(lm[0, 1]), int(lm[0, 0])].sum() < 300     # the dark pupil/iris


def test_large_reductions_box_shrink_first_then_sample_the_exact_geometry():
    """An 8x reduction (shrink 4) of a linear ramp plus a 1-px checkerboard, checked against the ramp itself.

    Independent expectation: a 4x4 box filter cancels the checkerboard exactly and keeps a linear ramp, and
    bicubic interpolation reproduces a linear ramp, so every output pixel must equal the ramp evaluated at the
    source point its centre maps to. Sampling without the shrink aliases the checkerboard (errors ~20 levels);
    a shrink with the wrong geometry (e.g. pixel centres at integers) shifts the ramp.
    """
    size, out = 384, 32
    slopes = np.array([[0.5, 0.0], [0.0, 0.5], [0.25, -0.25]])      # per channel: levels per source pixel (x, y)
    offsets = np.array([30.0, 30.0, 125.0])

    def ramp(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return offsets + x[..., None] * slopes[:, 0] + y[..., None] * slopes[:, 1]

    rows, cols = np.mgrid[0:size, 0:size]
    checker = np.where((rows + cols) % 2 == 0, 20.0, -20.0)[..., None]
    pixels = ramp(cols + 0.5, rows + 0.5) + checker                   # pixel (r, c) is centred at (c + .5, r + .5)
    assert pixels.min() >= 0 and pixels.max() <= 255
    image = Image.fromarray(np.rint(pixels).astype(np.uint8))

    transform = _similarity(20.0, 1 / 8, [0.0, 0.0])
    transform[:2, 2] = [out / 2, out / 2] - transform[:2, :2] @ [size / 2, size / 2]   # centred, inside the image
    assert int(np.floor(0.5 / np.sqrt(np.linalg.det(transform[:2, :2])))) == 4          # the shrink-first branch
    got = np.asarray(warp(image, transform, out), np.float64)

    out_rows, out_cols = np.mgrid[0:out, 0:out] + 0.5
    centres = transform_points(np.linalg.inv(transform), np.stack([out_cols.ravel(), out_rows.ravel()], 1))
    # PIL's 8-bit bicubic truncates instead of rounding: outputs sit half a level below the exact value on average.
    expected = ramp(centres[:, 0], centres[:, 1]).reshape(out, out, 3) - 0.5
    error = got - expected
    assert np.abs(error).max() < 1.5, np.abs(error).max()
    assert np.all(np.abs(error.mean((0, 1))) < 0.25), error.mean((0, 1))
