"""The typed schema of a style-pipeline config (one YAML per style, or one per job with per-style overrides).

Each section belongs to the stage that reads it: `models`/`data` are shared, `train` to fstrain.train, `pairs`,
`stylize` and `evaluate` to their modules. Load with `fstrain.config.load_config(path, PipelineConfig)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fstrain.data import storage


def resolve_model_uri(uri: str, root: str) -> str:
    """Model URIs in configs are absolute paths, schemed URIs (`s3://`), or relative to the pipeline root."""
    if not uri or uri.startswith("/") or "://" in uri:
        return uri
    return storage.join(root, uri)


@dataclass
class ModelsConfig:
    """Where every pretrained network comes from: local paths or s3:// URIs, each optionally pinned by sha256."""
    base_generator: str            # rosinality .pt ({"g_ema","latent_avg"}, training ckpt, {"g"}) or NVIDIA ada .pkl
    encoder_wplus: str             # pSp or e4e (Encoder4Editing) W+ encoder .pt
    encoder_zplus: str             # Z+ encoder .pt (pSp layout, codes without latent_avg)
    identity: str                  # arcface_torch backbone.pth or pSp model_ir_se50.pth
    lpips_backbone: str            # torchvision-format VGG16 (or AlexNet) state dict for LPIPS
    identity_kind: str = "auto"    # arcface_r50 | arcface_r100 | irse50 | auto
    lpips_net: str = "vgg"         # vgg | alex
    base_generator_which: str = "g_ema"   # g_ema | g: which generator of the file (g_ema falls back to a lone g)
    sha256: dict[str, str] = field(default_factory=dict)   # field name -> expected sha256


@dataclass
class DataConfig:
    image_size: int = 1024
    batch_size: int = 4
    num_workers: int = 2
    shuffle_buffer: int = 256


@dataclass
class TrainConfig:
    """Owned by fstrain.train (fields may be added there)."""
    steps: int = 600
    lr: float = 0.002
    lambda_sem: float = 1.0
    lambda_id: float = 0.1
    lambda_pair: float = 1.0
    r1_gamma: float = 10.0
    d_reg_every: int = 16
    ema_half_life_steps: float = 10.0
    checkpoint_every: int = 100
    sample_every: int = 100
    mixed_precision: str = "no"     # no | bf16 | fp16 (GPU only)
    gradient_accumulation_steps: int = 1
    pair_level: int = 3             # which pseudo-pair level (1, 2 or 3) L_pair trains on
    seed: int = 0
    sample_grid_size: int = 8       # fixed z per sample grid (G(z) row above G'(z) row)


@dataclass
class PairsConfig:
    """Owned by fstrain.pairs (fields may be added there)."""
    levels: list[int] = field(default_factory=lambda: [1, 2, 3])
    optimise_steps: int = 300
    lr: float = 0.1
    batch_size: int = 4
    samples_per_shard: int = 64


@dataclass
class StylizeConfig:
    """Owned by fstrain.stylize (fields may be added there)."""
    mix_layer: int = 7
    truncation: float = 0.7
    samples: int = 3
    reference_steps: int = 1000
    reference_lr: float = 0.1
    reference_noise_reg: float = 1e5   # weight of the noise-map regularisation during reference inversion (UI2I)
    seed: int = 0                      # multimodal samples and reference-inversion noise are drawn from it


@dataclass
class EvaluateConfig:
    """Owned by fstrain.evaluate (fields may be added there)."""
    inception_weights: str = ""     # path/URI of the FID feature extractor's weights; empty = FID not computed
    num_samples: int = 1000         # generated images per mode for FID, and fixed z for the semantic distance
    batch_size: int = 8
    inception_layout: str = "auto"  # auto | torchvision | pytorch-fid (pt_inception-2015-12-05)
    inception_input_size: int = 299  # 299 gives comparable FIDs; smaller (>= 75) only for fast tests
    inception_sha256: str = ""      # optional pin of inception_weights
    fid_real_samples: int = 0       # style-dataset images for the FID reference statistics; 0 = all of them
    photos: str = ""                # aligned photos for the perceptual distance: folder/prefix of images or
                                    # shards, "synthetic" (fstrain.data.synthetic photos), "" = not computed
    num_photos: int = 64
    semantic_lambda_id: float = 0.1  # weight of (1 - cos ID) in the semantic distance (fixed across modes)
    seed: int = 0                   # fixed z, noise and synthetic photos derive from it


@dataclass
class ClusterConfig:
    """How cluster.train schedules each style's DAG (baseline → pairs → constrained fine-tune → publish) on Ray."""
    gpus_per_style: float = 1.0          # GPUs each fine-tune / pairs task asks Ray for (0 on CPU-only clusters)
    cpus_per_style: float = 1.0
    constrained_mode: str = "sc+pc"      # the mode of the published generator: sc | pc | sc+pc
    baseline_steps: int = 0              # steps of the unconstrained fine-tune G*; 0 = train.steps
    max_retries: int = 3                 # Ray retries of a stage whose worker died; each retry resumes its checkpoint
    progress_interval_s: float = 10.0    # how often the driver prints one line per style


@dataclass
class PipelineConfig:
    models: ModelsConfig
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    stylize: StylizeConfig = field(default_factory=StylizeConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    root: str = ""                 # storage root (local dir or s3://bucket/prefix); a job's --root overrides it
    styles: list[str] = field(default_factory=lambda: ["cartoon", "anime", "fantasy", "illustration", "impasto"])
