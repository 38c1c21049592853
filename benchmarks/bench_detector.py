"""How well the hand-set SCRFD-format test detector finds the synthetic world's faces, through insightface.

    python benchmarks/bench_detector.py [--photos 300] [--sizes 64,96,128] [--seed 11] [--det-size 160]

For unaligned `photo` renders (one face each, rotated +-30 deg, 0.55-0.85x, off-centre on a 1.5x canvas) it prints,
per size: hit rate (the top face's IoU with the renderer's face box > 0.5), mean IoU, photos with any extra
detection, and the template keypoints' mean distance to the true landmarks in eye distances. Then two-face scenes
(both faces found; largest face first when the true areas differ by >= 1.8x) and faceless backdrops (detections).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=300, help="renders per size")
    parser.add_argument("--sizes", default="64,96,128", help="aligned sizes (canvases are 1.5x)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--backdrops", type=int, default=200)
    parser.add_argument("--det-size", type=int, default=160)
    args = parser.parse_args()

    from batch.faces import InsightFaceDetector
    from support.tiny_detector import export_tiny_detector

    with tempfile.TemporaryDirectory() as folder:   # insightface opens the file again per input size: keep it
        export_tiny_detector(folder)
        detector = InsightFaceDetector(folder, det_size=args.det_size)
        report(detector, args)
    return 0


def report(detector, args) -> None:
    from fstrain.data.synthetic import generate, identity_rng, render_photo_scene, sample_identity
    from support.batch_inputs import backdrop, box_area, box_iou, true_boxes_largest_first

    print(f"tiny SCRFD-format detector, det size {args.det_size}, seed {args.seed}")
    print(f"{'photos':<22} {'n':>5} {'hit rate':>9} {'mean IoU':>9} {'extra':>6} {'kp err':>7} {'ms/photo':>9}")
    for size in (int(s) for s in args.sizes.split(",")):
        ious, extra, kp_err, seconds = [], 0, [], 0.0
        for _, image, meta in generate("photo", args.photos, size, args.seed + size, aligned=False):
            start = time.perf_counter()
            faces = detector.detect(np.asarray(image))
            seconds += time.perf_counter() - start
            ious.append(box_iou(faces[0].bbox, meta["bbox"]) if faces else 0.0)
            extra += len(faces) > 1
            if ious[-1] > 0.5:
                truth = np.asarray(meta["landmarks"])
                eyes = np.hypot(*(truth[1] - truth[0]))
                kp_err.append(np.linalg.norm(faces[0].kps - truth, axis=1).mean() / eyes)
        ious = np.array(ious)
        print(f"{f'unaligned @ {size} px':<22} {len(ious):>5} {np.mean(ious > 0.5):>9.3f} {ious.mean():>9.3f} "
              f"{extra:>6} {np.mean(kp_err):>7.3f} {1000 * seconds / len(ious):>9.1f}")

    found, largest, separated = 0, 0, 0
    for k in range(args.scenes):
        people = [sample_identity(identity_rng(args.seed, 2 * k + j), f"scene-{k}-{j}") for j in range(2)]
        image, meta = render_photo_scene(people, 128, seed=args.seed * 1000 + k)
        faces = detector.detect(np.asarray(image))
        boxes = true_boxes_largest_first(meta)
        found += sum(max((box_iou(f.bbox, b) for f in faces), default=0.0) > 0.5 for b in boxes)
        if box_area(boxes[0]) >= 1.8 * box_area(boxes[1]):
            separated += 1
            largest += bool(faces) and box_iou(faces[0].bbox, boxes[0]) > 0.5
    print(f"two-face scenes @ 128 px: {args.scenes} scenes, faces found {found / (2 * args.scenes):.3f}; "
          f"largest first where areas differ >= 1.8x: {largest}/{separated} = {largest / max(separated, 1):.3f}")
    false_faces = sum(len(detector.detect(np.asarray(backdrop(seed, 192, 192)))) for seed in range(args.backdrops))
    print(f"faceless backdrops: {args.backdrops}, detections {false_faces}")


if __name__ == "__main__":
    sys.exit(main())
