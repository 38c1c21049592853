"""batch.gallery on a hand-made job (no Ray, no models): relative links only, labelled columns (input, each style,
ground truth where known), thumbnails shown at >= 128 px with their files kept as they are, sortable error columns,
and a rerun that reuses the contact sheet instead of downloading every thumbnail again. The browser check
(scripts/check_gallery.py) runs here when Chromium and playwright are installed, else it is skipped."""
from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from batch import manifest
from batch.gallery import DISPLAY_MIN, write_gallery
from batch.stages import JobSpec, encode_image, output_uri, thumbnail, thumbnail_uri
from fstrain.data import storage

STYLES = ["cartoon", "anime"]
SIZE = 32
REPO = Path(__file__).resolve().parents[1]


def _picture(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def _job(tmp_path: Path, keys=("a.png", "sub/b c#1.png", "z.png")) -> tuple[JobSpec, list[manifest.Record], str]:
    out = str(tmp_path / "out")
    spec = JobSpec(input=str(tmp_path / "photos"), output=out, job_id="g1", styles=STYLES, size=SIZE,
                   generator_uris={}, encoder_uri="",
                   thumbnail_keys=list(keys))
    truth = str(tmp_path / "truth")
    records = []
    for n, key in enumerate(keys):
        storage.write_bytes(thumbnail_uri(spec, key, "input"), thumbnail(_picture(100 + n), spec.thumbnail_size))
        outputs = {}
        for s, style in enumerate(STYLES):
            pixels = _picture(10 * n + s)
            outputs[style] = output_uri(spec, style, key, None)
            storage.write_bytes(outputs[style], encode_image(pixels, "png"))
            storage.write_bytes(thumbnail_uri(spec, key, style), thumbnail(pixels, spec.thumbnail_size))
            if style == "cartoon":          # ground truth known for one style only
                storage.write_bytes(storage.join(truth, style, key), encode_image(255 - pixels if n else pixels, "png"))
        records.append(manifest.Record(key=key, input=f"{spec.input}/{key}", status="ok", outputs=outputs,
                                       face={"identity": {"similarity": {"cartoon": 0.9 - 0.2 * n, "anime": 0.5}}}))
    records.append(manifest.error_record("bad.png", f"{spec.input}/bad.png", "decode", "not an image", "replace it"))
    return spec, records, truth


def test_gallery_links_are_relative_columns_labelled_and_thumbnails_shown_large(tmp_path):
    spec, records, truth = _job(tmp_path)
    written = write_gallery(spec, records, truth=truth)
    page = Path(written["html"]).read_text()
    headers = re.findall(r"<th[^>]*>([^<]+)</th>", page.split("<tbody>")[0])
    assert headers == ["key", "input (aligned)", "cartoon", "anime", "cartoon (ground truth)",
                       "identity distance (mean over styles)", "error vs ground truth (mean abs, 0-255)"]
    # Every link and picture is relative to the page and resolves inside the output folder.
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert len(re.findall(r"<img ", page)) == 3 * 4 and links
    for link in links:
        assert not re.match(r"^([a-z]+:|/)", link), link
        from urllib.parse import unquote
        assert (Path(spec.output) / unquote(link)).is_file(), link
    # Shown at >= 128 px, enlarged by a whole factor without smoothing; the files keep their 32 px.
    widths = {int(w) for w in re.findall(r'<img [^>]*width="(\d+)"', page)}
    assert widths == {128} and "image-rendering:pixelated" in page
    assert Image.open(thumbnail_uri(spec, "a.png", "cartoon")).size == (SIZE, SIZE)
    # Sortable errors: identity distance 1 - mean similarity, pixel error vs truth (0 for the exact one).
    values = re.findall(r"<td data-value='([^']*)'>", page)
    assert [float(v) for v in values[0::2]] == [0.3, 0.4, 0.5]
    assert float(values[1]) == 0.0 and float(values[3]) > 50 and float(values[5]) > 50
    assert "th[data-sort]" in page and "addEventListener('click'" in page
    assert "bad.png" in page.split("<h2>Errors")[1]


def test_truth_folder_without_matching_pictures_is_said_not_silently_dropped(tmp_path, capsys):
    spec, records, _ = _job(tmp_path)
    page = Path(write_gallery(spec, records, truth=str(tmp_path / "elsewhere"))["html"]).read_text()
    assert "ground truth" not in page
    assert f"--truth {tmp_path / 'elsewhere'}: no picture <style>/<key> there" in capsys.readouterr().err


def test_rerun_reuses_the_contact_sheet_instead_of_downloading_thumbnails(tmp_path, monkeypatch):
    spec, records, _ = _job(tmp_path)
    sheet = write_gallery(spec, records)["contact_sheet"]
    first = np.asarray(Image.open(sheet))
    reads = []
    real_read = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda uri: reads.append(uri) or real_read(uri))

    write_gallery(spec, records, remade=set())                      # a rerun that carried every input over
    assert [u for u in reads if u.endswith(".jpg")] == []
    assert np.array_equal(np.asarray(Image.open(sheet)), first)

    new = _picture(999)                                             # one input made again by this run
    storage.write_bytes(thumbnail_uri(spec, "z.png", "anime"), thumbnail(new, spec.thumbnail_size))
    reads.clear()
    write_gallery(spec, records, remade={"z.png"})
    assert sorted({u.split("/_gallery/")[1].split("/")[1] for u in reads if u.endswith(".jpg")}) == ["z.png.jpg"]
    reused = np.asarray(Image.open(sheet))
    assert not np.array_equal(reused, first)
    write_gallery(spec, records, remade=None)                       # the sheet made from every thumbnail
    assert np.array_equal(reused, np.asarray(Image.open(sheet)))


def _check_gallery_script():
    spec = importlib.util.spec_from_file_location("check_gallery", REPO / "scripts" / "check_gallery.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                    reason="no Chromium (apt-get install chromium)")
def test_gallery_in_headless_chromium(tmp_path):
    pytest.importorskip("playwright", reason="pip install playwright (uses the system Chromium)")
    check = _check_gallery_script()
    report = check.check(check.build_sample_gallery(tmp_path / "gallery"), tmp_path / "shot.png")
    assert report["images"] >= 4 and report["broken"] == [] and report["min_width"] >= DISPLAY_MIN
    assert report["headers"][:2] == ["key", "input (aligned)"] and (tmp_path / "shot.png").stat().st_size > 0
