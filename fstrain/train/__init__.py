"""One style fine-tuning run (baseline / sc / pc / sc+pc), its checkpoints, and publishing its generator.

Entry points: `run_finetune(config, style=, mode=, root=, run_id=)` (Python, used by the cluster DAG),
`python -m fstrain.train CONFIG --style NAME --mode MODE --root URI` (CLI), `publish_generator(run_dir, dest)`.
"""
from fstrain.train.checkpointing import ResumeError, publish_generator  # noqa: F401
from fstrain.train.data import DatasetError  # noqa: F401
from fstrain.train.loop import FineTuneRun, run_finetune  # noqa: F401
from fstrain.train.resources import MODES, ModelMissingError  # noqa: F401
