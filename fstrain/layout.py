"""Every path under a pipeline root, named here and nowhere else.

    <root>/models/                                  pretrained networks (+ models.json from fstrain.models.init)
    <root>/datasets/<style>/shard-*.tar             style images (fstrain.ingest) + ingest_report.json
    <root>/runs/<run>/summary.json                  cluster.train's summary of the whole job
    <root>/runs/<run>/<style>/<mode>/               one fine-tune (baseline = G*, sc / pc / sc+pc = G'):
        checkpoints/step-NNNNNN.pt, latest.json, final/generator.pt (+ .json), samples/, metrics.jsonl,
        tensorboard/, stage.json
    <root>/runs/<run>/<style>/pairs/level{1,2,3}/   pseudo-pair shards, each with its provenance sidecar;
        pairs/summary.json, pairs/contact_sheet.png, pairs/stage.json
    <root>/runs/<run>/<style>/evaluation.{json,md}  fstrain.evaluate's table
    <root>/styles/<style>/generator.pt (+ .json)    the published G' (with provenance), publish's stage.json
    <root>/references/<style>/<id>.npz              stored reference codes
    <root>/demo-root.json, inputs/photos/, stylized/    cluster.demo's claim, photos and batch output

Every stage's done-marker (`stage.json`) sits in the folder that holds that stage's outputs. Pseudo-pairs belong to
the run whose G* made them, so a retrained baseline in another run can never feed them to a constrained model.
A root is a local directory or an `s3://bucket/prefix` URI; the batch job's output folder is batch's own.
"""
from __future__ import annotations

from fstrain.data import storage

STAGE_MARKER = "stage.json"
MODELS = "models"
MODEL_MANIFEST = "models.json"
LATEST = "latest.json"
GENERATOR = "generator.pt"
DEMO_MARKER = "demo-root.json"
SHARD_PROVENANCE_SUFFIX = ".provenance.json"


# ---------------------------------------------------------------- shared inputs


def models(root: str) -> str:
    return storage.join(root, MODELS)


def model_manifest(models_uri: str) -> str:
    """`models.json` inside a models folder (written by fstrain.models.init / pretrain)."""
    return storage.join(models_uri, MODEL_MANIFEST)


def dataset(root: str, style: str) -> str:
    return storage.join(root, "datasets", style)


def ingest_report(root: str, style: str) -> str:
    return storage.join(dataset(root, style), "ingest_report.json")


# ---------------------------------------------------------------- one run


def run(root: str, run_id: str) -> str:
    return storage.join(root, "runs", run_id)


def run_summary(root: str, run_id: str) -> str:
    return storage.join(run(root, run_id), "summary.json")


def style_run(root: str, run_id: str, style: str) -> str:
    """`runs/<run>/<style>`: every stage folder of one style in one run."""
    return storage.join(run(root, run_id), style)


def stage_work(root: str, run_id: str, style: str, stage: str) -> str:
    """`runs/<run>/<style>/<stage>`: a pipeline stage's own folder unless the stage names another."""
    return storage.join(style_run(root, run_id, style), stage)


def mode_run(root: str, run_id: str, style: str, mode: str) -> str:
    """One fine-tune's folder: `runs/<run>/<style>/<mode>` (mode: baseline, sc, pc, sc+pc)."""
    return stage_work(root, run_id, style, mode)


def evaluation(root: str, run_id: str, style: str, suffix: str) -> str:
    """`runs/<run>/<style>/evaluation.<suffix>` (json or md)."""
    return storage.join(style_run(root, run_id, style), f"evaluation.{suffix}")


def pairs(root: str, run_id: str, style: str, level: int | None = None) -> str:
    """`runs/<run>/<style>/pairs[/level<n>]`: the pseudo-pairs this run's G* made."""
    folder = storage.join(style_run(root, run_id, style), "pairs")
    return folder if level is None else storage.join(folder, f"level{int(level)}")


def pairs_summary(root: str, run_id: str, style: str) -> str:
    return storage.join(pairs(root, run_id, style), "summary.json")


def pairs_contact_sheet(root: str, run_id: str, style: str) -> str:
    return storage.join(pairs(root, run_id, style), "contact_sheet.png")


def shard_provenance(shard_uri: str) -> str:
    """`shard-000000.tar` -> `shard-000000.provenance.json` beside it (what the shard was made from)."""
    return shard_uri[:-len(".tar")] + SHARD_PROVENANCE_SUFFIX if shard_uri.endswith(".tar") else \
        shard_uri + SHARD_PROVENANCE_SUFFIX


# ---------------------------------------------------------------- inside one fine-tune folder


def checkpoint(run_dir: str, step: int) -> str:
    return storage.join(run_dir, checkpoint_name(step))


def checkpoint_name(step: int) -> str:
    """The checkpoint's name relative to its run folder, as latest.json records it."""
    return f"checkpoints/step-{int(step):06d}.pt"


def latest(run_dir: str) -> str:
    return storage.join(run_dir, LATEST)


def final_generator(run_dir: str) -> str:
    return storage.join(run_dir, "final", GENERATOR)


def metrics_log(run_dir: str) -> str:
    return storage.join(run_dir, "metrics.jsonl")


def tensorboard(run_dir: str) -> str:
    return storage.join(run_dir, "tensorboard")


def sample_grid(run_dir: str, step: int) -> str:
    return storage.join(run_dir, "samples", f"step-{int(step):06d}.png")


# ---------------------------------------------------------------- published outputs


def styles(root: str) -> str:
    return storage.join(root, "styles")


def published_style(root: str, style: str) -> str:
    return storage.join(styles(root), style)


def published_generator(root: str, style: str) -> str:
    return storage.join(published_style(root, style), GENERATOR)


def published_styles(root: str) -> list[str]:
    """Styles with a published G' under <root>/styles/."""
    prefix = styles(root)
    return sorted({storage.basename(storage.dirname(uri)) for uri in storage.list_uris(prefix, suffixes=GENERATOR)
                   if storage.dirname(storage.dirname(uri)).rstrip("/") == prefix.rstrip("/")})


def run_styles(root: str, run_id: str, modes) -> list[str]:
    """Styles of a run with at least one mode folder (one of `modes`) holding a latest.json or a final G."""
    prefix = run(root, run_id)
    found = set()
    for uri in storage.list_uris(prefix, suffixes=(LATEST, GENERATOR)):
        parts = uri[len(prefix):].strip("/").split("/")
        if len(parts) >= 3 and parts[1] in modes:
            found.add(parts[0])
    return sorted(found)


def references(root: str, style: str) -> str:
    return storage.join(root, "references", style)


def reference(root: str, style: str, ref_id: str) -> str:
    return storage.join(references(root, style), f"{ref_id}.npz")


# ---------------------------------------------------------------- the demo's own files (cluster.demo)


def demo_marker(root: str) -> str:
    """`demo-root.json`: the demo may delete its derived outputs only under a root carrying this."""
    return storage.join(root, DEMO_MARKER)


def demo_photos(root: str) -> str:
    return storage.join(root, "inputs", "photos")


def demo_truth(root: str) -> str:
    """`inputs/truth/<style>/<photo key>`: the world's render of each demo photo's person, same view, in the style
    (batch.stylize --truth reads this layout)."""
    return storage.join(root, "inputs", "truth")


def demo_fidelity(root: str) -> str:
    """The demo's ground-truth fidelity table (baseline G* vs SC&PC G' per style), as cluster.demo printed it."""
    return storage.join(root, "ground_truth_fidelity.json")


def demo_stylized(root: str) -> str:
    """The demo's batch output folder (inside it, batch.stylize's own layout)."""
    return storage.join(root, "stylized")


def stage_marker(folder: str) -> str:
    """The done-marker of the stage whose outputs live in `folder`."""
    return storage.join(folder, STAGE_MARKER)


def absolute_root(root: str) -> str:
    """A local root made absolute (an `s3://` or other schemed root as given). Entry points call this once: paths
    built from a relative root ("demo-out/runs/...") would otherwise be re-rooted by the model hub, which reads a
    relative model URI as relative to the root ("demo-out/demo-out/runs/...")."""
    import os
    return root if "://" in root else os.path.abspath(root)
