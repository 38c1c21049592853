"""fstrain.data.images (robust decoding) and `python -m fstrain.ingest` on local folders and S3 prefixes."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fstrain import ingest
from fstrain.cli import run_command
from fstrain.data import shards, storage
from fstrain.data.images import ImageDecodeError, center_crop_resize, decode_image, decode_image_info

rng = np.random.default_rng(0)


def encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def portrait(width: int = 48, height: int = 40, seed: int = 0) -> Image.Image:
    """A simple face-like RGB picture with noise (so truncation hits pixel data)."""
    r = np.random.default_rng(seed)
    arr = r.integers(0, 256, (height, width, 3), dtype=np.uint8)
    arr[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = (220, 180, 150)
    return Image.fromarray(arr)


def exif_rotated_jpeg() -> bytes:
    img = portrait(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    return encoded(img, "JPEG", exif=exif.tobytes())


def odd_files() -> dict[str, bytes]:
    """name -> content for every kind of input the issue lists, plus good files."""
    rgba = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 16, 32))
    palette_t = Image.new("P", (32, 32), 0)
    palette_t.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette_t.paste(1, (0, 0, 16, 32))
    frames = [portrait(seed=1), portrait(seed=2)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    noisy_jpeg = encoded(portrait(64, 64, seed=3), "JPEG", quality=95)
    return {
        "good.png": encoded(portrait(seed=4), "PNG"),
        "sub/dir/good2.jpg": encoded(portrait(seed=5), "JPEG"),
        "gray.png": encoded(portrait(seed=6).convert("L"), "PNG"),
        "palette.png": encoded(portrait(seed=7).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "palette_alpha.png": encoded(palette_t, "PNG", transparency=0),
        "alpha.png": encoded(rgba, "PNG"),
        "cmyk.jpg": encoded(portrait(seed=8).convert("CMYK"), "JPEG"),
        "gray16.png": encoded(Image.fromarray((np.arange(32 * 32, dtype=np.uint16) * 60).reshape(32, 32)), "PNG"),
        "float.tif": encoded(Image.fromarray(np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)), "TIFF"),
        "rotated.jpg": exif_rotated_jpeg(),
        "animated.gif": gif.getvalue(),
        "with_meta.png": encoded(portrait(seed=9), "PNG"),
        "with_meta.json": json.dumps({"landmarks": [[1, 2]] * 5, "domain": "cartoon"}).encode(),
        # Bad ones:
        "zero.png": b"",
        "truncated.jpg": noisy_jpeg[: len(noisy_jpeg) // 2],
        "notes.txt": b"these are not pixels",
        "fake.png": bytes(rng.integers(0, 256, 500, dtype=np.uint8)),
        "huge.png": encoded(Image.new("L", (1100, 1000)), "PNG"),   # over --max-pixels 1,000,000 below
        ".DS_Store": b"\x00\x01",
    }


GOOD = {"good.png", "sub/dir/good2.jpg", "gray.png", "palette.png", "palette_alpha.png", "alpha.png", "cmyk.jpg",
        "gray16.png", "float.tif", "rotated.jpg", "animated.gif", "with_meta.png"}
BAD = {
    "zero.png": "empty file (0 bytes)",
    "truncated.jpg": "truncated or corrupt image data",
    "notes.txt": "not an image",
    "fake.png": "not an image",
    "huge.png": "over the limit of 1,000,000",
    ".DS_Store": "hidden file",
}


# ------------------------------------------------------------------------------------------------ decoding
def test_decode_conversions():
    files = odd_files()
    rotated = decode_image_info(files["rotated.jpg"], "rotated.jpg")
    assert rotated.original_size == (40, 20) and rotated.image.size == (20, 40)
    assert rotated.conversions == ["exif orientation 6 applied"]
    alpha = decode_image_info(files["alpha.png"], "alpha.png")
    px = np.asarray(alpha.image)
    assert alpha.image.mode == "RGB" and tuple(px[0, 0]) == (0, 0, 255) and tuple(px[0, 31]) == (255, 255, 255)
    assert alpha.conversions == ["RGBA alpha composited on white"]
    pal = decode_image_info(files["palette_alpha.png"], "p")
    assert tuple(np.asarray(pal.image)[0, 0]) == (10, 200, 30) and tuple(np.asarray(pal.image)[0, 31]) == (255,) * 3
    g16 = decode_image_info(files["gray16.png"], "g16")
    assert g16.original_mode.startswith("I") and g16.conversions[0].endswith("scaled to 8-bit")
    arr16 = np.asarray(g16.image)[..., 0].astype(int)
    expected = np.rint((np.arange(32 * 32) * 60).reshape(32, 32) / 65535 * 255)
    assert np.abs(arr16 - expected).max() <= 1
    flt = np.asarray(decode_image(files["float.tif"], "f"))
    assert flt[0, 0, 0] == 0 and flt[-1, -1, 0] == 255
    cmyk = decode_image_info(files["cmyk.jpg"], "c")
    assert cmyk.original_mode == "CMYK" and cmyk.image.mode == "RGB" and "CMYK->RGB" in cmyk.conversions
    assert decode_image_info(files["animated.gif"], "a").conversions[0] == "first frame of 2"
    assert decode_image_info(files["good.png"], "good.png").conversions == []
    assert decode_image_info(files["gray.png"], "g").conversions == ["grayscale->RGB"]


@pytest.mark.parametrize("name", sorted(n for n in BAD if n != ".DS_Store"))
def test_decode_errors_name_the_file(name):
    with pytest.raises(ImageDecodeError) as info:
        decode_image(odd_files()[name], name, max_pixels=1_000_000)
    assert str(info.value).startswith(f"{name}: ") and BAD[name] in str(info.value)


def test_center_crop_keeps_the_middle_square_pixel_for_pixel():
    tall = np.random.default_rng(1).integers(0, 256, (37, 30, 3), dtype=np.uint8)   # 30 wide, 37 high
    assert np.array_equal(np.asarray(center_crop_resize(Image.fromarray(tall), 30)), tall[3:33])
    wide = np.random.default_rng(2).integers(0, 256, (20, 27, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(center_crop_resize(Image.fromarray(wide), 20)), wide[:, 3:23])
    expected = Image.fromarray(wide[:, 3:23]).resize((8, 8), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(center_crop_resize(Image.fromarray(wide), 8)), np.asarray(expected))


# --------------------------------------------------------------------------------------------------- ingest
def make_source(root: str) -> None:
    for name, data in odd_files().items():
        storage.write_bytes(storage.join(root, name), data)


def check_dataset(dest: str, size: int) -> dict[str, dict]:
    prefix = storage.join(dest, "datasets", "cartoon")
    samples = [shards.decode_sample(s) for s in shards.read_samples(prefix, required=("png", "json"))]
    by_source = {s["json"]["source_key"]: s for s in samples}
    assert set(by_source) == GOOD
    for s in samples:
        img = Image.open(io.BytesIO(s["png"]))
        assert img.format == "PNG" and img.mode == "RGB" and img.size == (size, size)
        assert "." not in s["__key__"] and s["json"]["style"] == "cartoon" and s["json"]["size"] == size
    assert by_source["sub/dir/good2.jpg"]["__key__"] == "sub__dir__good2"
    assert by_source["rotated.jpg"]["json"]["original_size"] == [40, 20]
    assert "exif orientation 6 applied" in by_source["rotated.jpg"]["json"]["conversions"]
    assert by_source["cmyk.jpg"]["json"]["original_mode"] == "CMYK"
    assert by_source["with_meta.png"]["json"]["source_meta"]["domain"] == "cartoon"
    report = storage.read_json(storage.join(prefix, "ingest_report.json"))
    assert report["ok"] == len(GOOD) and {s["name"] for s in report["skipped"]} == set(BAD)
    # The stored pixels are the centred square cut by hand (48x40: columns 4..43, every row), Lanczos-resized.
    source = np.asarray(portrait(seed=4))
    expected = np.asarray(Image.fromarray(source[:, 4:44]).resize((size, size), Image.Resampling.LANCZOS))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(by_source["good.png"]["png"]))), expected)
    return by_source


def assert_summary(output: str) -> None:
    assert f"{len(GOOD)} ok, {len(BAD)} skipped" in output
    for name, reason in BAD.items():
        assert any(line.startswith(f"  skipped {name}: ") and reason in line for line in output.splitlines()), name


def test_ingest_local_folder_reports_bad_files_and_ingests_the_rest(tmp_path, capsys):
    src, dest = str(tmp_path / "src"), str(tmp_path / "root")
    make_source(src)
    code = ingest.main([src, dest, "--style", "cartoon", "--size", "32", "--samples-per-shard", "5",
                        "--max-pixels", "1000000", "--no-progress"])
    assert code == 0
    assert_summary(capsys.readouterr().out)
    check_dataset(dest, 32)
    assert len(shards.list_shards(storage.join(dest, "datasets", "cartoon"))) == 3  # 12 samples, 5 a shard
    # A rerun with fewer inputs replaces the dataset (no stale shards left behind).
    for name in ("gray.png", "palette.png", "cmyk.jpg", "float.tif", "animated.gif", "alpha.png", "rotated.jpg"):
        os.remove(Path(src, name))
    assert ingest.main([src, dest, "--style", "cartoon", "--size", "32", "--samples-per-shard", "5",
                        "--max-pixels", "1000000", "--no-progress"]) == 0
    assert len(shards.list_shards(storage.join(dest, "datasets", "cartoon"))) == 1


def test_ingest_s3_prefix_to_s3_root_via_cli(s3_server, tmp_path):
    bucket = s3_server.new_bucket("ingest")
    src, dest = f"s3://{bucket}/incoming/cartoon", f"s3://{bucket}/root"
    make_source(src)
    result = subprocess.run(
        [sys.executable, "-m", "fstrain.ingest", src, dest, "--style", "cartoon", "--size", "24",
         "--max-pixels", "1000000", "--no-progress"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert_summary(result.stdout)
    by_source = check_dataset(dest, 24)
    assert by_source["good.png"]["json"]["source"] == f"{src}/good.png"


def test_nothing_ingested_exits_non_zero(tmp_path, capsys):
    src = tmp_path / "bad"
    src.mkdir()
    (src / "a.png").write_bytes(b"")
    (src / "b.jpg").write_bytes(b"not a jpeg")
    assert ingest.main([str(src), str(tmp_path / "root"), "--style", "anime", "--size", "16", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "0 ok, 2 skipped" in captured.out and "skipped a.png: empty file" in captured.out
    assert "no image under" in captured.err
    # Usage errors exit 2 under the one exit-code rule (fstrain.cli), before anything is read.
    assert run_command(ingest.main, [str(tmp_path / "missing"), str(tmp_path / "root"), "--style", "anime",
                                     "--size", "16", "--no-progress"]) == 2
    assert f"SRC {tmp_path / 'missing'}: does not exist" in capsys.readouterr().err
    assert run_command(ingest.main, [str(src), str(tmp_path / "root"), "--style", "../x", "--size", "16"]) == 2
    assert "--style '../x'" in capsys.readouterr().err
