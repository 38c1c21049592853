"""Photos/s per CPU core for decode + detect + FFHQ-align of a real photo, per detector and input size.

    python benchmarks/bench_faces.py [--repeats 3] [--crop 1024] [--sizes 1024x1024,4000x3000] [--no-mmod]

The photo is scikit-image's astronaut, scaled so the face is ~20 % of the short side, centred on a grey canvas of
each size and stored as a JPEG (quality 92). One timed loop per row, single-threaded (dlib and PIL use one core
here), after one untimed warm-up: decode (fstrain.data.images) -> FaceFinder.find -> align at --crop.
Rows: dlib HOG + 68 landmarks as batch.stylize runs it (working scale, upright re-detection check); dlib's mmod
CNN detector in a single pass without the check (what choosing it would cost at least); the tiny SCRFD-format
test detector through insightface (not the real det_10g.onnx, which this machine does not have: its figure is
the letterboxing/ONNX path's cost, not SCRFD's accuracy or speed).
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def photo_jpeg(width: int, height: int) -> bytes:
    from PIL import Image
    from skimage.data import astronaut

    face_side = 100.0                          # the astronaut's face box in the 512 px original
    scale = 0.2 * min(width, height) / face_side
    side = int(round(512 * scale))
    canvas = Image.new("RGB", (width, height), (110, 110, 118))
    canvas.paste(Image.fromarray(astronaut()).resize((side, side), Image.Resampling.LANCZOS),
                 ((width - side) // 2, (height - side) // 2))
    buffer = io.BytesIO()
    canvas.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def time_rows(finder, data: bytes, crop: int, repeats: int) -> tuple[float, int]:
    from batch.faces import align_face
    from fstrain.data.images import decode_image

    def once() -> int:
        rgb = np.asarray(decode_image(data, "bench.jpg"))
        faces = finder.find(rgb)
        if faces:
            align_face(rgb, faces[0], crop)
        return len(faces)

    found = once()                                   # warm-up (and the number of faces found)
    start = time.perf_counter()
    for _ in range(repeats):
        once()
    return (time.perf_counter() - start) / repeats, found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--crop", type=int, default=1024)
    parser.add_argument("--sizes", default="1024x1024,4000x3000")
    parser.add_argument("--no-mmod", action="store_true", help="skip the (slow) mmod CNN rows")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from batch.faces import DlibDetector, FaceFinder, InsightFaceDetector
    from support.tiny_detector import export_tiny_detector

    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    photos = {size: photo_jpeg(*size) for size in sizes}
    with tempfile.TemporaryDirectory() as folder:
        export_tiny_detector(folder)
        finders = [("dlib HOG + 68 (default)", FaceFinder(DlibDetector()), args.repeats)]
        if not args.no_mmod:
            finders.append(("dlib mmod CNN + 68, 1 pass", FaceFinder(DlibDetector("mmod", upsample=0), angles=(),
                                                                      verify=False), 1))
        finders.append(("tiny SCRFD-format (test)",
                        FaceFinder.for_detector(InsightFaceDetector(folder, det_size=640)), args.repeats))
        print(f"decode + detect + align to {args.crop} px, one core, JPEG q92 astronaut on a grey canvas")
        print(f"{'detector':<28} {'input':>10} {'faces':>6} {'s/photo':>8} {'photos/s/core':>14}")
        for name, finder, repeats in finders:
            for size in sizes:
                seconds, found = time_rows(finder, photos[size], args.crop, repeats)
                print(f"{name:<28} {size[0]}x{size[1]:<5} {found:>6} {seconds:>8.3f} {1.0 / seconds:>14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
