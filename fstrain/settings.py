"""The typed schema of a style-pipeline config (one YAML per style, or one per job with per-style overrides).

Each section belongs to the stage that reads it: `models`/`data` are shared, `train` to fstrain.train, `pairs`,
`stylize` and `evaluate` to their modules. Load with `fstrain.config.load_config(path, PipelineConfig)`, which
checks every value before any work: string options are `Literal` choices, numbers carry their range as
`annotated_types` metadata (`Positive` = > 0, `AtLeast1` = >= 1, ...; the same metadata pydantic reads), unknown
keys are refused with a did-you-mean. Every field here is read by some stage.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from annotated_types import Ge, Gt, Interval


Positive = Annotated[float, Gt(0)]
NonNegative = Annotated[float, Ge(0)]
AtLeast1 = Annotated[int, Ge(1)]
Count = Annotated[int, Ge(0)]
Fraction = Annotated[float, Interval(gt=0, le=1)]          # (0, 1]
PairLevel = Literal[1, 2, 3]
Mode = Literal["baseline", "sc", "pc", "sc+pc"]
ConstrainedMode = Literal["sc", "pc", "sc+pc"]


@dataclass
class ModelsConfig:
    """Where every pretrained network comes from: local paths or s3:// URIs, each optionally pinned by sha256."""
    base_generator: str            # rosinality .pt ({"g_ema","latent_avg"}, training ckpt, {"g"}) or NVIDIA ada .pkl
    encoder_wplus: str             # pSp or e4e (Encoder4Editing) W+ encoder .pt
    encoder_zplus: str             # Z+ encoder .pt (pSp layout, codes without latent_avg)
    identity: str                  # arcface_torch backbone.pth or pSp model_ir_se50.pth
    lpips_backbone: str            # torchvision-format VGG16 (or AlexNet) state dict for LPIPS
    identity_kind: Literal["auto", "arcface", "arcface_r18", "arcface_r34", "arcface_r50", "arcface_r100",
                           "irse50"] = "auto"
    lpips_net: Literal["vgg", "alex"] = "vgg"
    base_generator_which: Literal["g_ema", "g"] = "g_ema"   # which generator of the file (g_ema falls back to a lone g)
    sha256: dict[str, str] = field(default_factory=dict)   # field name -> expected sha256


@dataclass
class DataConfig:
    image_size: Annotated[int, Ge(4)] | None = None   # the base G's resolution; set, a G of another size is refused
    batch_size: AtLeast1 = 4
    shuffle_buffer: AtLeast1 = 256


@dataclass
class TrainConfig:
    """Owned by fstrain.train (fields may be added there)."""
    steps: AtLeast1 = 600
    lr: Positive = 0.002
    lambda_sem: NonNegative = 1.0
    lambda_id: NonNegative = 0.1
    # L_sem's eye-band term (ours, not the paper's; 0 = off): LPIPS between the enlarged eye/brow bands of G(z) and
    # G'(z), where glasses sit (fstrain.losses.eye_band)
    lambda_eyes: NonNegative = 0.0
    lambda_pair: NonNegative = 1.0
    r1_gamma: NonNegative = 10.0
    d_reg_every: Count = 16          # 0 = no R1
    ema_half_life_steps: NonNegative = 10.0
    checkpoint_every: AtLeast1 = 100
    sample_every: AtLeast1 = 100
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"     # GPU only
    gradient_accumulation_steps: AtLeast1 = 1
    pair_level: PairLevel = 3       # which pseudo-pair level L_pair trains on
    # style -> level, for styles whose best level differs (the method study's pair-level table says which)
    pair_level_by_style: dict[str, PairLevel] = field(default_factory=dict)
    # style -> learning rate, for a style whose fine-tune needs another (e.g. one that collapses at the shared lr)
    lr_by_style: dict[str, Positive] = field(default_factory=dict)
    seed: Count = 0
    sample_grid_size: AtLeast1 = 8  # fixed z per sample grid (G(z) row above G'(z) row)

    def level_for(self, style: str) -> int:
        """The pseudo-pair level `style`'s L_pair trains on."""
        return self.pair_level_by_style.get(style, self.pair_level)

    def lr_for(self, style: str) -> float:
        """The learning rate of `style`'s fine-tunes (G and D; D's scaled for lazy R1 as usual)."""
        return self.lr_by_style.get(style, self.lr)


@dataclass
class PairsConfig:
    """Owned by fstrain.pairs (fields may be added there). One output shard per dataset shard."""
    levels: list[PairLevel] = field(default_factory=lambda: [1, 2, 3])
    optimise_steps: AtLeast1 = 300
    lr: Positive = 0.1
    batch_size: AtLeast1 = 4


@dataclass
class StylizeConfig:
    """Owned by fstrain.stylize (fields may be added there)."""
    mix_layer: Count = 7
    truncation: Fraction = 0.7         # psi in (0, 1]
    samples: AtLeast1 = 3
    reference_steps: AtLeast1 = 1000
    reference_lr: Positive = 0.1
    reference_noise_reg: NonNegative = 1e5   # weight of the noise-map regularisation in reference inversion (UI2I)
    seed: Count = 0                      # multimodal samples and reference-inversion noise are drawn from it
    # Hybrid inversion (fstrain.stylize.refine): refine E_w+(x) by Adam steps against models.base_generator with
    # the models.lpips_backbone perceptual net; 0 = the encoder's codes as they are (the paper's stylization).
    refine_steps: Count = 0
    refine_lr: Positive = 0.01
    refine_lpips_weight: NonNegative = 0.5
    refine_anchor_weight: NonNegative = 0.1   # pull toward E_w+(x), so the code stays where G' stylizes well
    # Pivotal tuning (fstrain.stylize.pivotal): per face, tune a copy of models.base_generator's weights on the photo
    # at its code and render each style by G' + that change; 0 = render by G' as it is.
    pivotal_steps: Count = 0
    pivotal_lr: Positive = 0.006   # for 500-2000 steps (docs/study/pivotal_probe/)


@dataclass
class EvaluateConfig:
    """Owned by fstrain.evaluate (fields may be added there)."""
    inception_weights: str = ""     # path/URI of the FID feature extractor's weights; empty = FID not computed
    num_samples: Annotated[int, Ge(2)] = 1000   # generated images per mode for FID, fixed z for semantic distance
    batch_size: AtLeast1 = 8
    inception_layout: Literal["auto", "torchvision", "pytorch-fid"] = "auto"   # pytorch-fid: pt_inception-2015-12-05
    inception_input_size: Annotated[int, Ge(75)] = 299  # 299 gives comparable FIDs; smaller only for fast tests
    inception_sha256: str = ""      # optional pin of inception_weights
    fid_real_samples: Count = 0     # style-dataset images for the FID reference statistics; 0 = all of them
    photos: str = ""                # aligned photos for the perceptual distance: folder/prefix of images or
                                    # shards, "synthetic" (fstrain.data.synthetic photos), "" = not computed
    num_photos: AtLeast1 = 64
    semantic_lambda_id: NonNegative = 0.1  # weight of (1 - cos ID) in the semantic distance (fixed across modes)
    seed: Count = 0                 # fixed z, noise and synthetic photos derive from it


@dataclass
class ClusterConfig:
    """How cluster.train schedules each style's DAG (baseline → pairs → constrained fine-tune → publish) on Ray."""
    gpus_per_style: Annotated[float, Interval(ge=0, le=1)] = 1.0   # GPUs per fine-tune / pairs task (0: CPU-only)
    cpus_per_style: Positive = 1.0
    constrained_mode: ConstrainedMode = "sc+pc"   # the mode of the published generator
    baseline_steps: Count = 0            # steps of the unconstrained fine-tune G*; 0 = train.steps
    max_retries: Count = 3               # Ray retries of a stage whose worker died; each retry resumes its checkpoint
    progress_interval_s: Positive = 10.0  # how often the driver prints one line per style


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

    def config_problems(self) -> list[tuple[str, str]]:
        problems = []
        for key in ("pair_level_by_style", "lr_by_style"):
            strays = sorted(set(getattr(self.train, key)) - set(self.styles))
            if strays:
                problems.append((f"train.{key}", f"{strays} are not in the config's styles {self.styles}; name "
                                                 f"styles of this config (or remove the entry)"))
        return problems
