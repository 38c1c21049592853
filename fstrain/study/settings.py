"""The method study's config: which pipeline to train, which seeds, which held-out identities, which nets evaluate.

    pipeline: demo_five_styles.yaml       # the pipeline config every cell trains with (relative to this file)
    seeds: [0, 1, 2]
    test_identities: 100                  # held-out world identities (fstrain.world.splits.HELDOUT) per style
    evaluation:                           # each "auto" (models/models.json's evaluation nets), a URI, or "none"
      feature_net: auto                   # FID features (an evaluation net, never a training-loss net)
      identity: auto                      # retrieval, GT identity and the identity term of the semantic distance
      attribute_reader: auto              # GT attribute error
    quick: {steps: 4, baseline_steps: 4, test_identities: 6}

Load with `load_study_config(path)`; unknown keys and wrong types fail with the file and key named.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from fstrain.config import ConfigError, load_config
from fstrain.data import storage

ROW_MODES = ("baseline", "sc", "pc", "sc+pc")          # Table 4's rows, trained per style and seed


@dataclass
class StudyEvaluationConfig:
    """The evaluation instruments: each a URI (relative ones are under the root), "auto" or "none"; "auto" takes
    the evaluation nets `<root>/models/models.json` lists, else the pipeline's nets, labelled as training-loss nets
    (fstrain.study.instruments says exactly)."""
    feature_net: str = "auto"          # FID features: an Inception-v3 file or a world image reader
    feature_net_layout: str = "auto"   # auto | torchvision | pytorch-fid (Inception files only)
    feature_input_size: int = 299      # Inception input side: 299 for comparable FIDs; >= 75 for tiny tests
    identity: str = "auto"             # evaluation identity net (arcface / IR-SE layouts)
    identity_kind: str = "auto"
    lpips_backbone: str = "auto"       # perceptual net (LPIPS trunk); auto = the pipeline's
    lpips_net: str = ""                # alex | vgg; "" = the pipeline's models.lpips_net
    attribute_reader: str = "auto"     # a world image reader with attribute heads (fstrain.models.reader)
    semantic_lambda_id: float = 0.1    # weight of (1 - cos ID) in the semantic distance
    semantic_samples: int = 64         # fixed z of the semantic distance
    batch_size: int = 16


@dataclass
class QuickConfig:
    """What `--quick` changes: one seed, short fine-tunes, few identities (tiny models come from `pipeline`)."""
    pipeline: str = ""                 # another pipeline config for quick runs ("" = the study's)
    steps: int = 4
    baseline_steps: int = 4
    pair_optimise_steps: int = 2
    test_identities: int = 6
    fid_reference_identities: int = 6
    semantic_samples: int = 4
    grid_identities: int = 3


@dataclass
class StudyConfig:
    pipeline: str                                    # pipeline YAML, relative to the study config's folder or a URI
    name: str = "study"                              # run ids are <name>-s<seed>[-level<L>] (quick: <name>-quick-…)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    styles: list[str] = field(default_factory=list)  # [] = the pipeline's styles
    steps: int = 0                                   # fine-tune steps of every row; 0 = the pipeline's train.steps
    baseline_steps: int = 0                          # 0 = the pipeline's cluster.baseline_steps (or train.steps)
    pair_levels: list[int] = field(default_factory=lambda: [1, 2, 3])   # the pair-level table's SC&PC variants
    default_pair_level: dict[str, int] = field(default_factory=dict)   # style -> level of Table 4's +PC rows
    swap_resolutions: list[int] = field(default_factory=lambda: [8, 16])   # Toonify rows, each in both directions
    test_identities: int = 100                       # held-out identities per style (HELDOUT 0..n-1)
    test_view: int = 0                               # the view of photo and ground truth (same for both)
    first_test_identity: int = 0                     # HELDOUT index of the first test identity; a validation run
                                                     # (choosing lambdas, levels) takes another block, e.g. 5000
    fid_reference_identities: int = 100              # HELDOUT identities n..n+m-1 rendered in the style: FID's set
    grid_identities: int = 6                         # rows of the picture grid
    evaluation: StudyEvaluationConfig = field(default_factory=StudyEvaluationConfig)
    quick: QuickConfig = field(default_factory=QuickConfig)


def _resolve_beside(path: str, config_uri: str) -> str:
    if not path or path.startswith("/") or "://" in path or storage.exists(path):
        return path
    return storage.join(storage.dirname(config_uri), path)


def load_study_config(uri: str) -> StudyConfig:
    """Read and check a study YAML; `pipeline` (and `quick.pipeline`) become paths/URIs that exist."""
    config = load_config(uri, StudyConfig)
    pipeline = _resolve_beside(config.pipeline, uri)
    quick_pipeline = _resolve_beside(config.quick.pipeline, uri)
    for key, value in (("pipeline", pipeline), ("quick.pipeline", quick_pipeline)):
        if value and not storage.exists(value):
            raise ConfigError(f"{uri}: key '{key}': {value} does not exist; give the pipeline YAML's path (relative "
                              f"to the study config's folder) or a URI")
    if not config.seeds or len(set(config.seeds)) != len(config.seeds):
        raise ConfigError(f"{uri}: key 'seeds': give distinct seeds, e.g. [0, 1, 2]; got {config.seeds}")
    bad_levels = [lvl for lvl in list(config.pair_levels) + list(config.default_pair_level.values())
                  if lvl not in (1, 2, 3)]
    if bad_levels:
        raise ConfigError(f"{uri}: pair levels must be 1, 2 or 3; got {bad_levels}")
    if config.test_identities < 2 or config.quick.test_identities < 2:
        raise ConfigError(f"{uri}: key 'test_identities': retrieval needs at least 2 held-out identities")
    return dataclasses.replace(config, pipeline=pipeline,
                               quick=dataclasses.replace(config.quick, pipeline=quick_pipeline))


def quick_variant(config: StudyConfig) -> StudyConfig:
    """The `--quick` study: first seed only, the quick section's sizes, run ids of their own."""
    q = config.quick
    evaluation = dataclasses.replace(config.evaluation, semantic_samples=q.semantic_samples)
    return dataclasses.replace(
        config, pipeline=q.pipeline or config.pipeline, name=f"{config.name}-quick", seeds=config.seeds[:1],
        steps=q.steps, baseline_steps=q.baseline_steps, test_identities=q.test_identities,
        fid_reference_identities=q.fid_reference_identities, grid_identities=q.grid_identities,
        evaluation=evaluation)
