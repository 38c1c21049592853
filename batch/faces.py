"""Face detection for batch stylization: one `FaceFinder` over a chain of detectors, largest face first.

* SCRFD (insightface buffalo_l's `det_10g.onnx`) when that file is under the detector root (a local folder or an
  s3:// prefix; fetched once per machine through the model registry): 5 keypoints per face.
* otherwise dlib's HOG frontal face detector plus its 68-point shape predictor, both installed as Python packages
  (`dlib-bin`, and `face-recognition-models` which ships the `.dat` files): nothing to download or place by hand.
  dlib's CNN (mmod) detector ships too but takes ~4 s per 512 px photo on one CPU core against ~0.03 s for HOG
  (benchmarks/bench_faces.py), so HOG is the fallback.

`FaceFinder` wraps either: it resizes the photo to a detection scale (huge photos down, small ones up), retries
at +-30 degrees in-plane rotation when the upright pass finds nothing (HOG only sees faces within ~20 degrees of
upright), and maps boxes and landmarks back to the full-resolution photo, where the crop is taken.
"""
from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DETECTOR_FILE = "det_10g.onnx"
DEFAULT_MODEL_ROOT_ENV = "BATCH_DETECTOR_ROOT"
DEFAULT_MODEL_ROOT = os.path.join("~", ".insightface", "models", "buffalo_l")
DETECTOR_CHOICES = ("auto", "scrfd", "dlib")
DLIB_MODELS_PACKAGE = "face_recognition_models"
SHAPE_PREDICTOR_68 = "shape_predictor_68_face_landmarks.dat"
MMOD_DETECTOR = "mmod_human_face_detector.dat"
# HOG scores are SVM margins (0 is dlib's default cut-off); every candidate is then detected again upright, where
# real faces score 1.0-1.7 on the test photos and look-alikes (a badge on a space suit) up to 0.55.
DLIB_THRESHOLD = 0.0
UPRIGHT_THRESHOLD = 0.8
# HOG's window is 80 px; one 2x pyramid step up finds faces from 40 px of the working image (a 1280 px working
# copy of a 4000 px group photo: faces from 125 px).
DLIB_UPSAMPLE = 1
ROTATIONS = (30.0, -30.0)     # tried when the upright pass finds nothing: HOG sees faces within ~20 deg of upright
DET_MAX_SIDE = 1280
DET_MIN_SIDE = 640


class DetectorMissingError(FileNotFoundError):
    """The face detector's files are not where they should be."""


@dataclass
class Face:
    """One detection in image pixels (continuous coordinates: pixel (i, j) covers [i, i+1) x [j, j+1)): box
    (x1, y1, x2, y2), confidence, 5 keypoints (eyes, nose tip, mouth corners) and, from dlib, all 68 landmarks."""
    bbox: np.ndarray      # (4,)
    score: float
    kps: np.ndarray       # (5, 2)
    landmarks68: np.ndarray | None = field(default=None)   # (68, 2) or None

    @property
    def area(self) -> float:
        return float(max(0.0, self.bbox[2] - self.bbox[0]) * max(0.0, self.bbox[3] - self.bbox[1]))

    @property
    def roll_degrees(self) -> float:
        """In-plane rotation of the eye line (positive: the image's right eye is lower)."""
        dx, dy = self.kps[1] - self.kps[0]
        return math.degrees(math.atan2(dy, dx))

    def mapped(self, matrix: np.ndarray) -> "Face":
        """This face moved through a 3x3 affine map (the box becomes the bounding box of its moved corners)."""
        from fstrain.data.align import transform_points

        x1, y1, x2, y2 = self.bbox
        corners = transform_points(matrix, [[x1, y1], [x2, y1], [x1, y2], [x2, y2]])
        bbox = np.array([*corners.min(0), *corners.max(0)])
        lm = None if self.landmarks68 is None else transform_points(matrix, self.landmarks68)
        return Face(bbox=bbox, score=self.score, kps=transform_points(matrix, self.kps), landmarks68=lm)

    def to_json(self) -> dict:
        return {"bbox": [round(float(v), 2) for v in self.bbox], "score": round(float(self.score), 4),
                "kps": [[round(float(x), 2), round(float(y), 2)] for x, y in self.kps],
                "landmarks": 5 if self.landmarks68 is None else 68}


# ----------------------------------------------------------------------------------------------- SCRFD (ONNX)
def default_model_root() -> str:
    return os.environ.get(DEFAULT_MODEL_ROOT_ENV) or os.path.expanduser(DEFAULT_MODEL_ROOT)


def detector_uri(model_root: str) -> str:
    from fstrain.data import storage

    return storage.join(model_root, DETECTOR_FILE)


def missing_detector_message(model_root: str) -> str:
    return (f"face detector not found: {detector_uri(model_root)} does not exist. Put insightface buffalo_l's "
            f"{DETECTOR_FILE} in that folder (or s3 prefix), point --detector-root (or ${DEFAULT_MODEL_ROOT_ENV}) at "
            f"the folder holding it, use --detector dlib (installed with the package), or pass --aligned if the "
            f"inputs are already aligned face crops.")


def check_detector(model_root: str) -> str:
    """Fail early (on the driver) when the SCRFD file is missing; returns its URI."""
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
        self.name = scrfd_name(uri)
        self.thresholds = {"score": det_thresh, "nms_iou": nms_thresh, "det_size": det_size}

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


def scrfd_name(uri: str) -> str:
    return f"scrfd ({uri})"


# --------------------------------------------------------------------------------- dlib (installed packages)
def dlib_model_file(name: str) -> Path:
    """A model file shipped by the `face-recognition-models` package (located without importing it: its
    __init__ needs pkg_resources, which new setuptools no longer provide)."""
    spec = importlib.util.find_spec(DLIB_MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DetectorMissingError(f"the {DLIB_MODELS_PACKAGE} package is not installed; run `make setup` (or "
                                   f"`pip install face-recognition-models`)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.is_file():
        raise DetectorMissingError(f"{path}: missing from the installed {DLIB_MODELS_PACKAGE} package; reinstall "
                                   f"it with `pip install --force-reinstall face-recognition-models`")
    return path


def _import_dlib():
    try:
        import dlib
    except ImportError as exc:
        raise DetectorMissingError(f"dlib is not installed ({exc}); run `make setup` (or `pip install "
                                   f"dlib-bin`)") from None
    return dlib


class DlibDetector:
    """dlib's HOG frontal face detector (or its mmod CNN) + the 68-point shape predictor.

    `threshold` is the detector score cut-off (HOG scores are SVM margins; 0 is dlib's default). `FaceFinder`
    checks every candidate again upright, where real faces score far higher than look-alikes."""

    def __init__(self, kind: str = "hog", threshold: float = DLIB_THRESHOLD, upsample: int = DLIB_UPSAMPLE):
        if kind not in ("hog", "mmod"):
            raise ValueError(f"dlib detector kind {kind!r}: use 'hog' or 'mmod'")
        dlib = _import_dlib()
        self.kind, self.threshold, self.upsample = kind, float(threshold), int(upsample)
        if kind == "hog":
            self._detector = dlib.get_frontal_face_detector()
        else:
            self._detector = dlib.cnn_face_detection_model_v1(str(dlib_model_file(MMOD_DETECTOR)))
        self._predictor = dlib.shape_predictor(str(dlib_model_file(SHAPE_PREDICTOR_68)))
        self._dlib = dlib
        self.name = dlib_name(kind)
        self.thresholds = {"score": self.threshold, "upsample": self.upsample}


    def _rectangles(self, rgb: np.ndarray) -> list[tuple[object, float]]:
        if self.kind == "hog":
            rects, scores, _ = self._detector.run(rgb, self.upsample, self.threshold)
            return [(r, float(s)) for r, s in zip(rects, scores) if s >= self.threshold]
        return [(d.rect, float(d.confidence)) for d in self._detector(rgb, self.upsample)
                if d.confidence >= self.threshold]

    def _landmarks(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        """68 landmarks (continuous coordinates) inside the continuous box (x1, y1, x2, y2)."""
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        shape = self._predictor(rgb, self._dlib.rectangle(x1, y1, x2 - 1, y2 - 1))
        # dlib's parts are pixel indices (pixel centres): +0.5 makes them continuous.
        return np.array([[p.x + 0.5, p.y + 0.5] for p in shape.parts()], dtype=np.float64)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """All faces in an RGB uint8 (H, W, 3) image, largest box first."""
        from fstrain.data.align import landmarks68_to_5

        rgb = np.ascontiguousarray(rgb)
        faces = []
        for rect, score in self._rectangles(rgb):
            box = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], dtype=np.float64)
            lm = self._landmarks(rgb, box)
            faces.append(Face(bbox=box, score=score, kps=landmarks68_to_5(lm), landmarks68=lm))
        return sorted(faces, key=lambda face: face.area, reverse=True)


def dlib_name(kind: str = "hog") -> str:
    return f"dlib-{kind} + 68-point landmarks ({DLIB_MODELS_PACKAGE})"


def rotate_image(rgb: np.ndarray, degrees: float, centre=None, expand: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """`rgb` rotated by `degrees` about `centre` (default: the image centre) so that a line at `degrees` becomes
    horizontal; returns (rotated uint8 array, 3x3 original->rotated matrix). `expand` grows the canvas to hold
    the whole rotated image; outside the photo is black."""
    from PIL import Image

    from fstrain.data.align import transform_points

    h, w = rgb.shape[:2]
    cx, cy = (w / 2.0, h / 2.0) if centre is None else (float(centre[0]), float(centre[1]))
    a = math.radians(-degrees)
    rot = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    to_origin = np.array([[1.0, 0.0, -cx], [0.0, 1.0, -cy], [0.0, 0.0, 1.0]])
    if expand:
        corners = transform_points(rot @ to_origin, [[0, 0], [w, 0], [0, h], [w, h]])
        lo, hi = corners.min(0), corners.max(0)
        size = (int(math.ceil(hi[0] - lo[0])), int(math.ceil(hi[1] - lo[1])))
        back = np.array([[1.0, 0.0, -lo[0]], [0.0, 1.0, -lo[1]], [0.0, 0.0, 1.0]])
    else:
        size = (w, h)
        back = np.array([[1.0, 0.0, cx], [0.0, 1.0, cy], [0.0, 0.0, 1.0]])
    matrix = back @ rot @ to_origin
    coeffs = tuple(np.linalg.inv(matrix)[:2].ravel())    # PIL maps output pixels to input pixels
    image = Image.fromarray(np.ascontiguousarray(rgb)).transform(size, Image.Transform.AFFINE, coeffs,
                                                                 resample=Image.Resampling.BILINEAR)
    return np.asarray(image), matrix


# ------------------------------------------------------------------------------------------- chain + policy
def make_detector(kind: str = "auto", detector_root: str = "", det_size: int = 640, det_thresh: float = 0.5):
    """The detector to use: 'scrfd' (needs det_10g.onnx under `detector_root`), 'dlib' (installed), or 'auto':
    SCRFD when its file is present, else dlib HOG."""
    if kind not in DETECTOR_CHOICES:
        raise ValueError(f"detector {kind!r}: use one of {', '.join(DETECTOR_CHOICES)}")
    if kind == "scrfd" or (kind == "auto" and detector_root and scrfd_present(detector_root)):
        return InsightFaceDetector(detector_root, det_size=det_size, det_thresh=det_thresh)
    return DlibDetector()


def scrfd_present(detector_root: str) -> bool:
    try:
        check_detector(detector_root)
    except DetectorMissingError:
        return False
    return True


def resolve_detector_kind(kind: str, detector_root: str) -> str:
    """What 'auto' becomes for this root ('scrfd' or 'dlib'); explicit choices are checked (on the driver)."""
    if kind == "scrfd":
        check_detector(detector_root)
        return "scrfd"
    if kind == "dlib":
        dlib_model_file(SHAPE_PREDICTOR_68)
        _import_dlib()
        return "dlib"
    if kind != "auto":
        raise ValueError(f"detector {kind!r}: use one of {', '.join(DETECTOR_CHOICES)}")
    return "scrfd" if detector_root and scrfd_present(detector_root) else resolve_detector_kind("dlib", "")


class FaceFinder:
    """Any detector at a working scale, at several in-plane rotations, checked upright, in full-resolution
    coordinates.

    1. The photo is resized so its long side is at most `max_side` (huge photos: detection cost and memory) and
       at least `min_side` (small photos: HOG's window is 80 px).
    2. The detector runs upright and rotated by each of `angles` (dlib's HOG sees faces within ~20 degrees of
       upright); candidates from all passes are merged (overlapping boxes: the best score wins).
    3. With `verify`, each candidate is cut out of the working image rotated upright by its eye line (scaled so
       the face is >= 100 px) and detected again: landmarks come from that upright pass (the 68-point
       predictor was trained on upright faces), its score replaces the first one, and a candidate scoring below
       `verify_threshold` there (or not found) is dropped: upright, real faces score far above look-alikes.
    4. Boxes and landmarks are mapped back to the photo's own pixels, largest face first.
    """

    def __init__(self, detector, max_side: int = DET_MAX_SIDE, min_side: int = DET_MIN_SIDE, angles=ROTATIONS,
                 verify: bool = True, verify_threshold: float = UPRIGHT_THRESHOLD):
        self.detector = detector
        self.max_side, self.min_side, self.angles = int(max_side), int(min_side), tuple(angles)
        self.verify, self.verify_threshold = verify, float(verify_threshold)

    @classmethod
    def for_detector(cls, detector, **kwargs) -> "FaceFinder":
        """SCRFD letterboxes to det_size itself and sees rotated faces: one pass, no upscaling, no upright check."""
        if isinstance(detector, InsightFaceDetector):
            kwargs = {"angles": (), "verify": False, "min_side": 0, **kwargs}
        return cls(detector, **kwargs)

    @property
    def name(self) -> str:
        return self.detector.name

    @property
    def thresholds(self) -> dict:
        return finder_thresholds(self.detector.thresholds, self.max_side, self.min_side, self.angles,
                                 self.verify_threshold if self.verify else None)

    def describe(self) -> str:
        return f"{self.name}; thresholds {self.thresholds}"

    def working_scale(self, width: int, height: int) -> float:
        long_side = max(width, height)
        if long_side > self.max_side:
            return self.max_side / long_side
        if long_side < self.min_side:
            return self.min_side / long_side
        return 1.0

    def find(self, rgb: np.ndarray) -> list[Face]:
        """All faces of a uint8 RGB (or 2-D grey) photo in its own pixel coordinates, largest first."""
        from PIL import Image

        if rgb.ndim == 2:
            rgb = np.repeat(rgb[:, :, None], 3, axis=2)
        h, w = rgb.shape[:2]
        scale = self.working_scale(w, h)
        work = rgb
        if scale != 1.0:
            size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
            work = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(
                size, Image.Resampling.BILINEAR if scale < 1 else Image.Resampling.BICUBIC))
        to_full = np.diag([w / work.shape[1], h / work.shape[0], 1.0])
        faces = self._checked(work, self.detector.detect(work))
        if not faces and self.angles:
            candidates = []
            for angle in self.angles:
                rotated, to_rotated = rotate_image(work, angle, expand=True)
                back = np.linalg.inv(to_rotated)
                candidates += [face.mapped(back) for face in self.detector.detect(rotated)]
            faces = self._checked(work, candidates)
        return sorted((face.mapped(to_full) for face in faces), key=lambda face: face.area, reverse=True)

    def _checked(self, work: np.ndarray, candidates: list[Face]) -> list[Face]:
        faces = _merge(candidates)
        if self.verify:
            faces = _merge([f for f in (self._upright(work, face) for face in faces) if f is not None])
        return faces

    def _upright(self, work: np.ndarray, face: Face, rounds: int = 2) -> Face | None:
        """The face detected again upright (twice when the first upright pass still shows a tilt)."""
        for _ in range(rounds):
            upright = self._upright_once(work, face)
            if upright is None or abs(upright.roll_degrees - face.roll_degrees) < 3.0:
                return upright
            face = upright
        return upright

    def _upright_once(self, work: np.ndarray, face: Face) -> Face | None:
        from PIL import Image

        side = max(face.bbox[2] - face.bbox[0], face.bbox[3] - face.bbox[1])
        zoom = max(1.0, 100.0 / side)
        patch = int(math.ceil(2.5 * side * zoom))
        centre = np.array([(face.bbox[0] + face.bbox[2]) / 2, (face.bbox[1] + face.bbox[3]) / 2])
        a = math.radians(-face.roll_degrees)
        rot = zoom * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        to_patch = np.eye(3)
        to_patch[:2, :2] = rot
        to_patch[:2, 2] = patch / 2.0 - rot @ centre
        coeffs = tuple(np.linalg.inv(to_patch)[:2].ravel())
        image = Image.fromarray(np.ascontiguousarray(work)).transform(
            (patch, patch), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)
        found = self.detector.detect(np.asarray(image))
        if not found:
            return None
        middle = np.array([patch / 2.0, patch / 2.0])
        best = min(found, key=lambda f: np.hypot(*((f.bbox[:2] + f.bbox[2:]) / 2 - middle)))
        if best.score < self.verify_threshold:
            return None
        upright = best.mapped(np.linalg.inv(to_patch))
        return Face(bbox=face.bbox, score=best.score, kps=upright.kps, landmarks68=upright.landmarks68)


def finder_thresholds(detector_thresholds: dict, max_side: int, min_side: int, angles, upright) -> dict:
    out = {**detector_thresholds, "max_side": max_side, "min_side": min_side, "angles": [0.0, *angles]}
    if upright is not None:
        out["upright_score"] = upright
    return out


def describe_detector(spec) -> str:
    """What `stages.make_finder(spec).describe()` says, without loading a model (printed once per job)."""
    if spec.detector == "scrfd":
        name = scrfd_name(detector_uri(spec.detector_root))
        thresholds = finder_thresholds({"score": spec.det_thresh, "nms_iou": 0.4, "det_size": spec.det_size},
                                       spec.det_max_side, 0, (), None)
    else:
        name = dlib_name("hog")
        thresholds = finder_thresholds({"score": DLIB_THRESHOLD, "upsample": DLIB_UPSAMPLE}, spec.det_max_side,
                                       DET_MIN_SIDE,
                                       ROTATIONS, UPRIGHT_THRESHOLD)
    return f"{name}; thresholds {thresholds}"


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _merge(faces: list[Face], iou: float = 0.3) -> list[Face]:
    """Greedy non-maximum suppression by score: one face per overlapping group of boxes."""
    kept: list[Face] = []
    for face in sorted(faces, key=lambda f: f.score, reverse=True):
        if all(_iou(face.bbox, other.bbox) < iou for other in kept):
            kept.append(face)
    return kept


def align_face(rgb: np.ndarray, face, size: int) -> np.ndarray:
    """FFHQ aligned crop (size x size, uint8 RGB): the 68-point FFHQ recipe when the face has 68 landmarks,
    else the 5-point quad. `face` is a `Face` or a (5, 2) keypoint array."""
    return align_face_with_transform(rgb, face, size)[0]


def align_face_with_transform(rgb: np.ndarray, face, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(aligned crop, 3x3 photo->crop transform)."""
    from PIL import Image

    from fstrain.data.align import ffhq_align, ffhq_align_68

    image = Image.fromarray(np.ascontiguousarray(rgb))
    if isinstance(face, Face) and face.landmarks68 is not None:
        aligned, transform = ffhq_align_68(image, face.landmarks68, size)
    else:
        kps = face.kps if isinstance(face, Face) else face
        aligned, transform = ffhq_align(image, np.asarray(kps, dtype=np.float64), size)
    return np.asarray(aligned.convert("RGB"), dtype=np.uint8), transform
