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
from batch.stages import JobSpec, latents_uri, output_uri, thumbnail_uri
from batch.stylize import Stages, list_inputs, main
from fstrain.cli import UsageError
from fstrain.data import storage
from support.batch_faults import CrashOnceStylizeActor, crash_marker
from support.batch_inputs import box_iou, write_batch_inputs
from support.tiny_detector import export_tiny_detector
from support.tiny_models import add_delta

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


def test_manifest_lines_share_one_schema_and_the_summary_sits_beside_it(local_root):
    """A reader of manifest.jsonl (pandas, jq, DuckDB) meets one record schema on every line: the counts live in
    summary.json, in the output folder and in the job's folder."""
    import json

    records = [manifest.Record(key="b", input="in/b.png", status="ok", provenance={"encoder": "e"}, finished_at=2.0),
               manifest.error_record("a", "in/a.png", "decode", "not an image", "replace it", "job-1")]
    summary = manifest.summarize(records, skipped=0, processed=2, elapsed_s=1.0, job_id="job-1")
    manifest.write_manifest(local_root, "job-1", records, summary)
    for folder in (local_root, manifest.job_uri(local_root, "job-1")):
        lines = [json.loads(line) for line in storage.read_text(storage.join(folder, "manifest.jsonl")).splitlines()]
        assert [line["key"] for line in lines] == ["a", "b"]
        record_fields = set(manifest.Record.__dataclass_fields__) | {"transient"}
        assert all({"key", "input", "status"} <= set(line) <= record_fields for line in lines), lines
        assert storage.read_json(storage.join(folder, "summary.json")) == summary
    records_back, summary_back = manifest.read_manifest(local_root)
    assert [r.key for r in records_back] == ["a", "b"]
    assert (summary_back["inputs"], summary_back["ok"], summary_back["error"]) == (2, 1, 1)
    # A job manifest written before summary.json (summary as its last line) still resumes.
    old = storage.join(manifest.job_uri(local_root, "old"), "manifest.jsonl")
    storage.write_text(old, manifest.to_jsonl(records) + json.dumps({"summary": True, "inputs": 2}) + "\n")
    assert sorted(manifest.read_job_records(local_root, "old")) == ["a", "b"]


def test_manifest_corrupt_line_names_file(local_root):
    uri = storage.join(manifest.parts_uri(local_root, "j"), "part-x.jsonl")
    storage.write_text(uri, '{"key": "a", "input": "a.png", "status": "ok"}\nnot json\n')
    with pytest.raises(ValueError, match=r"part-x.jsonl: line 2 is not JSON"):
        manifest.read_job_records(local_root, "j")
    storage.write_text(uri, '{"key": "a", "status": "ok"}\n')
    with pytest.raises(ValueError, match=r"part-x.jsonl: line 1 lacks \['input'\]"):
        manifest.read_job_records(local_root, "j")


def test_list_inputs_keys_are_relative_paths_and_outputs_never_collide(local_root):
    names = ("a.jpg", "a.png", "sub/b.webp", "notes.txt", "sub/c.JPEG", "dup/a.jpg", "dup/a_jpg.png",
             "dup/a.jpg.png/x.png")
    for name in names:
        storage.write_bytes(storage.join(local_root, "in", name), b"x")
    items = list_inputs(storage.join(local_root, "in"))
    keys = [i["key"] for i in items]
    assert keys == sorted(n for n in names if n != "notes.txt")
    assert all(i["uri"] == storage.join(local_root, "in", i["key"]) for i in items)
    spec = JobSpec(input="in", output=storage.join(local_root, "out"), job_id="j", styles=["cartoon"],
                   generator_uris={}, encoder_uri="")
    for sample in (None, 0, 1):
        uris = [output_uri(spec, "cartoon", k, sample) for k in keys]
        assert len(set(uris)) == len(uris)
    # Readable: the input's path with its extension, then the output format.
    assert output_uri(spec, "cartoon", "dup/a.jpg", None) == storage.join(spec.output, "cartoon", "dup/a.jpg.png")
    # A folder never takes the name of a file written beside it (dup/a.jpg.png is the output of dup/a.jpg).
    assert output_uri(spec, "cartoon", "dup/a.jpg.png/x.png", None).endswith("/dup/a.jpg%2Epng/x.png.png")
    for key in keys:  # every output, latent and thumbnail can be written side by side on a local disk
        for uri in (output_uri(spec, "cartoon", key, None), latents_uri(spec, key), thumbnail_uri(spec, key, "input")):
            storage.write_bytes(uri, key.encode())
    assert len(storage.list_uris(spec.output)) == 3 * len(keys)


def test_output_names_are_injective_readable_and_bounded():
    import random
    from urllib.parse import unquote

    from batch.names import HASH_MARK, MAX_NAME_BYTES, MAX_SEGMENT_BYTES, output_name

    readable = ["album/IMG #3.jpg", "q?x=1&y=2.jpg", "a+b = c.jpg", "it's \"quoted\".jpg", "ünï/名前 φωτο.png"]
    for key in readable:
        assert output_name(key) == key                      # nothing to escape: the name is the key
    assert output_name("100%.jpg") == "100%25.jpg" and unquote(output_name("100%.jpg")) == "100%.jpg"
    assert output_name("a//b.jpg") == "a/%2F/b.jpg"
    assert output_name("../up.jpg") == "%2E%2E/up.jpg" and output_name("./x/y.jpg") == "%2E/x/y.jpg"
    assert output_name("line\nbreak.jpg") == "line%0Abreak.jpg"
    long_keys = ["long/" + "ł" * 300 + ".jpg", "long/" + "ł" * 300 + "x.jpg", "/".join(["d" * 150] * 7) + "/a.png"]
    for key in long_keys:
        name = output_name(key)
        assert HASH_MARK in name and name.endswith(key[-4:]) and name.startswith(key[:4])
        assert len(name.encode()) <= MAX_NAME_BYTES
        assert all(len(segment.encode()) <= MAX_SEGMENT_BYTES for segment in name.split("/"))
    # Injective over many keys made of the characters the escapes use (and collide on under a naive scheme).
    rng = random.Random(0)
    alphabet = ["a", "b", ".", "/", "%", "2", "E", "F", "~", "_", "jpg", "png", " ", "\n"]
    keys = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) + rng.choice([".jpg", ".png"])
            for _ in range(20000)} | set(readable) | set(long_keys)
    names = {}
    for key in keys:
        name = output_name(key)
        assert names.setdefault(name, key) == key, (key, names[name], name)
        assert not name.startswith("/") and "//" not in name and ".." not in name.split("/")


def test_rerun_reuses_only_records_made_with_the_same_models():
    from batch.stylize import keep_previous, stale_reasons

    models = {"encoder": "e" * 64, "generators": {"cartoon": "1" * 64, "anime": "2" * 64}}
    retrained = {"encoder": "e" * 64, "generators": {"cartoon": "3" * 64, "anime": "2" * 64}}
    ok = manifest.Record(key="a.jpg", input="in/a.jpg", status="ok", provenance=models)
    old_ok = manifest.Record(key="b.jpg", input="in/b.jpg", status="ok")
    decode = manifest.Record(key="c.jpg", input="in/c.jpg", status="error", stage="decode")
    read = manifest.Record(key="d.jpg", input="in/d.jpg", status="error", stage="read")
    assert keep_previous(ok, False, models) and not keep_previous(ok, False, retrained)
    assert not keep_previous(old_ok, False, models)
    assert keep_previous(decode, False, models) and not keep_previous(decode, True, models)
    assert not keep_previous(read, False, models) and read.transient and not decode.transient
    assert read.to_json()["transient"] is True and ok.to_json()["provenance"] == models
    assert stale_reasons([ok, old_ok, decode], retrained) == [
        "generator of 'cartoon' changed (11111111… → 33333333…): 1 ok record(s) recomputed",
        "no model provenance recorded (made by an earlier version): 1 ok record(s) recomputed"]
    # Refining the codes (or changing how) makes different outputs from the same models: recomputed, and said why.
    refined = {**models, "refine": {"steps": 200, "lr": 0.01, "base_generator": "b" * 64, "lpips": "l" * 64}}
    assert not keep_previous(ok, False, refined)
    assert stale_reasons([ok], refined) == [
        "code refinement changed (stylize.refine_*, base G or perceptual net): 1 ok record(s) recomputed"]
    tuned = {**models, "pivotal": {"steps": 1500, "lr": 0.002, "base_generator": "b" * 64, "lpips": "l" * 64}}
    assert not keep_previous(ok, False, tuned)
    assert stale_reasons([ok], tuned) == [
        "pivotal tuning changed (stylize.pivotal_*, base G or perceptual net): 1 ok record(s) recomputed"]


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
    publish_styles(tiny_models, root, styles=("cartoon", "anime"))
    with pytest.raises(UsageError, match=r"style 'animee' has no published G' at .*styles/animee/generator.pt "
                                         r"\(did you mean 'anime'\? published: anime, cartoon\)"):
        main(["--input", str(tmp_path), "--output", str(tmp_path / "out"), "--styles", "cartoon,animee",
              "--root", root, "--encoder", tiny_models.encoder_wplus, "--aligned"])


# --------------------------------------------------------------------------------------------- Ray Data jobs
@pytest.mark.slow
def test_s3_job_accounts_for_every_input_survives_crash_and_resumes(s3_server, s3_root, tiny_models, tmp_path,
                                                                  monkeypatch, capfd):
    inputs, out, root = (storage.join(s3_root, p) for p in ("photos", "stylized", "pipeline"))
    expected = write_batch_inputs(inputs)         # 60 synthetic photos/scenes: 8 bad, 3 gray (no skin colour)
    assert len(expected.keys) == 60 and len(expected.keys_with("error")) == 11
    publish_styles(tiny_models, root)
    detector_root = storage.join(root, "models", "buffalo_l")
    storage.upload_file(export_tiny_detector(tmp_path / "det"), storage.join(detector_root, "det_10g.onnx"))
    marker = crash_marker(out)
    storage.write_bytes(marker, b"crash the first stylize actor once")
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests"))      # the workers import support.batch_faults
    monkeypatch.setenv("FSTRAIN_MODEL_CACHE", str(tmp_path / "model-cache"))

    rc = main(job_args(inputs, out, root, tiny_models.encoder_wplus, detector_root, "job-a"),
              Stages(stylize=CrashOnceStylizeActor))
    assert rc == 3  # some inputs are errors
    assert not storage.exists(marker), "the stylize actor never reached the crash hook"
    # The kernel routing line once for the job, from the driver (two actor processes ran: the crashed one and its
    # restart; each used to log one line per op).
    said = capfd.readouterr()
    lines = [line for line in (said.out + said.err).splitlines() if "using reference" in line or
             "using the reference ops" in line]
    assert lines == ["[batch] kernels (stylize workers): using the reference ops (tensors on cpu; the CUDA kernels "
                     "need a GPU)"], lines
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
            assert uri == storage.join(out, style, f"{key}.png")   # the input's path + the output format
            assert Image.open(io.BytesIO(storage.read_bytes(uri))).size == (tiny_models.size, tiny_models.size)
        with np.load(io.BytesIO(storage.read_bytes(record.outputs["latents"]))) as latents:
            assert latents["w_plus"].shape == (tiny_models.n_latent, tiny_models.style_dim)
            assert np.isfinite(latents["w_plus"]).all() and np.abs(latents["w_plus"]).sum() > 0
        assert box_iou(record.face["bbox"], want.face_box) > 0.5, (key, record.face, want.face_box)
    for key in ("group/two-faces.jpg", "group/two-faces-b.png"):            # several faces -> the largest one (checked above)
        assert by_key[key].face["faces_found"] >= 2
    assert any("alpha" in c for c in by_key["modes/gray-alpha.png"].face["conversions"])
    assert any("exif" in c for c in by_key["modes/exif-rotated.jpg"].face["conversions"])
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
                          thumbnail_keys=["f0.png"])
    batch = {"key": np.array([i["key"] for i in items], dtype=object),
             "uri": np.array([i["uri"] for i in items], dtype=object)}
    prepared = stages.PrepareFaces(spec)(batch)
    assert prepared["ok"].tolist() == [False, True, True, True]      # broken.png sorts first
    assert prepared["stage"][0] == "decode" and "broken.png" in prepared["message"][0]
    actor = stages.StylizeActor(spec)
    stylized = actor(prepared)
    result = stages.EncodeUpload(spec)(stylized)
    assert result["status"].tolist() == ["error", "ok", "ok", "ok"]
    import json
    workers = [json.loads(r)["worker"] for r in result["record"][1:]]   # what the driver prints once per job
    assert all(w["kernels"] == ["using the reference ops (tensors on cpu; the CUDA kernels need a GPU)"]
               for w in workers), workers

    stylizer = actor.stylizer
    aligned = from_uint8(np.stack([stages.centre_square(p, tiny_models.size) for p in faces]))
    w_plus = stylizer.encode(aligned)
    for style in ("cartoon", "anime"):
        want = stylizer.reference(w_plus, style, store.load(style, "ref1"), 3)
        for i in range(3):
            got = decode_png(storage.read_bytes(storage.join(out, style, f"f{i}.png.png")))
            np.testing.assert_array_equal(got, to_uint8(want[i]))
    with np.load(storage.join(out, "latents", "f1.png.npz")) as latents:
        np.testing.assert_allclose(latents["w_plus"], w_plus[1].numpy(), rtol=1e-5, atol=1e-6)
        mix = latents["mix_anime"][0]
        np.testing.assert_allclose(mix[:3], w_plus[1, :3].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(mix[3:], np.repeat(store.load("anime", "ref1").w.numpy(), mix.shape[0] - 3, 0))
    parts = storage.list_uris(manifest.parts_uri(out, "inproc"))
    assert len(parts) == 1 and len(manifest.read_job_records(out, "inproc")) == 4
    assert storage.exists(storage.join(out, "_gallery", "input", "f0.png.jpg"))
    assert storage.exists(storage.join(out, "_gallery", "anime", "f0.png.jpg"))


def _base_model_job(tmp_path, tiny_models, *, seed: int, stylize_yaml: str, job_id: str):
    """Two aligned photos, one published style and a --config naming the base G and LPIPS (what refinement and
    pivotal tuning need): (faces (2, H, W, 3) uint8, config path, the job's flags without --config/--encoder, out)."""
    from support.portraits import portrait_photos

    root, inputs, out = str(tmp_path / "root"), str(tmp_path / "in"), str(tmp_path / "out")
    publish_styles(tiny_models, root, styles=("cartoon",))
    faces = np.stack([p.array() for p in portrait_photos(2, tiny_models.size, seed=seed)])
    for i, pixels in enumerate(faces):
        storage.write_bytes(storage.join(inputs, f"f{i}.png"), _png(pixels))
    t = tiny_models
    config = tmp_path / "job.yaml"
    config.write_text("models:\n"
                      f"  base_generator: {t.generator}\n  encoder_wplus: {t.encoder_wplus}\n"
                      f"  encoder_zplus: {t.encoder_zplus}\n  identity: ''\n"
                      f"  lpips_backbone: {t.lpips_backbone}\n  lpips_net: {t.lpips_net}\n"
                      f"stylize:\n{stylize_yaml}")
    base_args = ["--input", inputs, "--output", out, "--styles", "cartoon", "--root", root, "--aligned",
                 "--job-id", job_id, "--min-input-side", "32"]
    return faces, config, base_args, out


def _run_inline(spec):
    """The job's three stages in this process on every input: (the stylize actor, EncodeUpload's result)."""
    import json

    from batch import stages

    spec.thumbnail_keys = []
    items = list_inputs(spec.input)
    batch = {"key": np.array([i["key"] for i in items], dtype=object),
             "uri": np.array([i["uri"] for i in items], dtype=object)}
    actor = stages.StylizeActor(spec)
    result = stages.EncodeUpload(spec)(actor(stages.PrepareFaces(spec)(batch)))
    assert result["status"].tolist() == ["ok"] * len(items), [json.loads(r)["message"] for r in result["record"]]
    return actor, result


def test_refinement_is_resolved_from_the_config_pinned_in_provenance_and_marked_in_the_latents(tmp_path,
                                                                                                tiny_models):
    """--refine-steps: the base G and LPIPS come from --config, their sha256 and the settings join the provenance,
    the written w_plus is the refined code (not the encoder's) and the latents' meta says so."""
    import json

    import torch

    from batch.stylize import build_spec, parse_args
    from fstrain.models.registry import sha256_file
    from fstrain.stylize import CodeRefiner, RefineSettings
    from fstrain.stylize.images import from_uint8

    t = tiny_models
    faces, config, base_args, out = _base_model_job(tmp_path, t, seed=8, job_id="refined",
                                                    stylize_yaml="  refine_steps: 6\n  refine_lr: 0.05\n")
    with pytest.raises(SystemExit, match="--refine-steps 3: .*pass --config with models.base_generator"):
        build_spec(parse_args(base_args + ["--encoder", t.encoder_wplus, "--refine-steps", "3"]))
    spec = build_spec(parse_args(base_args + ["--config", str(config)]))
    settings = RefineSettings(steps=6, lr=0.05)
    assert spec.refine == settings.describe()
    assert spec.provenance["refine"] == {**settings.describe(), "base_generator": sha256_file(t.generator),
                                         "lpips": sha256_file(t.lpips_backbone)}
    assert "refine" not in build_spec(parse_args(base_args + ["--config", str(config), "--refine-steps", "0"])
                                      ).provenance

    actor, _ = _run_inline(spec)

    aligned = from_uint8(faces)
    with torch.no_grad():
        encoded = actor.stylizer.encoder(aligned)
    refiner = CodeRefiner(actor.stylizer.refiner.generator, actor.stylizer.refiner.lpips, settings)
    want = refiner(aligned, encoded)
    for i in range(2):
        with np.load(storage.join(out, "latents", f"f{i}.png.npz")) as latents:
            np.testing.assert_allclose(latents["w_plus"], want[i].numpy(), rtol=1e-4, atol=1e-5)
            assert np.abs(latents["w_plus"] - encoded[i].numpy()).max() > 1e-3
            assert json.loads(str(latents["meta"]))["refined"] == settings.describe()


def test_pivotal_tuning_renders_each_photo_by_its_own_weights_and_is_pinned_in_provenance(tmp_path, tiny_models):
    """--pivotal-steps / stylize.pivotal_steps: the base G and LPIPS come from --config and join the provenance with
    the settings; each written image is G' + that face's own tuned change (not G' as it is), in every mode the job
    renders; the latents' meta says so; without --config it is a usage error naming the fix."""
    import json

    import torch

    from batch import stages
    from batch.stylize import build_spec, parse_args
    from fstrain.models.registry import sha256_file
    from fstrain.stylize import PivotalSettings
    from fstrain.stylize.images import from_uint8, to_uint8

    t = tiny_models
    faces, config, base_args, out = _base_model_job(tmp_path, t, seed=13, job_id="pivotal",
                                                    stylize_yaml="  pivotal_steps: 4\n  pivotal_lr: 0.01\n")
    with pytest.raises(SystemExit, match="--pivotal-steps 3: .*pass --config with models.base_generator"):
        build_spec(parse_args(base_args + ["--encoder", t.encoder_wplus, "--pivotal-steps", "3"]))
    spec = build_spec(parse_args(base_args + ["--config", str(config)]))
    settings = PivotalSettings(steps=4, lr=0.01)
    assert spec.pivotal == settings.describe() and spec.refine == {}
    assert spec.provenance["pivotal"] == {**settings.describe(), "base_generator": sha256_file(t.generator),
                                          "lpips": sha256_file(t.lpips_backbone)}
    assert "pivotal" not in build_spec(parse_args(base_args + ["--config", str(config), "--pivotal-steps", "0"])
                                       ).provenance

    actor, _ = _run_inline(spec)

    aligned = from_uint8(faces)
    stylizer = actor.stylizer
    w_plus = stylizer.encode(aligned)
    plain = stylizer.general(w_plus, "cartoon")
    for i in range(2):
        delta = stylizer.tuner(aligned[i:i + 1], w_plus[i:i + 1])[0]       # face i tuned on its own
        cartoon = stages.load_models(spec, "cpu").generator("cartoon")
        add_delta(cartoon, delta)
        with torch.no_grad():
            want = to_uint8(cartoon.synthesis(w_plus[i:i + 1]))[0]
        written = np.asarray(Image.open(io.BytesIO(storage.read_bytes(output_uri(spec, "cartoon", f"f{i}.png",
                                                                                  None)))))
        assert np.abs(written.astype(int) - want.astype(int)).max() <= 1
        assert np.abs(written.astype(int) - to_uint8(plain[i:i + 1])[0].astype(int)).max() > 2
        with np.load(storage.join(out, "latents", f"f{i}.png.npz")) as latents:
            assert json.loads(str(latents["meta"]))["pivotal"] == settings.describe()


def test_base_generator_which_reaches_the_workers_and_the_provenance(tmp_path, tiny_models):
    """models.base_generator_which: g picks the file's training G for refinement on the workers (not g_ema, which
    shares the file and so its sha256); the provenance says which, so records refined with g_ema are recomputed."""
    import torch

    from batch import stages
    from batch.stylize import build_spec, parse_args, stale_reasons

    t = tiny_models
    _, config, base_args, _ = _base_model_job(tmp_path, t, seed=8, job_id="which",
                                              stylize_yaml="  refine_steps: 2\n")
    default_spec = build_spec(parse_args(base_args + ["--config", str(config)]))
    assert default_spec.base_generator_which == "g_ema"
    assert "base_generator_which" not in default_spec.provenance["refine"]      # g_ema jobs keep their provenance

    checkpoint = torch.load(t.generator, map_location="cpu", weights_only=True)
    torch.manual_seed(0)
    checkpoint["g"] = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
                       for k, v in checkpoint["g_ema"].items()}
    two_generators = tmp_path / "g_and_g_ema.pt"
    torch.save(checkpoint, two_generators)
    config.write_text(config.read_text().replace(f"base_generator: {t.generator}\n",
                                                 f"base_generator: {two_generators}\n  base_generator_which: g\n"))
    spec = build_spec(parse_args(base_args + ["--config", str(config)]))
    assert spec.base_generator_which == "g" and spec.provenance["refine"]["base_generator_which"] == "g"

    loaded = stages.load_models(spec, "cpu").refiner.generator.state_dict()
    name = "conv1.conv.weight"
    assert torch.equal(loaded[name], checkpoint["g"][name]) and not torch.equal(loaded[name], checkpoint["g_ema"][name])
    record = manifest.Record(key="f0.png", input="in/f0.png", status="ok",
                             provenance={**spec.provenance, "refine": default_spec.provenance["refine"]})
    assert stale_reasons([record], spec.provenance) == [
        "code refinement changed (stylize.refine_*, base G or perceptual net): 1 ok record(s) recomputed"]


# -------------------------------------------------------------- odd keys, storage faults, reruns (issue 21)
from support.fault_proxy import fault_proxy  # noqa: E402,F401 - the fixture, for this module

ODD_INPUTS = ["dup/a.jpg", "dup/a_jpg.png", "dup/a.png", "album/IMG #3.jpg", "q?x=1&y.png", "100% + pure.png",
              "it's \"quoted\".png", "ünï/名前 φωτο.png", "long/" + "ł" * 250 + ".png"]


def _write_odd_inputs(inputs: str) -> dict[str, bytes]:
    from support.portraits import portrait_photos

    written = {}
    for name, photo in zip(ODD_INPUTS, portrait_photos(len(ODD_INPUTS), 48, seed=5)):
        image = Image.fromarray(photo.array())
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG" if name.endswith(".jpg") else "PNG")
        written[name] = buffer.getvalue()
        storage.write_bytes(storage.join(inputs, name), written[name])
    storage.write_bytes(storage.join(inputs, "bad/notes.jpg"), b"holiday notes, not a photo\n" * 10)
    return written


def test_odd_keys_faults_and_reruns_one_line_per_input(s3_server, s3_root, fault_proxy, tiny_models, tmp_path,
                                                       monkeypatch):
    """Through a proxy that resets and throttles S3: odd keys are read, cut downloads are retried (and a read that
    keeps failing is a transient `read` error a rerun recomputes), summaries count this run's work, a rerun after a
    clean run recomputes nothing, and a new generator for a style recomputes its inputs."""
    import ray

    inputs, out, root = (storage.join(s3_root, p) for p in ("photos", "stylized", "pipeline"))
    _write_odd_inputs(inputs)
    styles = ("cartoon", "anime")
    publish_styles(tiny_models, root, styles=styles)
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.url)     # driver and Ray workers all go through the proxy
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("FSTRAIN_MODEL_CACHE", str(tmp_path / "model-cache"))
    storage.configure_s3(reset=True)
    fault_proxy.add("reset-during", method="GET", path_contains="album/IMG #3.jpg", times=1)
    fault_proxy.add("truncate", method="GET", path_contains="q?x=1&y.png", times=1)
    fault_proxy.add("slowdown", method="GET", path_contains="100% + pure.png", times=2)
    fault_proxy.add("reset-before", method="PUT", path_contains="/cartoon/ünï/", times=1)
    fault_proxy.add("slowdown", method="PUT", path_contains="/anime/long/", times=1)
    fault_proxy.add("reset-during", method="GET", path_contains="photos/dup/a.jpg", times=1000)  # never readable
    argv = ["--input", inputs, "--output", out, "--styles", ",".join(styles), "--root", root, "--encoder",
            tiny_models.encoder_wplus, "--aligned", "--min-input-side", "32", "--job-id", "odd", "--cpu-actors", "1",
            "--max-actors", "1", "--batch-size", "4", "--cpu-batch-size", "4"]
    n_inputs = len(ODD_INPUTS) + 1

    def run() -> tuple[int, list[manifest.Record], dict]:
        rc = main(argv)
        records, summary = manifest.read_manifest(out)
        assert sorted(r.input for r in records) == sorted(storage.join(inputs, k) for k in [*ODD_INPUTS, "bad/notes.jpg"])
        assert sorted(r.key for r in records) == sorted([*ODD_INPUTS, "bad/notes.jpg"])   # one line per input
        assert summary["inputs"] == summary["ok"] + summary["error"] == n_inputs
        assert summary["processed"] + summary["skipped"] == n_inputs
        return rc, records, summary

    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {
        "PYTHONPATH": str(REPO), "AWS_ENDPOINT_URL": fault_proxy.url, "AWS_MAX_ATTEMPTS": "3",
        "FSTRAIN_MODEL_CACHE": str(tmp_path / "model-cache")}})
    try:
        rc, records, summary = run()
        by_key = {r.key: r for r in records}
        assert rc == 3 and summary["processed"] == n_inputs and summary["skipped"] == 0
        cut = by_key["dup/a.jpg"]
        assert cut.status == "error" and cut.stage == "read" and cut.transient, cut.to_json()
        assert "dup/a.jpg" in cut.message and "rerun" in cut.action
        notes = by_key["bad/notes.jpg"]
        assert notes.status == "error" and notes.stage == "decode" and not notes.transient
        for key in ODD_INPUTS[1:]:                                  # every other input, odd keys included, is ok
            assert by_key[key].status == "ok", by_key[key].to_json()
            for style in styles:
                assert storage.exists(by_key[key].outputs[style]), by_key[key].outputs[style]
        assert by_key["dup/a_jpg.png"].outputs["cartoon"] == storage.join(out, "cartoon", "dup/a_jpg.png.png")
        assert by_key["album/IMG #3.jpg"].outputs["anime"] == storage.join(out, "anime", "album/IMG #3.jpg.png")
        injected = fault_proxy.kinds_injected()
        for kind in ("reset-during", "truncate", "slowdown", "reset-before"):
            assert kind in injected, injected

        # Rerun once the fault is gone: only the transient error is recomputed; it is now ok.
        fault_proxy.clear()
        rc, records, summary = run()
        by_key = {r.key: r for r in records}
        assert by_key["dup/a.jpg"].status == "ok"
        assert by_key["dup/a.jpg"].outputs["cartoon"] == storage.join(out, "cartoon", "dup/a.jpg.png")
        assert (summary["processed"], summary["skipped"]) == (1, n_inputs - 1), summary
        assert storage.read_bytes(by_key["dup/a.jpg"].outputs["cartoon"]) != \
            storage.read_bytes(by_key["dup/a_jpg.png"].outputs["cartoon"])        # two inputs, two pictures

        # A rerun after a clean run recomputes nothing and rewrites nothing, odd keys included.
        bucket, prefix = storage.parse_s3(out)
        client = storage.s3_client()

        def stamps() -> dict:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
            return {o["Key"]: o["LastModified"] for page in pages for o in page.get("Contents", [])
                    if "/_jobs/" not in o["Key"] and not o["Key"].endswith(("manifest.jsonl", "summary.json",
                                                                          "gallery.html", "contact_sheet.png"))}

        before = stamps()
        rc, records_again, summary = run()
        assert (summary["processed"], summary["skipped"]) == (0, n_inputs), summary
        assert [r.to_json() for r in records_again] == [r.to_json() for r in records]
        assert stamps() == before

        # A new generator for one style: its inputs are recomputed (the decode error is carried over).
        publish_styles(tiny_models, root, styles=("anime", "cartoon"))             # swapped weights
        rc, records, summary = run()
        assert (summary["processed"], summary["skipped"]) == (n_inputs - 1, 1), summary
        assert {r.provenance["generators"]["cartoon"] for r in records if r.status == "ok"} != \
            {r.provenance["generators"]["cartoon"] for r in records_again if r.status == "ok"}
    finally:
        ray.shutdown()
        storage.configure_s3(reset=True)
