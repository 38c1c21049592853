"""NVIDIA stylegan2-ada-pytorch pickles: converted without running their code, rendering as NVIDIA's networks do.

The reference networks (tests/support/nvidia_networks.py) are an independent re-implementation of NVIDIA's
architecture; the pickles are written in NVIDIA's layout (persistent-class records holding module source text).
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fstrain.models.checkpoints import CheckpointError, load_generator
from fstrain.models.convert import main as convert_main
from support import nvidia_networks as nv

REPO = Path(__file__).resolve().parents[1]
FLOAT32_NOISE = 1e-5  # relative to outputs of magnitude ~1-10; the only difference is where 1/sqrt(fan_in) is applied


@pytest.fixture(scope="module")
def snapshot():
    return nv.snapshot(seed=0)


@pytest.fixture(scope="module")
def pkl(snapshot, tmp_path_factory):
    path = tmp_path_factory.mktemp("nvidia") / "network-snapshot-000100.pkl"
    path.write_bytes(nv.network_pickle_bytes(snapshot))
    return path


def _z(n: int = 3, dim: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def test_pickle_renders_like_nvidias_networks(snapshot, pkl):
    loaded = load_generator(str(pkl))
    g, ref = loaded.generator, snapshot["G_ema"]
    assert (g.size, g.style_dim, g.n_mlp, g.n_latent, g.lr_mlp) == (32, 32, 2, ref.num_ws, 0.01)
    assert torch.equal(loaded.latent_avg, ref.mapping.w_avg)                       # w_avg -> latent_avg
    assert torch.equal(g.input.input[0], ref.synthesis.b4.const)                  # constant input
    z = _z()
    with torch.no_grad():
        ws = ref.mapping(z)
        torch.testing.assert_close(g.get_latent(z), ws[:, 0], atol=0, rtol=0)     # mapping network, bit for bit
        image_ref = ref.synthesis(ws)                                              # noise_mode="const"
        image = g.synthesis(ws, noise=g.noise_buffers())
        assert (image - image_ref).abs().max() < FLOAT32_NOISE * image_ref.abs().max()
        # Per-layer codes (style mixing) and truncation toward w_avg agree too.
        mixed = torch.cat([ws[:1, :4], ws[1:2, 4:]], 1)
        assert (g.synthesis(mixed, noise=g.noise_buffers()) - ref.synthesis(mixed)).abs().max() < 1e-4
        truncated, _ = g([z], truncation=0.7, truncation_latent=loaded.latent_avg, randomize_noise=False)
        assert (truncated - ref(z, truncation_psi=0.7)).abs().max() < 1e-4
        images = torch.tanh(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)))
        torch.testing.assert_close(loaded.discriminator(images), snapshot["D"](images), atol=1e-5, rtol=1e-5)
    assert loaded.metadata["format"] == "nvidia-stylegan2-ada-pkl"
    assert loaded.metadata["nvidia"]["conv_clamp"] == 256 and "conv_clamp" in loaded.metadata["notes"][0]


def test_which_g_reads_the_training_generator(snapshot, pkl):
    loaded = load_generator(str(pkl), which="g", load_discriminator=False)
    z = _z()
    with torch.no_grad():
        image, _ = loaded.generator([z], randomize_noise=False)
        assert (image - snapshot["G"](z)).abs().max() < 1e-4
        assert (image - snapshot["G_ema"](z)).abs().max() > 0.1
    assert loaded.discriminator is None


def test_convert_cli_writes_a_plain_rosinality_file(snapshot, pkl, tmp_path, capsys):
    out = tmp_path / "converted.pt"
    assert convert_main([str(pkl), str(out)]) == 0
    assert "32 px generator" in capsys.readouterr().out
    raw = torch.load(out, weights_only=True)                                       # no allow-list needed
    assert sorted(raw) == ["d", "g_ema", "latent_avg"]
    reloaded = load_generator(str(out))
    assert reloaded.metadata["source_format"] == "nvidia-stylegan2-ada-pkl"
    z = _z()
    with torch.no_grad():
        image, _ = reloaded.generator([z], randomize_noise=False)
        assert (image - snapshot["G_ema"](z)).abs().max() < 1e-4
    # The module entry point, as a user runs it.
    proc = subprocess.run([sys.executable, "-m", "fstrain.models.convert", str(pkl), str(tmp_path / "b.pt"),
                           "--no-discriminator"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(torch.load(tmp_path / "b.pt", weights_only=True)) == ["g_ema", "latent_avg"]


def test_convert_cli_reports_a_bad_file_in_one_line(pkl, tmp_path, capsys):
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(pkl.read_bytes()[:1000])
    assert convert_main([str(cut), str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {cut}: the pickle is truncated") and "\n" not in err
    assert not (tmp_path / "out.pt").exists()


def test_module_source_in_the_pickle_is_never_executed(snapshot, tmp_path):
    marker = tmp_path / "networks-source-ran"
    source = f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
    path = tmp_path / "net.pkl"
    path.write_bytes(nv.network_pickle_bytes(snapshot, module_src=source))
    load_generator(str(path))
    assert not marker.exists()


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["pkl", "pt"])
def test_code_execution_payload_is_refused_without_running(snapshot, tmp_path, container):
    marker = tmp_path / "payload-ran"
    data = {**snapshot, "augment_pipe": _Payload(marker)}
    path = tmp_path / f"evil.{container}"
    if container == "pkl":
        path.write_bytes(nv.network_pickle_bytes(data))
    else:
        torch.save({"g_ema": {}, "latent_avg": torch.zeros(3), "extra": _Payload(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        load_generator(str(path))
    message = str(info.value)
    assert f"{path}: refused" in message and "system" in message and "nothing from it was executed" in message
    assert "weights_only" not in message and "\n" not in message
    assert not marker.exists()


def test_stylegan3_and_tensorflow_pickles_are_refused_with_a_reason(tmp_path):
    sg3 = nv.NamedRecord("Generator", mapping=nv.MappingNetwork(32, 32, 16),
                         synthesis=nv.NamedRecord("SynthesisNetwork", input=nv.NamedRecord("SynthesisInput"),
                                                  L0_36_512=nv.NamedRecord("SynthesisLayer")))
    path = tmp_path / "stylegan3-t-ffhq-1024x1024.pkl"
    path.write_bytes(nv.network_pickle_bytes({"G_ema": sg3, "G": sg3, "D": None}))
    with pytest.raises(CheckpointError, match=r"stylegan3-t-ffhq-1024x1024\.pkl: a StyleGAN3 \(alias-free\)"):
        load_generator(str(path))

    tf_like = pickle.dumps(1, protocol=2)[:2] + b"cdnnlib.tflib.network\nNetwork\n)\x81."
    (tmp_path / "tf.pkl").write_bytes(tf_like)
    with pytest.raises(CheckpointError, match=r"tf\.pkl: a TensorFlow-era StyleGAN pickle"):
        load_generator(str(tmp_path / "tf.pkl"))


def test_truncated_pickle_and_foreign_pickle_say_so(pkl, tmp_path):
    data = pkl.read_bytes()
    (tmp_path / "cut.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pkl: the pickle is truncated"):
        load_generator(str(tmp_path / "cut.pkl"))
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(CheckpointError, match=r"list\.pkl: expected a dict checkpoint"):
        load_generator(str(tmp_path / "list.pkl"))
    (tmp_path / "dict.pkl").write_bytes(pickle.dumps({"weights": [1.0]}))
    with pytest.raises(CheckpointError, match=r"dict\.pkl: no 'g_ema' generator"):
        load_generator(str(tmp_path / "dict.pkl"))
