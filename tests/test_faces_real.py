"""Detection and FFHQ alignment on a real photograph: scikit-image's `astronaut` (Eileen Collins, public domain).

The detector is the one a fresh install has: dlib's HOG detector + 68-point landmarks (`batch.faces`), behind the
same `FaceFinder` the batch job uses. Every variant of the photo (in-plane rotation up to +-45 deg, scale 0.3x-3x,
the eight EXIF orientations, greyscale, RGBA, a two-face scene) is decoded by the one decoder
(`fstrain.data.images`), detected and aligned; the upright photo's landmarks, moved by the variant's known
geometry, must land where they land in the upright photo's crop (mean error <= 2 % of the crop side).
"""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from batch.faces import DlibDetector, FaceFinder, align_face_with_transform, rotate_image
from fstrain.data.align import (ffhq_align, ffhq_align_68, ffhq_transform, landmarks68_to_5, paste_back,
                                transform_points)
from fstrain.data.images import decode_image, decode_image_info

skimage_data = pytest.importorskip("skimage.data")
CROP = 256            # alignment geometry is checked at this side; errors are fractions of it
MAX_ERROR = 0.02


@pytest.fixture(scope="module")
def finder() -> FaceFinder:
    return FaceFinder(DlibDetector())


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def reference(finder, astronaut):
    """The upright photo's face and its 68 landmarks in the FFHQ crop."""
    faces = finder.find(astronaut)
    assert len(faces) == 1, [f.to_json() for f in faces]
    face = faces[0]
    assert face.landmarks68 is not None
    return face, transform_points(ffhq_transform(face.kps, CROP), face.landmarks68)


def crop_error(face, true_landmarks68: np.ndarray, reference_crop: np.ndarray) -> float:
    """Mean distance, as a fraction of the crop side, between where the true landmarks land in this face's
    crop and where they land in the upright photo's crop."""
    moved = transform_points(ffhq_transform(face.kps, CROP), true_landmarks68)
    return float(np.linalg.norm(moved - reference_crop, axis=1).mean() / CROP)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("degrees", [-45, -30, -15, 15, 30, 45])
def test_in_plane_rotation(finder, astronaut, reference, degrees):
    face, reference_crop = reference
    rotated, matrix = rotate_image(astronaut, degrees, expand=True)
    faces = finder.find(rotated)
    assert len(faces) == 1, [f.to_json() for f in faces]
    assert crop_error(faces[0], transform_points(matrix, face.landmarks68), reference_crop) <= MAX_ERROR


@pytest.mark.parametrize("scale", [0.3, 0.6, 2.0, 3.0])
def test_scale(finder, astronaut, reference, scale):
    face, reference_crop = reference
    side = int(round(astronaut.shape[0] * scale))
    scaled = np.asarray(Image.fromarray(astronaut).resize((side, side), Image.Resampling.LANCZOS))
    if scale == 3.0:    # 1536 px: detected on a downscaled copy, landmarks mapped back to full resolution
        assert finder.working_scale(side, side) < 1.0
    faces = finder.find(scaled)
    assert len(faces) == 1, [f.to_json() for f in faces]
    assert crop_error(faces[0], face.landmarks68 * (side / astronaut.shape[0]), reference_crop) <= MAX_ERROR


# PIL's transpose that EXIF orientation N undoes: stored = inverse(upright), so decoding must give upright back.
STORED_FOR_ORIENTATION = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                          4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                          6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
                          8: Image.Transpose.ROTATE_270}


def exif_jpeg(upright: Image.Image, orientation: int) -> bytes:
    method = STORED_FOR_ORIENTATION[orientation]
    stored = upright if method is None else upright.transpose(method)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(finder, astronaut, reference, orientation):
    face, reference_crop = reference
    data = exif_jpeg(Image.fromarray(astronaut), orientation)
    decoded = decode_image(data, f"o{orientation}.jpg")
    assert decoded.size == (astronaut.shape[1], astronaut.shape[0])
    faces = finder.find(np.asarray(decoded))
    assert len(faces) == 1, (orientation, [f.to_json() for f in faces])
    assert crop_error(faces[0], face.landmarks68, reference_crop) <= MAX_ERROR


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16"])
def test_greyscale_rgba_and_16_bit(finder, astronaut, reference, mode):
    face, reference_crop = reference
    image = Image.fromarray(astronaut)
    if mode == "L":
        image = image.convert("L")
    elif mode == "RGBA":
        image = image.convert("RGBA")
        image.putalpha(Image.new("L", image.size, 200))       # translucent: composited on white when decoded
    else:
        grey16 = (np.asarray(image.convert("L"), dtype=np.uint16) * 257)
        image = Image.fromarray(grey16)
    info = decode_image_info(encode(image), mode)
    assert info.original_mode.startswith(mode[0]) and info.image.mode == "RGB", info
    assert info.conversions, "an odd mode must be converted and say so"
    faces = finder.find(np.asarray(info.image))
    assert len(faces) == 1, (mode, [f.to_json() for f in faces])
    assert crop_error(faces[0], face.landmarks68, reference_crop) <= MAX_ERROR


def test_two_face_scene_largest_first(finder, astronaut, reference):
    face, reference_crop = reference
    small = 0.6
    scene = Image.new("RGB", (900, 560), (90, 90, 100))
    scene.paste(Image.fromarray(astronaut), (0, 24))
    side = int(round(512 * small))
    scene.paste(Image.fromarray(astronaut).resize((side, side), Image.Resampling.LANCZOS), (560, 120))
    faces = finder.find(np.asarray(scene))
    assert len(faces) == 2, [f.to_json() for f in faces]
    big, little = faces
    assert big.area > little.area
    assert crop_error(big, face.landmarks68 + [0, 24], reference_crop) <= MAX_ERROR
    assert crop_error(little, face.landmarks68 * (side / 512) + [560, 120], reference_crop) <= MAX_ERROR


def test_photo_without_a_face(finder):
    assert finder.find(skimage_data.coffee()) == []


def test_68_point_recipe_and_5_point_path_give_the_same_crop(reference, astronaut):
    """On the same face, FFHQ's own 68-point recipe (shrink, crop, blurred reflect-pad, quad transform, resize)
    and the 5-point quad warp used for SCRFD produce the same crop: same transform, pixels within a pixel."""
    face, _ = reference
    photo = Image.fromarray(astronaut)
    size = 256
    crop68, t68 = ffhq_align_68(photo, face.landmarks68, size)
    crop5, t5 = ffhq_align(photo, landmarks68_to_5(face.landmarks68), size)
    assert np.allclose(t68, t5)
    a, b = np.asarray(crop68, dtype=np.float64), np.asarray(crop5, dtype=np.float64)
    inner = slice(size // 8, size - size // 8)      # the face; the border differs by design (blurred padding)
    diff = np.abs(a[inner, inner] - b[inner, inner]).mean()
    # a one-pixel shift of the crop costs more than the two resamplings differ
    shifted = np.abs(a[inner, inner] - np.roll(b, 1, axis=1)[inner, inner]).mean()
    assert diff < 6.0 and diff < 0.6 * shifted, (diff, shifted)


def test_paste_back_puts_the_face_where_it_came_from(reference, astronaut):
    face, _ = reference
    rgb = np.asarray(astronaut)
    crop, transform = align_face_with_transform(rgb, face, 256)
    photo = Image.fromarray(rgb)
    # pasting the unchanged crop back (at a different resolution) leaves the photo nearly as it was
    same = np.asarray(paste_back(photo, Image.fromarray(crop).resize((64, 64), Image.Resampling.LANCZOS),
                                 transform, 256), dtype=np.float64)
    x1, y1, x2, y2 = (int(v) for v in face.bbox)
    assert same.shape == rgb.shape
    assert np.abs(same[y1:y2, x1:x2] - rgb[y1:y2, x1:x2]).mean() < 12
    # a red face lands on the face and nowhere far from it
    red = np.asarray(paste_back(photo, Image.new("RGB", (32, 32), (255, 0, 0)), transform, 256), dtype=np.float64)
    eyes = face.kps[:2].mean(0).astype(int)
    assert red[eyes[1], eyes[0], 0] > 240 and red[eyes[1], eyes[0], 1] < 15
    assert np.array_equal(red[450:, :100], rgb[450:, :100])


def test_prepare_faces_all_gives_one_row_per_face_and_a_named_no_face_error(tmp_path, astronaut):
    """batch's CPU stage with --faces all: `<key>__face<i>` rows, largest first, each with its own box and the
    detector's name; a photo without a face is one error row naming the detector and its thresholds."""
    from batch.faces import describe_detector
    from batch.stages import JobSpec, PrepareFaces, make_finder, photo_key

    scene = Image.new("RGB", (900, 560), (90, 90, 100))
    scene.paste(Image.fromarray(astronaut), (0, 24))
    scene.paste(Image.fromarray(astronaut).resize((307, 307), Image.Resampling.LANCZOS), (560, 120))
    scene.save(tmp_path / "two.png")
    Image.fromarray(skimage_data.coffee()).save(tmp_path / "coffee.png")
    spec = JobSpec(input=str(tmp_path), output=str(tmp_path / "out"), job_id="t", styles=["s"],
                   generator_uris={}, encoder_uri="", detector="dlib", faces="all", size=64)
    assert describe_detector(spec) == make_finder(spec).describe()
    out = PrepareFaces(spec)({"key": np.array(["two", "coffee"], dtype=object),
                              "uri": np.array([str(tmp_path / "two.png"), str(tmp_path / "coffee.png")],
                                              dtype=object)})
    assert list(out["key"]) == ["two__face0", "two__face1", "coffee"]
    assert [photo_key(k) for k in out["key"]] == ["two", "two", "coffee"]
    assert list(out["ok"]) == [True, True, False]
    faces = [json.loads(text)["face"] for text in out["info"][:2]]
    assert [f["index"] for f in faces] == [0, 1] and all(f["detector"].startswith("dlib-hog") for f in faces)
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = faces[0]["bbox"], faces[1]["bbox"]
    assert (ax2 - ax1) * (ay2 - ay1) > (bx2 - bx1) * (by2 - by1) and ax2 < 560 <= bx1
    assert out["image"].shape == (3, 64, 64, 3) and out["image"][:2].std() > 10
    assert out["stage"][2] == "detect" and "no face found by dlib-hog" in out["message"][2]
    assert '"upright_score": 0.8' in out["message"][2]
