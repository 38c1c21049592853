"""Face detection for batch stylization: insightface's SCRFD detector (buffalo_l's `det_10g.onnx`), largest face wins.

The detector file comes from a configurable model root (a local folder or an s3:// prefix holding `det_10g.onnx`);
remote files are fetched once per machine through the model registry. Nothing is downloaded from the internet and
nothing is substituted: a missing file is an error that says where to put it (or to pass `--aligned`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

DETECTOR_FILE = "det_10g.onnx"
DEFAULT_MODEL_ROOT_ENV = "BATCH_DETECTOR_ROOT"
DEFAULT_MODEL_ROOT = os.path.join("~", ".insightface", "models", "buffalo_l")


class DetectorMissingError(FileNotFoundError):
    """The face detector's ONNX file is not where the model root says."""


@dataclass
class Face:
    """One detection in image pixels: box (x1, y1, x2, y2), confidence, 5 keypoints (eyes, nose, mouth corners)."""
    bbox: np.ndarray      # (4,)
    score: float
    kps: np.ndarray       # (5, 2)

    @property
    def area(self) -> float:
        return float(max(0.0, self.bbox[2] - self.bbox[0]) * max(0.0, self.bbox[3] - self.bbox[1]))

    def to_json(self) -> dict:
        return {"bbox": [round(float(v), 2) for v in self.bbox], "score": round(float(self.score), 4),
                "kps": [[round(float(x), 2), round(float(y), 2)] for x, y in self.kps]}


def default_model_root() -> str:
    return os.environ.get(DEFAULT_MODEL_ROOT_ENV) or os.path.expanduser(DEFAULT_MODEL_ROOT)


def detector_uri(model_root: str) -> str:
    from fstrain.data import storage

    return storage.join(model_root, DETECTOR_FILE)


def missing_detector_message(model_root: str) -> str:
    return (f"face detector not found: {detector_uri(model_root)} does not exist. Put insightface buffalo_l's "
            f"{DETECTOR_FILE} in that folder (or s3 prefix), point --detector-root (or ${DEFAULT_MODEL_ROOT_ENV}) at "
            f"the folder holding it, or pass --aligned if the inputs are already aligned face crops.")


def check_detector(model_root: str) -> str:
    """Fail early (on the driver) when the detector file is missing; returns its URI."""
    from fstrain.data import storage

    uri = detector_uri(model_root)
    try:
        present = storage.exists(uri)
    except storage.StorageError as exc:
        raise DetectorMissingError(f"{missing_detector_message(model_root)} ({exc})") from exc
    if not present:
        raise DetectorMissingError(missing_detector_message(model_root))
    return uri


class InsightFaceDetector:
    """SCRFD through `insightface.model_zoo.get_model`; `detect(rgb)` -> faces, largest first.

    `det_size` is the square the image is letterboxed into (640 for buffalo_l); `det_thresh` the score cut-off.
    """

    def __init__(self, model_root: str, det_size: int = 640, det_thresh: float = 0.5, nms_thresh: float = 0.4):
        from fstrain.models.registry import MissingWeightsError, fetch

        uri = check_detector(model_root)
        try:
            local = str(fetch(uri))
        except MissingWeightsError as exc:
            raise DetectorMissingError(missing_detector_message(model_root)) from exc
        import insightface

        model = insightface.model_zoo.get_model(local, providers=["CPUExecutionProvider"])
        if model is None or getattr(model, "taskname", None) != "detection":
            raise DetectorMissingError(f"{uri}: not an SCRFD face detector (insightface routed it to "
                                       f"{type(model).__name__}); use buffalo_l's {DETECTOR_FILE}")
        model.prepare(ctx_id=-1, input_size=(det_size, det_size), det_thresh=det_thresh, nms_thresh=nms_thresh)
        self.model = model
        self.uri = uri
        self.det_size = det_size

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """All faces in an RGB uint8 (H, W, 3) image, largest box first."""
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # insightface takes OpenCV's BGR order
        boxes, kpss = self.model.detect(bgr, input_size=(self.det_size, self.det_size))
        if kpss is None:
            raise DetectorMissingError(f"{self.uri}: this detector outputs no keypoints; alignment needs SCRFD "
                                       f"with 5-point landmarks ({DETECTOR_FILE})")
        faces = [Face(bbox=box[:4].astype(np.float64), score=float(box[4]), kps=kps.astype(np.float64))
                 for box, kps in zip(boxes, kpss)]
        return sorted(faces, key=lambda face: face.area, reverse=True)


def align_face(rgb: np.ndarray, kps: np.ndarray, size: int) -> np.ndarray:
    """FFHQ-style aligned crop (size x size, uint8 RGB) from the five detected keypoints."""
    from PIL import Image

    from fstrain.data.align import ffhq_align

    aligned, _ = ffhq_align(Image.fromarray(np.ascontiguousarray(rgb)), np.asarray(kps, dtype=np.float64), size)
    return np.asarray(aligned.convert("RGB"), dtype=np.uint8)
