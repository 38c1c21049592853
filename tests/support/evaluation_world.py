"""Fixture `evaluation_run`: a tiny trained run to evaluate (module-scoped per test session).

Under one temp root: the tiny random models (fstrain.models.init) in `models/`, RANDOM Inception weights
(`models/inception_RANDOM.pth`, marked random by its sidecar), a synthetic 'cartoon' style dataset, level-3
pseudo-pairs (style image + a base-G code), and run `evalrun` with the modes baseline, sc and pc fine-tuned for
3 steps by `fstrain.train.run_finetune` with configs/tiny.yaml; sc+pc is deliberately left untrained.
"""
from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
EVAL_STYLE = "cartoon"
EVAL_RUN_ID = "evalrun"
EVAL_TRAINED_MODES = ("baseline", "sc", "pc")
EVAL_STEPS = 3


@dataclass(frozen=True)
class EvaluationRun:
    root: str
    run_id: str
    style: str
    config: object          # fstrain.settings.PipelineConfig used for training (its evaluate section included)
    trained_modes: tuple[str, ...]
    steps: int


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def evaluation_config(steps: int = EVAL_STEPS):
    """configs/tiny.yaml with a short run and an `evaluate` section that exercises every metric quickly."""
    from fstrain.config import load_config
    from fstrain.settings import PipelineConfig
    config = load_config(str(REPO / "configs" / "tiny.yaml"), PipelineConfig)
    train = dataclasses.replace(config.train, steps=steps, checkpoint_every=steps, sample_every=steps)
    evaluate = dataclasses.replace(config.evaluate, inception_weights="models/inception_RANDOM.pth",
                                   inception_input_size=75, num_samples=8, batch_size=8, photos="synthetic",
                                   num_photos=4, seed=0)
    return dataclasses.replace(config, train=train, evaluate=evaluate)


def make_evaluation_run(root: Path) -> EvaluationRun:
    from fstrain import layout
    from fstrain.data import storage
    from fstrain.data.shards import ShardWriter
    from fstrain.data.synthetic import generate
    from fstrain.metrics import save_random_inception_weights
    from fstrain.models.checkpoints import load_generator
    from fstrain.train import run_finetune
    from support.tiny_models import make_tiny_models

    models = make_tiny_models(root / "models")
    save_random_inception_weights(str(root / "models" / "inception_RANDOM.pth"), "torchvision", seed=0)
    size = models.size
    styles = list(generate(EVAL_STYLE, 12, size, seed=7))
    with ShardWriter(storage.join(str(root), "datasets", EVAL_STYLE), max_samples=8) as writer:
        for key, image, meta in styles:
            writer.write({"__key__": key, "png": _png(image), "json": {"source": f"{key}.png"}})
    g = load_generator(models.generator, load_discriminator=False).generator
    with torch.no_grad():
        w = g.get_latent(torch.randn(8, g.style_dim, generator=torch.Generator().manual_seed(11)))
        w_plus = w.unsqueeze(1).repeat(1, g.n_latent, 1)
        photos = g.synthesis(w_plus)
    pixels = ((photos.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    from PIL import Image
    with ShardWriter(layout.pairs(str(root), EVAL_RUN_ID, EVAL_STYLE, 3), max_samples=8) as writer:
        for i in range(8):
            buffer = io.BytesIO()
            np.save(buffer, w_plus[i].numpy().astype(np.float32), allow_pickle=False)
            writer.write({"__key__": styles[i][0], "s.png": _png(styles[i][1]),
                          "p.png": _png(Image.fromarray(pixels[i])), "w_plus.npy": buffer.getvalue(),
                          "json": json.dumps({"level": 3, "style": EVAL_STYLE}).encode()})
    config = evaluation_config()
    for mode in EVAL_TRAINED_MODES:
        run_finetune(config, style=EVAL_STYLE, mode=mode, root=str(root), run_id=EVAL_RUN_ID)
    return EvaluationRun(str(root), EVAL_RUN_ID, EVAL_STYLE, config, EVAL_TRAINED_MODES, EVAL_STEPS)


@pytest.fixture(scope="session")
def evaluation_run(tmp_path_factory: pytest.TempPathFactory) -> EvaluationRun:
    """A tiny trained run (see module docstring). Read-only: tests that write must use their own style/run."""
    return make_evaluation_run(tmp_path_factory.mktemp("evaluation-world"))
