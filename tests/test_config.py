"""fstrain.config: strict YAML -> typed dataclasses, errors naming the file and the key."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml

from fstrain.config import ConfigError, config_from_dict, config_to_dict, dump_config, load_config
from fstrain.data import storage
from fstrain.settings import PipelineConfig


@dataclass
class Optim:
    lr: float = 0.002
    betas: tuple[float, float] = (0.0, 0.99)


@dataclass
class Run:
    name: str
    steps: int = 10
    mode: Literal["fast", "slow"] = "fast"
    optim: Optim = field(default_factory=Optim)
    tags: list[str] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)
    resume: Optional[str] = None
    seed: int | None = None
    enabled: bool = True


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_nested_values_defaults_and_conversions(tmp_path):
    path = write(tmp_path, """
name: cartoon
steps: 300
mode: slow
optim: {lr: 1e-3, betas: [0.5, 0.9]}
tags: [a, b]
weights: {sem: 1, pair: 0.5}
seed: 7
""")
    cfg = load_config(path, Run)
    assert cfg.name == "cartoon" and cfg.steps == 300 and cfg.mode == "slow"
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)  # YAML reads 1e-3 as a string
    assert cfg.optim.betas == (0.5, 0.9)
    assert cfg.tags == ["a", "b"]
    assert cfg.weights == {"sem": 1.0, "pair": 0.5} and isinstance(cfg.weights["sem"], float)
    assert cfg.resume is None and cfg.seed == 7 and cfg.enabled is True


@pytest.mark.parametrize(
    "text, key, words",
    [
        ("name: x\nstepz: 3\n", "stepz", "unknown key"),
        ("name: x\noptim: {lr: 0.1, lr_typo: 2}\n", "optim.lr_typo", "unknown key"),
        ("steps: 3\n", "name", "missing required value"),
        ("name: x\nsteps: ten\n", "steps", "expected int"),
        ("name: x\nsteps: 3.5\n", "steps", "expected int"),
        ("name: x\nenabled: 1\n", "enabled", "expected bool"),
        ("name: x\nmode: medium\n", "mode", "must be one of"),
        ("name: x\ntags: [a, 3]\n", "tags[1]", "expected str"),
        ("name: x\noptim: 5\n", "optim", "expected a mapping"),
        ("name: x\noptim: {betas: [0.1]}\n", "optim.betas", "expected 2 items"),
        ("name: x\nweights: {sem: high}\n", "weights.sem", "expected float"),
        ("name: x\nseed: abc\n", "seed", "expected"),
    ],
)
def test_errors_name_file_and_key(tmp_path, text, key, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, Run)
    message = str(info.value)
    assert message.startswith(f"{path}: key '{key}'"), message
    assert words in message


def test_bad_yaml_and_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match=r"run\.yaml: not valid YAML"):
        load_config(write(tmp_path, "name: [unclosed\n"), Run)
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read config.*not found"):
        load_config(missing, Run)
    with pytest.raises(ConfigError, match=r"list\.yaml: top level: expected a mapping for Run"):
        load_config(write(tmp_path, "- 1\n- 2\n", "list.yaml"), Run)


def test_round_trip_through_dict_and_yaml(tmp_path):
    cfg = Run(name="anime", steps=5, optim=Optim(lr=0.01), tags=["t"], weights={"a": 2.0}, seed=3)
    assert config_from_dict(config_to_dict(cfg), Run) == cfg
    path = write(tmp_path, dump_config(cfg), "dumped.yaml")
    assert load_config(path, Run) == cfg
    assert yaml.safe_load(Path(path).read_text())["optim"]["betas"] == [0.0, 0.99]


def test_pipeline_schema_with_future_annotations(tmp_path):
    """fstrain.settings uses `from __future__ import annotations`: string annotations must resolve."""
    path = write(tmp_path, """
models:
  base_generator: s3://models/g.pt
  encoder_wplus: e.pt
  encoder_zplus: z.pt
  identity: id.pth
  lpips_backbone: vgg.pth
  sha256: {base_generator: abc}
train: {steps: 12, lr: 0.001}
pairs: {levels: [1, 3]}
styles: [cartoon]
""")
    cfg = load_config(path, PipelineConfig)
    assert cfg.models.base_generator == "s3://models/g.pt" and cfg.models.sha256 == {"base_generator": "abc"}
    assert cfg.train.steps == 12 and cfg.train.r1_gamma == 10.0 and cfg.pairs.levels == [1, 3]
    assert cfg.styles == ["cartoon"]
    with pytest.raises(ConfigError, match=r"key 'models\.lpips_backbone': missing required value"):
        config_from_dict({"models": {"base_generator": "g", "encoder_wplus": "e", "encoder_zplus": "z",
                                     "identity": "i"}}, PipelineConfig, source="inline")
    # Checks across sections run in the loader, so every entry point refuses a per-style level for no style.
    models = {"base_generator": "g", "encoder_wplus": "e", "encoder_zplus": "z", "identity": "i", "lpips_backbone": "l"}
    ok = config_from_dict({"models": models, "styles": ["cartoon"], "train": {"pair_level_by_style": {"cartoon": 1}}},
                          PipelineConfig, source="inline")
    assert ok.train.level_for("cartoon") == 1 and ok.train.level_for("anime") == 3
    with pytest.raises(ConfigError, match=r"inline: key 'train\.pair_level_by_style': \['anime'\] are not in"):
        config_from_dict({"models": models, "styles": ["cartoon"], "train": {"pair_level_by_style": {"anime": 1}}},
                         PipelineConfig, source="inline")
    with pytest.raises(ConfigError, match=r"inline: key 'train\.lr_by_style': \['fantsy'\] are not in"):
        config_from_dict({"models": models, "styles": ["fantasy"], "train": {"lr_by_style": {"fantsy": 0.001}}},
                         PipelineConfig, source="inline")
    with pytest.raises(ConfigError, match=r"train\.lr_by_style\.fantasy"):
        config_from_dict({"models": models, "styles": ["fantasy"], "train": {"lr_by_style": {"fantasy": -1}}},
                         PipelineConfig, source="inline")
    assert config_from_dict({"models": models, "styles": ["fantasy"], "train": {"lr_by_style": {"fantasy": 5e-4}}},
                            PipelineConfig, source="inline").train.lr_for("fantasy") == 5e-4


REPO = Path(__file__).resolve().parents[1]


STUDY_CONFIGS = {str(p.relative_to(REPO)) for p in (REPO / "configs").glob("study*.yaml")}


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml")))
def test_every_shipped_config_loads(path):
    """Pipeline configs load as PipelineConfig; a study config loads as a study and its pipelines load too."""
    if path in STUDY_CONFIGS:
        from fstrain.study.settings import StudyConfig, load_study_config
        study = load_study_config(str(REPO / path))
        assert config_from_dict(config_to_dict(study), StudyConfig) == study
        for pipeline in filter(None, (study.pipeline, study.quick.pipeline)):   # quick.pipeline may be unset
            load_config(pipeline, PipelineConfig)
        return
    cfg = load_config(str(REPO / path), PipelineConfig)
    assert config_from_dict(config_to_dict(cfg), PipelineConfig) == cfg


def test_config_from_storage_uri(s3_root):
    uri = storage.join(s3_root, "configs", "run.yaml")
    storage.write_text(uri, "name: remote\nsteps: 4\n")
    assert load_config(uri, Run) == Run(name="remote", steps=4)
    storage.write_text(uri, "name: remote\nstep: 4\n")
    with pytest.raises(ConfigError, match=rf"^{uri}: key 'step': unknown key"):
        load_config(uri, Run)


TINY = REPO / "configs" / "tiny.yaml"


def tiny_with(tmp_path: Path, section: str, key: str, value: str) -> str:
    """configs/tiny.yaml with `section.key` set to `value` (a YAML scalar), as a user would edit it."""
    data = yaml.safe_load(TINY.read_text())
    data.setdefault(section, {})[key] = yaml.safe_load(value)
    return write(tmp_path, yaml.safe_dump(data, sort_keys=False), f"{section}-{key}.yaml")


@pytest.mark.parametrize("section, key, value, words", [
    ("train", "lr", "-1", "must be > 0, got -1.0"),
    ("train", "steps", "0", "must be >= 1, got 0"),
    ("stylize", "truncation", "1.5", "must be > 0 and <= 1, got 1.5"),
    ("cluster", "constrained_mode", "baseline", "must be one of 'sc', 'pc', 'sc+pc'; got 'baseline'"),
    ("train", "mixed_precision", "fp8", "must be one of 'no', 'bf16', 'fp16'; got 'fp8'"),
    ("train", "pair_level", "4", "must be one of 1, 2, 3; got 4"),
    ("train", "stpes", "5", "unknown key (did you mean 'train.steps'? allowed in this section:"),
])
def test_pipeline_values_are_checked_with_file_key_value_and_allowed(tmp_path, section, key, value, words):
    path = tiny_with(tmp_path, section, key, value)
    with pytest.raises(ConfigError) as info:
        load_config(path, PipelineConfig)
    message = str(info.value)
    assert message.startswith(f"{path}: key '{section}.{key}': "), message
    assert words in message, message


def test_bad_settings_fail_the_cli_before_any_work(tmp_path):
    """The training CLI refuses `lr: -1` with file, key, value and range, before reading any model or dataset."""
    import subprocess
    import sys

    path = tiny_with(tmp_path, "train", "lr", "-1")
    root = tmp_path / "root"                  # empty: any work would fail on missing models/datasets instead
    done = subprocess.run([sys.executable, "-m", "fstrain.train", path, "--style", "cartoon", "--mode", "sc+pc",
                           "--root", str(root), "--run-id", "r"], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"error: {path}: key 'train.lr': must be > 0, got -1.0", done.stderr
    assert not root.exists()
    pairs = subprocess.run([sys.executable, "-m", "fstrain.pairs", tiny_with(tmp_path, "pairs", "levels", "[1, 5]"),
                            "--style", "cartoon", "--root", str(root), "--run-id", "r"], capture_output=True,
                           text=True, cwd=REPO, timeout=300)
    assert pairs.returncode == 2 and "key 'pairs.levels[1]': must be one of 1, 2, 3; got 5" in pairs.stderr
    assert "Traceback" not in pairs.stderr and not root.exists()
