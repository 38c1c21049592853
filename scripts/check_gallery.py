"""Open a batch gallery in a real headless Chromium and check what a person sees.

    python scripts/check_gallery.py [--out DIR] [--screenshot docs/gallery.png] [--gallery PATH/gallery.html]

Without --gallery it first builds a small one: synthetic aligned photos of the built-in portrait world run through
the batch stages in this process (PrepareFaces -> StylizeActor -> EncodeUpload, no Ray) with tiny RANDOMLY
initialised models (fstrain.models.init; two styles from two seeds), and the world's render of each photo's
identity in the cartoon and anime domains as ground truth. The pictures therefore show the gallery, not a trained
style. The page is served over HTTP from a folder it was not written in (a copy), so relative links are what is
tested. Checks: every <img> loaded (naturalWidth > 0) and is displayed at least 128 px wide, the columns are
labelled, and clicking an error header sorts the rows. Writes a full-page screenshot. Exit 0 when all hold, 1 when
one fails (each failure on its own line), 2 when Chromium or playwright is missing.

Needs: Chromium (`apt-get install chromium`) and playwright (`pip install playwright`; the system Chromium is
used, `playwright install` is not needed).
"""
from __future__ import annotations

import argparse
import functools
import json
import http.server
import shutil
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STYLES = ("cartoon", "anime")
PHOTOS = 5
MIN_DISPLAY_PX = 128


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def build_sample_gallery(folder: Path) -> Path:
    """A small real batch job's gallery under `folder` (see the module doc); returns gallery.html."""
    import numpy as np

    from batch import manifest, stages
    from batch.gallery import write_gallery
    from batch.stylize import list_inputs
    from fstrain.data.synthetic import generate
    from fstrain.models.init import init_models

    folder.mkdir(parents=True, exist_ok=True)
    tiny = dict(size=32, n_mlp=2, channel_multiplier=1, channel_max=32, encoder_depth="tiny", identity="tiny",
                lpips_net="alex")
    models = {style: init_models(folder / "models" / style, seed=seed, **tiny)["models"]
              for seed, style in enumerate(STYLES)}
    photos, truth = folder / "photos", folder / "truth"
    for domain, dest in [("photo", photos)] + [(style, truth / style) for style in STYLES]:
        dest.mkdir(parents=True, exist_ok=True)
        for key, image, _ in generate(domain, PHOTOS, 64, seed=7):
            image.save(dest / f"{key}.png")
    items = list_inputs(str(photos))
    spec = stages.JobSpec(input=str(photos), output=str(folder / "stylized"), job_id="check-gallery",
                          styles=list(STYLES), generator_uris={s: models[s]["base_generator"]["uri"] for s in STYLES},
                          encoder_uri=models[STYLES[0]]["encoder_wplus"]["uri"], aligned=True, min_input_side=32,
                          size=32, thumbnail_keys=[item["key"] for item in items],
                          identity_uri=models[STYLES[0]]["identity"]["uri"])
    batch = {"key": np.array([i["key"] for i in items], dtype=object),
             "uri": np.array([i["uri"] for i in items], dtype=object)}
    result = stages.EncodeUpload(spec)(stages.StylizeActor(spec)(stages.PrepareFaces(spec)(batch)))
    records = [manifest.Record.from_json(json.loads(row)) for row in result["record"]]
    broken = photos / "not-a-photo.png"           # one error row, as a real job has
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    records.append(manifest.error_record(broken.name, str(broken), "decode", "truncated PNG",
                                         "replace the file with a valid JPEG/PNG/WebP photo", spec.job_id))
    return Path(write_gallery(spec, records, truth=str(truth))["html"])


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:       # one line per request would bury the result
        pass


def check(gallery_html: Path, screenshot: Path) -> dict:
    """Serve a copy of the gallery's folder over HTTP, open it in headless Chromium, measure, screenshot."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="gallery-moved-") as moved:
        served = Path(moved) / "served"
        shutil.copytree(gallery_html.parent, served)              # the folder moved: links must be relative
        handler = functools.partial(_QuietHandler, directory=str(served))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1200, "height": 800})
                page.goto(f"http://127.0.0.1:{server.server_address[1]}/{gallery_html.name}", wait_until="load")
                images = page.eval_on_selector_all("img", """els => els.map(e => ({src: e.getAttribute('src'),
                    natural: e.naturalWidth, shown: e.getBoundingClientRect().width, complete: e.complete}))""")
                headers = page.eval_on_selector_all("#gallery thead th", "els => els.map(e => e.textContent)")
                sortable = page.eval_on_selector_all("#gallery thead th[data-sort]", "els => els.length")
                order_before = page.eval_on_selector_all("#gallery tbody tr th", "els => els.map(e => e.textContent)")
                page.click("#gallery thead th:last-child")
                order_after = page.eval_on_selector_all("#gallery tbody tr th", "els => els.map(e => e.textContent)")
                values_after = page.eval_on_selector_all(
                    "#gallery tbody tr td:last-child", "els => els.map(e => parseFloat(e.dataset.value))")
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
                browser.close()
        finally:
            server.shutdown()
    return {"images": len(images), "broken": [i["src"] for i in images if not i["complete"] or i["natural"] <= 0],
            "min_width": min((i["shown"] for i in images), default=0), "headers": headers, "sortable": sortable,
            "order_before": order_before, "order_after": order_after, "sorted_values": values_after}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/check_gallery.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="where to build the sample job (default: a temporary folder)")
    parser.add_argument("--gallery", default=None, help="check this gallery.html instead of building one")
    parser.add_argument("--screenshot", default=str(REPO / "docs" / "gallery.png"))
    args = parser.parse_args(argv)
    if chromium_path() is None:
        print("error: no Chromium found; install it (apt-get install chromium)", file=sys.stderr)
        return 2
    try:
        import playwright  # noqa: F401
    except ImportError:
        print("error: playwright is not installed; pip install playwright (the system Chromium is used)",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="check-gallery-") as tmp:
        gallery = Path(args.gallery) if args.gallery else build_sample_gallery(Path(args.out or tmp))
        report = check(gallery, Path(args.screenshot))
    failures = []
    if report["images"] == 0:
        failures.append("no <img> on the page")
    failures += [f"image did not load: {src}" for src in report["broken"]]
    if report["min_width"] < MIN_DISPLAY_PX:
        failures.append(f"a thumbnail is shown {report['min_width']:.0f} px wide (< {MIN_DISPLAY_PX})")
    if not report["headers"] or report["headers"][1] != "input (aligned)":
        failures.append(f"columns not labelled as expected: {report['headers']}")
    values = [v for v in report["sorted_values"] if v == v]        # NaN (no value) sorts last
    if report["sortable"] and values != sorted(values):
        failures.append(f"clicking the last header did not sort its column: {report['sorted_values']}")
    print(f"{report['images']} thumbnails loaded, smallest shown {report['min_width']:.0f} px wide; columns: "
          f"{' | '.join(report['headers'])}; screenshot {args.screenshot}")
    for line in failures:
        print(f"FAIL: {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
