"""batch stages on synthetic portraits, checked against the synthetic world's ground truth (no Ray: fast).

* `--aligned`: every good input is a synthetic aligned photo (64 px, also re-encoded as JPEG, palette, RGBA, CMYK,
  16-bit gray and EXIF-rotated); the face the stage fed to the encoder must equal the aligned render resized to the
  generator's size, and the gallery's input thumbnail must show it too.
* Alignment step of the detector path (`batch.faces.align_face`): fed an unaligned synthetic photo and its true
  landmarks, it must reproduce the aligned render.
* Round trips: the stored w+ is E_w+(aligned render) and every stored picture is G'_s(w+).
Bad inputs made from synthetic photos (truncated, empty, not an image, tiny, bomb) become error rows naming the file.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from batch import manifest, stages
from batch.stylize import list_inputs
from fstrain.data import storage
from support.batch_inputs import synthetic_encodings
from support.portraits import portrait_photos

STYLES = ("cartoon", "anime")


def _resized(image: Image.Image, size: int) -> np.ndarray:
    """What `stages.centre_square` does to a square image: Lanczos resize."""
    return np.asarray(image.convert("RGB").resize((size, size), Image.LANCZOS)).astype(np.int16)


def _mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


def test_aligned_path_feeds_the_aligned_render_and_round_trips(tmp_path, tiny_models):
    import torch

    from fstrain.stylize.images import decode_png, from_uint8, to_uint8
    from test_batch import publish_styles

    root, inputs, out = str(tmp_path / "root"), str(tmp_path / "in"), str(tmp_path / "out")
    publish_styles(tiny_models, root, styles=STYLES)
    cases = synthetic_encodings(inputs, size=64, seed=7)     # key -> (truth image, tolerance) or error reason
    items = list_inputs(inputs)
    keys = [i["key"] for i in items]
    assert sorted(keys) == sorted(cases)
    size = tiny_models.size
    spec = stages.JobSpec(input=inputs, output=out, job_id="fidelity", styles=list(STYLES),
                          generator_uris={s: storage.join(root, "styles", s, "generator.pt") for s in STYLES},
                          encoder_uri=tiny_models.encoder_wplus, root=root, aligned=True, min_input_side=32,
                          image_format="png", size=size, thumbnail_keys=["photo-png.png"], thumbnail_size=size)
    batch = {"key": np.array(keys, dtype=object), "uri": np.array([i["uri"] for i in items], dtype=object)}
    prepared = stages.PrepareFaces(spec)(batch)

    # (a) the face handed to the encoder is the ground-truth aligned render (exactly, for lossless files).
    for i, key in enumerate(keys):
        case = cases[key]
        if case.error:
            assert not prepared["ok"][i], key
            assert prepared["stage"][i] == "decode" and case.error in prepared["message"][i], prepared["message"][i]
            assert prepared["message"][i].startswith(storage.join(inputs, "")), prepared["message"][i]
            continue
        assert prepared["ok"][i], (key, prepared["message"][i])
        truth = _resized(case.truth, size)
        error = _mean_abs(prepared["image"][i], truth)
        assert error <= case.tolerance, f"{key}: mean |aligned input - aligned render| = {error:.2f}"
        if case.tolerance == 0:
            np.testing.assert_array_equal(prepared["image"][i], truth)
    thumb = decode_png(storage.read_bytes(stages.thumbnail_uri(spec, "photo-png.png", "input")))
    thumb_error = _mean_abs(thumb, _resized(cases["photo-png.png"].truth, size))   # a small JPEG q90 of the render
    assert thumb_error < 6.0 and thumb_error < 0.5 * _mean_abs(thumb, _resized(cases["photo-jpg.jpg"].truth, size))

    actor = stages.StylizeActor(spec)
    result = stages.EncodeUpload(spec)(actor(prepared))
    ok = [k for k in keys if not cases[k].error]
    assert sorted(k for k, s in zip(result["key"], result["status"]) if s == "ok") == sorted(ok)
    records = manifest.read_job_records(out, "fidelity")
    assert sorted(records) == sorted(keys)                   # every input has its line

    # (c) stored w+ = E_w+(the aligned face); stored pictures = G'_s(w+), bit for bit after PNG.
    ok_rows = [keys.index(k) for k in ok]
    with torch.no_grad():
        w_plus = actor.stylizer.encode(from_uint8(prepared["image"][ok_rows]))
        wants = {s: to_uint8(actor.stylizer.general(w_plus, s)) for s in STYLES}
    for j, key in enumerate(ok):
        record = records[key]
        with np.load(io.BytesIO(storage.read_bytes(record.outputs["latents"]))) as latents:
            np.testing.assert_allclose(latents["w_plus"], w_plus[j].numpy(), rtol=1e-5, atol=1e-6)
        for style in STYLES:
            assert record.outputs[style] == storage.join(out, style, f"{key}.png")
            np.testing.assert_array_equal(decode_png(storage.read_bytes(record.outputs[style])), wants[style][j])
    # The encoder sees the face: two different identities give different codes.
    assert not torch.allclose(w_plus[0], w_plus[1])


def test_align_face_from_true_landmarks_reproduces_aligned_render():
    """The detector path's alignment step, given an unaligned synthetic photo and its true 5 landmarks."""
    from batch.faces import align_face

    size = 64
    aligned = portrait_photos(3, size, seed=11, aligned=True)
    unaligned = portrait_photos(3, size, seed=11, aligned=False)
    for want, photo in zip(aligned, unaligned):
        assert photo.image.size[0] > size and abs(photo.meta["view"]["rotation_deg"]) > 0
        got = align_face(photo.array(), photo.landmarks, size)
        assert got.shape == (size, size, 3)
        error = _mean_abs(got, want.array())
        assert error < 8.0, f"{photo.key}: mean |aligned - render| = {error:.2f}"
        # ... and aligning with the wrong face's landmarks does not (the check has teeth).
        other = unaligned[(unaligned.index(photo) + 1) % 3].landmarks
        assert _mean_abs(align_face(photo.array(), other, size), want.array()) > 2 * error
