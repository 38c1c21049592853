"""The three per-batch stages of batch stylization, as Ray Data `map_batches` callables over numpy batches.

    PrepareFaces (CPU):    read bytes -> decode -> detect (SCRFD or dlib, batch/faces.py) + FFHQ-align (or
                           --aligned: centre crop); one row per face with --faces all (key `<key>__face<i>`)
    StylizeActor (GPU):    encode once with E_w+ -> render every requested style with its G' (all loaded once)
    EncodeUpload (CPU):    encode images -> upload outputs and latents -> write this block's partial manifest

Every row carries `ok`, `stage`, `message`, `action` and `info` (JSON: face, timings) from stage to stage. A problem
with one input turns its row into an error row that later stages pass through; nothing raises out of a batch
for a per-image problem, so every input reaches the manifest.
"""
from __future__ import annotations

import io
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from batch import manifest
from batch.names import output_name
from fstrain.data import storage
from fstrain.data.images import IMAGE_SUFFIXES

IMAGE_EXTENSIONS = IMAGE_SUFFIXES     # the one list of image suffixes (fstrain.data.images)
FACE_CHOICES = ("largest", "all")
OUTPUT_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
MODES = ("general", "multimodal", "reference")


@dataclass
class JobSpec:
    """Everything the stages need, picklable (sent to every worker)."""
    input: str
    output: str
    job_id: str
    styles: list[str]
    generator_uris: dict[str, str]
    encoder_uri: str
    encoder_sha256: str | None = None
    mode: str = "general"
    layer: int = 7
    samples: int = 1
    psi: float = 0.7
    seed: int = 0
    reference_id: str | None = None
    root: str = ""
    aligned: bool = False
    detector: str = "dlib"              # "scrfd" or "dlib", resolved from --detector on the driver
    detector_root: str = ""
    det_size: int = 640
    det_thresh: float = 0.5
    det_max_side: int = 1280            # photos are downscaled to this long side for detection (crop: full size)
    faces: str = "largest"              # "largest": one output per photo; "all": <key>__face<i> per face
    paste_back: bool = False
    identity_uri: str = ""              # identity net scoring aligned input vs each style's output ("" = none)
    identity_kind: str = "auto"
    identity_sha256: str | None = None
    min_input_side: int = 64
    min_face_side: int = 24
    max_pixels: int = 8192 * 8192
    image_format: str = "png"
    jpeg_quality: int = 95
    size: int = 1024                    # encoder input / generator resolution (read off G' on the driver)
    thumbnail_keys: list[str] = field(default_factory=list)
    # sha256 of the models every ok record was made with: {"encoder": sha, "generators": {style: sha}}
    provenance: dict[str, Any] = field(default_factory=dict)
    thumbnail_size: int = 96
    # hybrid inversion (fstrain.stylize.refine): RefineSettings.describe(), {} = the encoder's codes as they are
    refine: dict[str, Any] = field(default_factory=dict)
    # pivotal tuning (fstrain.stylize.pivotal): PivotalSettings.describe(), {} = render by G' as it is
    pivotal: dict[str, Any] = field(default_factory=dict)
    base_generator_uri: str = ""
    base_generator_sha256: str | None = None
    base_generator_which: str = "g_ema"     # models.base_generator_which: which generator of the file
    lpips_uri: str = ""
    lpips_net: str = "vgg"
    lpips_sha256: str | None = None

    def style_column(self, index: int) -> str:
        return f"style_{index}"


def _info(row_info: str) -> dict[str, Any]:
    return json.loads(row_info) if row_info else {}


def _error_columns(n: int) -> dict[str, np.ndarray]:
    return {"ok": np.ones(n, dtype=bool), "stage": np.array([""] * n, dtype=object),
            "message": np.array([""] * n, dtype=object), "action": np.array([""] * n, dtype=object)}


def _set_error(batch: dict[str, np.ndarray], i: int, stage: str, message: str, action: str) -> None:
    batch["ok"][i] = False
    batch["stage"][i] = stage
    batch["message"][i] = message
    batch["action"][i] = action


# ------------------------------------------------------------------------------------------ stage 1: CPU prepare
def face_key(key: str, index: int) -> str:
    """Output key of face `index` of photo `key` under --faces all."""
    return f"{key}__face{index}"


def photo_key(record_key: str) -> str:
    """The input's key of a record key (`<key>__face<i>` -> `<key>`; other keys are their own)."""
    match = re.fullmatch(r"(.+)__face\d+", record_key)
    return match.group(1) if match else record_key


def make_finder(spec: JobSpec):
    """The face finder of this job (spec.detector already resolved to 'scrfd' or 'dlib' on the driver)."""
    from batch.faces import FaceFinder, make_detector

    detector = make_detector(spec.detector, spec.detector_root, det_size=spec.det_size, det_thresh=spec.det_thresh)
    return FaceFinder.for_detector(detector, max_side=spec.det_max_side)


class PrepareFaces:
    """read -> decode -> detect + align -> (N, size, size, 3) uint8 faces. One detector per actor.

    Rows out: one per photo, or with --faces all one per face found (key `<key>__face<i>`, largest first); a
    photo that fails keeps its own key and becomes one error row."""

    def __init__(self, spec: JobSpec):
        self.spec = spec
        self.thumbnail_keys = set(spec.thumbnail_keys)
        self.finder = None if spec.aligned else make_finder(spec)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows: list[dict[str, Any]] = []
        for i in range(len(batch["key"])):
            key, uri = str(batch["key"][i]), str(batch["uri"][i])
            info: dict[str, Any] = {"timings": {}}
            try:
                faces = self._prepare_one(uri, info)
            except StageError as exc:
                rows.append(dict(key=key, uri=uri, error=(exc.stage, f"{uri}: {exc.message}", exc.action),
                                 info=info))
                continue
            except Exception as exc:  # noqa: BLE001 - an unexpected per-image failure must not sink the batch
                rows.append(dict(key=key, uri=uri, info=info, error=(
                    "prepare", f"{uri}: unexpected {type(exc).__name__}: {exc}",
                    "report this input; the rest of the job is unaffected")))
                continue
            for index, (pixels, face_info) in enumerate(faces):
                row_key = face_key(key, index) if self.spec.faces == "all" else key
                rows.append(dict(key=row_key, uri=uri, image=pixels, info={**info, **face_info}))
        return self._columns(rows)

    def _columns(self, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        n, size = len(rows), self.spec.size
        out = {"key": np.array([r["key"] for r in rows], dtype=object),
               "uri": np.array([r["uri"] for r in rows], dtype=object), **_error_columns(n),
               "image": np.zeros((n, size, size, 3), dtype=np.uint8), "info": np.array([""] * n, dtype=object)}
        for i, row in enumerate(rows):
            if "error" in row:
                _set_error(out, i, *row["error"])
            else:
                out["image"][i] = row["image"]
                if row["key"] in self.thumbnail_keys or row["key"].split("__face")[0] in self.thumbnail_keys:
                    # the aligned face, for the gallery's input column
                    try:
                        storage.write_bytes(thumbnail_uri(self.spec, row["key"], "input"),
                                            thumbnail(row["image"], self.spec.thumbnail_size))
                    except storage.StorageError as exc:
                        _set_error(out, i, "upload", f"{row['uri']}: could not write its thumbnail: {exc}",
                                   "rerun with the same --job-id; it is retried")
            out["info"][i] = json.dumps(row["info"])
        return out

    def _prepare_one(self, uri: str, info: dict[str, Any]) -> list[tuple[np.ndarray, dict[str, Any]]]:
        """[(aligned face, per-face info)], one per face (one for --faces largest or --aligned)."""
        from fstrain.data.images import ImageDecodeError, decode_image_info

        timings = info["timings"]
        start = time.perf_counter()
        try:
            data = storage.read_bytes(uri)
        except storage.StorageError as exc:
            if exc.transient:  # the connection or the service failed after every retry, not the photo
                raise StageError("read", f"could not read: {exc}", "rerun with the same --job-id; it is retried") \
                    from exc
            raise StageError("read", f"could not read ({exc})", "check the object exists and is readable") from exc
        timings["read"] = time.perf_counter() - start

        start = time.perf_counter()
        try:
            decoded = decode_image_info(data, uri, max_pixels=self.spec.max_pixels)
        except ImageDecodeError as exc:
            raise StageError("decode", exc.reason, "replace the file with a valid JPEG/PNG/WebP photo") from exc
        image = decoded.image
        if decoded.conversions:
            info["conversions"] = decoded.conversions
        width, height = image.size
        if min(width, height) < self.spec.min_input_side:
            raise StageError("decode", f"image too small ({width}x{height}; need at least "
                                       f"{self.spec.min_input_side} px on the short side)",
                             "use a larger photo of the face")
        timings["decode"] = time.perf_counter() - start

        rgb = np.asarray(image)
        if self.spec.aligned:
            start = time.perf_counter()
            face = centre_square(rgb, self.spec.size)
            timings["align"] = time.perf_counter() - start
            return [(face, {})]
        return self._detect_and_align(rgb, info)

    def _detect_and_align(self, rgb: np.ndarray, info: dict[str, Any]) -> list[tuple[np.ndarray, dict[str, Any]]]:
        from batch.faces import align_face_with_transform

        timings = info["timings"]
        start = time.perf_counter()
        faces = self.finder.find(rgb)
        timings["detect"] = time.perf_counter() - start
        info["faces_found"] = len(faces)
        if not faces:
            raise StageError("detect", f"no face found by {self.finder.name} (thresholds "
                                       f"{json.dumps(self.finder.thresholds)})",
                             "use a photo with a clearly visible face, or pass --aligned if the inputs are "
                             "already aligned crops")
        info["face"] = {**faces[0].to_json(), "detector": self.finder.name}
        large = [face for face in faces
                 if min(face.bbox[2] - face.bbox[0], face.bbox[3] - face.bbox[1]) >= self.spec.min_face_side]
        if not large:
            side = min(faces[0].bbox[2] - faces[0].bbox[0], faces[0].bbox[3] - faces[0].bbox[1])
            raise StageError("detect", f"face too small ({side:.0f} px; need {self.spec.min_face_side})",
                             "use a photo where the face is larger")
        chosen = large if self.spec.faces == "all" else large[:1]   # largest first
        start = time.perf_counter()
        results = []
        for index, face in enumerate(chosen):
            pixels, transform = align_face_with_transform(rgb, face, self.spec.size)
            face_info = {"face": {**face.to_json(), "detector": self.finder.name, "index": index},
                         # photo -> crop map (crop side = spec.size): paste-back warps the outputs through it
                         "transform": np.asarray(transform).round(8).tolist()}
            results.append((pixels, face_info))
        timings["align"] = (time.perf_counter() - start) / len(chosen)
        return results


class StageError(Exception):
    def __init__(self, stage: str, message: str, action: str):
        super().__init__(message)
        self.stage, self.message, self.action = stage, message, action


def centre_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """An already aligned crop: centre square, resized to size x size (Lanczos)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(np.ascontiguousarray(rgb[top:top + side, left:left + side]))
    if crop.size != (size, size):
        crop = crop.resize((size, size), Image.LANCZOS)
    return np.asarray(crop)


# ------------------------------------------------------------------------------------------ stage 2: GPU stylize
def load_models(spec: JobSpec, device: str):
    """The W+ encoder and every style's G' (with the base G and LPIPS, loaded once, when refining codes or tuning
    pivots) as a `fstrain.stylize.Stylizer` on `device`."""
    from fstrain.models.hub import encoder_at, generator_at
    from fstrain.stylize import (CodeRefiner, PivotalSettings, PivotalTuner, RefineSettings, Stylizer,
                                 load_base_models)

    # The hub's loaders: fetched once per machine (locked, pinned), format detected, loaded strictly.
    encoder = encoder_at(spec.encoder_uri, "w+", spec.encoder_sha256, device)
    generators, latent_avgs = {}, {}
    for style in spec.styles:
        loaded = generator_at(spec.generator_uris[style], load_discriminator=False)
        generators[style] = loaded.generator.to(device).eval().requires_grad_(False)
        latent_avgs[style] = loaded.latent_avg.to(device)
    refiner = tuner = None
    if spec.refine or spec.pivotal:
        base_generator, lpips = load_base_models(
            base_generator_uri=spec.base_generator_uri, base_generator_sha256=spec.base_generator_sha256,
            base_generator_which=spec.base_generator_which,
            lpips_uri=spec.lpips_uri, lpips_net=spec.lpips_net, lpips_sha256=spec.lpips_sha256, device=device)
        if spec.refine:
            refiner = CodeRefiner(base_generator, lpips, RefineSettings(**spec.refine))
        if spec.pivotal:
            tuner = PivotalTuner(base_generator, lpips, PivotalSettings(**spec.pivotal))
    return Stylizer(encoder, generators, latent_avgs, refiner, tuner)


class StylizeActor:
    """Encode each face once with E_w+, render every style with its G'. Models load once per actor."""

    def __init__(self, spec: JobSpec):
        import torch

        self.spec = spec
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.stylizer = load_models(spec, self.device)
        self.worker = {"device": self.device, "pid": os.getpid()}
        try:
            import ray

            if ray.is_initialized():
                self.worker.update(node_id=ray.get_runtime_context().get_node_id(),
                                   gpu_ids=[str(g) for g in ray.get_gpu_ids()])
        except Exception:  # noqa: BLE001 - placement info is diagnostic only
            pass
        self.identity = None
        if spec.identity_uri:
            from fstrain.models.hub import identity_at

            self.identity = identity_at(spec.identity_uri, spec.identity_kind, spec.identity_sha256, self.device)
        self.references = {}
        if spec.mode == "reference":
            from fstrain.stylize import ReferenceStore

            store = ReferenceStore(spec.root)
            self.references = {style: store.load(style, spec.reference_id) for style in spec.styles}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        n, size, spec = len(batch["key"]), self.spec.size, self.spec
        samples = self.samples_per_style
        out = dict(batch)
        out["ok"] = batch["ok"].copy()
        out["stage"], out["message"], out["action"] = batch["stage"].copy(), batch["message"].copy(), \
            batch["action"].copy()
        out["info"] = batch["info"].copy()
        out["w_plus"] = np.zeros((n, self.stylizer.n_latent, self._style_dim()), dtype=np.float32)
        for index, _ in enumerate(spec.styles):
            out[spec.style_column(index)] = np.zeros((n, samples, size, size, 3), dtype=np.uint8)
            out[f"mix_{index}"] = np.zeros((n, samples if spec.mode == "multimodal" else 1,
                                            self.stylizer.n_latent, self._style_dim()), dtype=np.float32)
        del out["image"]  # the aligned faces are not needed downstream, only their thumbnails
        rows = np.flatnonzero(batch["ok"])
        if len(rows) == 0:
            return out
        start = time.perf_counter()
        from kernels.ops import announcements   # the kernel routing lines this process met

        try:
            from fstrain.stylize.images import from_uint8, to_uint8

            faces = from_uint8(batch["image"][rows]).to(self.device)
            w_plus = self.stylizer.encode(faces)
            out["w_plus"][rows] = w_plus.float().cpu().numpy()
            pivots = self.stylizer.pivots(faces, w_plus)     # None unless pivotal tuning is on
            similarity = {}
            input_embedding = self.identity(faces) if self.identity is not None else None
            for index, style in enumerate(spec.styles):
                images, codes = self._render(w_plus, style, pivots)
                if input_embedding is not None:   # cosine of identity embeddings: aligned input vs output
                    similarity[style] = (input_embedding * self.identity(images[:, 0])).sum(1).float().cpu()
                out[spec.style_column(index)][rows] = to_uint8(images.flatten(0, 1)).reshape(
                    len(rows), samples, size, size, 3)
                if codes is not None:
                    out[f"mix_{index}"][rows] = codes.float().cpu().numpy()
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory: these rows fail, the job goes on
            for i in rows:
                _set_error(out, i, "stylize", f"{batch['uri'][i]}: {type(exc).__name__}: {exc}",
                           "rerun with the same --job-id (a smaller --batch-size if out of memory)")
            return out
        if self.device == "cuda":
            torch.cuda.synchronize()
        per_row = (time.perf_counter() - start) / len(rows)
        for position, i in enumerate(rows):
            info = _info(out["info"][i])
            info["timings"]["stylize"] = per_row
            info["worker"] = {**self.worker, "kernels": announcements()}   # the driver prints these once per job
            if similarity:
                info["identity"] = {"net": spec.identity_uri, "kind": self.identity.kind, "similarity": {
                    style: round(float(values[position]), 4) for style, values in similarity.items()}}
            out["info"][i] = json.dumps(info)
        return out

    @property
    def samples_per_style(self) -> int:
        return self.spec.samples if self.spec.mode == "multimodal" else 1

    def _style_dim(self) -> int:
        return next(iter(self.stylizer.generators.values())).style_dim

    def _render(self, w_plus, style: str, pivots=None):
        """(images (N, S, 3, H, W), mixing codes (N, S, L, D) or None) for one style; `pivots`: one weight change
        per face (fstrain.stylize.pivotal) or None."""
        spec = self.spec
        if spec.mode == "general":
            return self.stylizer.general(w_plus, style, pivots).unsqueeze(1), None
        if spec.mode == "multimodal":
            codes = self.stylizer.multimodal_codes(w_plus, style, spec.layer, spec.psi, spec.samples, spec.seed)
            return self.stylizer.render_samples(codes, style, pivots), codes
        codes = self.stylizer.reference_codes(w_plus, self.references[style].w, spec.layer)
        return self.stylizer.render(codes, style, pivots).unsqueeze(1), codes.unsqueeze(1)


# ------------------------------------------------------------------------------------ stage 3: CPU encode + upload
# Output names come from batch/names.py: the input's relative path, escaped only where a store needs it.
def output_uri(spec: JobSpec, style: str, key: str, sample: int | None) -> str:
    name = output_name(key) if sample is None else f"{output_name(key)}_{sample}"
    return storage.join(spec.output, style, f"{name}.{spec.image_format}")


def latents_uri(spec: JobSpec, key: str) -> str:
    return storage.join(spec.output, "latents", f"{output_name(key)}.npz")


def thumbnail_uri(spec: JobSpec, key: str, column: str) -> str:
    return storage.join(spec.output, "_gallery", column, f"{output_name(key)}.jpg")


def encode_image(pixels: np.ndarray, image_format: str, quality: int = 95) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    pil_format = OUTPUT_FORMATS[image_format]
    kwargs = {"quality": quality} if pil_format in ("JPEG", "WEBP") else {}
    Image.fromarray(pixels, "RGB").save(buffer, format=pil_format, **kwargs)
    return buffer.getvalue()


def thumbnail(pixels: np.ndarray, size: int) -> bytes:
    from PIL import Image

    image = Image.fromarray(pixels, "RGB")
    image.thumbnail((size, size), Image.LANCZOS)
    return encode_image(np.asarray(image), "jpg", 90)


class EncodeUpload:
    """Encode and upload every output of each ok row, then write the block's partial manifest."""

    def __init__(self, spec: JobSpec):
        self.spec = spec
        self.thumbnail_keys = set(spec.thumbnail_keys)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.spec
        records: list[manifest.Record] = []
        for i in range(len(batch["key"])):
            key, uri = str(batch["key"][i]), str(batch["uri"][i])
            info = _info(batch["info"][i])
            timings = info.get("timings", {})
            if batch["ok"][i]:
                start = time.perf_counter()
                try:
                    outputs = self._upload_one(batch, i, key, info)
                except Exception as exc:  # noqa: BLE001 - one failed upload is this input's error
                    record = manifest.error_record(key, uri, "upload", f"{type(exc).__name__}: {exc}",
                                                   "check write access to the output; rerun with the same --job-id",
                                                   spec.job_id, timings)
                else:
                    timings["upload"] = time.perf_counter() - start
                    record = manifest.Record(key=key, input=uri, status=manifest.OK, outputs=outputs,
                                             provenance=spec.provenance,
                                             face=info.get("face", {}), timings=timings, job_id=spec.job_id,
                                             finished_at=time.time())
            else:
                record = manifest.Record(key=key, input=uri, status=manifest.ERROR, stage=str(batch["stage"][i]),
                                         message=str(batch["message"][i]), action=str(batch["action"][i]),
                                         face=info.get("face", {}), timings=timings, job_id=spec.job_id,
                                         finished_at=time.time())
            record.worker = info.get("worker", {})
            if "faces_found" in info:
                record.face = {**record.face, "faces_found": info["faces_found"]}
            if info.get("conversions"):
                record.face = {**record.face, "conversions": info["conversions"]}
            if record.status == manifest.OK and info.get("identity"):
                record.face = {**record.face, "identity": info["identity"]}
            records.append(record)
        manifest.write_part(spec.output, spec.job_id, records)
        return {"key": batch["key"], "status": np.array([r.status for r in records], dtype=object),
                "record": np.array([json.dumps(r.to_json()) for r in records], dtype=object)}

    def _upload_one(self, batch: dict[str, np.ndarray], i: int, key: str, info: dict[str, Any]) -> dict[str, Any]:
        spec = self.spec
        outputs: dict[str, Any] = {}
        latents = {"w_plus": batch["w_plus"][i]}
        multimodal = spec.mode == "multimodal"
        for index, style in enumerate(spec.styles):
            images = batch[spec.style_column(index)][i]
            uris = []
            for sample, pixels in enumerate(images):
                uri = output_uri(spec, style, key, sample if multimodal else None)
                storage.write_bytes(uri, encode_image(pixels, spec.image_format, spec.jpeg_quality))
                uris.append(uri)
            outputs[style] = uris if multimodal else uris[0]
            if spec.mode != "general":
                latents[f"mix_{style}"] = batch[f"mix_{index}"][i]
            if key in self.thumbnail_keys:
                storage.write_bytes(thumbnail_uri(spec, key, style), thumbnail(images[0], spec.thumbnail_size))
        if spec.paste_back and not spec.aligned:
            outputs["pasted"] = self._paste_back(batch, i, key, info)
        buffer = io.BytesIO()
        np.savez(buffer, **latents, meta=np.array(json.dumps(
            {"key": key, "mode": spec.mode, "styles": spec.styles, "layer": spec.layer, "samples": spec.samples,
             "psi": spec.psi, "seed": spec.seed, "reference_id": spec.reference_id,
             "refined": spec.refine or None, "pivotal": spec.pivotal or None})))
        outputs["latents"] = latents_uri(spec, key)
        storage.write_bytes(outputs["latents"], buffer.getvalue())
        return outputs

    def _paste_back(self, batch: dict[str, np.ndarray], i: int, key: str, info: dict[str, Any]) -> dict[str, str]:
        """Each style's face warped back into the full-resolution photo (feathered), beside the face crop as
        `<name>.pasted.<format>`. The photo is read again here rather than carried through the GPU stage."""
        from PIL import Image

        from fstrain.data.align import paste_back
        from fstrain.data.images import decode_image

        spec = self.spec
        uri = str(batch["uri"][i])
        photo = decode_image(storage.read_bytes(uri), uri, max_pixels=spec.max_pixels)
        transform = np.asarray(info["transform"], dtype=np.float64)   # the row's info, parsed once by the caller
        written = {}
        for index, style in enumerate(spec.styles):
            face = Image.fromarray(batch[spec.style_column(index)][i][0])
            pasted = paste_back(photo, face, transform, spec.size)
            crop_uri = output_uri(spec, style, key, None)
            target = f"{crop_uri[:-len(spec.image_format) - 1]}.pasted.{spec.image_format}"
            storage.write_bytes(target, encode_image(np.asarray(pasted), spec.image_format, spec.jpeg_quality))
            written[style] = target
        return written
