"""The synthetic portrait world: determinism, landmarks on the drawn features, distinct domains, command."""
from __future__ import annotations

import colorsys
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fstrain.data.synthetic import (DOMAINS, Identity, View, generate, render, render_from_meta, render_photo_scene,
                                    sample_identity, identity_rng)
from support.portraits import portrait_photos, style_images


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _lum(rgb) -> float:
    r, g, b = (float(c) for c in rgb)
    return 0.299 * r + 0.587 * g + 0.114 * b


@pytest.mark.parametrize("domain", ["photo", "impasto", "fantasy"])
def test_same_seed_gives_identical_bytes(domain):
    first = [(k, _png(im), json.dumps(m)) for k, im, m in generate(domain, 2, 64, seed=5, aligned=False)]
    again = [(k, _png(im), json.dumps(m)) for k, im, m in generate(domain, 2, 64, seed=5, aligned=False)]
    assert first == again
    other = [_png(im) for _, im, _ in generate(domain, 2, 64, seed=6, aligned=False)]
    assert other[0] != first[0][1] and other[1] != first[1][1]


def test_metadata_renders_the_same_image_again():
    for _, image, meta in generate("anime", 2, 64, seed=3):
        meta = json.loads(json.dumps(meta))        # through JSON, as it is stored
        assert np.array_equal(np.asarray(render_from_meta(meta)), np.asarray(image))
        assert meta["identity_id"] == meta["identity"]["identity_id"]
        assert len(meta["landmarks"]) == 5 and meta["size"] == [64, 64]


def test_parameters_reject_unknown_or_missing_keys():
    identity = sample_identity(identity_rng(0, 0), "x").to_dict()
    with pytest.raises(ValueError, match="unknown \\['wings'\\]"):
        Identity.from_dict({**identity, "wings": 2})
    with pytest.raises(ValueError, match="missing \\['smile'\\]"):
        View.from_dict({k: v for k, v in generate.__globals__["sample_view"](np.random.default_rng(0)).to_dict()
                        .items() if k != "smile"})
    with pytest.raises(ValueError, match="unknown domain 'manga'"):
        next(generate("manga", 1, 64, 0))


def test_same_identity_is_the_same_person_in_every_domain():
    ids = {d: [m["identity"] for _, _, m in generate(d, 3, 32, seed=9)] for d in DOMAINS}
    assert all(ids[d] == ids["photo"] for d in DOMAINS)
    assert ids["photo"][0] != ids["photo"][1]


def _pixel(arr: np.ndarray, xy) -> np.ndarray:
    x, y = (int(np.floor(c)) for c in xy)
    return arr[y, x].astype(float)


@pytest.mark.parametrize("domain", DOMAINS)
def test_landmarks_land_on_the_drawn_features(domain):
    """Eye centres are on the pupil, mouth corners on the dark lip corners, nostrils right under the nose tip."""
    for _, image, meta in generate(domain, 4, 256, seed=11):
        arr = np.asarray(image)
        lm = np.asarray(meta["landmarks"])
        pal = meta["palette"]
        # skin reference: on the cheek, between the eye and the mouth corner, away from the nose
        cheeks = [_pixel(arr, (lm[0] + lm[3]) / 2 - [0.35 * (lm[1, 0] - lm[0, 0]), 0]),
                  _pixel(arr, (lm[1] + lm[4]) / 2 + [0.35 * (lm[1, 0] - lm[0, 0]), 0])]
        skin_lum = max(_lum(c) for c in cheeks)
        for eye in lm[:2]:
            colour = _pixel(arr, eye)
            d_pupil = np.linalg.norm(colour - pal["pupil"])
            d_skin = min(np.linalg.norm(colour - c) for c in cheeks)
            assert d_pupil < 70 and d_pupil < d_skin, (domain, meta["key"], colour, pal["pupil"])
        for corner in lm[3:]:
            assert _lum(_pixel(arr, corner)) < 0.8 * skin_lum, (domain, meta["key"], _pixel(arr, corner), skin_lum)
        # nostrils: darker than the tip within a small window below it
        tip = lm[2]
        eye_gap = lm[1, 0] - lm[0, 0]
        x0, x1 = int(tip[0] - 0.3 * eye_gap), int(tip[0] + 0.3 * eye_gap)
        y0, y1 = int(tip[1] - 0.02 * eye_gap), int(tip[1] + 0.12 * eye_gap) + 1
        window = arr[y0:y1, x0:x1].astype(float) @ [0.299, 0.587, 0.114]
        assert window.min() < 0.7 * skin_lum, (domain, meta["key"], window.min(), skin_lum)
        # and the landmarks move with the face: nothing sits on the background colour
        assert np.all((lm >= 0) & (lm < 256))


def test_unaligned_and_scene_landmarks_stay_on_the_canvas():
    (key, image, meta), = generate("photo", 1, 128, seed=2, aligned=False)
    assert image.size == (192, 192) and meta["aligned"] is False and key.endswith("-unaligned")
    lm = np.asarray(meta["landmarks"])
    assert np.all((lm > 0) & (lm < 192))
    eye_vec = lm[1] - lm[0]
    assert abs(np.degrees(np.arctan2(eye_vec[1], eye_vec[0])) - meta["view"]["rotation_deg"]) < 0.01
    people = [sample_identity(identity_rng(4, k), f"p{k}") for k in range(3)]
    scene, smeta = render_photo_scene(people, 128, seed=1)
    assert len(smeta["faces"]) == 3 and scene.size == tuple(smeta["size"])
    xs = [np.mean(np.asarray(f["landmarks"])[:, 0]) for f in smeta["faces"]]
    assert xs == sorted(xs)             # one face per cell, left to right
    arr = np.asarray(scene)
    for face in smeta["faces"]:
        lm = np.asarray(face["landmarks"])
        assert np.all((lm > 0) & (lm < np.array(smeta["size"])))
        assert np.linalg.norm(_pixel(arr, lm[0]) - face["palette"]["pupil"]) < 120   # eyes are ~1 px here


# ------------------------------------------------------------------------------------ domains are distinct
def _stats(image: Image.Image) -> np.ndarray:
    """Colour and edge statistics: saturation, brightness, edge density/strength, darkness, palette size."""
    arr = np.asarray(image, dtype=np.float32) / 255.0
    mx, mn = arr.max(-1), arr.min(-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0)
    lum = arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gx, gy = np.abs(np.diff(lum, axis=1))[:-1], np.abs(np.diff(lum, axis=0))[:, :-1]
    grad = np.hypot(gx, gy)
    fine = np.abs(lum[1:-1, 1:-1] * 4 - lum[:-2, 1:-1] - lum[2:, 1:-1] - lum[1:-1, :-2] - lum[1:-1, 2:])
    quant = (arr * 7.999).astype(np.int32)
    colours = len(np.unique(quant[..., 0] * 64 + quant[..., 1] * 8 + quant[..., 2]))
    hue = np.array([colorsys.rgb_to_hsv(*c)[0] for c in arr[::8, ::8].reshape(-1, 3)])
    return np.array([sat.mean(), sat.std(), lum.mean(), lum.std(), (grad > 0.25).mean(), grad.mean(),
                     (lum < 0.15).mean(), np.median(fine), colours / 100.0, (lum > 0.9).mean(),
                     np.cos(2 * np.pi * hue).mean(), np.sin(2 * np.pi * hue).mean()])


def test_each_domain_is_recognisably_distinct():
    """A nearest-centroid classifier on simple colour/edge statistics, fitted on one seed, names the domain of
    unseen identities from another seed."""
    train = {d: np.stack([_stats(im) for _, im, _ in generate(d, 8, 96, seed=100)]) for d in DOMAINS}
    test = {d: np.stack([_stats(im) for _, im, _ in generate(d, 6, 96, seed=200)]) for d in DOMAINS}
    allx = np.concatenate(list(train.values()))
    mu, sd = allx.mean(0), allx.std(0) + 1e-6
    centroids = np.stack([((train[d] - mu) / sd).mean(0) for d in DOMAINS])
    correct = 0
    confusions = []
    for i, d in enumerate(DOMAINS):
        z = (test[d] - mu) / sd
        pred = np.argmin(((z[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
        correct += int((pred == i).sum())
        confusions += [(d, DOMAINS[p]) for p in pred if p != i]
    assert correct >= 0.9 * 6 * len(DOMAINS), confusions
    # and the photo domain is the smooth one: fewest hard edges
    edge = {d: train[d][:, 4].mean() for d in DOMAINS}
    assert edge["photo"] == min(edge.values()), edge


def test_styles_change_geometry_not_only_texture():
    photo = {m["identity_id"]: np.asarray(m["landmarks"]) for _, _, m in generate("photo", 3, 128, seed=8)}
    for domain in ("anime", "cartoon"):
        for _, _, meta in generate(domain, 3, 128, seed=8):
            lm, ref = np.asarray(meta["landmarks"]), photo[meta["identity_id"]]
            mouth, ref_mouth = lm[4, 0] - lm[3, 0], ref[4, 0] - ref[3, 0]
            if domain == "anime":
                assert mouth < 0.75 * ref_mouth
            else:
                assert mouth > ref_mouth * 1.02
    # anime eyes are much larger than photo eyes
    a = [m for _, _, m in generate("anime", 1, 64, seed=8)][0]
    p = [m for _, _, m in generate("photo", 1, 64, seed=8)][0]
    from fstrain.data.synthetic import face_layout
    la = face_layout(Identity.from_dict(a["identity"]), View.from_dict(a["view"]), "anime")
    lp = face_layout(Identity.from_dict(p["identity"]), View.from_dict(p["view"]), "photo")
    assert la.eye_half_height > 1.8 * lp.eye_half_height and la.iris_radius > 1.4 * lp.iris_radius


# -------------------------------------------------------------------------------------------- fixtures
def test_fixtures_give_images_with_metadata():
    photos = portrait_photos(2, 32, seed=0)
    styles = style_images("cartoon", 2, 32)
    assert [p.image.size for p in photos + styles] == [(32, 32)] * 4
    assert photos[0].landmarks.shape == (5, 2)
    t = photos[0].tensor()
    assert t.shape == (1, 3, 32, 32) and float(t.min()) >= -1 and float(t.max()) <= 1
    assert photos[0].meta["identity_id"] != styles[0].meta["identity_id"]     # unpaired by default


# ---------------------------------------------------------------------------------------------- command
def test_command_writes_images_metadata_and_contact_sheet(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "fstrain.data.synthetic", *a],  # noqa: E731
                                    capture_output=True, text=True, check=True)
    run(str(tmp_path / "fantasy"), "--domain", "fantasy", "--count", "2", "--size", "48", "--seed", "3")
    pngs = sorted((tmp_path / "fantasy").glob("*.png"))
    assert [p.name for p in pngs] == ["s3-000000.png", "s3-000001.png"]
    meta = json.loads(pngs[0].with_suffix(".json").read_text())
    assert meta["domain"] == "fantasy" and meta["key"] == "s3-000000"
    again, _ = render(Identity.from_dict(meta["identity"]), View.from_dict(meta["view"]), "fantasy", 48)
    assert np.array_equal(np.asarray(Image.open(pngs[0]).convert("RGB")), np.asarray(again))

    run(str(tmp_path / "scenes"), "--faces", "2", "--count", "1", "--size", "64")
    scene_meta = json.loads((tmp_path / "scenes" / "scene-s0-000000.json").read_text())
    assert len(scene_meta["faces"]) == 2

    out = run(str(tmp_path / "sheet.png"), "--contact-sheet", "--count", "2", "--size", "40")
    assert "sheet.png" in out.stdout
    sheet = Image.open(tmp_path / "sheet.png")
    assert sheet.size == (40 * len(DOMAINS), 40 * 2 + 18)

    bad = subprocess.run([sys.executable, "-m", "fstrain.data.synthetic", str(tmp_path), "--domain", "manga"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "invalid choice: 'manga'" in bad.stderr
