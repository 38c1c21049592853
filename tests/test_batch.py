"""batch.stylize: manifest/resume logic, the detector through insightface, and whole Ray Data jobs on S3.

The end-to-end test runs the real pipeline (local Ray, moto S3 server, tiny random models, the tiny SCRFD-format
detector) on 60 synthetic photos into three styles, with ~18% bad inputs, an actor that crashes once, and a rerun.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from batch import manifest
from batch.stylize import list_inputs, main
from fstrain.data import storage
from support.batch_inputs import box_iou, write_batch_inputs
from support.tiny_detector import export_tiny_detector

REPO = Path(__file__).resolve().parents[1]
STYLES = ("cartoon", "anime", "fantasy")


def publish_styles(tiny_models, root: str, styles=STYLES) -> None:
    """Three distinct G' (the tiny generator with per-style perturbed weights) at <root>/styles/<s>/generator.pt."""
    import torch

    from fstrain.models.checkpoints import load_generator, save_generator

    for index, style in enumerate(styles):
        loaded = load_generator(tiny_models.generator, load_discriminator=False)
        generator = torch.Generator().manual_seed(index)
        with torch.no_grad():
            for param in loaded.generator.parameters():
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
        save_generator(storage.join(root, "styles", style, "generator.pt"), loaded.generator, loaded.latent_avg,
                       {"style": style})


def job_args(inputs: str, out: str, root: str, encoder: str, detector_root: str, job_id: str, *extra: str):
    return ["--input", inputs, "--output", out, "--styles", ",".join(STYLES), "--root", root, "--encoder", encoder,
            "--detector-root", detector_root, "--det-size", "160", "--min-face-side", "30", "--job-id", job_id,
            "--num-cpus", "2", "--cpu-actors", "1", "--max-actors", "1", "--batch-size", "8", *extra]


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ fast tests
def test_manifest_merge_prefers_ok_then_latest():
    err = manifest.Record(key="a", input="x/a.png", status="error", stage="stylize", finished_at=3.0)
    ok = manifest.Record(key="a", input="x/a.png", status="ok", finished_at=1.0)
    later_ok = manifest.Record(key="a", input="x/a.png", status="ok", finished_at=2.0)
    assert manifest.merge([err, ok]) == {"a": ok}
    assert manifest.merge([ok, err, later_ok])["a"] is later_ok


def test_manifest_parts_round_trip_and_retry_overwrites(local_root):
    records = [manifest.Record(key=k, input=f"in/{k}.png", status="ok", finished_at=1.0) for k in ("b", "a")]
    first = manifest.write_part(local_root, "job-1", records)
    second = manifest.write_part(local_root, "job-1", records[::-1])  # a retried block: same keys, same part
    assert first == second
    assert len(storage.list_uris(manifest.parts_uri(local_root, "job-1"))) == 1
    assert sorted(manifest.read_job_records(local_root, "job-1")) == ["a", "b"]
    with pytest.raises(ValueError, match="job id 'a/b'"):
        manifest.job_uri(local_root, "a/b")


def test_manifest_corrupt_line_names_file(local_root):
    uri = storage.join(manifest.parts_uri(local_root, "j"), "part-x.jsonl")
    storage.write_text(uri, '{"key": "a", "input": "a.png", "status": "ok"}\nnot json\n')
    with pytest.raises(ValueError, match=r"part-x.jsonl: line 2 is not JSON"):
        manifest.read_job_records(local_root, "j")
    storage.write_text(uri, '{"key": "a", "status": "ok"}\n')
    with pytest.raises(ValueError, match=r"part-x.jsonl: line 1 lacks \['input'\]"):
        manifest.read_job_records(local_root, "j")


def test_list_inputs_keys_are_relative_and_unique(local_root):
    for name in ("a.jpg", "a.png", "sub/b.webp", "notes.txt", "sub/c.JPEG"):
        storage.write_bytes(storage.join(local_root, "in", name), b"x")
    items = list_inputs(storage.join(local_root, "in"))
    assert [i["key"] for i in items] == ["a_jpg", "a_png", "sub/b", "sub/c"]
    assert all(i["uri"].startswith(local_root) for i in items)


def test_detector_largest_face_and_no_face_through_insightface(tmp_path):
    """Synthetic photos through insightface's SCRFD path: the renderer's face boxes are found, largest first."""
    from batch.faces import InsightFaceDetector
    from support.batch_inputs import backdrop, box_iou, synthetic_photo, two_face_scene

    export_tiny_detector(tmp_path / "buffalo_l")
    detector = InsightFaceDetector(str(tmp_path / "buffalo_l"), det_size=160)
    image, boxes = two_face_scene(seed=1)            # true boxes largest first, areas >= 1.8x apart
    faces = detector.detect(np.asarray(image))
    assert len(faces) >= 2
    assert box_iou(faces[0].bbox, boxes[0]) > 0.5, (faces[0].bbox, boxes)
    assert max(box_iou(f.bbox, boxes[1]) for f in faces[1:]) > 0.5
    for seed in range(3):
        assert detector.detect(np.asarray(backdrop(seed, 200, 150))) == []
    image, meta = synthetic_photo(0)
    faces = detector.detect(np.asarray(image))
    assert box_iou(faces[0].bbox, meta["bbox"]) > 0.5
    # Keypoints come from an upright template in the box: eyes above the nose above the mouth, inside the box.
    kps, (x1, y1, x2, y2) = faces[0].kps, faces[0].bbox
    assert kps[0, 0] < kps[1, 0] and kps[0, 1] < kps[2, 1] < kps[3, 1]
    assert (x1 < kps[:, 0]).all() and (kps[:, 0] < x2).all() and (y1 < kps[:, 1]).all() and (kps[:, 1] < y2).all()


def test_detector_hit_rate_on_synthetic_photos(tmp_path, capsys):
    """Hit rate (IoU > 0.5 with the renderer's face box) over unaligned synthetic photos; none on bare backdrops."""
    from batch.faces import InsightFaceDetector
    from support.batch_inputs import backdrop, box_iou, synthetic_photo

    export_tiny_detector(tmp_path / "buffalo_l")
    detector = InsightFaceDetector(str(tmp_path / "buffalo_l"), det_size=160)
    ious = []
    for size in (96, 128):
        for index in range(40):
            image, meta = synthetic_photo(index, size, seed=11)
            faces = detector.detect(np.asarray(image))
            ious.append(box_iou(faces[0].bbox, meta["bbox"]) if faces else 0.0)
    ious = np.array(ious)
    false_faces = sum(len(detector.detect(np.asarray(backdrop(seed, 192, 192)))) for seed in range(20))
    with capsys.disabled():
        print(f"\ntiny detector on {len(ious)} synthetic photos: hit rate {np.mean(ious > 0.5):.3f} (IoU > 0.5), "
              f"mean IoU {ious.mean():.3f}; faces on 20 bare backdrops: {false_faces}")
    assert np.mean(ious > 0.5) >= 0.95 and ious.mean() > 0.7
    assert false_faces == 0


def test_missing_detector_fails_fast_with_instructions(tmp_path, tiny_models):
    root = str(tmp_path / "root")
    publish_styles(tiny_models, root, styles=("cartoon",))
    storage.write_bytes(str(tmp_path / "in" / "a.png"), b"x")
    missing = tmp_path / "no-such-models"
    proc = subprocess.run(
        [sys.executable, "-m", "batch.stylize", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
         "--styles", "cartoon", "--root", root, "--encoder", tiny_models.encoder_wplus,
         "--detector-root", str(missing)],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"{missing}/det_10g.onnx does not exist" in proc.stderr
    assert "--aligned" in proc.stderr and "buffalo_l" in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing started


def test_missing_style_generator_names_uri(tmp_path, tiny_models, capsys):
    root = str(tmp_path / "root")
    publish_styles(tiny_models, root, styles=("cartoon",))
    with pytest.raises(SystemExit, match=r"styles/anime/generator.pt: G' of style 'anime' not found"):
        main(["--input", str(tmp_path), "--output", str(tmp_path / "out"), "--styles", "cartoon,anime",
              "--root", root, "--encoder", tiny_models.encoder_wplus, "--aligned"])


# --------------------------------------------------------------------------------------------- Ray Data jobs
@pytest.mark.slow
def test_s3_job_accounts_for_every_input_survives_crash_and_resumes(s3_server, s3_root, tiny_models, tmp_path,
                                                                  monkeypatch):
    inputs, out, root = (storage.join(s3_root, p) for p in ("photos", "stylized", "pipeline"))
    expected = write_batch_inputs(inputs)         # 60 synthetic photos/scenes: 8 bad, 3 gray (no skin colour)
    assert len(expected.keys) == 60 and len(expected.keys_with("error")) == 11
    publish_styles(tiny_models, root)
    detector_root = storage.join(root, "models", "buffalo_l")
    storage.upload_file(export_tiny_detector(tmp_path / "det"), storage.join(detector_root, "det_10g.onnx"))
    marker = storage.join(s3_root, "hooks", "crash-once")
    storage.write_bytes(marker, b"crash the first stylize actor once")
    monkeypatch.setenv("BATCH_STYLIZE_CRASH_ONCE_MARKER", marker)
    monkeypatch.setenv("FSTRAIN_MODEL_CACHE", str(tmp_path / "model-cache"))

    rc = main(job_args(inputs, out, root, tiny_models.encoder_wplus, detector_root, "job-a"))
    assert rc == 3  # some inputs are errors
    assert not storage.exists(marker), "the stylize actor never reached the crash hook"
    records, summary = manifest.read_manifest(out)

    # Nothing lost: exactly one line per input, ok + error = inputs.
    by_key = {r.key: r for r in records}
    assert len(records) == len(by_key) == 60 and sorted(by_key) == expected.keys
    assert summary["ok"] + summary["error"] == summary["inputs"] == 60
    assert summary["ok"] == 49 and summary["error"] == 11 and summary["skipped"] == 0
    for key, want in expected.expected.items():
        record = by_key[key]
        assert record.status == want.status, (key, record.to_json())
        if want.status == "error":
            assert record.stage == want.stage, (key, record.to_json())
            assert record.message.startswith(storage.join(inputs, "")), record.message  # names its input
            assert want.reason in record.message, (key, record.message)
            assert record.action and not record.outputs
            continue
        for style in STYLES:
            uri = record.outputs[style]
            assert uri == storage.join(out, style, f"{key}.png")
            assert Image.open(io.BytesIO(storage.read_bytes(uri))).size == (tiny_models.size, tiny_models.size)
        with np.load(io.BytesIO(storage.read_bytes(record.outputs["latents"]))) as latents:
            assert latents["w_plus"].shape == (tiny_models.n_latent, tiny_models.style_dim)
            assert np.isfinite(latents["w_plus"]).all() and np.abs(latents["w_plus"]).sum() > 0
        assert box_iou(record.face["bbox"], want.face_box) > 0.5, (key, record.face, want.face_box)
    for key in ("group/two-faces", "group/two-faces-b"):            # several faces -> the largest one (checked above)
        assert by_key[key].face["faces_found"] >= 2
    assert any("alpha" in c for c in by_key["modes/gray-alpha"].face["conversions"])
    assert any("exif" in c for c in by_key["modes/exif-rotated"].face["conversions"])
    # Distinct generators give distinct pictures of one photo; one photo's styles share its single w+ encoding.
    first = by_key[expected.keys_with("ok")[0]]
    pictures = {s: storage.read_bytes(first.outputs[s]) for s in STYLES}
    assert len(set(pictures.values())) == 3
    page = storage.read_text(storage.join(out, "gallery.html"))
    assert page.count("<tr>") == 1 + sum(1 for k in expected.keys[:24] if by_key[k].status == "ok")
    assert 'src="_gallery/' in page and "bad/bomb" in page
    assert storage.exists(storage.join(out, "contact_sheet.png"))

    # Rerun with the same job id: every input is skipped, nothing is recomputed or rewritten.
    client = s3_server.client()
    bucket, prefix = storage.parse_s3(out)
    before = {o["Key"]: o["LastModified"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/cartoon/")
              ["Contents"]}
    rc = main(job_args(inputs, out, root, tiny_models.encoder_wplus, detector_root, "job-a"))
    assert rc == 3
    records_again, summary_again = manifest.read_manifest(out)
    assert summary_again["skipped"] == 60 and summary_again["processed"] == 0
    assert [r.to_json() for r in records_again] == [r.to_json() for r in records]
    after = {o["Key"]: o["LastModified"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/cartoon/")
             ["Contents"]}
    assert after == before


@pytest.mark.slow
def test_fake_multinode_gpu_actor_pool_scales_up(tmp_path, tiny_models, request):
    """Stylize actors ask for one GPU each: the autoscaler must add simulated GPU nodes, and the actors run there."""
    import ray

    from cluster.local import fake_multinode_cluster

    inputs, out, root = str(tmp_path / "in"), str(tmp_path / "out"), str(tmp_path / "root")
    publish_styles(tiny_models, root)
    from support.portraits import portrait_photos

    for i, photo in enumerate(portrait_photos(16, 48, seed=0)):  # synthetic aligned photos (--aligned): no detector
        storage.write_bytes(storage.join(inputs, f"face-{i:02d}.png"), _png(photo.array()))
    state = Path(f"/tmp/fstrain-batch-{os.getpid()}")  # short: Ray's unix socket paths are length-limited
    request.addfinalizer(lambda: shutil.rmtree(state, ignore_errors=True))
    with fake_multinode_cluster(state, gpu_workers_max=2, idle_timeout_s=30, head_cpus=2, worker_cpus=1) as cluster:
        with cluster.connect(runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}}):
            head = ray.get_runtime_context().get_node_id()
            assert ray.cluster_resources().get("GPU", 0) == 0          # no GPU node before the job
            rc = main(["--input", inputs, "--output", out, "--styles", ",".join(STYLES), "--root", root,
                       "--encoder", tiny_models.encoder_wplus, "--aligned", "--mode", "multimodal",
                       "--samples", "2", "--layer", "4", "--format", "jpg", "--job-id", "scale",
                       "--min-actors", "2", "--max-actors", "2", "--gpus-per-actor", "1", "--batch-size", "4",
                       "--cpu-actors", "1", "--min-input-side", "32"])
            gpu_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU")}
    assert rc == 0
    records, summary = manifest.read_manifest(out)
    assert summary["ok"] == 16
    used = {r.worker["node_id"] for r in records}
    assert len(gpu_nodes) == 2 and used <= gpu_nodes and head not in used
    assert all(r.worker["gpu_ids"] for r in records)
    record = records[0]
    assert record.outputs["cartoon"] == [storage.join(out, "cartoon", f"{record.key}_{i}.jpg") for i in range(2)]
    with np.load(storage.join(out, "latents", f"{record.key}.npz")) as latents:
        mix = latents["mix_cartoon"]
        assert mix.shape == (2, tiny_models.n_latent, tiny_models.style_dim)
        np.testing.assert_array_equal(mix[:, :4], np.repeat(latents["w_plus"][None, :4], 2, 0))  # layers < k kept
        assert not np.allclose(mix[0, 4:], mix[1, 4:])


def test_stages_in_process_reference_mode_matches_stylizer(tmp_path, tiny_models):
    """The stages without Ray: aligned input -> one encoding -> reference-mixed renders equal Stylizer's."""
    import torch

    from batch import stages
    from fstrain.stylize import ReferenceCode, ReferenceStore
    from fstrain.stylize.images import decode_png, from_uint8, to_uint8

    root, inputs, out = str(tmp_path / "root"), str(tmp_path / "in"), str(tmp_path / "out")
    publish_styles(tiny_models, root, styles=("cartoon", "anime"))
    store = ReferenceStore(root)
    for i, style in enumerate(("cartoon", "anime")):
        w = torch.randn(1, tiny_models.style_dim, generator=torch.Generator().manual_seed(10 + i))
        store.save(style, "ref1", ReferenceCode(v=w.clone(), w=w, meta={}))
    from support.portraits import portrait_photos

    # Synthetic aligned photos with 4 rows cut off top and bottom (non-square: the stage centre-crops them).
    faces = np.stack([p.array()[4:44] for p in portrait_photos(3, 48, seed=3)])
    for i, pixels in enumerate(faces):
        storage.write_bytes(storage.join(inputs, f"f{i}.png"), _png(pixels))
    storage.write_bytes(storage.join(inputs, "broken.png"), b"\x89PNG\r\n\x1a\n broken")
    items = list_inputs(inputs)
    spec = stages.JobSpec(input=inputs, output=out, job_id="inproc", styles=["cartoon", "anime"],
                          generator_uris={s: storage.join(root, "styles", s, "generator.pt") for s in ("cartoon", "anime")},
                          encoder_uri=tiny_models.encoder_wplus, mode="reference", layer=3, reference_id="ref1",
                          root=root, aligned=True, min_input_side=32, image_format="png", size=tiny_models.size,
                          thumbnail_keys=["f0"])
    batch = {"key": np.array([i["key"] for i in items], dtype=object),
             "uri": np.array([i["uri"] for i in items], dtype=object)}
    prepared = stages.PrepareFaces(spec)(batch)
    assert prepared["ok"].tolist() == [False, True, True, True]      # broken.png sorts first
    assert prepared["stage"][0] == "decode" and "broken.png" in prepared["message"][0]
    actor = stages.StylizeActor(spec)
    stylized = actor(prepared)
    result = stages.EncodeUpload(spec)(stylized)
    assert result["status"].tolist() == ["error", "ok", "ok", "ok"]

    stylizer = actor.stylizer
    aligned = from_uint8(np.stack([stages.centre_square(p, tiny_models.size) for p in faces]))
    w_plus = stylizer.encode(aligned)
    for style in ("cartoon", "anime"):
        want = stylizer.reference(w_plus, style, store.load(style, "ref1"), 3)
        for i in range(3):
            got = decode_png(storage.read_bytes(storage.join(out, style, f"f{i}.png")))
            np.testing.assert_array_equal(got, to_uint8(want[i]))
    with np.load(storage.join(out, "latents", "f1.npz")) as latents:
        np.testing.assert_allclose(latents["w_plus"], w_plus[1].numpy(), rtol=1e-5, atol=1e-6)
        mix = latents["mix_anime"][0]
        np.testing.assert_allclose(mix[:3], w_plus[1, :3].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(mix[3:], np.repeat(store.load("anime", "ref1").w.numpy(), mix.shape[0] - 3, 0))
    parts = storage.list_uris(manifest.parts_uri(out, "inproc"))
    assert len(parts) == 1 and len(manifest.read_job_records(out, "inproc")) == 4
    assert storage.exists(storage.join(out, "_gallery", "f0", "input.jpg"))
    assert storage.exists(storage.join(out, "_gallery", "f0", "anime.jpg"))
