"""A fresh install stylizes an ordinary photo: `python -m batch.stylize` on a folder holding scikit-image's
astronaut photo (rotated 20 degrees in the picture, stored sideways with an EXIF orientation tag) and a photo with
no face, with no detector file anywhere: the dlib fallback finds the face, every style gets a stylized face and a
pasted-back photo, the manifest line names the detector, the box and the identity similarity per style, and the faceless photo is an error naming
the detector and its thresholds. Tiny random models; the real CLI in a subprocess (its own local Ray)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from batch import manifest
from batch.faces import rotate_image
from fstrain.data.images import decode_image
from test_batch import publish_styles

skimage_data = pytest.importorskip("skimage.data")
REPO = Path(__file__).resolve().parents[1]
STYLES = ("cartoon", "anime")


def sideways_jpeg(upright: np.ndarray) -> bytes:
    """Pixels stored rotated 90 degrees with EXIF orientation 6: viewers (and our decoder) show them upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", quality=92,
                                                                        exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.slow
def test_cli_stylizes_a_rotated_exif_photo_with_no_extra_files(tmp_path, tiny_models):
    upright, to_rotated = rotate_image(skimage_data.astronaut(), 20.0, expand=True)
    inputs = tmp_path / "photos"
    inputs.mkdir()
    (inputs / "astronaut.jpg").write_bytes(sideways_jpeg(upright))
    Image.fromarray(skimage_data.coffee()).save(inputs / "coffee.jpg", quality=92)
    decoded = decode_image((inputs / "astronaut.jpg").read_bytes(), "astronaut.jpg")
    assert decoded.size == (upright.shape[1], upright.shape[0])      # the tag is honoured

    root, out = tmp_path / "root", tmp_path / "out"
    publish_styles(tiny_models, str(root), styles=STYLES)
    env = {**os.environ, "BATCH_DETECTOR_ROOT": str(tmp_path / "no-insightface-here"),
           "FSTRAIN_MODEL_CACHE": str(tmp_path / "cache"), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "batch.stylize", "--input", str(inputs), "--output", str(out),
         "--styles", ",".join(STYLES), "--root", str(root), "--encoder", tiny_models.encoder_wplus,
         "--identity", tiny_models.identity, "--paste-back", "--job-id", "real-photo", "--num-cpus", "2", "--cpu-actors", "1", "--max-actors", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 3, proc.stderr[-3000:]                 # the coffee photo is an error
    assert proc.stderr.count("[batch] face detector: dlib-hog") == 1, proc.stderr[-3000:]

    records, summary = manifest.read_manifest(str(out))
    assert summary["ok"] == 1 and summary["error"] == 1
    by_input = {Path(r.input).name: r for r in records}
    astronaut, coffee = by_input["astronaut.jpg"], by_input["coffee.jpg"]
    assert astronaut.status == "ok", astronaut.to_json()
    assert astronaut.face["detector"].startswith("dlib-hog") and astronaut.face["landmarks"] == 68
    # the box is where the face is in the upright photo (the astronaut's face, moved by the 20 degree turn)
    x1, y1, x2, y2 = astronaut.face["bbox"]
    centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
    true_centre = (to_rotated @ np.array([222.0, 126.0, 1.0]))[:2]
    assert np.hypot(*(centre - true_centre)) < 0.25 * (x2 - x1), (centre, true_centre)
    identity = astronaut.face["identity"]                            # fidelity per style, net named
    assert identity["net"] == tiny_models.identity and sorted(identity["similarity"]) == sorted(STYLES)
    assert all(-1.0 <= v <= 1.0 for v in identity["similarity"].values())
    for style in STYLES:
        face = Image.open(astronaut.outputs[style])
        assert face.size == (tiny_models.size, tiny_models.size)
        pasted = Image.open(astronaut.outputs["pasted"][style])
        assert pasted.size == decoded.size                            # full resolution, the photo's aspect
    assert coffee.status == "error" and coffee.stage == "detect"
    assert "no face found by dlib-hog" in coffee.message and "upright_score" in coffee.message, coffee.message
